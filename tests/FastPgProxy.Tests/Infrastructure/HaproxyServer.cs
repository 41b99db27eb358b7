using System.Diagnostics;
using System.Globalization;
using System.Text;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>
/// A real HAProxy in TCP mode on a free port of 127.0.0.1, spreading connections round robin over the
/// backends it was started with (host:port pairs, usually in-process proxies): the TCP load balancer that
/// several FastPgProxy instances run behind in production. It runs in the foreground as a child process
/// (<c>haproxy -f haproxy.cfg -db</c>) from a config generated in a temporary folder; <see cref="Dispose"/>
/// stops it and deletes the folder.
/// </summary>
/// <remarks>
/// The config has no health checks and readiness is read from <c>/proc/net/tcp</c> instead of a probe
/// connection: both would open connections of their own through or to the backends, which the proxies
/// would count and which would shift the round robin, so the n-th client connection would no longer go to
/// backend n mod N. Timeouts are generous (connect 5 s, client and server 1 h) so that a long query or an
/// idle session is never cut by the balancer.
/// </remarks>
internal sealed class HaproxyServer : IDisposable
{
    /// <summary>Where Debian's <c>haproxy</c> package installs it; not on every user's PATH.</summary>
    private const string DebianPath = "/usr/sbin/haproxy";

    /// <summary>How long HAProxy gets to start listening.</summary>
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(20);

    /// <summary>How many free ports are tried when another process takes the picked one first.</summary>
    private const int BindAttempts = 5;

    private readonly Process _process;
    private readonly string _dir;
    private readonly StringBuilder _output = new();
    private int _disposed;

    private HaproxyServer(Process process, string dir, int port, string configPath, IReadOnlyList<(string Host, int Port)> backends)
    {
        _process = process;
        _dir = dir;
        Port = port;
        ConfigPath = configPath;
        Backends = backends;
    }

    /// <summary>The address HAProxy listens on.</summary>
    public string Host { get; } = "127.0.0.1";

    /// <summary>The port HAProxy listens on.</summary>
    public int Port { get; }

    /// <summary>The generated config file (in a temporary folder that <see cref="Dispose"/> deletes).</summary>
    public string ConfigPath { get; }

    /// <summary>The backends, in the order of the config file, which is the order of the round robin.</summary>
    public IReadOnlyList<(string Host, int Port)> Backends { get; }

    /// <summary>The HAProxy process id.</summary>
    public int ProcessId => _process.Id;

    /// <summary>Everything HAProxy wrote to standard output and standard error so far (warnings, alerts).</summary>
    public string Output
    {
        get
        {
            lock (_output)
            {
                return _output.ToString();
            }
        }
    }

    /// <summary>
    /// The haproxy executable: <c>haproxy</c> on PATH, else <c>/usr/sbin/haproxy</c>; null when neither exists.
    /// </summary>
    public static string? FindExecutable() =>
        ProcessRunner.FindOnPath("haproxy") ?? (ProcessRunner.IsExecutableFile(DebianPath) ? DebianPath : null);

    /// <summary>
    /// The haproxy executable, or a failed test saying how to install it: CI installs it (.ci/run), so a
    /// missing haproxy is an error, never a reason to skip.
    /// </summary>
    public static string RequireExecutable()
    {
        string? haproxy = FindExecutable();
        Assert.True(
            haproxy is not null,
            $"haproxy was not found on PATH nor at {DebianPath}; install it (apt-get install -y haproxy, as bash .ci/run does) to run the tests that put several proxies behind HAProxy");
        return haproxy!;
    }

    /// <summary>Starts HAProxy in front of in-process <paramref name="proxies"/>, in that round-robin order.</summary>
    public static Task<HaproxyServer> StartAsync(params ProxyHarness[] proxies) =>
        StartAsync(proxies.Select(p => ("127.0.0.1", p.Port)).ToArray());

