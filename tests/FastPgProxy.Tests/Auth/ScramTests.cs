using System;
using System.Security.Cryptography;
using System.Text;
using FastPgProxy.Auth;
using Xunit;

namespace FastPgProxy.Tests.Auth;

public class ScramTests
{
    // RFC 7677 section 3: user "user", password "pencil".
    private const string RfcClientNonce = "rOprNGfwEbeRWgbNEkqO";
    private const string RfcServerNoncePart = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    private const string RfcClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    private const string RfcServerFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    private const string RfcClientFinal = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    private const string RfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
    private const string RfcSalt = "W22ZaJ0SNY7soEsUEjb6gQ==";

    // The same keys in PostgreSQL's pg_authid format, and ClientKey, computed independently (Python hashlib).
    private const string RfcVerifier =
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
    private const string RfcClientKey = "pg/JI9Z+hkSpLRa5btpe9GVrDHJcSEN0viVTVXaZbos=";

    private static byte[] A(string text) => Encoding.ASCII.GetBytes(text);

    private static string S(byte[] bytes) => Encoding.ASCII.GetString(bytes);

    private static ScramVerifier RfcVerifierObject() => ScramVerifier.FromPassword("pencil", Convert.FromBase64String(RfcSalt), 4096);

    /// <summary>Runs a whole exchange; returns null on success or the name of the step that failed.</summary>
    private static string? Exchange(ScramClient client, ScramServer server)
    {
        if (!server.TryHandleClientFirst(client.CreateClientFirst(), out var serverFirst, out _))
        {
            return "client-first";
        }

        if (!client.TryHandleServerFirst(serverFirst, out var clientFinal, out _))
        {
            return "server-first";
        }

        if (!server.TryHandleClientFinal(clientFinal, out var serverFinal, out _))
        {
            return "client-final";
        }

        return client.TryVerifyServerFinal(serverFinal, out _) ? null : "server-final";
    }

    [Fact]
    public void Client_matches_rfc7677_example()
    {
        var client = new ScramClient("pencil", "user", RfcClientNonce);

        Assert.Equal(RfcClientFirst, S(client.CreateClientFirst()));
        Assert.True(client.TryHandleServerFirst(A(RfcServerFirst), out var clientFinal, out var error), error);
        Assert.Equal(RfcClientFinal, S(clientFinal));
        Assert.True(client.TryVerifyServerFinal(A(RfcServerFinal), out error), error);
    }

    [Fact]
    public void Server_matches_rfc7677_example()
    {
        var server = new ScramServer(RfcVerifierObject(), RfcServerNoncePart);

        Assert.True(server.TryHandleClientFirst(A(RfcClientFirst), out var serverFirst, out var error), error);
        Assert.Equal(RfcServerFirst, S(serverFirst));
        Assert.True(server.TryHandleClientFinal(A(RfcClientFinal), out var serverFinal, out error), error);
        Assert.Equal(RfcServerFinal, S(serverFinal));
        Assert.Equal(ScramServerState.Succeeded, server.State);
        Assert.Equal(RfcClientKey, Convert.ToBase64String(server.ClientKey));
    }

    [Fact]
    public void Verifier_from_password_has_rfc7677_keys()
    {
        var verifier = RfcVerifierObject();

        Assert.Equal(4096, verifier.Iterations);
        Assert.Equal(RfcVerifier, verifier.ToPostgresFormat());
    }

    [Fact]
    public void New_verifier_has_random_16_byte_salt_and_default_iterations()
    {
        var first = ScramVerifier.FromPassword("secret");
        var second = ScramVerifier.FromPassword("secret");

        Assert.Equal(16, first.Salt.Length);
        Assert.Equal(4096, first.Iterations);
        Assert.False(first.Salt.SequenceEqual(second.Salt));
        Assert.False(first.StoredKey.SequenceEqual(second.StoredKey));
    }

    [Fact]
    public void Client_first_is_postgresql_style()
    {
        var message = S(new ScramClient("secret").CreateClientFirst());

        Assert.StartsWith("n,,n=,r=", message, StringComparison.Ordinal);
        var nonce = Convert.FromBase64String(message["n,,n=,r=".Length..]);
        Assert.Equal(18, nonce.Length);
    }

    [Fact]
    public void Round_trip_with_password_succeeds()
    {
        var verifier = ScramVerifier.FromPassword("correct horse", iterations: 100);
        var server = new ScramServer(verifier);

        Assert.Null(Exchange(new ScramClient("correct horse"), server));
        Assert.Equal(ScramServerState.Succeeded, server.State);
        Assert.Equal(32, server.ClientKey.Length);
    }

    [Fact]
    public void Wrong_password_fails_at_server()
    {
        var server = new ScramServer(ScramVerifier.FromPassword("right", iterations: 100));
        var client = new ScramClient("wrong");

        Assert.True(server.TryHandleClientFirst(client.CreateClientFirst(), out var serverFirst, out _));
        Assert.True(client.TryHandleServerFirst(serverFirst, out var clientFinal, out _));
        Assert.False(server.TryHandleClientFinal(clientFinal, out var serverFinal, out var error));

        Assert.Empty(serverFinal);
        Assert.NotNull(error);
        Assert.Equal(ScramServerState.ProofRejected, server.State);
        Assert.Throws<InvalidOperationException>(() => server.ClientKey.Length);
    }

