using System.Buffers.Binary;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using FastPgProxy.Protocol;
using FastPgProxy.Tests.EndToEnd;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.Tools;

/// <summary>
/// Runs the built <c>tools/SendCancel</c> as a process. The tests project does not reference the tool (as it
/// does not reference CancelLatency), so the tool comes from building FastPgProxy.sln in the configuration
/// the tests were built in.
/// </summary>
internal static class SendCancelTool
{
    /// <summary>Bound on one run: the tool's own default timeout is 10 s.</summary>
    private static readonly TimeSpan RunTimeout = TimeSpan.FromSeconds(30);

    /// <summary>The first line of the usage text.</summary>
    public const string UsageLine = "usage: SendCancel <pid> <key> <host> <port>";

    /// <summary>SendCancel.dll of the same configuration and target framework as the tests (bin/&lt;config&gt;/&lt;tfm&gt;).</summary>
    private static string ToolDll
    {
        get
        {
            var output = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
            string framework = output.Name;
            string configuration = output.Parent!.Name;
            string dll = RepositoryPaths.Get("tools", "SendCancel", "bin", configuration, framework, "SendCancel.dll");
            Assert.True(File.Exists(dll), $"{dll} is missing: build FastPgProxy.sln -c {configuration} first");
            return dll;
        }
    }

    /// <summary>The dotnet host: the one running the tests when the SDK says so, else the one on PATH (as ProxyProcess finds it).</summary>
    private static string DotnetHost =>
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host)
            ? host
            : ProcessRunner.FindOnPath("dotnet") ?? throw new InvalidOperationException("dotnet is not on PATH");

    /// <summary>Runs the tool with <paramref name="args"/>; its exit code and output.</summary>
    public static Task<(int ExitCode, string StdOut, string StdErr)> RunAsync(params string[] args) =>
        ProcessRunner.RunAsync(DotnetHost, [ToolDll, .. args], RunTimeout);

    /// <summary>Runs the tool for <paramref name="pid"/> and the 4-byte <paramref name="key"/> at 127.0.0.1:<paramref name="port"/>, then <paramref name="options"/>; asserts exit 0 and silence.</summary>
    public static async Task CancelAsync(int pid, int key, int port, params string[] options) =>
        AssertSucceeded(await RunAsync([Text(pid), Text(key), "127.0.0.1", Text(port), .. options]));

    /// <summary>Asserts exit 0 with nothing on stderr.</summary>
    public static void AssertSucceeded((int ExitCode, string StdOut, string StdErr) run)
    {
        Assert.True(run.ExitCode == 0, $"exit {run.ExitCode}: {run.StdErr}");
        Assert.Equal("", run.StdErr);
    }

    /// <summary>An integer as the tool takes it.</summary>
    public static string Text(int value) => value.ToString(CultureInfo.InvariantCulture);

    /// <summary>A 4-byte key from BackendKeyData as the signed integer libpq prints.</summary>
    public static int Key32(byte[] key)
    {
        Assert.Equal(sizeof(int), key.Length);
        return BinaryPrimitives.ReadInt32BigEndian(key);
    }
}