    /// <summary>Starts HAProxy in front of backends on 127.0.0.1 at <paramref name="ports"/>, in that round-robin order.</summary>
    public static Task<HaproxyServer> StartAsync(params int[] ports) =>
        StartAsync(ports.Select(p => ("127.0.0.1", p)).ToArray());

    /// <summary>
    /// Writes the config for <paramref name="backends"/> (round robin in this order), checks it with
    /// <c>haproxy -c -f</c>, starts <c>haproxy -f cfg -db</c> on a free port of 127.0.0.1 and returns once that
    /// port listens. A port another process took in the meantime is retried with a new one; a config HAProxy
    /// rejects, or an exit for any other reason, fails with HAProxy's own output.
    /// </summary>
    public static async Task<HaproxyServer> StartAsync(IReadOnlyList<(string Host, int Port)> backends)
    {
        ArgumentNullException.ThrowIfNull(backends);
        if (backends.Count == 0)
        {
            throw new ArgumentException("HAProxy needs at least one backend", nameof(backends));
        }

        string haproxy = RequireExecutable();
        string dir = Directory.CreateTempSubdirectory("fpp-haproxy-").FullName;
        try
        {
            string configPath = Path.Combine(dir, "haproxy.cfg");
            for (int attempt = 1; ; attempt++)
            {
                int port = NetUtil.GetFreeTcpPort();
                await File.WriteAllTextAsync(configPath, Config(port, backends));

                var (code, stdout, stderr) = await ProcessRunner.RunAsync(haproxy, ["-c", "-f", configPath], TimeSpan.FromSeconds(30));
                Assert.True(code == 0, $"haproxy -c rejected the generated config (exit {code}):\n{stdout}{stderr}\n{Config(port, backends)}");

                var server = Launch(haproxy, dir, port, configPath, backends);
                if (await server.WaitListeningAsync())
                {
                    return server;
                }

                // It exited before listening. A lost race for the port says "cannot bind socket"; anything
                // else (or the last attempt) is a failure worth HAProxy's own words.
                string output = server.Output;
                int exitCode = server._process.ExitCode;
                server._process.Dispose();
                bool portTaken = output.Contains("cannot bind", StringComparison.OrdinalIgnoreCase);
                Assert.True(portTaken && attempt < BindAttempts, $"haproxy exited with {exitCode} before listening on {port}:\n{output}");
            }
        }
        catch
        {
            DeleteQuietly(dir);
            throw;
        }
    }

    /// <summary>The config: TCP mode, round robin over the backends in order, no checks, generous timeouts.</summary>
    internal static string Config(int port, IReadOnlyList<(string Host, int Port)> backends)
    {
        var text = new StringBuilder();
        text.Append("# Written by the FastPgProxy tests (HaproxyServer); run as: haproxy -f haproxy.cfg -db\n");
        text.Append("global\n");
        text.Append("    maxconn 4096\n");
        text.Append("    nbthread 2\n");

        // A port shared through SO_REUSEPORT with a stray listener would split the connections silently;
        // without it, a taken port fails the bind and the start is retried on another.
        text.Append("    noreuseport\n");
        text.Append("defaults\n");
        text.Append("    mode tcp\n");
        text.Append("    timeout connect 5s\n");
        text.Append("    timeout client 1h\n");
        text.Append("    timeout server 1h\n");
        text.Append("frontend clients\n");
        text.Append(CultureInfo.InvariantCulture, $"    bind 127.0.0.1:{port}\n");
        text.Append("    default_backend instances\n");
        text.Append("backend instances\n");
        text.Append("    balance roundrobin\n");
        for (int i = 0; i < backends.Count; i++)
        {
            // No "check": health checks would connect to the proxies on their own.
            text.Append(CultureInfo.InvariantCulture, $"    server instance{i} {backends[i].Host}:{backends[i].Port}\n");
        }

        return text.ToString();
    }

