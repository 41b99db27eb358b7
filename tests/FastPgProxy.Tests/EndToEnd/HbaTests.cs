using FastPgProxy.Config;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;
using static FastPgProxy.Tests.Infrastructure.LoginAsserts;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// auth_type hba: the first auth_hba_file line matching the client's connection, database and user picks
/// the method, as PostgreSQL's pg_hba.conf does; TCP clients (plain, from 127.0.0.1) meet host lines and Unix socket clients local lines.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class HbaTests(PostgresFixture fixture) : IDisposable
{
    private const string InvalidPassword = "28P01";
    private const string InvalidAuthorization = "28000";
    private const string Password = "hba-pass";

    private readonly PostgresServer _pg = fixture.Server;
    private readonly string _dir = Directory.CreateTempSubdirectory("fpp-hba-").FullName;

    /// <inheritdoc/>
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>A proxy with auth_type hba and <paramref name="hba"/> as its file; the auth_file holds the trusted test roles with <see cref="Password"/>.</summary>
    private ProxyHarness Start(string hba)
    {
        string path = Path.Combine(_dir, "hba.conf");
        File.WriteAllText(path, hba);
        return ProxyHarness.Start(_pg, o =>
        {
            o.AuthType = AuthType.Hba;
            o.AuthHbaFile = path;
        }, [(PostgresServer.TrustUser, Password), (PostgresServer.OtherUser, Password)]);
    }

    [Fact]
    public async Task A_host_line_whose_cidr_holds_the_client_picks_its_method()
    {
        await using ProxyHarness proxy = Start($"""
            host {PostgresServer.Database} {PostgresServer.TrustUser} 127.0.0.0/8 scram-sha-256
            host all {PostgresServer.OtherUser} 127.0.0.1 255.255.255.255 trust
            """);

        await AssertLogsInAsync(proxy, PostgresServer.TrustUser, Password);
        await AssertLoginFailsAsync(proxy, PostgresServer.TrustUser, "wrong", InvalidPassword);

        // trust: no password asked for.
        await AssertLogsInAsync(proxy, PostgresServer.OtherUser, null);
    }

    [Fact]
    public async Task A_reject_line_refuses_with_PostgreSQLs_words()
    {
        await using ProxyHarness proxy = Start($"""
            host all {PostgresServer.OtherUser} 127.0.0.1/32 reject
            host all all 127.0.0.1/32 md5
            """);

        PostgresException e = await AssertLoginFailsAsync(proxy, PostgresServer.OtherUser, Password, InvalidAuthorization);
        Assert.Equal($"pg_hba.conf rejects connection for host \"127.0.0.1\", user \"{PostgresServer.OtherUser}\", database \"{PostgresServer.Database}\", no encryption", e.MessageText);
        await AssertLogsInAsync(proxy, PostgresServer.TrustUser, Password);
    }

    [Fact]
    public async Task No_matching_line_refuses_with_PostgreSQLs_words()
    {
        await using ProxyHarness proxy = Start($"""
            host other_db all 127.0.0.1/32 trust
            host all all 10.0.0.0/8 trust
            """);

        PostgresException e = await AssertLoginFailsAsync(proxy, PostgresServer.TrustUser, Password, InvalidAuthorization);
        Assert.Equal($"no pg_hba.conf entry for host \"127.0.0.1\", user \"{PostgresServer.TrustUser}\", database \"{PostgresServer.Database}\", no encryption", e.MessageText);
    }

    /// <summary>
    /// Over the Unix socket, local lines apply and host lines do not: peer compares the OS user at the other
    /// end of the socket (SO_PEERCRED) with the user name; TCP clients never match a local line.
    /// </summary>
    [Fact]
    public async Task Local_lines_apply_over_the_unix_socket_and_peer_checks_the_OS_user()
    {
        string osUser = Environment.UserName;
        string path = Path.Combine(_dir, "hba.conf");
        File.WriteAllText(path, $"""
            local all {osUser} peer
            local all {PostgresServer.OtherUser} peer
            host all all 127.0.0.1/32 reject
            """);
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o =>
        {
            o.AuthType = AuthType.Hba;
            o.AuthHbaFile = path;
            o.UnixSocketDir = _dir;

            // Whoever logs in, the backend is the trusted test role: the OS user need not be a PostgreSQL role.
            o.Databases[0] = ProxyHarness.Database(_pg, PostgresServer.TrustUser);
        }, [(osUser, Password), (PostgresServer.OtherUser, Password)]);

        string Socket(string user) => new NpgsqlConnectionStringBuilder
        {
            Host = _dir, Port = proxy.Port, Username = user, Password = Password, Database = PostgresServer.Database, Pooling = false,
        }.ConnectionString;

        await using (var c = new NpgsqlConnection(Socket(osUser)))
        {
            await c.OpenAsync();
            await using var cmd = new NpgsqlCommand("SELECT current_user", c);
            Assert.Equal(PostgresServer.TrustUser, await cmd.ExecuteScalarAsync());
        }

        await using (var c = new NpgsqlConnection(Socket(PostgresServer.OtherUser)))
        {
            PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => c.OpenAsync());
            Assert.Equal(InvalidAuthorization, e.SqlState);
            Assert.Equal($"peer authentication failed for user \"{PostgresServer.OtherUser}\"", e.MessageText);
        }

        await using (var c = new NpgsqlConnection(Socket(PostgresServer.TrustUser)))
        {
            PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => c.OpenAsync());
            Assert.Equal($"no pg_hba.conf entry for host \"[local]\", user \"{PostgresServer.TrustUser}\", database \"{PostgresServer.Database}\", no encryption", e.MessageText);
        }

        // The same user over TCP meets the host line, not the local one.
        PostgresException tcp = await AssertLoginFailsAsync(proxy, osUser, Password, InvalidAuthorization);
        Assert.StartsWith("pg_hba.conf rejects connection for host \"127.0.0.1\"", tcp.MessageText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_hostssl_line_does_not_match_a_plain_client_and_hostnossl_does()
    {
        await using ProxyHarness proxy = Start("""
            hostssl   all all 0.0.0.0/0 trust
            local     all all           trust
            hostnossl all all 0.0.0.0/0 md5
            """);

        // Not trusted by the hostssl or local line: the md5 line asks for the password.
        await AssertLoginFailsAsync(proxy, PostgresServer.TrustUser, "wrong", InvalidPassword);
        await AssertLogsInAsync(proxy, PostgresServer.TrustUser, Password);
    }

    [Fact]
    public async Task Only_hostssl_lines_refuse_a_plain_client()
    {
        await using ProxyHarness proxy = Start("hostssl all all 0.0.0.0/0 trust\n");
        PostgresException e = await AssertLoginFailsAsync(proxy, PostgresServer.TrustUser, Password, InvalidAuthorization);
        Assert.StartsWith("no pg_hba.conf entry for host \"127.0.0.1\"", e.MessageText, StringComparison.Ordinal);
    }

    [Fact]
    public void A_bad_hba_file_fails_the_start_naming_file_and_line()
    {
        string path = Path.Combine(_dir, "hba.conf");
        File.WriteAllText(path, "host all all 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 password\n");
        ProxyOptions options = ProxyHarness.Options(_pg);
        options.AuthType = AuthType.Hba;
        options.AuthHbaFile = path;
        var e = Assert.Throws<ConfigException>(() => new FastPgProxy.Hosting.ProxyServer(options));
        Assert.StartsWith($"{path}:2: authentication method \"password\" is not supported", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Reload_reads_the_hba_file_again_and_a_broken_one_changes_nothing()
    {
        string hbaPath = Path.Combine(_dir, "hba.conf");
        string configPath = Path.Combine(_dir, "fpp.ini");
        const string ConsoleLine = "host fastpgproxy all 127.0.0.1/32 trust\n";
        File.WriteAllText(hbaPath, ConsoleLine + "host all all 127.0.0.1/32 trust\n");
        File.WriteAllText(configPath, $"[fastpgproxy]\nauth_type = hba\nauth_hba_file = {hbaPath}\nadmin_users = {PostgresServer.Superuser}\n[databases]\n* = host={_pg.Host} port={_pg.Port}\n");
        ProxyOptions loaded = ConfigLoader.Load(configPath);
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o =>
        {
            o.SourcePath = loaded.SourcePath;
            o.AuthType = AuthType.Hba;
            o.AuthHbaFile = hbaPath;
            o.AdminUsers.Add(PostgresServer.Superuser);
        });
        await AssertLogsInAsync(proxy, PostgresServer.TrustUser, null);

        var consoleString = proxy.ConnectionString(PostgresServer.Superuser, null, "fastpgproxy") + ";Server Compatibility Mode=NoTypeLoading;Include Error Detail=true";
        await using var console = new NpgsqlConnection(consoleString);
        await console.OpenAsync();
        File.WriteAllText(hbaPath, ConsoleLine + $"host all {PostgresServer.TrustUser} 127.0.0.1/32 reject\nhost all all 127.0.0.1/32 trust\n");
        await using (var reload = new NpgsqlCommand("RELOAD", console))
        {
            await reload.ExecuteNonQueryAsync();
        }

        await AssertLoginFailsAsync(proxy, PostgresServer.TrustUser, null, InvalidAuthorization);
        await AssertLogsInAsync(proxy, PostgresServer.OtherUser, null);

        File.WriteAllText(hbaPath, "host all all 127.0.0.1/32 trust\nhost all all all ldap\n");
        await using (var broken = new NpgsqlCommand("RELOAD", console))
        {
            PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => broken.ExecuteNonQueryAsync());
            Assert.Equal("22023", e.SqlState);
            Assert.StartsWith($"{hbaPath}:2: authentication method \"ldap\" is not supported", e.MessageText, StringComparison.Ordinal);
        }

        PostgresException still = await AssertLoginFailsAsync(proxy, PostgresServer.TrustUser, null, InvalidAuthorization);
        Assert.StartsWith("pg_hba.conf rejects connection", still.MessageText, StringComparison.Ordinal);
    }
}