/// <summary>SendCancel without a server: argument errors (exit 2, usage on stderr), a refused port, a silent server, an N to SSLRequest (exit 1).</summary>
public sealed class SendCancelArgumentTests
{
    [Theory]
    [InlineData]
    [InlineData("1", "2", "127.0.0.1")]
    [InlineData("1", "2", "127.0.0.1", "5432", "extra")]
    [InlineData("x", "2", "127.0.0.1", "5432")]
    [InlineData("1", "x", "127.0.0.1", "5432")]
    [InlineData("1", "2147483648", "127.0.0.1", "5432")]
    [InlineData("1", "2", "127.0.0.1", "0")]
    [InlineData("1", "2", "127.0.0.1", "65536")]
    [InlineData("1", "2", "", "5432")]
    [InlineData("1", "-", "127.0.0.1", "5432")]
    [InlineData("1", "2", "127.0.0.1", "5432", "--key-hex", "0102030405060708")]
    [InlineData("1", "-", "127.0.0.1", "5432", "--key-hex", "010203")]
    [InlineData("1", "-", "127.0.0.1", "5432", "--key-hex", "0102030")]
    [InlineData("1", "-", "127.0.0.1", "5432", "--key-hex", "zz02030405")]
    [InlineData("1", "2", "127.0.0.1", "5432", "--key-hex")]
    [InlineData("1", "2", "127.0.0.1", "5432", "--timeout", "0")]
    [InlineData("1", "2", "127.0.0.1", "5432", "--timeout", "-1")]
    [InlineData("1", "2", "127.0.0.1", "5432", "--timeout", "soon")]
    [InlineData("1", "2", "127.0.0.1", "5432", "--tls", "--direct-tls")]
    [InlineData("1", "2", "/tmp", "5432", "--tls")]
    [InlineData("1", "2", "127.0.0.1", "5432", "--verbose")]
    public async Task Bad_arguments_exit_2_with_the_problem_and_the_usage_on_stderr(params string[] args)
    {
        var (exitCode, stdout, stderr) = await SendCancelTool.RunAsync(args);
        Assert.Equal(2, exitCode);
        Assert.Equal("", stdout);
        Assert.StartsWith("SendCancel: ", stderr, StringComparison.Ordinal);
        Assert.Contains(SendCancelTool.UsageLine, stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_257_byte_key_is_refused_and_a_256_byte_one_is_taken()
    {
        var (exitCode, _, stderr) = await SendCancelTool.RunAsync("1", "-", "127.0.0.1", "5432", "--key-hex", new string('a', 2 * 257));
        Assert.Equal(2, exitCode);
        Assert.Contains("4 to 256 bytes", stderr, StringComparison.Ordinal);

        // 256 bytes parse; the connection then fails on the closed port, which is exit 1, not 2.
        int port = ClosedPort();
        (exitCode, _, stderr) = await SendCancelTool.RunAsync("1", "-", "127.0.0.1", SendCancelTool.Text(port), "--key-hex", new string('a', 2 * 256));
        Assert.Equal(1, exitCode);
        Assert.Contains("refused", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_refused_port_exits_1_saying_so()
    {
        int port = ClosedPort();
        var (exitCode, stdout, stderr) = await SendCancelTool.RunAsync("1234", "-5678", "127.0.0.1", SendCancelTool.Text(port));
        Assert.Equal(1, exitCode);
        Assert.Equal("", stdout);
        Assert.Contains($"connection to 127.0.0.1 port {port} refused", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("usage:", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_server_that_never_closes_exits_1_after_the_timeout()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        Task<Socket> accepted = listener.AcceptSocketAsync();

        var (exitCode, _, stderr) = await SendCancelTool.RunAsync("1", "2", "127.0.0.1", SendCancelTool.Text(port), "--timeout", "0.5");
        Assert.Equal(1, exitCode);
        Assert.Contains("timed out after 0.5 s waiting for", stderr, StringComparison.Ordinal);

        // It had sent the whole CancelRequest before it gave up.
        using Socket server = await accepted.WaitAsync(TimeSpan.FromSeconds(10));
        var packet = new byte[16];
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        Assert.True(await RawProtocol.ReadExactlyAsync(server, packet, cts.Token));
        Assert.Equal(RawProtocol.CancelRequest(1, 2), packet);
    }

    [Fact]
    public async Task Tls_to_a_server_that_answers_N_exits_1_saying_it_does_not_accept_TLS()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        Task serve = Task.Run(async () =>
        {
            using Socket server = await listener.AcceptSocketAsync();
            var request = new byte[8];
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            Assert.True(await RawProtocol.ReadExactlyAsync(server, request, cts.Token));
            Assert.Equal(RawProtocol.SslRequest(), request);
            await server.SendAsync(new[] { (byte)'N' });
            await RawProtocol.ReadUntilCloseAsync(server, TimeSpan.FromSeconds(20));
        });

        var (exitCode, _, stderr) = await SendCancelTool.RunAsync("1", "2", "127.0.0.1", SendCancelTool.Text(port), "--tls");
        Assert.Equal(1, exitCode);
        Assert.Contains("does not accept TLS (it answered N to SSLRequest)", stderr, StringComparison.Ordinal);
        await serve.WaitAsync(TimeSpan.FromSeconds(20));
    }

    /// <summary>A loopback port nothing listens on (bound, then released).</summary>
    private static int ClosedPort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}

/// <summary>
/// SendCancel against the real PostgreSQL 15 (TCP and its Unix socket) and against the proxy (a 3.0 client's
/// 4-byte key and a 3.2 client's 32-byte key): a <c>pg_sleep(60)</c> on a raw connection fails with 57014.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class SendCancelTests(PostgresFixture fixture)
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    private readonly PostgresServer _pg = fixture.Server;

    [Fact]
    public async Task Against_PostgreSQL_the_pid_and_key_cancel_the_query()
    {
        (Socket session, int pid, byte[] key) = await LoginToPostgresAsync();
        using (session)
        {
            await StartSleepAsync(session, "sendcancel-pg");
            await SendCancelTool.CancelAsync(pid, SendCancelTool.Key32(key), _pg.Port);
            await AssertCancelledAsync(session);
        }
    }

    [Fact]
    public async Task Against_PostgreSQL_through_its_Unix_socket_directory()
    {
        (Socket session, int pid, byte[] key) = await LoginToPostgresAsync();
        using (session)
        {
            await StartSleepAsync(session, "sendcancel-unix");
            SendCancelTool.AssertSucceeded(await SendCancelTool.RunAsync(
                SendCancelTool.Text(pid), SendCancelTool.Text(SendCancelTool.Key32(key)), _pg.SocketDir, SendCancelTool.Text(_pg.Port)));
            await AssertCancelledAsync(session);
        }
    }

    [Fact]
    public async Task Against_PostgreSQL_a_wrong_key_exits_0_and_cancels_nothing()
    {
        // The server answers nothing to any CancelRequest: the tool cannot tell, and says so in its usage.
        (Socket session, int pid, byte[] key) = await LoginToPostgresAsync();
        using (session)
        {
            await session.SendAsync(RawProtocol.Query("SELECT pg_sleep(1) /* sendcancel-wrong */"));
            await TlsProxies.WaitRunningAsync(_pg, "sendcancel-wrong");
            await SendCancelTool.CancelAsync(pid, SendCancelTool.Key32(key) ^ 1, _pg.Port);
            List<(byte Type, byte[] Body)> reply = await RawProtocol.ReadUntilReadyAsync(session, Patience);
            Assert.DoesNotContain(reply, m => m.Type == (byte)'E');
        }
    }

    [Fact]
    public async Task Against_the_proxy_a_3_0_clients_key_cancels_the_query()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg);
        (Socket session, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(proxy, Protocol32.V30);
        using (session)
        {
            (int pid, byte[] key) = Protocol32.KeyData(login);
            await StartSleepAsync(session, "sendcancel-proxy30");
            await SendCancelTool.CancelAsync(pid, SendCancelTool.Key32(key), proxy.Port);
            await AssertCancelledAsync(session);
            await TlsProxies.WaitUntilAsync(() => proxy.Server.CancelStats.Forwarded > 0, () => "the cancel was never counted as forwarded");
            Assert.Equal(1, proxy.Server.CancelStats.Forwarded);
        }
    }

    [Fact]
    public async Task Against_the_proxy_a_3_2_clients_32_byte_key_in_hex_cancels_the_query()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg);
        (Socket session, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(proxy, Protocol32.V32);
        using (session)
        {
            (int pid, byte[] key) = Protocol32.KeyData(login);
            Assert.Equal(32, key.Length);
            await StartSleepAsync(session, "sendcancel-proxy32");

            // Its first 4 bytes alone are a wrong key of another length: nothing is cancelled.
            await SendCancelTool.CancelAsync(pid, SendCancelTool.Key32(key[..4]), proxy.Port);
            SendCancelTool.AssertSucceeded(await SendCancelTool.RunAsync(
                SendCancelTool.Text(pid), "-", "127.0.0.1", SendCancelTool.Text(proxy.Port), "--key-hex", Convert.ToHexString(key)));
            await AssertCancelledAsync(session);
            await TlsProxies.WaitUntilAsync(() => proxy.Server.CancelStats.Forwarded > 0, () => "the cancel was never counted as forwarded");
            Assert.Equal(1, proxy.Server.CancelStats.Forwarded);
        }
    }

    /// <summary>A raw protocol 3.0 login to PostgreSQL itself as the superuser; the socket, pid and key.</summary>
    private async Task<(Socket Session, int Pid, byte[] Key)> LoginToPostgresAsync()
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        try
        {
            await socket.ConnectAsync("127.0.0.1", _pg.Port);
            await socket.SendAsync(RawProtocol.Startup(("user", PostgresServer.Superuser), ("database", PostgresServer.Database)));
            List<(byte Type, byte[] Body)> login = await RawProtocol.ReadUntilReadyAsync(socket, Patience);
            Assert.DoesNotContain(login, m => m.Type == (byte)'E');
            (int pid, byte[] key) = Protocol32.KeyData(login);
            return (socket, pid, key);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Sends <c>SELECT pg_sleep(60)</c> tagged <paramref name="marker"/> and waits until PostgreSQL runs it.</summary>
    private async Task StartSleepAsync(Socket session, string marker)
    {
        await session.SendAsync(RawProtocol.Query($"SELECT pg_sleep(60) /* {marker} */"));
        await TlsProxies.WaitRunningAsync(_pg, marker);
    }

    /// <summary>The running query ends with 57014, and the session still works.</summary>
    private static async Task AssertCancelledAsync(Socket session)
    {
        Assert.Equal(PostgresErrorCodes.QueryCanceled, Protocol32.ErrorCode(await RawProtocol.ReadUntilReadyAsync(session, Patience)));
        await session.SendAsync(RawProtocol.Query("SELECT 1"));
        Assert.Null(Protocol32.ErrorCode(await RawProtocol.ReadUntilReadyAsync(session, Patience)));
    }
}

/// <summary>
/// SendCancel over TLS: <c>--tls</c> (SSLRequest first) against a TLS proxy and against PostgreSQL 15 with
/// <c>ssl = on</c>, and <c>--direct-tls</c> (ALPN postgresql) against the proxy; PostgreSQL 15 has no direct TLS.
/// </summary>
[Collection(TlsPostgresCollection.Name)]
public sealed class SendCancelTlsTests(TlsPostgresFixture fixture)
{
    private readonly PostgresServer _pg = fixture.Server;
    private readonly TestCertificates _certs = fixture.Certificates;

    [Theory]
    [InlineData("--tls")]
    [InlineData("--direct-tls")]
    public async Task Against_a_TLS_proxy_the_cancel_travels_in_TLS_and_cancels_the_query(string option)
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        await using var relay = RecordingRelay.Start("127.0.0.1", proxy.Port);
        using TlsRawClient session = await TlsRawClient.ConnectAsync(proxy.Port);
        await session.NegotiateTlsAsync(_certs.Ca);
        (int pid, int key) = await session.LoginAsync();
        string marker = "sendcancel-tls" + option;
        await session.SendQueryAsync($"SELECT pg_sleep(60) /* {marker} */");
        await TlsProxies.WaitRunningAsync(_pg, marker);

        await SendCancelTool.CancelAsync(pid, key, relay.Port, option);
        Assert.Equal(PostgresErrorCodes.QueryCanceled, await session.ReadResultAsync());

        // What reached the proxy was SSLRequest or a ClientHello, never a plain CancelRequest.
        RelayedConnection seen = Assert.Single(await relay.WaitForConnectionsAsync(1));
        Assert.True(option == "--tls" ? seen.RequestCode == StartupCodes.SslRequestCode : seen.StartsWithTlsHandshake, $"relay saw {seen}");
    }

    [Fact]
    public async Task Against_PostgreSQL_with_ssl_on_tls_cancels_the_query()
    {
        using TlsRawClient session = await TlsRawClient.ConnectAsync(_pg.Port);
        await session.NegotiateTlsAsync(_certs.Ca);
        (int pid, int key) = await session.LoginAsync();
        await session.SendQueryAsync("SELECT pg_sleep(60) /* sendcancel-pg-tls */");
        await TlsProxies.WaitRunningAsync(_pg, "sendcancel-pg-tls");

        await SendCancelTool.CancelAsync(pid, key, _pg.Port, "--tls");
        Assert.Equal(PostgresErrorCodes.QueryCanceled, await session.ReadResultAsync());
    }
}
