using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// The listeners PgBouncer operators configure: the Unix socket <c>.s.PGSQL.PORT</c> in unix_socket_dir
/// (psql's <c>-h /dir</c>, cancels over it too), and every address of a listen_addr list.
/// </summary>
[Collection(PostgresCollection.Name)]
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class UnixSocketTests(PostgresFixture fixture) : IDisposable
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);
    private readonly PostgresServer _pg = fixture.Server;
    private readonly string _dir = Directory.CreateTempSubdirectory("fpp-unix-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private ProxyHarness StartWithSocket(Action<ProxyOptions>? configure = null) => ProxyHarness.Start(_pg, o =>
    {
        o.UnixSocketDir = _dir;
        configure?.Invoke(o);
    });

    private static string Text(int n) => n.ToString(CultureInfo.InvariantCulture);

    private Task<(int ExitCode, string StdOut, string StdErr)> PsqlAsync(string host, int port, string sql) =>
        ProcessRunner.RunAsync(
            ProcessRunner.FindOnPath("psql") ?? _pg.ToolPath("psql"),
            ["-X", "-A", "-t", "-h", host, "-p", Text(port), "-U", PostgresServer.Superuser, "-d", PostgresServer.Database, "-c", sql],
            Patience,
            new Dictionary<string, string> { ["PGCONNECT_TIMEOUT"] = "10" });

    [Fact]
    public async Task Psql_logs_in_through_the_unix_socket_in_unix_socket_dir()
    {
        await using ProxyHarness proxy = StartWithSocket();
        string socketFile = Path.Combine(_dir, ".s.PGSQL." + Text(proxy.Port));
        Assert.True(File.Exists(socketFile), socketFile);
        Assert.Equal(Convert.ToInt32("777", 8), (int)File.GetUnixFileMode(socketFile));

        (int code, string output, string error) = await PsqlAsync(_dir, proxy.Port, "SELECT 6 * 7");
        Assert.True(code == 0, error);
        Assert.Equal("42", output.Trim());
        Assert.Equal(1, proxy.Server.Stats.SessionsOpened);
    }

    [Fact]
    public async Task Psql_sigint_over_the_unix_socket_cancels_the_running_query()
    {
        await using ProxyHarness proxy = StartWithSocket();
        var start = new ProcessStartInfo(ProcessRunner.FindOnPath("psql") ?? _pg.ToolPath("psql"))
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        foreach (string arg in new[] { "-X", "-h", _dir, "-p", Text(proxy.Port), "-U", PostgresServer.Superuser, "-d", PostgresServer.Database, "-c", "SELECT pg_sleep(60) /* unix-sigint */" })
        {
            start.ArgumentList.Add(arg);
        }

        long forwardedBefore = proxy.Server.CancelStats.Forwarded;
        using Process process = Process.Start(start)!;
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        try
        {
            await _pg.WaitUntilRunningAsync("unix-sigint", Patience);
            (int killCode, _, string killErr) = await ProcessRunner.RunAsync("kill", ["-INT", Text(process.Id)], Patience);
            Assert.True(killCode == 0, killErr);
            using var cts = new CancellationTokenSource(Patience);
            await process.WaitForExitAsync(cts.Token);
            Assert.Contains("canceling statement due to user request", await stderr, StringComparison.Ordinal);
            Assert.NotEqual(0, process.ExitCode);
            Assert.Equal(forwardedBefore + 1, proxy.Server.CancelStats.Forwarded);
            _ = await stdout;
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }
    }

    [Fact]
    public async Task Npgsql_over_the_unix_socket_runs_queries_and_cancels_them()
    {
        await using ProxyHarness proxy = StartWithSocket();
        var builder = new NpgsqlConnectionStringBuilder { Host = _dir, Port = proxy.Port, Username = PostgresServer.Superuser, Database = PostgresServer.Database, Pooling = false, CommandTimeout = 60 };
        await using var connection = new NpgsqlConnection(builder.ConnectionString);
        await connection.OpenAsync();
        await using (var query = new NpgsqlCommand("SELECT 'over unix'", connection))
        {
            Assert.Equal("over unix", await query.ExecuteScalarAsync());
        }

        await using var sleeping = new NpgsqlCommand("SELECT pg_sleep(60) /* unix-npgsql-cancel */", connection);
        Task<object?> running = sleeping.ExecuteScalarAsync();
        await _pg.WaitUntilRunningAsync("unix-npgsql-cancel", Patience);
        sleeping.Cancel();
        Exception e = await Assert.ThrowsAnyAsync<Exception>(() => running.WaitAsync(Patience));
        PostgresException error = Assert.IsType<PostgresException>(e is OperationCanceledException ? e.InnerException : e);
        Assert.Equal("57014", error.SqlState);

        // The session goes on.
        await using var after = new NpgsqlCommand("SELECT 1", connection);
        Assert.Equal(1, await after.ExecuteScalarAsync());
    }

    /// <summary>PostgreSQL offers no TLS on its Unix socket and neither does the proxy: an SSLRequest there gets N, and client_tls_sslmode require does not refuse the plain login.</summary>
    [Fact]
    public async Task An_SSLRequest_over_the_unix_socket_gets_N_and_require_does_not_apply_there()
    {
        using TestCertificates certs = TestCertificates.Create();
        await using ProxyHarness proxy = StartWithSocket(o => o.ClientTls = TlsProxies.ClientTls(certs, TlsMode.Require));
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(Path.Combine(_dir, ".s.PGSQL." + Text(proxy.Port))));
        await socket.SendAsync(RawProtocol.SslRequest());
        byte[] answer = new byte[1];
        Assert.Equal(1, await socket.ReceiveAsync(answer).WaitAsync(Patience));
        Assert.Equal((byte)'N', answer[0]);

        (int code, string output, string error) = await PsqlAsync(_dir, proxy.Port, "SELECT 'plain over unix'");
        Assert.True(code == 0, error);
        Assert.Equal("plain over unix", output.Trim());

        // Over TCP the same proxy still refuses a plain login.
        (int tcpCode, _, string tcpError) = await ProcessRunner.RunAsync(
            ProcessRunner.FindOnPath("psql") ?? _pg.ToolPath("psql"),
            ["-X", "-h", "127.0.0.1", "-p", Text(proxy.Port), "-U", PostgresServer.Superuser, "-d", PostgresServer.Database, "-c", "SELECT 1"],
            Patience,
            new Dictionary<string, string> { ["PGSSLMODE"] = "disable", ["PGCONNECT_TIMEOUT"] = "10" });
        Assert.NotEqual(0, tcpCode);
        Assert.Contains("SSL required", tcpError, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_socket_file_left_by_a_dead_process_is_replaced_and_a_live_one_is_an_error()
    {
        int port = NetUtil.GetFreeTcpPort();
        string path = Listener.SocketFileName(_dir, port);

        // A socket file nobody listens on, as a killed process leaves it: a second name for a bound socket's
        // file, kept when the socket closes (which removes only the name it was bound to).
        using (var stale = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            stale.Bind(new UnixDomainSocketEndPoint(path + ".old"));
            (int linkCode, _, string linkError) = await ProcessRunner.RunAsync("ln", [path + ".old", path], Patience);
            Assert.True(linkCode == 0, linkError);
        }

        Assert.True(File.Exists(path));
        await using (ProxyHarness proxy = StartWithSocket(o => o.ListenPort = port))
        {
            (int code, string output, string error) = await PsqlAsync(_dir, port, "SELECT 'replaced'");
            Assert.True(code == 0, error);
            Assert.Equal("replaced", output.Trim());

            // Another instance with its own TCP address but the same socket would take this one's clients.
            Exception e = Assert.ThrowsAny<Exception>(() => ProxyHarness.Start(_pg, o =>
            {
                o.UnixSocketDir = _dir;
                o.ListenAddress = "";
                o.ListenPort = port;
            }));
            Assert.Contains("another process listens on this Unix socket", e.Message, StringComparison.Ordinal);
            Assert.Contains(path, e.Message, StringComparison.Ordinal);
        }

        // A stop removes the file.
        Assert.False(File.Exists(path));
    }

    [Fact]
    public async Task Unix_socket_mode_and_group_are_applied_to_the_socket_file()
    {
        // As root (CI) a group the process is not in, which only the chown can have set; otherwise the
        // user's own group, the one group a plain user may give a file to.
        string group = Environment.UserName == "root" ? "daemon" : (await ProcessRunner.RunAsync("id", ["-gn"], Patience)).StdOut.Trim();
        await using ProxyHarness proxy = StartWithSocket(o =>
        {
            o.UnixSocketMode = Convert.ToInt32("770", 8);
            o.UnixSocketGroup = group;
        });
        string path = Listener.SocketFileName(_dir, proxy.Port);
        Assert.Equal(Convert.ToInt32("770", 8), (int)File.GetUnixFileMode(path));
        (int code, string output, string error) = await ProcessRunner.RunAsync("stat", ["-c", "%G", path], Patience);
        Assert.True(code == 0, error);
        Assert.Equal(group, output.Trim());
    }

    [Fact]
    public async Task Every_address_of_a_listen_addr_list_accepts_clients()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o => o.ListenAddress = "127.0.0.1, ::1");
        foreach (string host in new[] { "127.0.0.1", "::1" })
        {
            var builder = new NpgsqlConnectionStringBuilder { Host = host, Port = proxy.Port, Username = PostgresServer.Superuser, Database = PostgresServer.Database, Pooling = false };
            await using var connection = new NpgsqlConnection(builder.ConnectionString);
            await connection.OpenAsync();
            await using var query = new NpgsqlCommand("SELECT 'via ' || $1", connection);
            query.Parameters.AddWithValue(host);
            Assert.Equal("via " + host, await query.ExecuteScalarAsync());
        }

        Assert.Contains("[::1]:" + Text(proxy.Port), proxy.Server.ListenNames, StringComparison.Ordinal);
        Assert.Contains("127.0.0.1:" + Text(proxy.Port), proxy.Server.ListenNames, StringComparison.Ordinal);
    }

    /// <summary>listen_backlog is the listen(2) backlog: the kernel shows it as the listening socket's Send-Q (ss -lnt).</summary>
    [Fact]
    public async Task Listen_backlog_is_the_backlog_the_kernel_keeps()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o => o.ListenBacklog = 77);
        (int code, string output, string error) = await ProcessRunner.RunAsync("ss", ["-ltnH", $"sport = :{Text(proxy.Port)}"], Patience);
        Assert.True(code == 0, error);

        // State, Recv-Q, Send-Q (the backlog), local address, peer address.
        string[] columns = output.Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("LISTEN", columns[0]);
        Assert.Equal("77", columns[2]);
    }

    [Fact]
    public void Nothing_to_listen_on_is_an_error_naming_both_keys()
    {
        ProxyOptions options = ProxyHarness.Options(_pg);
        options.ListenAddress = "";
        options.UnixSocketDir = null;
        ListenException e = Assert.Throws<ListenException>(() => new ProxyServer(options));
        Assert.Contains("listen_addr and unix_socket_dir", e.Message, StringComparison.Ordinal);
    }
}
