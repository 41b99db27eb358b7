using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;
using static FastPgProxy.Tests.Infrastructure.LoginAsserts;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// auth_user and auth_query: a user missing from auth_file is looked up in PostgreSQL (pg_authid, as
/// PgBouncer's default query does) as auth_user, and the client is checked against the secret found.
/// The roles here exist only in PostgreSQL; the proxy's auth_file holds only the auth_user.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class AuthQueryTests(PostgresFixture fixture)
{
    private const string InvalidPassword = "28P01";
    private const string InvalidAuthorization = "28000";
    private const string Password = "lookup-pass";

    private readonly PostgresServer _pg = fixture.Server;

    /// <summary>A role name of its own for each test run (roles outlive a test on the shared server).</summary>
    private static string NewRoleName(string stem) => $"aq_{stem}_{Guid.NewGuid():N}"[..24];

    /// <summary>Creates a login role whose password PostgreSQL stores as <paramref name="encryption"/> (md5 or scram-sha-256); no password when null.</summary>
    private async Task<string> CreateRoleAsync(string stem, string? encryption)
    {
        string role = NewRoleName(stem);
        string sql = encryption is null
            ? $"CREATE ROLE {role} LOGIN"
            : $"SET password_encryption = '{encryption}'; CREATE ROLE {role} LOGIN PASSWORD '{Password}'";
        await _pg.ExecuteNonQueryAsync(sql);
        return role;
    }

    /// <summary>Password <see cref="PostgresServer.TrustUser"/> has in the proxy's auth_file.</summary>
    private const string FileUserPassword = "in-the-file";

    /// <summary>
    /// A proxy whose auth_file holds the superuser (no password: PostgreSQL trusts it), which is auth_user,
    /// and <see cref="PostgresServer.TrustUser"/> with <see cref="FileUserPassword"/>.
    /// </summary>
    private ProxyHarness StartWithAuthUser(AuthType authType, Action<ProxyOptions>? configure = null) =>
        ProxyHarness.Start(_pg, o =>
        {
            o.AuthType = authType;
            o.AuthUser = PostgresServer.Superuser;
            configure?.Invoke(o);
        }, [(PostgresServer.Superuser, ""), (PostgresServer.TrustUser, FileUserPassword)]);

    [Theory]
    [InlineData("md5", "md5")]
    [InlineData("md5", "scram-sha-256")]
    [InlineData("scram-sha-256", "scram-sha-256")]
    public async Task A_role_only_postgresql_knows_logs_in_with_its_password_and_not_with_another(string authType, string encryption)
    {
        string role = await CreateRoleAsync("known", encryption);
        await using ProxyHarness proxy = StartWithAuthUser(authType == "md5" ? AuthType.Md5 : AuthType.ScramSha256);

        await AssertLogsInAsync(proxy, role, Password);
        PostgresException e = await AssertLoginFailsAsync(proxy, role, "not-the-password", InvalidPassword);
        Assert.Equal($"password authentication failed for user \"{role}\"", e.MessageText);

        // Looked up again at the next login: still the right password, from the pool's credentials too.
        await AssertLogsInAsync(proxy, role, Password);
    }

    /// <summary>
    /// The auth_query connection is kept between lookups, as PgBouncer pools its auth_user connection: three
    /// lookups open one connection. Once PostgreSQL ends it, the next lookup opens another and still answers.
    /// </summary>
    [Fact]
    public async Task Lookups_share_one_kept_connection_and_survive_its_end()
    {
        string role = await CreateRoleAsync("kept", "scram-sha-256");
        await using ProxyHarness proxy = StartWithAuthUser(AuthType.ScramSha256);

        await AssertLogsInAsync(proxy, role, Password);
        await AssertLoginFailsAsync(proxy, role, "not-the-password", InvalidPassword);
        await AssertLogsInAsync(proxy, role, Password);
        Assert.Equal(1, proxy.Server.AuthConnections.Opened);

        // The kept connection sits idle after its last auth_query; PostgreSQL ends it.
        long ended = await _pg.ScalarAsync<long>(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE state = 'idle' AND query LIKE '%FROM pg_authid WHERE rolname=$1%' AND pid <> pg_backend_pid()");
        Assert.Equal(1L, ended);
        await AssertLogsInAsync(proxy, role, Password);
        Assert.Equal(2, proxy.Server.AuthConnections.Opened);
    }

    [Theory]
    [InlineData("md5")]
    [InlineData("scram-sha-256")]
    public async Task An_unknown_user_fails_as_a_wrong_password_does(string authType)
    {
        await using ProxyHarness proxy = StartWithAuthUser(authType == "md5" ? AuthType.Md5 : AuthType.ScramSha256);
        string role = NewRoleName("missing");
        PostgresException e = await AssertLoginFailsAsync(proxy, role, Password, InvalidPassword);
        Assert.Equal($"password authentication failed for user \"{role}\"", e.MessageText);
    }

    [Fact]
    public async Task A_role_without_a_password_cannot_log_in()
    {
        string role = await CreateRoleAsync("nopass", null);
        await using ProxyHarness proxy = StartWithAuthUser(AuthType.Md5);
        await AssertLoginFailsAsync(proxy, role, "anything", InvalidPassword);
    }

    [Fact]
    public async Task Without_auth_user_a_user_missing_from_auth_file_is_unknown()
    {
        string role = await CreateRoleAsync("noauthuser", "md5");
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o => o.AuthType = AuthType.Md5, [(PostgresServer.Superuser, "")]);
        await AssertLoginFailsAsync(proxy, role, Password, InvalidPassword);
    }

    [Fact]
    public async Task A_database_auth_user_looks_up_users_of_that_database_only()
    {
        string role = await CreateRoleAsync("perdb", "md5");
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o =>
        {
            o.AuthType = AuthType.Md5;
            o.Databases.Clear();
            o.Databases.Add(new DatabaseOptions { Name = PostgresServer.Database, Host = _pg.Host, Port = _pg.Port, AuthUser = PostgresServer.Superuser });
            o.Databases.Add(new DatabaseOptions { Name = "other", Host = _pg.Host, Port = _pg.Port, DatabaseName = PostgresServer.Database });
        }, [(PostgresServer.Superuser, "")]);

        await AssertLogsInAsync(proxy, role, Password);
        PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => proxy.OpenAsync(role, Password, "other"));
        Assert.Equal(InvalidPassword, e.SqlState);
    }

    [Fact]
    public async Task Auth_dbname_runs_the_lookup_in_another_database_entry()
    {
        string role = await CreateRoleAsync("authdb", "scram-sha-256");
        // The query finds the role only when it runs in database postgres; the client asks for fpp.
        await using ProxyHarness proxy = StartWithAuthUser(AuthType.ScramSha256, o =>
        {
            o.AuthDbname = "lookups";
            o.AuthQuery = "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1 AND current_database() = 'postgres'";
            o.Databases.Add(new DatabaseOptions { Name = "lookups", Host = _pg.Host, Port = _pg.Port, DatabaseName = "postgres" });
        });
        await AssertLogsInAsync(proxy, role, Password);
    }

    [Fact]
    public async Task An_auth_dbname_without_a_database_entry_refuses_the_login_with_a_clear_error()
    {
        string role = await CreateRoleAsync("noauthdb", "md5");
        await using ProxyHarness proxy = StartWithAuthUser(AuthType.Md5, o =>
        {
            o.Databases.Clear();
            o.Databases.Add(new DatabaseOptions { Name = PostgresServer.Database, Host = _pg.Host, Port = _pg.Port });
            o.AuthDbname = "nowhere";
        });
        PostgresException e = await AssertLoginFailsAsync(proxy, role, Password, InvalidAuthorization);
        Assert.Equal("authentication database \"nowhere\" is not configured", e.MessageText);
    }

    [Theory]
    [InlineData("SELECT rolpassword FROM pg_authid WHERE rolname = $1", "auth_query returned 1 columns")]
    [InlineData("SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1 OR rolname = 'postgres'", "auth_query returned 2 rows")]
    [InlineData("SELECT NULL::name, rolpassword FROM pg_authid WHERE rolname = $1", "NULL user name")]
    [InlineData("SELECT rolname, rolpassword FROM no_such_table WHERE rolname = $1", "ERROR 42P01")]
    public async Task A_bad_auth_query_fails_the_login_with_an_error_and_a_log_line(string query, string logged)
    {
        string role = await CreateRoleAsync("badquery", "md5");
        string log = await LoggedDuringAsync(async () =>
        {
            await using ProxyHarness proxy = StartWithAuthUser(AuthType.Md5, o => o.AuthQuery = query);
            PostgresException e = await AssertLoginFailsAsync(proxy, role, Password, InvalidAuthorization);
            Assert.Equal($"authentication failed for user \"{role}\": the user could not be looked up", e.MessageText);
        });
        Assert.Contains($"auth_query for user \"{role}\"", log, StringComparison.Ordinal);
        Assert.Contains(logged, log, StringComparison.Ordinal);
    }

    /// <summary>What the proxy logged while <paramref name="run"/> ran (the log also goes to a scratch logfile meanwhile).</summary>
    private static async Task<string> LoggedDuringAsync(Func<Task> run)
    {
        string logFile = Path.GetTempFileName();
        try
        {
            Log.SetFile(logFile);
            await run();
        }
        finally
        {
            Log.SetFile(null);
        }

        string log = await File.ReadAllTextAsync(logFile);
        File.Delete(logFile);
        return log;
    }

    [Fact]
    public async Task An_unreachable_auth_database_fails_the_login_with_an_error_and_a_log_line()
    {
        string role = await CreateRoleAsync("unreachable", "md5");
        string log = await LoggedDuringAsync(async () =>
        {
            await using ProxyHarness proxy = StartWithAuthUser(AuthType.Md5, o =>
            {
                o.AuthDbname = "down";
                o.Databases.Add(new DatabaseOptions { Name = "down", Host = "127.0.0.1", Port = NetUtil.GetFreeTcpPort() });
            });
            PostgresException e = await AssertLoginFailsAsync(proxy, role, Password, InvalidAuthorization);
            Assert.Equal($"authentication failed for user \"{role}\": the user could not be looked up", e.MessageText);
        });
        Assert.Contains($"auth_query for user \"{role}\" (as \"postgres\" in database \"down\") failed", log, StringComparison.Ordinal);
    }

    [Fact]
    public async Task With_trust_a_looked_up_user_needs_no_password_and_an_unknown_one_does_not_exist()
    {
        string role = await CreateRoleAsync("trusted", "md5");
        await using ProxyHarness proxy = StartWithAuthUser(AuthType.Trust);
        await AssertLogsInAsync(proxy, role, "ignored");

        string missing = NewRoleName("nobody");
        PostgresException e = await AssertLoginFailsAsync(proxy, missing, null, InvalidAuthorization);
        Assert.Equal($"role \"{missing}\" does not exist", e.MessageText);
    }

    [Fact]
    public async Task A_lookup_that_waits_does_not_hold_up_other_clients_of_its_loop()
    {
        string role = await CreateRoleAsync("slow", "md5");
        const long lockKey = 740_331;

        // The lookup waits for an advisory lock this test holds: it cannot finish before the test lets it.
        string query = $"SELECT rolname, rolpassword FROM pg_authid, (SELECT pg_advisory_lock({lockKey})) AS held WHERE rolname = $1";
        await using var holder = new NpgsqlConnection(_pg.ConnectionString());
        await holder.OpenAsync();
        await using (var take = new NpgsqlCommand($"SELECT pg_advisory_lock({lockKey})", holder))
        {
            await take.ExecuteNonQueryAsync();
        }

        await using ProxyHarness proxy = StartWithAuthUser(AuthType.Md5, o =>
        {
            o.LoopThreads = 1;
            o.AuthQuery = query;
        });
        Task<NpgsqlConnection> slow = proxy.OpenAsync(role, Password);
        await _pg.WaitUntilRunningAsync($"pg_advisory_lock({lockKey})) AS held", TimeSpan.FromSeconds(30));

        // Another client of the one loop logs in (from auth_file) and runs a query meanwhile.
        await using (NpgsqlConnection other = await proxy.OpenAsync(PostgresServer.TrustUser, FileUserPassword))
        await using (var cmd = new NpgsqlCommand("SELECT 42", other))
        {
            Assert.Equal(42, await cmd.ExecuteScalarAsync());
        }

        Assert.False(slow.IsCompleted);
        await using (var release = new NpgsqlCommand($"SELECT pg_advisory_unlock({lockKey})", holder))
        {
            await release.ExecuteNonQueryAsync();
        }

        await using NpgsqlConnection done = await slow.WaitAsync(TimeSpan.FromSeconds(60));
        await using var check = new NpgsqlCommand("SELECT current_user", done);
        Assert.Equal(role, await check.ExecuteScalarAsync());
    }

    /// <summary>
    /// CVE-2025-12819: a client's start-up <c>search_path</c> (or <c>options=-c search_path=...</c>) reached the
    /// connection that runs auth_query, so an operator in the attacker's schema ran as auth_user during
    /// authentication. Here an unprivileged role shadows the <c>&lt;</c> of the default auth_query; the control
    /// shows it would run under that search_path, and logins through the proxy with that search_path must not run it.
    /// </summary>
    [Fact]
    public async Task A_client_search_path_never_reaches_the_auth_query_connection()
    {
        string attacker = await CreateRoleAsync("evil", null);
        string victim = await CreateRoleAsync("victim", "md5");
        string schema = attacker; // one schema per run, named after its owner
        await _pg.ExecuteNonQueryAsync($"GRANT CREATE ON DATABASE {PostgresServer.Database} TO {attacker}");
        await using (var evil = new NpgsqlConnection(_pg.ConnectionString(attacker)))
        {
            await evil.OpenAsync();
            string setup = $"""
                CREATE SCHEMA {schema};
                CREATE TABLE {schema}.ran (as_role text);
                GRANT USAGE ON SCHEMA {schema} TO PUBLIC;
                GRANT INSERT ON {schema}.ran TO PUBLIC;
                CREATE FUNCTION {schema}.lt(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql AS $$
                BEGIN INSERT INTO {schema}.ran VALUES (current_user); RETURN false; END $$;
                CREATE OPERATOR {schema}.< (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = {schema}.lt);
                """;
            await using var cmd = new NpgsqlCommand(setup, evil);
            await cmd.ExecuteNonQueryAsync();
        }

        string searchPath = $"{schema},pg_catalog";

        // Control: under that search_path the default auth_query does run the attacker's operator.
        await using (var direct = new NpgsqlConnection(_pg.ConnectionString()))
        {
            await direct.OpenAsync();
            await using var cmd = new NpgsqlCommand($"SET search_path = {searchPath}; {ProxyOptions.DefaultAuthQuery.Replace("$1", $"'{victim}'", StringComparison.Ordinal)}", direct);
            await cmd.ExecuteNonQueryAsync();
        }

        Assert.Equal(1, await _pg.ScalarAsync<long>($"SELECT count(*) FROM {schema}.ran"));
        await _pg.ExecuteNonQueryAsync($"DELETE FROM {schema}.ran");

        await using ProxyHarness proxy = StartWithAuthUser(AuthType.Md5, o =>
        {
            o.IgnoreStartupParameters.Add("search_path");
            o.IgnoreStartupParameters.Add("options");
        });
        var withSearchPath = new NpgsqlConnectionStringBuilder(proxy.ConnectionString(victim, Password)) { SearchPath = searchPath };
        var withOptions = new NpgsqlConnectionStringBuilder(proxy.ConnectionString(victim, Password)) { Options = $"-c search_path={searchPath}" };
        foreach (NpgsqlConnectionStringBuilder attack in new[] { withSearchPath, withOptions })
        {
            await using var connection = new NpgsqlConnection(attack.ConnectionString);
            await connection.OpenAsync();
            await using var cmd = new NpgsqlCommand("SELECT current_user", connection);
            Assert.Equal(victim, await cmd.ExecuteScalarAsync());
        }

        Assert.Equal(0, await _pg.ScalarAsync<long>($"SELECT count(*) FROM {schema}.ran"));
    }
}
