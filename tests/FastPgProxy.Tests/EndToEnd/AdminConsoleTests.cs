using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using FastPgProxy.Config;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// The admin console (virtual database <c>fastpgproxy</c>, alias <c>pgbouncer</c>) through a real
/// PostgreSQL: psql speaks the simple protocol to it, Npgsql the extended one, and the commands act on
/// sessions and pools that PostgreSQL can confirm (pg_stat_activity).
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class AdminConsoleTests(PostgresFixture fixture)
{
    private const string AdminUser = "fpp_admin";
    private const string StatsUser = "fpp_stats";
    private const string Console = "fastpgproxy";

    private readonly PostgresServer _pg = fixture.Server;

    private ProxyHarness Start(Action<ProxyOptions>? configure = null, IReadOnlyList<(string User, string Secret)>? users = null) =>
        ProxyHarness.Start(
            _pg,
            o =>
            {
                o.AdminUsers.Add(AdminUser);
                o.StatsUsers.Add(StatsUser);
                configure?.Invoke(o);
            },
            users);

    private static async Task<NpgsqlConnection> OpenConsoleAsync(ProxyHarness proxy, string user = AdminUser, string? password = null, string database = Console)
    {
        // No catalog queries at open: the console has no pg_type.
        var connection = new NpgsqlConnection(proxy.ConnectionString(user, password, database) + ";Server Compatibility Mode=NoTypeLoading;Include Error Detail=true");
        await connection.OpenAsync();
        return connection;
    }

    /// <summary>Runs a console command with Npgsql and returns its rows by column name.</summary>
    private static async Task<List<Dictionary<string, object?>>> QueryAsync(NpgsqlConnection connection, string sql)
    {
        await using var cmd = new NpgsqlCommand(sql, connection);
        await using NpgsqlDataReader reader = await cmd.ExecuteReaderAsync();
        var rows = new List<Dictionary<string, object?>>();
        while (await reader.ReadAsync())
        {
            var row = new Dictionary<string, object?>(StringComparer.Ordinal);
            for (int i = 0; i < reader.FieldCount; i++)
            {
                row[reader.GetName(i)] = reader.IsDBNull(i) ? null : reader.GetValue(i);
            }

            rows.Add(row);
        }

        return rows;
    }

    private static async Task<PostgresException> AssertFailsAsync(NpgsqlConnection connection, string sql, string sqlState)
    {
        await using var cmd = new NpgsqlCommand(sql, connection);
        PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => cmd.ExecuteNonQueryAsync());
        Assert.Equal(sqlState, e.SqlState);
        return e;
    }

    private async Task<(int ExitCode, string StdOut, string StdErr)> PsqlAsync(ProxyHarness proxy, string user, string sql, string? password = null)
    {
        string psql = ProcessRunner.FindOnPath("psql") ?? _pg.ToolPath("psql");
        var env = new Dictionary<string, string>
        {
            ["PGCONNECT_TIMEOUT"] = "10",
            ["PGSSLMODE"] = "disable",
            ["PGPASSFILE"] = "/nonexistent",
        };
        if (password is not null)
        {
            env["PGPASSWORD"] = password;
        }

        return await ProcessRunner.RunAsync(
            psql,
            ["-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", proxy.Port.ToString(CultureInfo.InvariantCulture), "-U", user, "-d", Console, "-Atc", sql],
            TimeSpan.FromSeconds(30),
            env);
    }

    private static async Task WaitUntilAsync(Func<Task<bool>> condition, string what, int seconds = 20)
    {
        var deadline = Stopwatch.StartNew();
        while (!await condition())
        {
            Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(seconds), $"timed out waiting until {what}");
            await Task.Delay(20);
        }
    }

    private Task WaitRunningAsync(string marker) => WaitUntilAsync(
        async () => await _pg.ScalarAsync<long>($"SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()") > 0,
        $"'{marker}' runs on PostgreSQL");

    private static async Task<int> RealBackendPidAsync(NpgsqlConnection c)
    {
        // pg_backend_pid() alone is answered by the proxy with the session id; an expression reaches PostgreSQL.
        await using var cmd = new NpgsqlCommand("SELECT pg_backend_pid() + 0", c);
        return (int)(await cmd.ExecuteScalarAsync())!;
    }

    private static async Task<Dictionary<string, object?>> PoolRowAsync(NpgsqlConnection console, string database = PostgresServer.Database)
    {
        List<Dictionary<string, object?>> pools = await QueryAsync(console, "SHOW POOLS");
        return Assert.Single(pools, p => (string)p["database"]! == database);
    }

    [Fact]
    public async Task Admin_user_runs_every_SHOW_through_psql_and_Npgsql()
    {
        await using ProxyHarness proxy = Start();
        await using NpgsqlConnection client = await proxy.OpenAsync();
        await using (var warm = new NpgsqlCommand("SELECT 1", client))
        {
            await warm.ExecuteScalarAsync();
        }

        (int exit, string stdout, string stderr) = await PsqlAsync(proxy, AdminUser, "SHOW VERSION");
        Assert.True(exit == 0, $"psql exited with {exit}: {stderr}");
        Assert.StartsWith("FastPgProxy", stdout.Trim(), StringComparison.Ordinal);

        (exit, stdout, stderr) = await PsqlAsync(proxy, AdminUser, "show pools;");
        Assert.True(exit == 0, $"psql exited with {exit}: {stderr}");
        Assert.Contains($"{PostgresServer.Database}|{PostgresServer.Superuser}|", stdout, StringComparison.Ordinal);

        await using NpgsqlConnection console = await OpenConsoleAsync(proxy);
        foreach (string item in new[] { "CLIENTS", "SERVERS", "POOLS", "STATS", "CANCELS", "CONFIG", "DATABASES", "LISTS", "MEMORY", "VERSION" })
        {
            List<Dictionary<string, object?>> rows = await QueryAsync(console, "SHOW " + item);
            Assert.True(rows.Count > 0, $"SHOW {item} returned no rows");
        }

        List<Dictionary<string, object?>> clients = await QueryAsync(console, "SHOW CLIENTS");
        Dictionary<string, object?> me = Assert.Single(clients, c => (int)c["id"]! == console.ProcessID);
        Assert.Equal("admin", me["state"]);
        Assert.Equal(Console, me["database"]);
        Assert.Equal(false, me["tls"]);

        Dictionary<string, object?> cancels = (await QueryAsync(console, "SHOW CANCELS")).First(r => (string)r["name"]! == "received");
        Assert.IsType<long>(cancels["count"]);

        Dictionary<string, object?> poolSize = (await QueryAsync(console, "SHOW CONFIG")).Single(r => (string)r["key"]! == "default_pool_size");
        Assert.Equal("100", poolSize["value"]);
        Assert.Equal("20", poolSize["default"]);
        Assert.Equal(true, poolSize["changeable"]);

        List<Dictionary<string, object?>> memory = await QueryAsync(console, "SHOW MEMORY");
        Assert.True((long)memory.Single(r => (string)r["name"]! == "buffers_in_use")["value"]! >= 0);

        // The alias reaches the same console.
        await using NpgsqlConnection alias = await OpenConsoleAsync(proxy, database: "pgbouncer");
        Assert.StartsWith("FastPgProxy", (string)(await QueryAsync(alias, "SHOW VERSION"))[0]["version"]!, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Stats_user_may_run_SHOW_and_nothing_else()
    {
        await using ProxyHarness proxy = Start();
        await using NpgsqlConnection console = await OpenConsoleAsync(proxy, StatsUser);
        Assert.NotEmpty(await QueryAsync(console, "SHOW CONFIG"));
        PostgresException e = await AssertFailsAsync(console, "PAUSE", "42501");
        Assert.Contains("stats_users", e.Detail, StringComparison.Ordinal);
        await AssertFailsAsync(console, "KILL PGSQL CONNECTION 1", "42501");
        await AssertFailsAsync(console, "RELOAD", "42501");
        await AssertFailsAsync(console, "SHUTDOWN", "42501");

        (int exit, string stdout, string stderr) = await PsqlAsync(proxy, StatsUser, "SHOW LISTS");
        Assert.True(exit == 0, $"psql exited with {exit}: {stderr}");
        Assert.Contains("pools|", stdout, StringComparison.Ordinal);
        (exit, _, stderr) = await PsqlAsync(proxy, StatsUser, "RESUME");
        Assert.NotEqual(0, exit);
        Assert.Contains("permission denied for RESUME", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Ordinary_user_logs_in_and_gets_42501_for_every_command()
    {
        await using ProxyHarness proxy = Start();
        await using NpgsqlConnection console = await OpenConsoleAsync(proxy, PostgresServer.TrustUser);
        PostgresException e = await AssertFailsAsync(console, "SHOW VERSION", "42501");
        Assert.Contains("neither admin_users nor stats_users", e.Detail, StringComparison.Ordinal);
        await AssertFailsAsync(console, "SHOW CLIENTS", "42501");
        await AssertFailsAsync(console, "PAUSE", "42501");

        // The session survives its errors.
        await AssertFailsAsync(console, "RELOAD", "42501");

        (int exit, _, string stderr) = await PsqlAsync(proxy, PostgresServer.TrustUser, "SHOW POOLS");
        Assert.NotEqual(0, exit);
        Assert.Contains("ERROR:  permission denied for SHOW", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Console_login_checks_the_auth_file_password()
    {
        (string, string)[] users = [(AdminUser, "adminpass"), (PostgresServer.Superuser, "pw")];
        await using ProxyHarness proxy = Start(o => o.AuthType = AuthType.Md5, users);
        await using (NpgsqlConnection console = await OpenConsoleAsync(proxy, AdminUser, "adminpass"))
        {
            Assert.NotEmpty(await QueryAsync(console, "SHOW CONFIG;"));
        }

        PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => OpenConsoleAsync(proxy, AdminUser, "wrong"));
        Assert.Equal("28P01", e.SqlState);

        (int exit, string stdout, string stderr) = await PsqlAsync(proxy, AdminUser, "SHOW VERSION", "adminpass");
        Assert.True(exit == 0, $"psql exited with {exit}: {stderr}");
        Assert.StartsWith("FastPgProxy", stdout.Trim(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Mistyped_command_gets_42601_with_the_commands_as_hint()
    {
        await using ProxyHarness proxy = Start();
        await using NpgsqlConnection console = await OpenConsoleAsync(proxy);
        PostgresException e = await AssertFailsAsync(console, "SHOW POOOLS", "42601");
        Assert.Contains("SHOW CLIENTS", e.Hint, StringComparison.Ordinal);
        Assert.Contains("KILL PGSQL QUERY", e.Hint, StringComparison.Ordinal);
        await AssertFailsAsync(console, "FROBNICATE", "42601");
        await AssertFailsAsync(console, "KILL PGSQL CONNECTION twelve", "42601");

        (int exit, _, string stderr) = await PsqlAsync(proxy, AdminUser, "SHOW POOLS; SHOW CLIENTS");
        Assert.NotEqual(0, exit);
        Assert.Contains("only one command per query", stderr, StringComparison.Ordinal);
        (exit, _, stderr) = await PsqlAsync(proxy, AdminUser, "SHOW CLIENT");
        Assert.NotEqual(0, exit);
        Assert.Contains("unrecognized SHOW item \"CLIENT\"", stderr, StringComparison.Ordinal);
        Assert.Contains("HINT:  Commands: SHOW CLIENTS", stderr, StringComparison.Ordinal);

        // Keywords in any case, with a trailing semicolon.
        Assert.NotEmpty(await QueryAsync(console, "sHoW vErSiOn ;"));
    }

    [Fact]
    public async Task Npgsql_reads_SHOW_POOLS_typed_and_prepared()
    {
        await using ProxyHarness proxy = Start(o => o.PoolMode = PoolMode.Transaction);
        await using NpgsqlConnection client = await proxy.OpenAsync();
        await using (var begin = new NpgsqlCommand("BEGIN; SELECT 1", client))
        {
            await begin.ExecuteNonQueryAsync();
        }

        await using NpgsqlConnection console = await OpenConsoleAsync(proxy);
        await using var cmd = new NpgsqlCommand("SHOW POOLS", console);
        for (int round = 0; round < 2; round++)
        {
            await using (NpgsqlDataReader reader = await cmd.ExecuteReaderAsync())
            {
                Assert.True(await reader.ReadAsync());
                Assert.Equal(PostgresServer.Database, reader.GetString(reader.GetOrdinal("database")));
                Assert.Equal(PostgresServer.Superuser, reader.GetString(reader.GetOrdinal("user")));
                Assert.Equal(1L, reader.GetInt64(reader.GetOrdinal("cl_active")));
                Assert.Equal(0L, reader.GetInt64(reader.GetOrdinal("cl_waiting")));
                Assert.Equal(1L, reader.GetInt64(reader.GetOrdinal("sv_active")));
                Assert.Equal(0L, reader.GetInt64(reader.GetOrdinal("maxwait_us")));
                Assert.Equal("transaction", reader.GetString(reader.GetOrdinal("pool_mode")));
                Assert.Equal(typeof(long), reader.GetFieldType(reader.GetOrdinal("sv_being_canceled")));
                Assert.False(await reader.ReadAsync());
            }

            // The second round runs as a named prepared statement (Parse, Describe statement, Bind, Execute).
            await cmd.PrepareAsync();
        }

        List<Dictionary<string, object?>> servers = await QueryAsync(console, "SHOW SERVERS");
        Dictionary<string, object?> server = Assert.Single(servers);
        Assert.Equal("active", server["state"]);
        Assert.Equal(client.ProcessID, server["client_id"]);
        Assert.Equal(false, server["being_canceled"]);
        Assert.Equal(await _pg.ScalarAsync<int>($"SELECT pid FROM pg_stat_activity WHERE state = 'idle in transaction' AND datname = '{PostgresServer.Database}'"), server["backend_pid"]);
    }

    [Fact]
    public async Task Show_clients_reports_the_real_backend_pid()
    {
        await using ProxyHarness proxy = Start();
        var b = new NpgsqlConnectionStringBuilder(proxy.ConnectionString()) { ApplicationName = "victim-app" };
        await using var victim = new NpgsqlConnection(b.ConnectionString);
        await victim.OpenAsync();
        int realPid = await RealBackendPidAsync(victim);
        Assert.NotEqual(victim.ProcessID, realPid);
        Assert.Equal("victim-app", await _pg.ScalarAsync<string>($"SELECT application_name FROM pg_stat_activity WHERE pid = {realPid}"));

        await using NpgsqlConnection console = await OpenConsoleAsync(proxy);
        Dictionary<string, object?> row = Assert.Single(await QueryAsync(console, "SHOW CLIENTS"), c => (int)c["id"]! == victim.ProcessID);
        Assert.Equal(realPid, row["backend_pid"]);
        Assert.Equal("active", row["state"]);
        Assert.Equal(PostgresServer.Superuser, row["user"]);
        Assert.Equal(PostgresServer.Database, row["database"]);
        Assert.Equal("victim-app", row["application_name"]);
        Assert.Equal("127.0.0.1", row["addr"]);
        Assert.Null(row["query_ms"]);
        Assert.Equal(0L, row["wait_us"]);
        var connectTime = (DateTime)row["connect_time"]!;
        Assert.InRange(connectTime, DateTime.UtcNow.AddMinutes(-1), DateTime.UtcNow.AddSeconds(5));
        var requestTime = (DateTime)row["request_time"]!;
        Assert.InRange(requestTime, connectTime, DateTime.UtcNow.AddSeconds(5));

        // psql prints the same in text format.
        (int exit, string stdout, string stderr) = await PsqlAsync(proxy, AdminUser, "SHOW CLIENTS");
        Assert.True(exit == 0, $"psql exited with {exit}: {stderr}");
        string line = Assert.Single(stdout.Split('\n'), l => l.StartsWith(victim.ProcessID.ToString(CultureInfo.InvariantCulture) + "|", StringComparison.Ordinal));
        // tls false, tls_version and tls_cipher empty on a plain connection.
        Assert.Contains($"|{realPid}|f|||victim-app|", line, StringComparison.Ordinal);
        Assert.Matches(@"\|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00\|", line);
    }

    [Fact]
    public async Task Kill_connection_ends_a_session_inside_a_transaction()
    {
        await using ProxyHarness proxy = Start();
        await using NpgsqlConnection victim = await proxy.OpenAsync();
        await using (var begin = new NpgsqlCommand("BEGIN", victim))
        {
            await begin.ExecuteNonQueryAsync();
        }

        int realPid = await RealBackendPidAsync(victim);
        Assert.Equal("idle in transaction", await _pg.ScalarAsync<string>($"SELECT state FROM pg_stat_activity WHERE pid = {realPid}"));

        await using NpgsqlConnection console = await OpenConsoleAsync(proxy);
        await using (var kill = new NpgsqlCommand($"KILL PGSQL CONNECTION {victim.ProcessID}", console))
        {
            await kill.ExecuteNonQueryAsync();
        }

        int victimId = victim.ProcessID;
        await AssertTerminatedAsync(victim);

        // The backend was rolled back and kept idle, or closed; never left inside the transaction.
        await WaitUntilAsync(
            async () => await _pg.ScalarAsync<long>($"SELECT count(*) FROM pg_stat_activity WHERE pid = {realPid} AND state <> 'idle'") == 0,
            "the victim's backend is gone or idle");
        await WaitUntilAsync(async () => !(await QueryAsync(console, "SHOW CLIENTS")).Any(c => (int)c["id"]! == victimId), "the victim leaves SHOW CLIENTS");
    }

    [Fact]
    public async Task Kill_client_ends_an_idle_session_and_unknown_ids_are_an_error()
    {
        await using ProxyHarness proxy = Start();
        await using NpgsqlConnection victim = await proxy.OpenAsync();
        int realPid = await RealBackendPidAsync(victim);

        await using NpgsqlConnection console = await OpenConsoleAsync(proxy);
        await using (var kill = new NpgsqlCommand($"kill_client {victim.ProcessID};", console))
        {
            await kill.ExecuteNonQueryAsync();
        }

        await AssertTerminatedAsync(victim);
        await WaitUntilAsync(
            async () => await _pg.ScalarAsync<long>($"SELECT count(*) FROM pg_stat_activity WHERE pid = {realPid} AND state <> 'idle'") == 0,
            "the victim's backend is gone or idle");

        PostgresException e = await AssertFailsAsync(console, "KILL PGSQL CONNECTION 2000000000", "42704");
        Assert.Equal("unknown session id: 2000000000", e.MessageText);
        await AssertFailsAsync(console, "KILL PGSQL QUERY 2000000000", "42704");
    }

    /// <summary>The victim's next command fails with 57P01, or with a broken connection if the close came first.</summary>
    private static async Task AssertTerminatedAsync(NpgsqlConnection victim)
    {
        await using var next = new NpgsqlCommand("SELECT 1", victim);
        NpgsqlException e = await Assert.ThrowsAnyAsync<NpgsqlException>(() => next.ExecuteScalarAsync());
        if (e is PostgresException pg)
        {
            Assert.Equal("57P01", pg.SqlState);
        }
    }

    [Fact]
    public async Task Kill_query_cancels_pg_sleep_and_the_session_stays_usable()
    {
        await using ProxyHarness proxy = Start();
        await using NpgsqlConnection victim = await proxy.OpenAsync();
        await using NpgsqlConnection console = await OpenConsoleAsync(proxy);
        var notices = new List<string>();
        console.Notice += (_, args) =>
        {
            lock (notices)
            {
                notices.Add(args.Notice.MessageText);
            }
        };

        await using var sleep = new NpgsqlCommand("SELECT pg_sleep(30) /* admin-kill-query */", victim);
        Task<object?> running = sleep.ExecuteScalarAsync();
        await WaitRunningAsync("admin-kill-query");
        var sw = Stopwatch.StartNew();
        await using (var kill = new NpgsqlCommand($"KILL PGSQL QUERY {victim.ProcessID}", console))
        {
            await kill.ExecuteNonQueryAsync();
        }

        PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => running.WaitAsync(TimeSpan.FromSeconds(20)));
        Assert.Equal("57014", e.SqlState);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"cancel took {sw.Elapsed}");
        Assert.Empty(notices);

        await using (var next = new NpgsqlCommand("SELECT 7", victim))
        {
            Assert.Equal(7, await next.ExecuteScalarAsync());
        }

        // Nothing runs now: the console says so and nothing is cancelled. The first cancel is counted as
        // forwarded when PostgreSQL closes its cancel connection, which may come after the 57014 itself.
        var counted = Stopwatch.StartNew();
        while (proxy.Server.CancelStats.Forwarded < 1)
        {
            Assert.True(counted.Elapsed < TimeSpan.FromSeconds(20), "the first cancel was never counted as forwarded");
            await Task.Delay(10);
        }

        long forwarded = proxy.Server.CancelStats.Forwarded;
        await using (var kill = new NpgsqlCommand($"KILL PGSQL QUERY {victim.ProcessID}", console))
        {
            await kill.ExecuteNonQueryAsync();
        }

        lock (notices)
        {
            Assert.Equal($"no query running on session {victim.ProcessID}", Assert.Single(notices));
        }

        await using (var next = new NpgsqlCommand("SELECT 8", victim))
        {
            Assert.Equal(8, await next.ExecuteScalarAsync());
        }

        Assert.Equal(forwarded, proxy.Server.CancelStats.Forwarded);
    }

    [Fact]
    public async Task Pause_holds_new_transactions_until_resume()
    {
        await using ProxyHarness proxy = Start(o =>
        {
            o.PoolMode = PoolMode.Transaction;
            o.DefaultPoolSize = 2;
        });
        await using NpgsqlConnection idle = await proxy.OpenAsync();
        await using NpgsqlConnection inTransaction = await proxy.OpenAsync();
        await using (var warm = new NpgsqlCommand("SELECT 1", idle))
        {
            await warm.ExecuteScalarAsync();
        }

        await using (var begin = new NpgsqlCommand("BEGIN; SELECT 1", inTransaction))
        {
            await begin.ExecuteNonQueryAsync();
        }

        await using NpgsqlConnection console = await OpenConsoleAsync(proxy);
        await using (var pause = new NpgsqlCommand("PAUSE", console))
        {
            await pause.ExecuteNonQueryAsync();
        }

        // A transaction already running goes on to its end.
        await using (var finish = new NpgsqlCommand("SELECT 2; COMMIT", inTransaction))
        {
            await finish.ExecuteNonQueryAsync().WaitAsync(TimeSpan.FromSeconds(10));
        }

        // A new one waits for RESUME.
        await using var held = new NpgsqlCommand("SELECT 42", idle);
        Task<object?> waiting = held.ExecuteScalarAsync();
        await WaitUntilAsync(async () => (long)(await PoolRowAsync(console))["cl_waiting"]! == 1, "the client waits in SHOW POOLS");
        Assert.False(waiting.IsCompleted);
        Assert.True((await QueryAsync(console, "SHOW DATABASES")).All(d => (bool)d["paused"]!));
        await Task.Delay(300);
        Assert.False(waiting.IsCompleted, "a query completed during PAUSE");

        await using (var resume = new NpgsqlCommand("RESUME", console))
        {
            await resume.ExecuteNonQueryAsync();
        }

        Assert.Equal(42, await waiting.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(0L, (await PoolRowAsync(console))["cl_waiting"]);

        // PAUSE of one database leaves the others alone; an unknown database is an error only without a '*' entry.
        await using (var pauseOne = new NpgsqlCommand($"PAUSE \"{PostgresServer.Database}\"", console))
        {
            await pauseOne.ExecuteNonQueryAsync();
        }

        Task<object?> heldAgain = new NpgsqlCommand("SELECT 43", idle).ExecuteScalarAsync();
        await WaitUntilAsync(async () => (long)(await PoolRowAsync(console))["cl_waiting"]! == 1, "the client waits again");
        await using (var resumeOne = new NpgsqlCommand($"RESUME {PostgresServer.Database}", console))
        {
            await resumeOne.ExecuteNonQueryAsync();
        }

        Assert.Equal(43, await heldAgain.WaitAsync(TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public async Task Reload_applies_a_new_pool_size()
    {
        string dir = Directory.CreateTempSubdirectory("fpp-reload-").FullName;
        try
        {
            string path = Path.Combine(dir, "fastpgproxy.ini");
            string Config(int poolSize, int listenPort) => $"""
                [databases]
                * = host={_pg.Host} port={_pg.Port}

                [fastpgproxy]
                listen_addr = 127.0.0.1
                listen_port = {listenPort}
                auth_type = trust
                loop_threads = 2
                default_pool_size = {poolSize}
                admin_users = {AdminUser}
                """;
            await File.WriteAllTextAsync(path, Config(1, 0));
            ProxyOptions loaded = ConfigLoader.Load(path);
            await using ProxyHarness proxy = Start(o =>
            {
                o.SourcePath = loaded.SourcePath;
                o.DefaultPoolSize = loaded.DefaultPoolSize;
            });

            await using NpgsqlConnection first = await proxy.OpenAsync();
            await using NpgsqlConnection console = await OpenConsoleAsync(proxy);
            Task<NpgsqlConnection> second = proxy.OpenAsync();
            await WaitUntilAsync(async () => (long)(await PoolRowAsync(console))["cl_waiting"]! == 1, "the second client waits for a backend");
            Assert.False(second.IsCompleted);

            await File.WriteAllTextAsync(path, Config(2, 0));
            await using (var reload = new NpgsqlCommand("RELOAD", console))
            {
                await reload.ExecuteNonQueryAsync();
            }

            await using NpgsqlConnection secondConnection = await second.WaitAsync(TimeSpan.FromSeconds(10));
            Dictionary<string, object?> pool = await PoolRowAsync(console);
            Assert.Equal(2L, pool["sv_active"]);
            Assert.Equal(0L, pool["cl_waiting"]);
            Assert.Equal("2", (await QueryAsync(console, "SHOW CONFIG")).Single(r => (string)r["key"]! == "default_pool_size")["value"]);

            // A setting that needs a restart is named, and applied only by a restart.
            var notices = new List<string>();
            console.Notice += (_, args) => notices.Add(args.Notice.MessageText);
            await File.WriteAllTextAsync(path, Config(2, 7777));
            await using (var reload = new NpgsqlCommand("RELOAD", console))
            {
                await reload.ExecuteNonQueryAsync();
            }

            Assert.Contains(notices, n => n.Contains("need a restart", StringComparison.Ordinal) && n.Contains("listen_port", StringComparison.Ordinal));

            // A broken file changes nothing.
            await File.WriteAllTextAsync(path, "[fastpgproxy]\nno_such_key = 1\n");
            PostgresException e = await AssertFailsAsync(console, "RELOAD", "22023");
            Assert.Contains("no_such_key", e.MessageText, StringComparison.Ordinal);
            Assert.Equal("2", (await QueryAsync(console, "SHOW CONFIG")).Single(r => (string)r["key"]! == "default_pool_size")["value"]);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task Show_stats_counts_the_relayed_traffic()
    {
        await using ProxyHarness proxy = Start(o => o.PoolMode = PoolMode.Transaction);
        await using NpgsqlConnection client = await proxy.OpenAsync();
        for (int i = 0; i < 5; i++)
        {
            await using var cmd = new NpgsqlCommand("SELECT pg_sleep(0.01)", client);
            await cmd.ExecuteScalarAsync();
        }

        await using NpgsqlConnection console = await OpenConsoleAsync(proxy);
        Dictionary<string, object?> stats = Assert.Single(await QueryAsync(console, "SHOW STATS"), r => (string)r["database"]! == PostgresServer.Database);
        Assert.True((long)stats["total_query_count"]! >= 5, $"total_query_count {stats["total_query_count"]}");
        Assert.True((long)stats["total_xact_count"]! >= 5, $"total_xact_count {stats["total_xact_count"]}");
        Assert.True((long)stats["total_received"]! > 0);
        Assert.True((long)stats["total_sent"]! > 0);
        Assert.True((long)stats["total_query_time"]! >= 50_000, $"total_query_time {stats["total_query_time"]} µs");
        Assert.True((long)stats["avg_query_time"]! >= 5_000, $"avg_query_time {stats["avg_query_time"]} µs");
    }

    [Fact]
    public async Task Shutdown_stops_the_proxy_after_replying()
    {
        ProxyHarness proxy = Start();
        try
        {
            await using NpgsqlConnection client = await proxy.OpenAsync();
            (int exit, _, string stderr) = await PsqlAsync(proxy, AdminUser, "SHUTDOWN");
            Assert.True(exit == 0, $"psql exited with {exit}: {stderr}");
            await proxy.Server.Stopped.WaitAsync(TimeSpan.FromSeconds(20));
            await using var next = new NpgsqlCommand("SELECT 1", client);
            await Assert.ThrowsAnyAsync<NpgsqlException>(() => next.ExecuteScalarAsync());
            await Assert.ThrowsAnyAsync<Exception>(() => proxy.OpenAsync());
        }
        finally
        {
            await proxy.DisposeAsync();
        }
    }

    [Fact]
    public async Task Shutdown_ends_the_executable_with_exit_code_0()
    {
        string dir = Directory.CreateTempSubdirectory("fpp-shutdown-").FullName;
        int port = NetUtil.GetFreeTcpPort();
        string path = Path.Combine(dir, "fastpgproxy.ini");
        await File.WriteAllTextAsync(path, $"[databases]\n* = host={_pg.Host} port={_pg.Port}\n[fastpgproxy]\nlisten_port = {port}\nauth_type = trust\nadmin_users = {AdminUser}\n");
        try
        {
            using ProxyProcess proxy = ProxyProcess.Start(path);
            await proxy.WaitListeningAsync(port, TimeSpan.FromSeconds(30));
            string psql = ProcessRunner.FindOnPath("psql") ?? _pg.ToolPath("psql");
            string[] args = ["-X", "-h", "127.0.0.1", "-p", port.ToString(CultureInfo.InvariantCulture), "-U", AdminUser, "-d", Console, "-Atc", "SHUTDOWN"];
            (int exit, _, string err) = await ProcessRunner.RunAsync(psql, args, TimeSpan.FromSeconds(30), new Dictionary<string, string> { ["PGCONNECT_TIMEOUT"] = "5" });
            Assert.True(exit == 0, $"psql SHUTDOWN failed: {err}");

            int exitCode = await proxy.WaitForExitAsync(TimeSpan.FromSeconds(20));
            Assert.True(exitCode == 0, $"exit code {exitCode}; stderr:\n{proxy.StdErr}");
            Assert.Contains("shutdown requested by admin console session", proxy.StdErr, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task Extended_protocol_row_limits_describe_and_error_recovery()
    {
        await using ProxyHarness proxy = Start();
        using Socket raw = await proxy.ConnectRawAsync();
        await raw.SendAsync(RawProtocol.Startup(("user", AdminUser), ("database", Console)));
        await ReadUntilAsync(raw, (byte)'Z');

        // Describe of a statement: no parameters, then the columns in text; nothing runs yet.
        await raw.SendAsync(Concat(
            Message('P', CString("s1"), CString("SHOW CONFIG"), Int16(0)),
            Message('D', [(byte)'S'], CString("s1")),
            Message('B', CString("p1"), CString("s1"), Int16(0), Int16(0), Int16(1), Int16(1)),
            Message('D', [(byte)'P'], CString("p1")),
            Message('E', CString("p1"), Int32(2)),
            Message('E', CString("p1"), Int32(0)),
            Message('S')));
        List<(byte Type, byte[] Body)> replies = await ReadUntilAsync(raw, (byte)'Z');
        Assert.Equal("1tT2T", Types(replies.Take(5)));
        Assert.Equal(0, BinaryPrimitives.ReadInt16BigEndian(replies[1].Body));                 // ParameterDescription: no parameters
        Assert.Equal(0, BinaryPrimitives.ReadInt16BigEndian(replies[2].Body.AsSpan(replies[2].Body.Length - 2)));  // statement: text
        Assert.Equal(1, BinaryPrimitives.ReadInt16BigEndian(replies[4].Body.AsSpan(replies[4].Body.Length - 2)));  // portal: binary
        Assert.Equal("DDs", Types(replies.Skip(5).Take(3)));                                    // two rows, suspended
        Assert.Equal('C', (char)replies[^2].Type);                                               // the rest, then CommandComplete
        Assert.Equal("SHOW", Encoding.ASCII.GetString(replies[^2].Body).TrimEnd('\0'));
        Assert.Equal('Z', (char)replies[^1].Type);

        // An error skips the rest of the batch up to Sync; the next batch works.
        await raw.SendAsync(Concat(
            Message('P', CString(""), CString("SHOW NOTHING"), Int16(0)),
            Message('B', CString(""), CString(""), Int16(0), Int16(0), Int16(0)),
            Message('E', CString(""), Int32(0)),
            Message('S'),
            Message('P', CString(""), CString("SHOW VERSION"), Int16(0)),
            Message('B', CString(""), CString(""), Int16(0), Int16(0), Int16(0)),
            Message('E', CString(""), Int32(0)),
            Message('S')));
        replies = await ReadUntilAsync(raw, (byte)'Z');
        Assert.Equal("EZ", Types(replies));
        Assert.Equal("42601", ErrorCode(replies[0].Body));
        replies = await ReadUntilAsync(raw, (byte)'Z');
        Assert.Equal("12DCZ", Types(replies));

        // Simple Query: an empty one, then a command; Terminate closes.
        await raw.SendAsync(Message('Q', CString(" ; ")));
        Assert.Equal("IZ", Types(await ReadUntilAsync(raw, (byte)'Z')));
        await raw.SendAsync(Message('Q', CString("SHOW LISTS")));
        replies = await ReadUntilAsync(raw, (byte)'Z');
        Assert.Equal('T', (char)replies[0].Type);
        Assert.Equal("CZ", Types(replies.TakeLast(2)));
        await raw.SendAsync(Message('X'));
        (byte[] rest, bool closed) = await RawProtocol.ReadUntilCloseAsync(raw, TimeSpan.FromSeconds(10));
        Assert.True(closed);
        Assert.Empty(rest);
    }

    private static string Types(IEnumerable<(byte Type, byte[] Body)> messages) => new(messages.Select(m => (char)m.Type).ToArray());

    private static string? ErrorCode(byte[] body)
    {
        int pos = 0;
        while (pos < body.Length && body[pos] != 0)
        {
            int end = Array.IndexOf(body, (byte)0, pos + 1);
            if (body[pos] == (byte)'C')
            {
                return Encoding.UTF8.GetString(body, pos + 1, end - pos - 1);
            }

            pos = end + 1;
        }

        return null;
    }

    private static async Task<List<(byte Type, byte[] Body)>> ReadUntilAsync(Socket socket, byte type)
    {
        var messages = new List<(byte Type, byte[] Body)>();
        while (true)
        {
            (byte Type, byte[] Body)? message = await RawProtocol.ReadMessageAsync(socket, TimeSpan.FromSeconds(15));
            Assert.NotNull(message);
            messages.Add(message.Value);
            if (message.Value.Type == type)
            {
                return messages;
            }
        }
    }

    private static byte[] Message(char type, params byte[][] parts)
    {
        int length = sizeof(int) + parts.Sum(p => p.Length);
        byte[] message = new byte[1 + length];
        message[0] = (byte)type;
        BinaryPrimitives.WriteInt32BigEndian(message.AsSpan(1), length);
        int pos = 1 + sizeof(int);
        foreach (byte[] part in parts)
        {
            part.CopyTo(message, pos);
            pos += part.Length;
        }

        return message;
    }

    private static byte[] Concat(params byte[][] messages) => messages.SelectMany(m => m).ToArray();

    private static byte[] CString(string value) => [.. Encoding.UTF8.GetBytes(value), 0];

    private static byte[] Int16(short value)
    {
        byte[] bytes = new byte[sizeof(short)];
        BinaryPrimitives.WriteInt16BigEndian(bytes, value);
        return bytes;
    }

    private static byte[] Int32(int value)
    {
        byte[] bytes = new byte[sizeof(int)];
        BinaryPrimitives.WriteInt32BigEndian(bytes, value);
        return bytes;
    }
}

/// <summary>The console's parser, value encodings and settings table, without sockets.</summary>
public sealed class AdminConsoleUnitTests
{
    [Theory]
    [InlineData("SHOW CLIENTS", "Show", "Clients", 0, null)]
    [InlineData("  show   pools ; ", "Show", "Pools", 0, null)]
    [InlineData("Show Stats;;", "Show", "Stats", 0, null)]
    [InlineData("KILL PGSQL CONNECTION 12", "KillConnection", "None", 12, null)]
    [InlineData("kill pgsql query 7;", "KillQuery", "None", 7, null)]
    [InlineData("KILL_CLIENT 5", "KillConnection", "None", 5, null)]
    [InlineData("PAUSE", "Pause", "None", 0, null)]
    [InlineData("pause \"my \"\"db\"\"\"", "Pause", "None", 0, "my \"db\"")]
    [InlineData("RESUME app", "Resume", "None", 0, "app")]
    [InlineData("reload", "Reload", "None", 0, null)]
    [InlineData("SHUTDOWN", "Shutdown", "None", 0, null)]
    [InlineData(" ; ", "Empty", "None", 0, null)]
    public void Parses_commands(string text, string kind, string item, int id, string? database)
    {
        Admin.AdminCommand? command = Admin.AdminCommand.TryParse(text, out Admin.AdminMessage? error);
        Assert.Null(error);
        Assert.NotNull(command);
        Assert.Equal(kind, command.Kind.ToString());
        Assert.Equal(item, command.Item.ToString());
        Assert.Equal(id, command.SessionId);
        Assert.Equal(database, command.Database);
    }

    [Theory]
    [InlineData("CANCEL", 7, "alice", false, 0)]
    [InlineData("TERMINATE", 131077, "o\"brien", true, 2500)]
    [InlineData("KILL_QUERY", 9, "admin", true, 0)]
    [InlineData("KILL_CONNECTION", 9, "admin user", true, 0)]
    public void A_peer_signal_reads_back_what_the_calling_instance_wrote(string kind, int id, string user, bool admin, int timeout)
    {
        var sent = new Cancellation.PeerSignal(Enum.Parse<Cancellation.PeerSignalKind>(kind.Replace("_", "", StringComparison.Ordinal), ignoreCase: true), id, user, admin, timeout);
        Admin.AdminCommand? command = Admin.AdminCommand.TryParse(sent.ToCommand(), out Admin.AdminMessage? error);

        Assert.Null(error);
        Assert.Equal(Admin.AdminCommandKind.Peer, command!.Kind);
        Assert.Equal(sent, command.Signal);
        Assert.Equal(id, command.SessionId);
    }

    [Theory]
    [InlineData("SHOW")]
    [InlineData("SHOW CLIENTS EXTRA")]
    [InlineData("SHOW NOTHING")]
    [InlineData("KILL PGSQL CONNECTION")]
    [InlineData("KILL PGSQL CONNECTION 0")]
    [InlineData("KILL PGSQL CONNECTION -3")]
    [InlineData("KILL PGSQL CONNECTION 99999999999")]
    [InlineData("KILL PGSQL SESSION 3")]
    [InlineData("PAUSE a b")]
    [InlineData("RELOAD now")]
    [InlineData("SHOW POOLS; SHOW CLIENTS")]
    [InlineData("PAUSE \"unterminated")]
    [InlineData("SELECT 1")]
    [InlineData("PEER CANCEL 5 \"u\" ADMIN")]
    [InlineData("PEER STOP 5 \"u\" ADMIN 0")]
    [InlineData("PEER CANCEL 0 \"u\" USER 0")]
    [InlineData("PEER CANCEL 5 \"u\" ROOT 0")]
    [InlineData("PEER TERMINATE 5 \"\" USER 0")]
    [InlineData("PEER TERMINATE 5 \"u\" USER -1")]
    public void Refuses_anything_else_with_42601_and_the_command_list(string text)
    {
        Assert.Null(Admin.AdminCommand.TryParse(text, out Admin.AdminMessage? error));
        Assert.NotNull(error);
        Assert.Equal("42601", error.SqlState);
        Assert.Contains("SHOW CLIENTS|SERVERS|POOLS", error.Hint, StringComparison.Ordinal);
    }

    [Fact]
    public void Encodes_values_as_PostgreSQL_does()
    {
        var time = new DateTime(2024, 5, 1, 12, 34, 56, 789, DateTimeKind.Utc);
        Assert.Equal("2024-05-01 12:34:56.789+00", Admin.AdminOutput.FormatTimestamp(time));
        Assert.Equal("2024-05-01 12:34:56+00", Admin.AdminOutput.FormatTimestamp(new DateTime(2024, 5, 1, 12, 34, 56, DateTimeKind.Utc)));
        Assert.Equal("2024-05-01 12:34:56.000001+00", Admin.AdminOutput.FormatTimestamp(new DateTime(2024, 5, 1, 12, 34, 56, DateTimeKind.Utc).AddTicks(10)));

        byte[] epoch = Admin.AdminOutput.Encode(Admin.AdminType.TimestampTz, new DateTime(2000, 1, 1, 0, 0, 1, DateTimeKind.Utc), 1)!;
        Assert.Equal(1_000_000L, BinaryPrimitives.ReadInt64BigEndian(epoch));
        Assert.Equal(-5L, BinaryPrimitives.ReadInt64BigEndian(Admin.AdminOutput.Encode(Admin.AdminType.Int8, -5L, 1)));
        Assert.Equal(7, BinaryPrimitives.ReadInt32BigEndian(Admin.AdminOutput.Encode(Admin.AdminType.Int4, 7, 1)));
        Assert.Equal("123", Encoding.ASCII.GetString(Admin.AdminOutput.Encode(Admin.AdminType.Int8, 123L, 0)!));
        Assert.Equal([1], Admin.AdminOutput.Encode(Admin.AdminType.Bool, true, 1));
        Assert.Equal("f"u8.ToArray(), Admin.AdminOutput.Encode(Admin.AdminType.Bool, false, 0));
        Assert.Equal("é"u8.ToArray(), Admin.AdminOutput.Encode(Admin.AdminType.Text, "é", 1));
        Assert.Null(Admin.AdminOutput.Encode(Admin.AdminType.Int4, null, 0));
    }

    [Fact]
    public void Show_config_lists_every_key_of_the_README_table()
    {
        string? dir = AppContext.BaseDirectory;
        while (dir is not null && !File.Exists(Path.Combine(dir, "README.md")))
        {
            dir = Path.GetDirectoryName(dir);
        }

        Assert.NotNull(dir);
        string readme = File.ReadAllText(Path.Combine(dir, "README.md"));
        string table = readme[readme.IndexOf("### `[fastpgproxy]` keys", StringComparison.Ordinal)..readme.IndexOf("### `[databases]` keys", StringComparison.Ordinal)];
        string[] documented = System.Text.RegularExpressions.Regex.Matches(table, @"^\| `([a-z_]+)` \|", System.Text.RegularExpressions.RegexOptions.Multiline)
            .Select(m => m.Groups[1].Value).ToArray();
        Assert.NotEmpty(documented);
        Assert.Equal(documented.Order(StringComparer.Ordinal), Admin.ConfigSetting.All.Select(s => s.Key).Order(StringComparer.Ordinal));

        // Every key shown is one the loader accepts, with the value it shows.
        var options = ConfigLoader.Parse("[databases]\n* = host=127.0.0.1\n[fastpgproxy]\nauth_type = trust\n" + string.Concat(Admin.ConfigSetting.All.Select(s => $"{s.Key} = {s.Get(new ProxyOptions())}\n")).Replace("auth_type = md5\n", "", StringComparison.Ordinal), "test");
        foreach (Admin.ConfigSetting setting in Admin.ConfigSetting.All.Where(s => s.Key is not ("auth_type" or "auth_file")))
        {
            Assert.Equal(setting.Get(new ProxyOptions()), setting.Get(options));
        }
    }
}