    [Fact]
    public void Pass_through_logs_in_with_recovered_client_key()
    {
        var verifier = ScramVerifier.FromPassword("s3cret", iterations: 100);
        var frontend = new ScramServer(verifier);
        Assert.Null(Exchange(new ScramClient("s3cret"), frontend));
        var clientKey = frontend.ClientKey.ToArray();

        // The proxy now logs in to a server that holds the same verifier, without the password.
        var backend = new ScramServer(verifier);
        Assert.Null(Exchange(new ScramClient(clientKey, verifier.ServerKey), backend));
        Assert.Equal(clientKey, backend.ClientKey.ToArray());
    }

    [Fact]
    public void Pass_through_fails_against_a_different_verifier_of_the_same_password()
    {
        var verifier = ScramVerifier.FromPassword("s3cret", iterations: 100);
        var frontend = new ScramServer(verifier);
        Assert.Null(Exchange(new ScramClient("s3cret"), frontend));

        var backend = new ScramServer(ScramVerifier.FromPassword("s3cret", iterations: 100));
        Assert.Equal("client-final", Exchange(new ScramClient(frontend.ClientKey, verifier.ServerKey), backend));
        Assert.Equal(ScramServerState.ProofRejected, backend.State);
    }

    [Fact]
    public void Tampered_server_signature_fails_at_client()
    {
        var client = new ScramClient("pencil", "user", RfcClientNonce);
        client.CreateClientFirst();
        Assert.True(client.TryHandleServerFirst(A(RfcServerFirst), out _, out _));

        var signature = Convert.FromBase64String(RfcServerFinal[2..]);
        signature[0] ^= 1;

        Assert.False(client.TryVerifyServerFinal(A("v=" + Convert.ToBase64String(signature)), out var error));
        Assert.NotNull(error);
    }

