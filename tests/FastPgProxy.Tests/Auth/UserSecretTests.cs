using System;
using FastPgProxy.Auth;
using Xunit;

namespace FastPgProxy.Tests.Auth;

public class UserSecretTests
{
    // RFC 7677's example keys (password "pencil") in PostgreSQL's pg_authid format.
    private const string Verifier =
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

    [Fact]
    public void Postgres_verifier_round_trips()
    {
        var secret = UserSecret.Create(Verifier);

        Assert.Equal(SecretKind.ScramSha256, secret.Kind);
        Assert.Null(secret.Password);
        Assert.True(secret.TryGetScramVerifier(out var verifier));
        Assert.Equal(4096, verifier.Iterations);
        Assert.Equal(Convert.FromBase64String("W22ZaJ0SNY7soEsUEjb6gQ=="), verifier.Salt.ToArray());
        Assert.Equal(Convert.FromBase64String("WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="), verifier.StoredKey.ToArray());
        Assert.Equal(Convert.FromBase64String("wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="), verifier.ServerKey.ToArray());
        Assert.Equal(Verifier, verifier.ToPostgresFormat());
    }

    [Fact]
    public void Generated_verifier_round_trips_through_text()
    {
        var verifier = ScramVerifier.FromPassword("secret", iterations: 10);
        var secret = UserSecret.Create(verifier.ToPostgresFormat());

        Assert.True(secret.TryGetScramVerifier(out var parsed));
        Assert.Equal(verifier.ToPostgresFormat(), parsed.ToPostgresFormat());
    }

    [Fact]
    public void Parsed_verifier_authenticates_its_password()
    {
        Assert.True(UserSecret.Create(Verifier).TryGetScramVerifier(out var verifier));
        var server = new ScramServer(verifier);
        var client = new ScramClient("pencil");

        Assert.True(server.TryHandleClientFirst(client.CreateClientFirst(), out var serverFirst, out _));
        Assert.True(client.TryHandleServerFirst(serverFirst, out var clientFinal, out _));
        Assert.True(server.TryHandleClientFinal(clientFinal, out var serverFinal, out var error), error);
        Assert.True(client.TryVerifyServerFinal(serverFinal, out error), error);
    }

    [Theory]
    [InlineData("md53858f62230ac3c915f300c664312c63f", nameof(SecretKind.Md5))]
    [InlineData("md53858F62230AC3C915F300C664312C63F", nameof(SecretKind.Plain))] // PostgreSQL wants lower-case hex
    [InlineData("md53858f62230ac3c915f300c664312c63", nameof(SecretKind.Plain))] // 31 digits
    [InlineData("md53858f62230ac3c915f300c664312c63f0", nameof(SecretKind.Plain))] // 33 digits
    [InlineData("md5", nameof(SecretKind.Plain))]
    [InlineData("hunter2", nameof(SecretKind.Plain))]
    [InlineData("scram-sha-256$not-a-verifier", nameof(SecretKind.Plain))] // the prefix is case-sensitive
    [InlineData(Verifier, nameof(SecretKind.ScramSha256))]
    public void Secrets_are_classified(string raw, string kind)
    {
        var secret = UserSecret.Create(raw);

        Assert.Equal(kind, secret.Kind.ToString());
        Assert.Equal(raw, secret.Raw);
    }

    [Theory]
    [InlineData("SCRAM-SHA-256$")]
    [InlineData("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==")]
    [InlineData("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=")]
    [InlineData("SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")]
    [InlineData("SCRAM-SHA-256$-1:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")]
    [InlineData("SCRAM-SHA-256$abc:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")]
    [InlineData("SCRAM-SHA-256$4096:$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")]
    [InlineData("SCRAM-SHA-256$4096:W22Z aJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")]
    [InlineData("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4q=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")]
    [InlineData("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2d")]
    [InlineData("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=$x")]
    public void Malformed_verifiers_are_rejected(string raw)
    {
        Assert.False(UserSecret.TryCreate(raw, out var secret));
        Assert.Null(secret);
        Assert.Throws<FormatException>(() => UserSecret.Create(raw));
    }

    [Fact]
    public void Plain_secret_derives_a_verifier_once()
    {
        var secret = UserSecret.Create("hunter2");

        Assert.Equal("hunter2", secret.Password);
        Assert.True(secret.TryGetScramVerifier(out var first));
        Assert.True(secret.TryGetScramVerifier(out var second));
        Assert.Same(first, second);
        Assert.Equal(4096, first.Iterations);
        Assert.Equal(16, first.Salt.Length);

        var server = new ScramServer(first);
        var client = new ScramClient("hunter2");
        Assert.True(server.TryHandleClientFirst(client.CreateClientFirst(), out var serverFirst, out _));
        Assert.True(client.TryHandleServerFirst(serverFirst, out var clientFinal, out _));
        Assert.True(server.TryHandleClientFinal(clientFinal, out _, out var error), error);
    }

    [Fact]
    public void Md5_secret_has_no_scram_verifier()
    {
        var secret = UserSecret.Create("md53858f62230ac3c915f300c664312c63f");

        Assert.False(secret.TryGetScramVerifier(out var verifier));
        Assert.Null(verifier);
    }
}