    /// <summary>An Npgsql connection string through HAProxy, without client-side pooling (the settings of <see cref="ProxyHarness.ConnectionString(string, int, string, string?, string, bool)"/>).</summary>
    public string ConnectionString(string user = PostgresServer.Superuser, string? password = null, string database = PostgresServer.Database) =>
        ProxyHarness.ConnectionString(Host, Port, user, password, database, pooling: false);

    /// <summary>Opens an Npgsql connection through HAProxy; each one goes to the next backend in turn.</summary>
    public async Task<NpgsqlConnection> OpenAsync(string user = PostgresServer.Superuser, string? password = null, string database = PostgresServer.Database)
    {
        var connection = new NpgsqlConnection(ConnectionString(user, password, database));
        try
        {
            await connection.OpenAsync();
            return connection;
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// Kills HAProxy (run with <c>-db</c> it is one process with no children, and its connections close with
    /// it), waits for it to exit and deletes the config folder. Safe to call twice.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
            }

            _process.WaitForExit(5_000);
        }
        catch (InvalidOperationException)
        {
            // Exited between the check and the kill.
        }
        finally
        {
            _process.Dispose();
            DeleteQuietly(_dir);
        }
    }

    private static HaproxyServer Launch(string haproxy, string dir, int port, string configPath, IReadOnlyList<(string Host, int Port)> backends)
    {
        // -db: stay in the foreground as one process (no daemon, no master-worker), so the child we hold is
        // HAProxy itself. It works the same as root and as any other user: nothing in the config needs root.
        var start = new ProcessStartInfo(haproxy)
        {
            UseShellExecute = false,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = dir,
        };
        start.ArgumentList.Add("-f");
        start.ArgumentList.Add(configPath);
        start.ArgumentList.Add("-db");

        var process = new Process { StartInfo = start };
        var server = new HaproxyServer(process, dir, port, configPath, backends);
        process.OutputDataReceived += (_, e) => server.Append(e.Data);
        process.ErrorDataReceived += (_, e) => server.Append(e.Data);
        process.Start();
        process.StandardInput.Close();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return server;
    }

    /// <summary>
    /// Waits until <see cref="Port"/> listens: true then, false when HAProxy exits first; fails after
    /// <see cref="StartTimeout"/>. Looks at the kernel's socket table rather than connecting, since a probe
    /// connection would be passed on to a backend.
    /// </summary>
    private async Task<bool> WaitListeningAsync()
    {
        var elapsed = Stopwatch.StartNew();
        while (true)
        {
            if (_process.HasExited)
            {
                // Waiting for the exit also waits for the end of its output, so Output has all of it.
                using var drained = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                try
                {
                    await _process.WaitForExitAsync(drained.Token);
                }
                catch (OperationCanceledException)
                {
                    // The output did not end: report what arrived.
                }

                return false;
            }

            if (IsListening(Port))
            {
                return true;
            }

            if (elapsed.Elapsed > StartTimeout)
            {
                Dispose();
                Assert.Fail($"haproxy did not listen on {Host}:{Port} within {StartTimeout.TotalSeconds} s; output:\n{Output}");
            }

            await Task.Delay(20);
        }
    }

    /// <summary>
    /// True when /proc/net/tcp has a socket in state LISTEN (0A) on 127.0.0.1:<paramref name="port"/>
    /// (local address <c>0100007F:PPPP</c>, the address in host byte order and the port in hex).
    /// </summary>
    private static bool IsListening(int port)
    {
        string local = "0100007F:" + port.ToString("X4", CultureInfo.InvariantCulture);
        foreach (string line in File.ReadLines("/proc/net/tcp").Skip(1))
        {
            string[] fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length > 3 && fields[1] == local && fields[3] == "0A")
            {
                return true;
            }
        }

        return false;
    }

    private void Append(string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (_output)
        {
            _output.AppendLine(line);
        }
    }

    private static void DeleteQuietly(string dir)
    {
        try
        {
            Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
            // Already gone, or busy: a temporary folder, not worth failing a test over.
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
