using System.Diagnostics;
using System.Net.Sockets;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// The real <c>fastpgproxy</c> executable: config errors name file, line and key and fail the start; a good
/// config serves clients until SIGTERM or SIGINT, which end it cleanly with exit code 0.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class ExecutableTests(PostgresFixture fixture) : IDisposable
{
    private static readonly TimeSpan ConfigErrorTimeout = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan ReadyTimeout = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan ExitTimeout = TimeSpan.FromSeconds(20);

    private readonly PostgresServer _pg = fixture.Server;
    private readonly string _dir = Directory.CreateTempSubdirectory("fpp-exe-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string WriteConfig(params string[] lines)
    {
        string path = Path.Combine(_dir, "fastpgproxy.ini");
        File.WriteAllText(path, string.Join('\n', lines) + "\n");
        return path;
    }

    /// <summary>
    /// Starts the executable on 127.0.0.1 at a free port, without a Unix socket, with auth_type trust, the
    /// given extra settings and every database on the test server; returns once it listens.
    /// </summary>
    private async Task<(ProxyProcess Proxy, int Port)> StartTrustAsync(params string[] settings)
    {
        int port = NetUtil.GetFreeTcpPort();
        string path = WriteConfig(
            ["[fastpgproxy]", "listen_addr = 127.0.0.1", $"listen_port = {port}", "unix_socket_dir =", "auth_type = trust", .. settings,
             "[databases]", $"* = host=127.0.0.1 port={_pg.Port}"]);
        ProxyProcess proxy = ProxyProcess.Start(path);
        try
        {
            await proxy.WaitListeningAsync(port, ReadyTimeout);
        }
        catch
        {
            proxy.Dispose();
            throw;
        }

        return (proxy, port);
    }

    private static Task<(int ExitCode, string StdOut, string StdErr)> RunToExitAsync(string configPath) =>
        ProxyProcess.RunToExitAsync(configPath, ConfigErrorTimeout);

    [Fact]
    public async Task Unknown_key_fails_the_start_naming_file_line_and_key()
    {
        string path = WriteConfig(
            "[fastpgproxy]",
            "listen_port = 0",
            "bogus_key = 1",
            "[databases]",
            $"* = host=127.0.0.1 port={_pg.Port}");
        var (exitCode, _, stderr) = await RunToExitAsync(path);
        Assert.NotEqual(0, exitCode);
        Assert.Contains($"{path}:3: bogus_key: unknown setting", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Bad_value_fails_the_start_naming_file_line_and_key()
    {
        string path = WriteConfig(
            "[fastpgproxy]",
            "listen_addr = 127.0.0.1",
            "listen_port = not-a-port",
            "[databases]",
            $"* = host=127.0.0.1 port={_pg.Port}");
        var (exitCode, _, stderr) = await RunToExitAsync(path);
        Assert.NotEqual(0, exitCode);
        Assert.Contains($"{path}:3: listen_port:", stderr, StringComparison.Ordinal);
        Assert.Contains("not-a-port", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Missing_config_file_fails_the_start_naming_the_file()
    {
        string path = Path.Combine(_dir, "no-such.ini");
        var (exitCode, _, stderr) = await RunToExitAsync(path);
        Assert.NotEqual(0, exitCode);
        Assert.Contains(path, stderr, StringComparison.Ordinal);
    }

    /// <summary>
    /// A second proxy on a port another one listens on does not start: exit code 1 and a message naming the
    /// address (without so_reuseport the kernel would otherwise split new connections between the two).
    /// </summary>
    [Fact]
    public async Task A_port_already_in_use_fails_the_start_naming_the_address()
    {
        await using ProxyHarness first = ProxyHarness.Start(_pg);
        string path = WriteConfig(
            "[fastpgproxy]",
            "listen_addr = 127.0.0.1",
            $"listen_port = {first.Port}",
            "auth_type = trust",
            "[databases]",
            $"* = host=127.0.0.1 port={_pg.Port}");
        var (exitCode, _, stderr) = await RunToExitAsync(path);
        Assert.True(exitCode == 1, $"exit code {exitCode}; stderr:\n{stderr}");
        Assert.Contains($"cannot listen on 127.0.0.1:{first.Port}", stderr, StringComparison.Ordinal);
    }

    /// <summary>
    /// SIGTERM, or SIGINT twice (the first starts a safe shutdown, the second makes it immediate, as in
    /// PgBouncer), stops the proxy cleanly with a query in flight. With <paramref name="startedIgnoringInterrupt"/>,
    /// the proxy is started with SIGINT ignored, as a shell without job control starts background commands:
    /// SIGINT must still reach it.
    /// </summary>
    [Theory]
    [InlineData("TERM", false)]
    [InlineData("INT", false)]
    [InlineData("INT", true)]
    public async Task Signal_tells_clients_57P01_and_exits_with_code_0(string signal, bool startedIgnoringInterrupt)
    {
        int port = NetUtil.GetFreeTcpPort();
        string path = WriteConfig(
            "[fastpgproxy]",
            "listen_addr = 127.0.0.1",
            $"listen_port = {port}",
            "auth_type = trust",
            "loop_threads = 2",
            "[databases]",
            $"* = host=127.0.0.1 port={_pg.Port}");

        using ProxyProcess proxy = ProxyProcess.Start(path, ignoreInterrupt: startedIgnoringInterrupt);
        await proxy.WaitListeningAsync(port, ReadyTimeout);

        var builder = new NpgsqlConnectionStringBuilder(_pg.ConnectionString(port: port)) { CommandTimeout = 60 };
        await using var client = new NpgsqlConnection(builder.ConnectionString);
        await client.OpenAsync();
        await using (var query = new NpgsqlCommand("SELECT 6 * 7", client))
        {
            Assert.Equal(42, await query.ExecuteScalarAsync());
        }

        // A query is in flight when the signal arrives: the proxy must tell the client, not leave it hanging.
        string marker = $"exe-{signal}-{Guid.NewGuid():N}";
        await using var sleeping = new NpgsqlCommand($"SELECT pg_sleep(5) /* {marker} */", client);
        Task<object?> running = sleeping.ExecuteScalarAsync();
        await WaitRunningAsync(marker);

        await proxy.SignalAsync(signal);
        if (signal == "INT")
        {
            await proxy.WaitForLogAsync("safe shutdown", ExitTimeout);
            await proxy.SignalAsync(signal);
        }

        Exception e = await Assert.ThrowsAnyAsync<Exception>(() => running.WaitAsync(ExitTimeout));
        Exception cause = e is OperationCanceledException && e.InnerException is not null ? e.InnerException : e;
        if (cause is PostgresException pg)
        {
            Assert.Equal("57P01", pg.SqlState);
        }
        else
        {
            // The proxy may close before the error reaches the client; a broken connection is acceptable.
            Assert.IsAssignableFrom<NpgsqlException>(cause);
        }

        int exitCode = await proxy.WaitForExitAsync(ExitTimeout);
        Assert.True(exitCode == 0, $"exit code {exitCode}; stderr:\n{proxy.StdErr}");
    }

    /// <summary>
    /// SIGINT is PgBouncer's safe shutdown: new clients are refused at once, an idle client is let go at
    /// once, a query in flight runs to its end and its result reaches the client, and the client is let go
    /// after it; then the proxy exits 0.
    /// </summary>
    [Fact]
    public async Task SIGINT_lets_running_transactions_finish_and_closes_each_client_after_its_own()
    {
        (ProxyProcess started, int port) = await StartTrustAsync("pool_mode = transaction");
        using ProxyProcess proxy = started;
        string connectionString = new NpgsqlConnectionStringBuilder(_pg.ConnectionString(port: port)) { CommandTimeout = 60 }.ConnectionString;
        await using var busy = new NpgsqlConnection(connectionString);
        await using var idle = new NpgsqlConnection(connectionString);
        await busy.OpenAsync();
        await idle.OpenAsync();

        string marker = $"safe-{Guid.NewGuid():N}";
        await using var sleeping = new NpgsqlCommand($"SELECT 'finished' FROM pg_sleep(3) /* {marker} */", busy);
        Task<object?> running = sleeping.ExecuteScalarAsync();
        await WaitRunningAsync(marker);
        await proxy.SignalAsync("INT");
        await proxy.WaitForLogAsync("safe shutdown", ExitTimeout);

        Assert.Equal("finished", await running.WaitAsync(ExitTimeout));
        await using (var after = new NpgsqlCommand("SELECT 1", busy))
        {
            await Assert.ThrowsAnyAsync<NpgsqlException>(() => after.ExecuteScalarAsync());
        }

        await using (var fromIdle = new NpgsqlCommand("SELECT 1", idle))
        {
            await Assert.ThrowsAnyAsync<NpgsqlException>(() => fromIdle.ExecuteScalarAsync());
        }

        int exitCode = await proxy.WaitForExitAsync(ExitTimeout);
        Assert.True(exitCode == 0, $"exit code {exitCode}; stderr:\n{proxy.StdErr}");
        Assert.DoesNotContain("passed with", proxy.StdErr, StringComparison.Ordinal);
    }

    /// <summary>A client that keeps a transaction open past shutdown_wait_timeout is terminated (57P01), and the proxy exits 0.</summary>
    [Fact]
    public async Task SIGINT_terminates_a_transaction_still_open_after_shutdown_wait_timeout()
    {
        (ProxyProcess started, int port) = await StartTrustAsync("shutdown_wait_timeout = 1");
        using ProxyProcess proxy = started;
        await using var client = new NpgsqlConnection(_pg.ConnectionString(port: port));
        await client.OpenAsync();
        await using NpgsqlTransaction transaction = await client.BeginTransactionAsync();
        await using (var inside = new NpgsqlCommand("SELECT 1", client, transaction))
        {
            Assert.Equal(1, await inside.ExecuteScalarAsync());
        }

        await proxy.SignalAsync("INT");
        await proxy.WaitForLogAsync("shutdown_wait_timeout (1 s) passed with 1 sessions still in a transaction", ExitTimeout);
        int exitCode = await proxy.WaitForExitAsync(ExitTimeout);
        Assert.True(exitCode == 0, $"exit code {exitCode}; stderr:\n{proxy.StdErr}");
        await using var after = new NpgsqlCommand("SELECT 2", client, transaction);
        await Assert.ThrowsAnyAsync<NpgsqlException>(() => after.ExecuteScalarAsync());
    }

    /// <summary>
    /// systemd's Type=notify: with NOTIFY_SOCKET set, READY=1 (and the listen addresses as STATUS) reaches the
    /// socket once the proxy listens, and STOPPING=1 when it stops.
    /// </summary>
    [Fact]
    public async Task With_NOTIFY_SOCKET_the_proxy_tells_systemd_it_is_ready_and_stopping()
    {
        int port = NetUtil.GetFreeTcpPort();
        string notifyPath = Path.Combine(_dir, "notify.sock");
        using var notify = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        notify.Bind(new UnixDomainSocketEndPoint(notifyPath));
        string path = WriteConfig(
            "[fastpgproxy]", "listen_addr = 127.0.0.1", $"listen_port = {port}", $"unix_socket_dir = {_dir}", "auth_type = trust",
            "[databases]", $"* = host=127.0.0.1 port={_pg.Port}");
        using ProxyProcess proxy = ProxyProcess.Start(path, environment: new Dictionary<string, string> { ["NOTIFY_SOCKET"] = notifyPath });

        byte[] buffer = new byte[4096];
        int length = await notify.ReceiveAsync(buffer).WaitAsync(ReadyTimeout);
        string ready = System.Text.Encoding.UTF8.GetString(buffer, 0, length);
        Assert.StartsWith("READY=1\n", ready, StringComparison.Ordinal);
        Assert.Contains($"STATUS=listening on 127.0.0.1:{port}, {_dir}/.s.PGSQL.{port}", ready, StringComparison.Ordinal);
        Assert.Contains($"MAINPID={proxy.Id}", ready, StringComparison.Ordinal);

        // Ready means ready: a client gets in at once.
        await using (var client = new NpgsqlConnection(_pg.ConnectionString(port: port)))
        {
            await client.OpenAsync();
        }

        await proxy.SignalAsync("TERM");
        length = await notify.ReceiveAsync(buffer).WaitAsync(ExitTimeout);
        Assert.Equal("STOPPING=1", System.Text.Encoding.UTF8.GetString(buffer, 0, length));
        Assert.Equal(0, await proxy.WaitForExitAsync(ExitTimeout));
    }

    /// <summary>
    /// PgBouncer's log_connections, log_disconnections and log_pooler_errors, on by default: a login, a
    /// disconnection with its reason, and an error the proxy sends are each one line at verbose 0; set to
    /// 0 they are gone.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Logins_disconnections_and_pooler_errors_are_logged_unless_turned_off(bool on)
    {
        int port = NetUtil.GetFreeTcpPort();
        string flag = on ? "1" : "0";
        string path = WriteConfig(
            "[fastpgproxy]", "listen_addr = 127.0.0.1", $"listen_port = {port}", "unix_socket_dir =", "auth_type = trust",
            $"log_connections = {flag}", $"log_disconnections = {flag}", $"log_pooler_errors = {flag}",
            "[databases]", $"fpp = host=127.0.0.1 port={_pg.Port}");
        using ProxyProcess proxy = ProxyProcess.Start(path);
        await proxy.WaitListeningAsync(port, ReadyTimeout);
        await using (var client = new NpgsqlConnection(_pg.ConnectionString(port: port)))
        {
            await client.OpenAsync();
            await using var query = new NpgsqlCommand("SELECT 1", client);
            Assert.Equal(1, await query.ExecuteScalarAsync());
        }

        var missing = new NpgsqlConnectionStringBuilder(_pg.ConnectionString(port: port)) { Database = "no_such_db" };
        await using (var refused = new NpgsqlConnection(missing.ConnectionString))
        {
            PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => refused.OpenAsync());
            Assert.Equal("3D000", e.SqlState);
        }

        // A marker line after the events: once it is in, every line before it is too.
        await proxy.SignalAsync("USR2");
        await proxy.WaitForLogAsync("SIGUSR2: RESUME done", ExitTimeout);
        string log = proxy.StdErr;
        string login = $"login: db={PostgresServer.Database} user={PostgresServer.Superuser} tls=no";
        string disconnect = $"db={PostgresServer.Database} user={PostgresServer.Superuser}: closing because: client close request (age=";
        string poolerError = "pooler error: 3D000 database \"no_such_db\" does not exist";
        Assert.Equal(on, log.Contains(login, StringComparison.Ordinal));
        Assert.Equal(on, log.Contains(disconnect, StringComparison.Ordinal));
        Assert.Equal(on, log.Contains("WARNING client 127.0.0.1:", StringComparison.Ordinal) && log.Contains(poolerError, StringComparison.Ordinal));
        await proxy.SignalAsync("TERM");
        Assert.Equal(0, await proxy.WaitForExitAsync(ExitTimeout));
    }

    /// <summary>
    /// Debian's stock pgbouncer.ini with its [databases] filled in starts the proxy, with no error, and it
    /// answers on the Unix socket in /var/run/postgresql (psql's default there). The test moves only what
    /// would collide with other servers on this machine: the port, and the log and pid files to a scratch
    /// folder; every other line is the stock file's.
    /// </summary>
    [Fact]
    public async Task Debians_stock_pgbouncer_ini_with_its_databases_filled_in_starts_and_serves_the_unix_socket()
    {
        int port = NetUtil.GetFreeTcpPort();
        string[] stock = File.ReadAllLines(Config.MigrationPageTests.DebianStockFile);
        var lines = new List<string>();
        foreach (string line in stock)
        {
            lines.Add(line.StartsWith("listen_port", StringComparison.Ordinal) ? $"listen_port = {port}"
                : line.StartsWith("logfile", StringComparison.Ordinal) ? $"logfile = {_dir}/pgbouncer.log"
                : line.StartsWith("pidfile", StringComparison.Ordinal) ? $"pidfile = {_dir}/pgbouncer.pid"
                : line);
            if (line.Trim() == "[databases]")
            {
                lines.Add($"{PostgresServer.Database} = host=127.0.0.1 port={_pg.Port}");
            }
        }

        Assert.Equal(stock.Length + 1, lines.Count);
        string path = WriteConfig([.. lines]);
        using ProxyProcess proxy = ProxyProcess.Start(path);
        await proxy.WaitListeningAsync(port, ReadyTimeout);

        // The port accepts from the listen on; the pidfile is written just before "started" is logged.
        await proxy.WaitForLogAsync("fastpgproxy started", ReadyTimeout);
        Assert.DoesNotContain("ERROR", proxy.StdErr, StringComparison.Ordinal);
        Assert.True(File.Exists($"/var/run/postgresql/.s.PGSQL.{port}"));
        Assert.Equal(proxy.Id.ToString(System.Globalization.CultureInfo.InvariantCulture), File.ReadAllText(Path.Combine(_dir, "pgbouncer.pid")).Trim());

        // The stock userlist is empty, so md5 refuses every user: the refusal comes from the proxy, over its socket.
        (int code, _, string error) = await ProcessRunner.RunAsync(
            ProcessRunner.FindOnPath("psql") ?? _pg.ToolPath("psql"),
            ["-X", "-h", "/var/run/postgresql", "-p", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "-U", "someone", "-d", PostgresServer.Database, "-c", "SELECT 1"],
            ReadyTimeout,
            new Dictionary<string, string> { ["PGPASSWORD"] = "guess", ["PGCONNECT_TIMEOUT"] = "10" });
        Assert.NotEqual(0, code);
        Assert.Contains("password authentication failed for user \"someone\"", error, StringComparison.Ordinal);

        await proxy.SignalAsync("TERM");
        Assert.Equal(0, await proxy.WaitForExitAsync(ExitTimeout));
        Assert.False(File.Exists($"/var/run/postgresql/.s.PGSQL.{port}"));
    }

    /// <summary>
    /// examples/fastpgproxy.ini and its userlist run as written against a local PostgreSQL. The test only
    /// points the copy at the test server's port and its own ports and socket folder.
    /// </summary>
    [Fact]
    public async Task The_example_config_runs_as_written_and_is_the_one_in_the_README()
    {
        string example = File.ReadAllText(RepositoryPaths.Get("examples", "fastpgproxy.ini"));
        string readme = File.ReadAllText(RepositoryPaths.Get("README.md"));
        Assert.Contains("```ini\n" + example + "```", readme, StringComparison.Ordinal);

        await _pg.ExecuteNonQueryAsync("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') THEN CREATE ROLE app LOGIN PASSWORD 'app-secret'; END IF; END $$");
        int port = NetUtil.GetFreeTcpPort();
        string text = example.Replace("port=5432", $"port={_pg.Port}", StringComparison.Ordinal)
            .Replace("listen_port = 6432", $"listen_port = {port}", StringComparison.Ordinal)
            .Replace("unix_socket_dir = /tmp", $"unix_socket_dir = {_dir}", StringComparison.Ordinal);
        string path = WriteConfig(text);
        File.Copy(RepositoryPaths.Get("examples", "userlist.txt"), Path.Combine(_dir, "userlist.txt"));
        using ProxyProcess proxy = ProxyProcess.Start(path);
        await proxy.WaitListeningAsync(port, ReadyTimeout);

        foreach (string host in new[] { "127.0.0.1", _dir })
        {
            (int code, string output, string error) = await ProcessRunner.RunAsync(
                ProcessRunner.FindOnPath("psql") ?? _pg.ToolPath("psql"),
                ["-X", "-A", "-t", "-h", host, "-p", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "-U", "app", "-d", PostgresServer.Database, "-c", "SELECT current_user"],
                ReadyTimeout,
                new Dictionary<string, string> { ["PGPASSWORD"] = "app-secret", ["PGCONNECT_TIMEOUT"] = "10" });
            Assert.True(code == 0, error);
            Assert.Equal("app", output.Trim());
        }

        await proxy.SignalAsync("TERM");
        Assert.Equal(0, await proxy.WaitForExitAsync(ExitTimeout));
    }

    /// <summary>
    /// In transaction mode a transaction that takes a backend from the pool and gives it back allocates
    /// nothing in the proxy: the executable's managed allocations (SHOW MEMORY allocated_bytes, which the
    /// runtime counts in steps of its per-thread allocation blocks) stay put over thousands of transactions.
    /// Two clients take turns on one backend, so every transaction goes through the pool. The quietest of
    /// five batches counts: what every transaction allocates shows in all of them.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_pooled_transaction_allocates_nothing_in_the_proxy(bool prepared)
    {
        const int transactions = 4000, batches = 5;
        (ProxyProcess started, int port) = await StartTrustAsync(
            "pool_mode = transaction", "default_pool_size = 1", $"admin_users = {PostgresServer.Superuser}", "log_connections = 0", "log_disconnections = 0");
        using ProxyProcess proxy = started;
        var consoleBuilder = new NpgsqlConnectionStringBuilder(_pg.ConnectionString(port: port)) { Database = "fastpgproxy" };
        await using var console = new NpgsqlConnection(consoleBuilder.ConnectionString + ";Server Compatibility Mode=NoTypeLoading");
        await console.OpenAsync();
        await using var first = new NpgsqlConnection(_pg.ConnectionString(port: port));
        await using var second = new NpgsqlConnection(_pg.ConnectionString(port: port));
        await first.OpenAsync();
        await second.OpenAsync();
        await using var firstQuery = new NpgsqlCommand("SELECT 1", first);
        await using var secondQuery = new NpgsqlCommand("SELECT 2", second);
        if (prepared)
        {
            // Named prepared statements in transaction mode: every Bind is looked up in the client's statements.
            await firstQuery.PrepareAsync();
            await secondQuery.PrepareAsync();
        }

        async Task RunAsync(int count)
        {
            for (int i = 0; i < count; i++)
            {
                await (i % 2 == 0 ? firstQuery : secondQuery).ExecuteScalarAsync();
            }
        }

        async Task<long> AllocatedAsync() => long.Parse((await ConsoleValueAsync(console, "SHOW MEMORY", "name", "allocated_bytes", "value"))!, System.Globalization.CultureInfo.InvariantCulture);

        // Warm: tiered compilation, the pool's backend, every buffer.
        await RunAsync(2000);
        long quietest = long.MaxValue;
        for (int batch = 0; batch < batches; batch++)
        {
            long before = await AllocatedAsync();
            await RunAsync(transactions);
            quietest = Math.Min(quietest, await AllocatedAsync() - before);
        }

        // Room for the console's own SHOW MEMORY and the runtime's block-sized counting; a transaction that
        // allocated even one small object would show as tens of kilobytes over a batch.
        Assert.True(quietest < 32 * 1024, $"{quietest} bytes allocated over {transactions} transactions in the quietest of {batches} batches");
        await proxy.SignalAsync("TERM");
        Assert.Equal(0, await proxy.WaitForExitAsync(ExitTimeout));
    }

    /// <summary>
    /// The systemd unit in contrib/ relies on what the tests above show: Type=notify (READY=1), SIGHUP for
    /// reload, SIGINT for the safe shutdown with a stop timeout longer than shutdown_wait_timeout's default.
    /// </summary>
    [Fact]
    public void The_systemd_unit_uses_notify_SIGHUP_reload_and_the_SIGINT_safe_shutdown()
    {
        Dictionary<string, string> unit = File.ReadAllLines(RepositoryPaths.Get("contrib", "fastpgproxy.service"))
            .Select(line => line.Trim())
            .Where(line => line.Length > 0 && line[0] is not ('#' or '['))
            .Select(line => line.Split('=', 2))
            .ToDictionary(pair => pair[0], pair => pair[1]);
        Assert.Equal("notify", unit["Type"]);
        Assert.Equal("/bin/kill -HUP $MAINPID", unit["ExecReload"]);
        Assert.Equal("SIGINT", unit["KillSignal"]);
        Assert.True(int.Parse(unit["TimeoutStopSec"], System.Globalization.CultureInfo.InvariantCulture) > new FastPgProxy.Config.ProxyOptions().ShutdownWaitTimeout.TotalSeconds);
        Assert.EndsWith("/fastpgproxy /etc/fastpgproxy/fastpgproxy.ini", unit["ExecStart"], StringComparison.Ordinal);
    }

    /// <summary>
    /// PgBouncer's signals, as `systemctl reload` and operators send them: SIGHUP reloads the file (a
    /// broken file is logged and changes nothing), SIGUSR1 pauses every database and SIGUSR2 resumes them.
    /// None of them stops the proxy; SIGTERM then exits 0.
    /// </summary>
    [Fact]
    public async Task SIGHUP_reloads_SIGUSR1_pauses_SIGUSR2_resumes_and_none_stops_the_proxy()
    {
        int port = NetUtil.GetFreeTcpPort();
        string[] Config(int poolSize, string extra = "") =>
        [
            "[fastpgproxy]", "listen_addr = 127.0.0.1", $"listen_port = {port}", "auth_type = trust",
            $"admin_users = {PostgresServer.Superuser}", $"default_pool_size = {poolSize}", extra,
            "[databases]", $"* = host=127.0.0.1 port={_pg.Port}",
        ];
        string path = WriteConfig(Config(7));
        using ProxyProcess proxy = ProxyProcess.Start(path);
        await proxy.WaitListeningAsync(port, ReadyTimeout);
        var builder = new NpgsqlConnectionStringBuilder(_pg.ConnectionString(port: port)) { Database = "fastpgproxy" };
        await using var console = new NpgsqlConnection(builder.ConnectionString + ";Server Compatibility Mode=NoTypeLoading");
        await console.OpenAsync();

        await File.WriteAllLinesAsync(path, Config(9));
        await proxy.SignalAsync("HUP");
        await proxy.WaitForLogAsync("SIGHUP: RELOAD done", ExitTimeout);
        Assert.Equal("9", await ConsoleValueAsync(console, "SHOW CONFIG", "key", "default_pool_size", "value"));

        await File.WriteAllLinesAsync(path, Config(11, "no_such_key = 1"));
        await proxy.SignalAsync("HUP");
        await proxy.WaitForLogAsync("SIGHUP: RELOAD failed", ExitTimeout);
        Assert.Contains("no_such_key", proxy.StdErr, StringComparison.Ordinal);
        Assert.Equal("9", await ConsoleValueAsync(console, "SHOW CONFIG", "key", "default_pool_size", "value"));

        await proxy.SignalAsync("USR1");
        await proxy.WaitForLogAsync("SIGUSR1: PAUSE done", ExitTimeout);
        Assert.Equal("True", await ConsoleValueAsync(console, "SHOW DATABASES", "name", "*", "paused"));
        await proxy.SignalAsync("USR2");
        await proxy.WaitForLogAsync("SIGUSR2: RESUME done", ExitTimeout);
        Assert.Equal("False", await ConsoleValueAsync(console, "SHOW DATABASES", "name", "*", "paused"));

        await proxy.SignalAsync("TERM");
        int exitCode = await proxy.WaitForExitAsync(ExitTimeout);
        Assert.True(exitCode == 0, $"exit code {exitCode}; stderr:\n{proxy.StdErr}");
    }

    /// <summary>
    /// PgBouncer's logfile and pidfile: the log goes to the file as well as standard error, the pid file
    /// holds the process id while it runs and is removed at a clean exit, and a PgBouncer setting that is
    /// not implemented is named in one warning at start.
    /// </summary>
    [Fact]
    public async Task Logfile_and_pidfile_work_as_PgBouncers_and_unimplemented_settings_are_warned_about()
    {
        int port = NetUtil.GetFreeTcpPort();
        string dir = Directory.CreateTempSubdirectory("fpp-files-").FullName;
        try
        {
            string logFile = Path.Combine(dir, "fastpgproxy.log");
            string pidFile = Path.Combine(dir, "fastpgproxy.pid");
            string path = WriteConfig(
                "[pgbouncer]", "listen_addr = 127.0.0.1", $"listen_port = {port}", "auth_type = trust",
                $"logfile = {logFile}", $"pidfile = {pidFile}", "sbuf_loopcnt = 5",
                "[databases]", $"* = host=127.0.0.1 port={_pg.Port}");
            using ProxyProcess proxy = ProxyProcess.Start(path);
            await proxy.WaitListeningAsync(port, ReadyTimeout);
            await proxy.WaitForLogAsync("fastpgproxy started", ReadyTimeout);

            Assert.Equal(proxy.Id.ToString(System.Globalization.CultureInfo.InvariantCulture), (await File.ReadAllTextAsync(pidFile)).Trim());
            Assert.Contains("sbuf_loopcnt: PgBouncer's setting is not implemented by FastPgProxy; ignored", proxy.StdErr, StringComparison.Ordinal);
            // A line goes to stderr first and then to the logfile.
            string logged = await WaitForFileContainingAsync(logFile, "fastpgproxy started", ReadyTimeout);
            Assert.Contains("fastpgproxy started", logged, StringComparison.Ordinal);
            Assert.Contains("sbuf_loopcnt", logged, StringComparison.Ordinal);

            await proxy.SignalAsync("TERM");
            Assert.Equal(0, await proxy.WaitForExitAsync(ExitTimeout));
            Assert.False(File.Exists(pidFile), "the pid file outlived a clean exit");
            Assert.Contains("stopped:", await File.ReadAllTextAsync(logFile), StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>The <paramref name="column"/> of the console row whose <paramref name="keyColumn"/> is <paramref name="key"/>, as text.</summary>
    private static async Task<string?> ConsoleValueAsync(NpgsqlConnection console, string command, string keyColumn, string key, string column)
    {
        await using var cmd = new NpgsqlCommand(command, console);
        await using NpgsqlDataReader reader = await cmd.ExecuteReaderAsync();
        while (await reader.ReadAsync())
        {
            if (Convert.ToString(reader[keyColumn], System.Globalization.CultureInfo.InvariantCulture) == key)
            {
                return Convert.ToString(reader[column], System.Globalization.CultureInfo.InvariantCulture);
            }
        }

        return null;
    }

    /// <summary>
    /// Under a low open-file limit, 300 connections that each send one byte use up every descriptor and
    /// accept fails with EMFILE. Once they close, the proxy accepts again: a new client logs in and runs a
    /// query, and SIGTERM then stops the proxy with exit code 0.
    /// </summary>
    [Fact]
    public async Task After_descriptors_ran_out_a_new_client_logs_in_and_SIGTERM_exits_0()
    {
        (ProxyProcess flooded, List<Socket> flood, int port) = await StartFloodedAsync();
        using ProxyProcess proxy = flooded;
        CloseAll(flood);

        var builder = new NpgsqlConnectionStringBuilder(_pg.ConnectionString(port: port)) { Timeout = 60, CommandTimeout = 60, Pooling = false };
        await using (var client = new NpgsqlConnection(builder.ConnectionString))
        {
            await client.OpenAsync();
            await using var query = new NpgsqlCommand("SELECT 6 * 7", client);
            Assert.Equal(42, await query.ExecuteScalarAsync());
        }

        await proxy.SignalAsync("TERM");
        int exitCode = await proxy.WaitForExitAsync(ExitTimeout);
        Assert.True(exitCode == 0, $"exit code {exitCode}; stderr:\n{proxy.StdErr}");
    }

    /// <summary>SIGTERM while every descriptor is in use (the flood still open) stops the proxy with exit code 0.</summary>
    [Fact]
    public async Task SIGTERM_while_descriptors_are_exhausted_exits_0()
    {
        (ProxyProcess flooded, List<Socket> flood, _) = await StartFloodedAsync();
        using ProxyProcess proxy = flooded;
        try
        {
            await proxy.SignalAsync("TERM");
            int exitCode = await proxy.WaitForExitAsync(ExitTimeout);
            Assert.True(exitCode == 0, $"exit code {exitCode}; stderr:\n{proxy.StdErr}");
        }
        finally
        {
            CloseAll(flood);
        }
    }

    /// <summary>
    /// Starts the executable under the low open-file limit and opens connections until accept fails with
    /// EMFILE. The caller closes the flood and disposes the process; on failure both are done here.
    /// </summary>
    private async Task<(ProxyProcess Proxy, List<Socket> Flood, int Port)> StartFloodedAsync()
    {
        int port = NetUtil.GetFreeTcpPort();
        ProxyProcess proxy = ProxyProcess.Start(WriteFloodConfig(port), FloodFileLimit);
        List<Socket> flood = [];
        try
        {
            await proxy.WaitListeningAsync(port, ReadyTimeout);
            flood = await FloodAsync(port, FloodConnections);
            await proxy.WaitForLogAsync("accept failed", ReadyTimeout);
            return (proxy, flood, port);
        }
        catch
        {
            CloseAll(flood);
            proxy.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The start-up log names the open-file limit, and warns when max_client_conn, max_login_clients and the
    /// pools may need more descriptors than it allows.
    /// </summary>
    [Fact]
    public async Task Start_up_logs_the_descriptor_limit_and_warns_when_the_configuration_may_exceed_it()
    {
        int port = NetUtil.GetFreeTcpPort();
        using ProxyProcess proxy = ProxyProcess.Start(WriteFloodConfig(port), FloodFileLimit);
        await proxy.WaitListeningAsync(port, ReadyTimeout);
        await proxy.WaitForLogAsync("file descriptor limit 256 (hard 256)", ReadyTimeout);
        await proxy.WaitForLogAsync("WARNING file descriptor limit 256 is below the", ReadyTimeout);
        await proxy.SignalAsync("TERM");
        int exitCode = await proxy.WaitForExitAsync(ExitTimeout);
        Assert.True(exitCode == 0, $"exit code {exitCode}; stderr:\n{proxy.StdErr}");
    }

    private const int FloodFileLimit = 256;
    private const int FloodConnections = 300;

    private string WriteFloodConfig(int port) => WriteConfig(
        "[fastpgproxy]",
        "listen_addr = 127.0.0.1",
        $"listen_port = {port}",
        "auth_type = trust",
        "loop_threads = 2",
        "max_client_conn = 1000",
        "max_login_clients = 1000",
        "[databases]",
        $"* = host=127.0.0.1 port={_pg.Port}");

    /// <summary>Opens <paramref name="count"/> connections that each send one byte of a start-up packet and then wait.</summary>
    private static async Task<List<Socket>> FloodAsync(int port, int count)
    {
        var sockets = new List<Socket>(count);
        try
        {
            for (int i = 0; i < count; i++)
            {
                var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
                sockets.Add(socket);
                using var cts = new CancellationTokenSource(ReadyTimeout);
                await socket.ConnectAsync("127.0.0.1", port, cts.Token);
                await socket.SendAsync(new byte[] { 0 }, SocketFlags.None, cts.Token);
            }
        }
        catch
        {
            CloseAll(sockets);
            throw;
        }

        return sockets;
    }

    private static void CloseAll(List<Socket> sockets)
    {
        foreach (Socket socket in sockets)
        {
            socket.Dispose();
        }
    }

    private async Task WaitRunningAsync(string marker)
    {
        var deadline = Stopwatch.StartNew();
        while (await _pg.ScalarAsync<long>(
            $"SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()") == 0)
        {
            Assert.True(deadline.Elapsed < ReadyTimeout, $"query {marker} did not start");
            await Task.Delay(20);
        }
    }

    /// <summary>The text of <paramref name="path"/> once it contains <paramref name="text"/>, or as it is when <paramref name="timeout"/> has passed.</summary>
    private static async Task<string> WaitForFileContainingAsync(string path, string text, TimeSpan timeout)
    {
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            string content = File.Exists(path) ? await File.ReadAllTextAsync(path) : "";
            if (content.Contains(text, StringComparison.Ordinal) || waited.Elapsed > timeout)
            {
                return content;
            }

            await Task.Delay(20);
        }
    }
}