    [Fact]
    public void Server_error_attribute_fails_at_client_with_its_text()
    {
        var client = new ScramClient("pencil", "user", RfcClientNonce);
        client.CreateClientFirst();
        Assert.True(client.TryHandleServerFirst(A(RfcServerFirst), out _, out _));

        Assert.False(client.TryVerifyServerFinal(A("e=invalid-proof"), out var error));
        Assert.Contains("invalid-proof", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("p=tls-server-end-point,,n=,r=abc")]
    [InlineData("n,,n=")]
    [InlineData("n,,n=,x=abc")]
    [InlineData("n,,n=,r=")]
    [InlineData("n,,r=abc")]
    [InlineData("n,,n=,r=abc,")]
    [InlineData("n,,m=ext,n=,r=abc")]
    [InlineData("n,a=admin,n=,r=abc")]
    [InlineData("x,,n=,r=abc")]
    [InlineData("n,n=,r=abc")]
    [InlineData("n")]
    [InlineData("")]
    [InlineData("garbage")]
    [InlineData("\u0001\u0002\u0003")]
    public void Malformed_client_first_is_rejected(string message)
    {
        var server = new ScramServer(RfcVerifierObject());

        Assert.False(server.TryHandleClientFirst(A(message), out var serverFirst, out var error));
        Assert.Empty(serverFirst);
        Assert.False(string.IsNullOrEmpty(error));
        Assert.Equal(ScramServerState.Malformed, server.State);
    }

    [Fact]
    public void Channel_binding_request_names_the_reason()
    {
        var server = new ScramServer(RfcVerifierObject());

        Assert.False(server.TryHandleClientFirst(A("p=tls-server-end-point,,n=,r=abc"), out _, out var error));
        Assert.Contains("channel binding", error, StringComparison.Ordinal);
    }

    [Fact]
    public void Client_first_extensions_and_user_name_are_ignored()
    {
        var server = new ScramServer(RfcVerifierObject(), RfcServerNoncePart);

        Assert.True(server.TryHandleClientFirst(A("n,,n=someone=2Celse,r=" + RfcClientNonce + ",x=ext"), out var serverFirst, out var error), error);
        Assert.Equal(RfcServerFirst, S(serverFirst));
    }

    [Fact]
    public void Client_that_supports_binding_but_thinks_server_does_not_is_accepted()
    {
        var server = new ScramServer(RfcVerifierObject(), RfcServerNoncePart);
        var clientFirstBare = "n=,r=" + RfcClientNonce;
        Assert.True(server.TryHandleClientFirst(A("y,," + clientFirstBare), out var serverFirst, out var error), error);

        // c=eSws is base64("y,,"); the proof is computed here from the RFC's ClientKey.
        var withoutProof = "c=eSws,r=" + RfcClientNonce + RfcServerNoncePart;
        var authMessage = A(clientFirstBare + "," + S(serverFirst) + "," + withoutProof);
        var clientKey = Convert.FromBase64String(RfcClientKey);
        var signature = HMACSHA256.HashData(SHA256.HashData(clientKey), authMessage);
        var proof = new byte[32];
        for (var i = 0; i < proof.Length; i++)
        {
            proof[i] = (byte)(clientKey[i] ^ signature[i]);
        }

        Assert.True(server.TryHandleClientFinal(A(withoutProof + ",p=" + Convert.ToBase64String(proof)), out _, out error), error);
        Assert.Equal(ScramServerState.Succeeded, server.State);
    }

    [Theory]
    [InlineData("c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")] // binding flag differs
    [InlineData("c=biws,r=rOprNGfwEbeRWgbNEkqO,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")] // nonce without the server part
    [InlineData("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")] // no proof
    [InlineData("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=,x=1")] // proof not last
    [InlineData("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9")] // proof too short
    [InlineData("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=!!!")] // proof not base64
    [InlineData("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")] // no c=
    [InlineData("")]
    [InlineData("garbage")]
    public void Malformed_client_final_is_rejected_as_protocol_violation(string message)
    {
        var server = new ScramServer(RfcVerifierObject(), RfcServerNoncePart);
        Assert.True(server.TryHandleClientFirst(A(RfcClientFirst), out _, out _));

        Assert.False(server.TryHandleClientFinal(A(message), out var serverFinal, out var error));
        Assert.Empty(serverFinal);
        Assert.False(string.IsNullOrEmpty(error));
        Assert.Equal(ScramServerState.Malformed, server.State);
    }

    [Fact]
    public void Client_final_extensions_before_the_proof_are_part_of_the_auth_message()
    {
        var server = new ScramServer(RfcVerifierObject(), RfcServerNoncePart);
        Assert.True(server.TryHandleClientFirst(A(RfcClientFirst), out _, out _));

        // The RFC proof was computed without the extension, so it no longer matches: a wrong proof, not malformed.
        var message = RfcClientFinal.Replace(",p=", ",x=ext,p=", StringComparison.Ordinal);
        Assert.False(server.TryHandleClientFinal(A(message), out _, out _));
        Assert.Equal(ScramServerState.ProofRejected, server.State);
    }

    [Fact]
    public void Server_rejects_messages_out_of_order()
    {
        var server = new ScramServer(RfcVerifierObject(), RfcServerNoncePart);

        Assert.False(server.TryHandleClientFinal(A(RfcClientFinal), out _, out var error));
        Assert.NotNull(error);
        Assert.True(server.TryHandleClientFirst(A(RfcClientFirst), out _, out _));
        Assert.False(server.TryHandleClientFirst(A(RfcClientFirst), out _, out error));
        Assert.NotNull(error);
        Assert.True(server.TryHandleClientFinal(A(RfcClientFinal), out _, out error), error);
    }

    [Theory]
    [InlineData("r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")] // nonce not extended
    [InlineData("r=XXXXNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")] // not our nonce
    [InlineData("r=rOprNGfwEbeRWgbNEkqO%hvYD,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0")]
    [InlineData("r=rOprNGfwEbeRWgbNEkqO%hvYD,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000001")]
    [InlineData("r=rOprNGfwEbeRWgbNEkqO%hvYD,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999999999999")]
    [InlineData("r=rOprNGfwEbeRWgbNEkqO%hvYD,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1")]
    [InlineData("r=rOprNGfwEbeRWgbNEkqO%hvYD,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=")]
    [InlineData("r=rOprNGfwEbeRWgbNEkqO%hvYD,s=W22ZaJ0SNY7soEsUEjb6gQ==")]
    [InlineData("r=rOprNGfwEbeRWgbNEkqO%hvYD,s=not base64!,i=4096")]
    [InlineData("r=rOprNGfwEbeRWgbNEkqO%hvYD,s=,i=4096")]
    [InlineData("r=rOprNGfwEbeRWgbNEkqO%hvYD,i=4096")]
    [InlineData("m=ext,r=rOprNGfwEbeRWgbNEkqO%hvYD,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")]
    [InlineData("e=other-error")]
    [InlineData("")]
    public void Client_rejects_bad_server_first(string message)
    {
        var client = new ScramClient("pencil", "user", RfcClientNonce);
        client.CreateClientFirst();

        Assert.False(client.TryHandleServerFirst(A(message), out var clientFinal, out var error));
        Assert.Empty(clientFinal);
        Assert.False(string.IsNullOrEmpty(error));
    }

    [Fact]
    public void Client_names_an_absurd_iteration_count()
    {
        var client = new ScramClient("pencil", "user", RfcClientNonce);
        client.CreateClientFirst();

        Assert.False(client.TryHandleServerFirst(A("r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000001"), out _, out var error));
        Assert.Contains("iteration count", error, StringComparison.Ordinal);
    }

    [Fact]
    public void Client_cannot_create_client_first_twice()
    {
        var client = new ScramClient("pencil");
        client.CreateClientFirst();

        Assert.Throws<InvalidOperationException>(() => client.CreateClientFirst());
    }

    [Fact]
    public void Pass_through_client_requires_32_byte_keys()
    {
        Assert.Throws<ArgumentException>(() => new ScramClient(new byte[31], new byte[32]));
        Assert.Throws<ArgumentException>(() => new ScramClient(new byte[32], new byte[33]));
    }
}
