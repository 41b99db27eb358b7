using System.Globalization;
using FastPgProxy.Config;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;
using static FastPgProxy.Tests.Infrastructure.LoginAsserts;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// The proxy checks client passwords itself against its auth_file, then logs in to PostgreSQL with whatever
/// that file (or the [databases] entry) gives it: a plaintext password, PostgreSQL's md5 hash, or the SCRAM
/// keys learnt from the client's own exchange.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class AuthTests(PostgresFixture fixture)
{
    private const string InvalidPassword = "28P01";
    private const string InvalidAuthorization = "28000";

    private readonly PostgresServer _pg = fixture.Server;

    /// <summary>Starts a proxy with <paramref name="authType"/> whose auth_file holds one user.</summary>
    private static ProxyHarness Start(PostgresServer pg, AuthType authType, string user, string secret) =>
        ProxyHarness.Start(pg, o => o.AuthType = authType, [(user, secret)]);

    /// <summary>Theory data names auth types as the config file does (the enum is internal).</summary>
    private static ProxyHarness Start(PostgresServer pg, string authType, string user, string secret) =>
        Start(pg, authType switch { "md5" => AuthType.Md5, "scram-sha-256" => AuthType.ScramSha256, _ => AuthType.Trust }, user, secret);

    /// <summary>Logs in through the proxy and checks which role PostgreSQL sees.</summary>
    private async Task<string> StoredSecretAsync(string role)
    {
        string? stored = await _pg.ScalarAsync<string>($"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'");
        Assert.NotNull(stored);
        return stored;
    }

    [Fact]
    public async Task Md5_with_a_plaintext_secret_accepts_the_right_password_and_refuses_a_wrong_one()
    {
        await using ProxyHarness proxy = Start(_pg, AuthType.Md5, PostgresServer.Md5User, PostgresServer.Md5Password);
        await AssertLogsInAsync(proxy, PostgresServer.Md5User, PostgresServer.Md5Password, PostgresServer.Md5User);

        PostgresException e = await AssertLoginFailsAsync(proxy, PostgresServer.Md5User, "not-the-password", InvalidPassword);
        Assert.Equal("password authentication failed for user \"fpp_md5\"", e.MessageText);
        Assert.Equal("FATAL", e.Severity);

        // Npgsql's GssEncryptionMode=Prefer retries a failed login on a second connection; without it, one
        // wrong password is one counted failure.
        long failedBefore = proxy.Server.Stats.LoginsFailed;
        var once = new NpgsqlConnectionStringBuilder(proxy.ConnectionString(PostgresServer.Md5User, "not-the-password"))
        {
            GssEncryptionMode = GssEncryptionMode.Disable,
        };
        await using var connection = new NpgsqlConnection(once.ConnectionString);
        Assert.Equal(InvalidPassword, (await Assert.ThrowsAsync<PostgresException>(() => connection.OpenAsync())).SqlState);
        Assert.Equal(failedBefore + 1, proxy.Server.Stats.LoginsFailed);
    }

    [Fact]
    public async Task Scram_with_a_plaintext_secret_accepts_the_right_password_and_refuses_a_wrong_one()
    {
        await using ProxyHarness proxy = Start(_pg, AuthType.ScramSha256, PostgresServer.ScramUser, PostgresServer.ScramPassword);
        await AssertLogsInAsync(proxy, PostgresServer.ScramUser, PostgresServer.ScramPassword, PostgresServer.ScramUser);

        PostgresException e = await AssertLoginFailsAsync(proxy, PostgresServer.ScramUser, "not-the-password", InvalidPassword);
        Assert.Equal("password authentication failed for user \"fpp_scram\"", e.MessageText);
    }

    [Fact]
    public async Task Scram_with_postgres_own_verifier_logs_in_to_postgres_with_the_keys_from_the_client_exchange()
    {
        string verifier = await StoredSecretAsync(PostgresServer.ScramUser);
        Assert.StartsWith("SCRAM-SHA-256$", verifier, StringComparison.Ordinal);
        await using ProxyHarness proxy = Start(_pg, AuthType.ScramSha256, PostgresServer.ScramUser, verifier);

        // The proxy has no password: PostgreSQL (pg_hba scram-sha-256) accepts it only with the ClientKey
        // recovered from this client's proof.
        await AssertLogsInAsync(proxy, PostgresServer.ScramUser, PostgresServer.ScramPassword, PostgresServer.ScramUser);
        await AssertLogsInAsync(proxy, PostgresServer.ScramUser, PostgresServer.ScramPassword, PostgresServer.ScramUser);
        await AssertLoginFailsAsync(proxy, PostgresServer.ScramUser, "not-the-password", InvalidPassword);
    }

    [Fact]
    public async Task Md5_with_a_scram_verifier_secret_asks_the_client_for_scram_and_logs_in()
    {
        string verifier = await StoredSecretAsync(PostgresServer.ScramUser);
        await using ProxyHarness proxy = Start(_pg, AuthType.Md5, PostgresServer.ScramUser, verifier);
        await AssertLogsInAsync(proxy, PostgresServer.ScramUser, PostgresServer.ScramPassword, PostgresServer.ScramUser);
        await AssertLoginFailsAsync(proxy, PostgresServer.ScramUser, "not-the-password", InvalidPassword);
    }

    [Fact]
    public async Task Md5_with_postgres_own_md5_hash_logs_in_to_postgres_with_the_hash()
    {
        string hash = await StoredSecretAsync(PostgresServer.Md5User);
        Assert.StartsWith("md5", hash, StringComparison.Ordinal);
        await using ProxyHarness proxy = Start(_pg, AuthType.Md5, PostgresServer.Md5User, hash);
        await AssertLogsInAsync(proxy, PostgresServer.Md5User, PostgresServer.Md5Password, PostgresServer.Md5User);
        await AssertLoginFailsAsync(proxy, PostgresServer.Md5User, "not-the-password", InvalidPassword);
    }

    [Theory]
    [InlineData("md5")]
    [InlineData("scram-sha-256")]
    public async Task Cleartext_backend_gets_the_plaintext_secret(string authType)
    {
        await using ProxyHarness proxy = Start(_pg, authType, PostgresServer.ClearUser, PostgresServer.ClearPassword);
        await AssertLogsInAsync(proxy, PostgresServer.ClearUser, PostgresServer.ClearPassword, PostgresServer.ClearUser);
        await AssertLoginFailsAsync(proxy, PostgresServer.ClearUser, "not-the-password", InvalidPassword);
    }

    [Theory]
    [InlineData("md5")]
    [InlineData("scram-sha-256")]
    public async Task Unknown_user_gets_the_same_28P01_as_a_wrong_password(string authType)
    {
        await using ProxyHarness proxy = Start(_pg, authType, PostgresServer.Md5User, PostgresServer.Md5Password);
        PostgresException e = await AssertLoginFailsAsync(proxy, "fpp_nobody", "whatever", InvalidPassword);
        Assert.Equal("password authentication failed for user \"fpp_nobody\"", e.MessageText);

        // A listed user still logs in on the same proxy.
        await AssertLogsInAsync(proxy, PostgresServer.Md5User, PostgresServer.Md5Password, PostgresServer.Md5User);
    }

    [Fact]
    public async Task Scram_for_a_user_whose_secret_is_an_md5_hash_gets_28P01()
    {
        string hash = await StoredSecretAsync(PostgresServer.Md5User);
        await using ProxyHarness proxy = Start(_pg, AuthType.ScramSha256, PostgresServer.Md5User, hash);
        await AssertLoginFailsAsync(proxy, PostgresServer.Md5User, PostgresServer.Md5Password, InvalidPassword);
    }

    [Fact]
    public async Task Trust_with_an_auth_file_admits_listed_users_only()
    {
        await using ProxyHarness proxy = Start(_pg, AuthType.Trust, PostgresServer.TrustUser, string.Empty);
        await AssertLogsInAsync(proxy, PostgresServer.TrustUser, null, PostgresServer.TrustUser);
        await AssertLoginFailsAsync(proxy, PostgresServer.OtherUser, null, InvalidAuthorization);
    }

    [Fact]
    public async Task Database_entry_user_and_password_override_the_client_user()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o =>
        {
            o.AuthType = AuthType.Trust;
            o.Databases.Clear();
            o.Databases.Add(ProxyHarness.Database(_pg, PostgresServer.ScramUser, PostgresServer.ScramPassword));
        });
        await AssertLogsInAsync(proxy, PostgresServer.TrustUser, null, PostgresServer.ScramUser);
    }

    [Fact]
    public async Task Database_entry_user_without_password_uses_that_users_auth_file_secret()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(
            _pg,
            o =>
            {
                o.AuthType = AuthType.ScramSha256;
                o.Databases.Clear();
                o.Databases.Add(ProxyHarness.Database(_pg, PostgresServer.Md5User));
            },
            [(PostgresServer.TrustUser, "trustpass"), (PostgresServer.Md5User, PostgresServer.Md5Password)]);
        await AssertLogsInAsync(proxy, PostgresServer.TrustUser, "trustpass", PostgresServer.Md5User);
    }

    [Theory]
    [InlineData("query instead of a password", new byte[] { (byte)'Q', 0, 0, 0, 13, (byte)'S', (byte)'E', (byte)'L', (byte)'E', (byte)'C', (byte)'T', (byte)' ', (byte)'1', 0 })]
    [InlineData("password message announcing 1 GiB", new byte[] { (byte)'p', 0x40, 0, 0, 0 })]
    [InlineData("password message shorter than its length word", new byte[] { (byte)'p', 0, 0, 0, 3 })]
    public async Task Malformed_answer_to_the_md5_challenge_gets_08P01(string what, byte[] answer)
    {
        await using ProxyHarness proxy = Start(_pg, AuthType.Md5, PostgresServer.Md5User, PostgresServer.Md5Password);
        using System.Net.Sockets.Socket raw = await proxy.ConnectRawAsync();
        await raw.SendAsync(RawProtocol.Startup(("user", PostgresServer.Md5User), ("database", PostgresServer.Database)));
        (byte Type, byte[] Body)? challenge = await RawProtocol.ReadMessageAsync(raw, TimeSpan.FromSeconds(15));
        Assert.NotNull(challenge);
        Assert.Equal((byte)'R', challenge.Value.Type);

        await raw.SendAsync(answer);
        (byte[] data, bool closed) = await RawProtocol.ReadUntilCloseAsync(raw, TimeSpan.FromSeconds(15));
        Assert.True(closed, what);
        Assert.Equal("08P01", RawProtocol.ErrorCode(data));
        await AssertLogsInAsync(proxy, PostgresServer.Md5User, PostgresServer.Md5Password, PostgresServer.Md5User);
    }

    [Theory]
    [InlineData("md5", PostgresServer.Md5User, PostgresServer.Md5Password)]
    [InlineData("scram-sha-256", PostgresServer.ScramUser, PostgresServer.ScramPassword)]
    public async Task Psql_logs_in_with_PGPASSWORD_and_prints_the_result(string authType, string user, string password)
    {
        await using ProxyHarness proxy = Start(_pg, authType, user, password);
        string psql = ProcessRunner.FindOnPath("psql") ?? _pg.ToolPath("psql");
        var env = new Dictionary<string, string>
        {
            ["PGPASSWORD"] = password,
            ["PGCONNECT_TIMEOUT"] = "10",
            ["PGSSLMODE"] = "prefer",
            ["PGPASSFILE"] = "/nonexistent",
        };
        var (exitCode, stdout, stderr) = await ProcessRunner.RunAsync(
            psql,
            ["-X", "-h", "127.0.0.1", "-p", proxy.Port.ToString(CultureInfo.InvariantCulture), "-U", user, "-d", PostgresServer.Database,
             "-Atc", "SELECT current_user || ' ' || 6 * 7"],
            TimeSpan.FromSeconds(30),
            env);
        Assert.True(exitCode == 0, $"psql exited with {exitCode}: {stderr}");
        Assert.Equal($"{user} 42", stdout.Trim());

        env["PGPASSWORD"] = "not-the-password";
        (exitCode, _, stderr) = await ProcessRunner.RunAsync(
            psql,
            ["-X", "-h", "127.0.0.1", "-p", proxy.Port.ToString(CultureInfo.InvariantCulture), "-U", user, "-d", PostgresServer.Database,
             "-Atc", "SELECT 1"],
            TimeSpan.FromSeconds(30),
            env);
        Assert.NotEqual(0, exitCode);
        Assert.Contains($"password authentication failed for user \"{user}\"", stderr, StringComparison.Ordinal);
    }
}
