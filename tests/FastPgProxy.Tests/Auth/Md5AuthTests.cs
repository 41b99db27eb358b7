using System;
using System.Text;
using FastPgProxy.Auth;
using Xunit;

namespace FastPgProxy.Tests.Auth;

public class Md5AuthTests
{
    // md5("foobar"): PostgreSQL's stored md5 password for password "foo", user "bar".
    private const string FooBarHash = "md53858f62230ac3c915f300c664312c63f";

    // "md5" + md5("3858f62230ac3c915f300c664312c63f" + 01 02 03 04), computed independently (Python hashlib).
    private const string FooBarResponseToSalt01020304 = "md56e4f0b50f7277feb74acbf2a7734c9cb";

    private static readonly byte[] Salt = [1, 2, 3, 4];

    private static byte[] A(string text) => Encoding.ASCII.GetBytes(text);

    [Fact]
    public void Hash_password_matches_postgresql()
    {
        Assert.Equal(FooBarHash, Md5Auth.HashPassword("bar", "foo"));
    }

    [Fact]
    public void Response_matches_known_vector()
    {
        var response = new byte[Md5Auth.ResponseLength];

        Md5Auth.ComputeResponse(A(FooBarHash), Salt, response);

        Assert.Equal(FooBarResponseToSalt01020304, Encoding.ASCII.GetString(response));
    }

    [Fact]
    public void Verify_accepts_the_right_answer_from_plain_and_md5_secrets()
    {
        var response = A(FooBarResponseToSalt01020304);

        Assert.True(Md5Auth.Verify(UserSecret.Create("foo"), "bar", Salt, response));
        Assert.True(Md5Auth.Verify(UserSecret.Create(FooBarHash), "bar", Salt, response));
    }

    [Fact]
    public void Verify_rejects_wrong_answers()
    {
        var response = A(FooBarResponseToSalt01020304);
        var secret = UserSecret.Create("foo");

        Assert.False(Md5Auth.Verify(UserSecret.Create("fooo"), "bar", Salt, response));
        Assert.False(Md5Auth.Verify(secret, "baz", Salt, response));
        Assert.False(Md5Auth.Verify(secret, "bar", [1, 2, 3, 5], response));
        Assert.False(Md5Auth.Verify(secret, "bar", Salt, response.AsSpan(0, 34)));
        Assert.False(Md5Auth.Verify(secret, "bar", Salt, [.. response, 0]));
        Assert.False(Md5Auth.Verify(secret, "bar", Salt, []));
    }

    [Fact]
    public void Verify_fails_for_scram_and_empty_secrets()
    {
        var scram = UserSecret.Create(ScramVerifier.FromPassword("foo", iterations: 10).ToPostgresFormat());
        var emptyResponse = new byte[Md5Auth.ResponseLength];
        Md5Auth.ComputeResponse(A(Md5Auth.HashPassword("bar", string.Empty)), Salt, emptyResponse);

        Assert.False(Md5Auth.Verify(scram, "bar", Salt, A(FooBarResponseToSalt01020304)));
        Assert.False(Md5Auth.Verify(UserSecret.Create(string.Empty), "bar", Salt, emptyResponse));
    }

    [Fact]
    public void Compute_response_checks_its_arguments()
    {
        var destination = new byte[Md5Auth.ResponseLength];

        Assert.Throws<ArgumentException>(() => Md5Auth.ComputeResponse(A("md5abc"), Salt, destination));
        Assert.Throws<ArgumentException>(() => Md5Auth.ComputeResponse(A("xyz3858f62230ac3c915f300c664312c63f"), Salt, destination));
        Assert.Throws<ArgumentException>(() => Md5Auth.ComputeResponse(A(FooBarHash), [1, 2, 3], destination));
        Assert.Throws<ArgumentException>(() => Md5Auth.ComputeResponse(A(FooBarHash), Salt, new byte[34]));
    }
}
