using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Xunit;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>
/// The real <c>fastpgproxy</c> executable running in the background, optionally under a lower open-file
/// limit (<c>ulimit -n</c>) or with SIGINT ignored, with its standard error collected line by line so a test
/// can wait for a log line: the one way the tests start the executable (<see cref="RunToExitAsync"/> for a
/// start that is expected to fail).
/// </summary>
internal sealed class ProxyProcess : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _stderr = new();
    private readonly List<(string Text, TaskCompletionSource Seen)> _waiters = new();
    private readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private ProxyProcess(Process process) => _process = process;

    /// <summary>The proxy assembly the project reference copies next to the tests.</summary>
    private static string ProxyDll
    {
        get
        {
            string dll = Path.Combine(AppContext.BaseDirectory, "fastpgproxy.dll");
            Assert.True(File.Exists(dll), $"{dll} is missing");
            return dll;
        }
    }

    /// <summary>The dotnet host: the one running the tests when the SDK says so, else the one on PATH.</summary>
    private static string DotnetHost =>
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host)
            ? host
            : ProcessRunner.FindOnPath("dotnet") ?? throw new InvalidOperationException("dotnet is not on PATH");

    /// <summary>The process id.</summary>
    public int Id => _process.Id;

    /// <summary>Everything written to standard error so far.</summary>
    public string StdErr
    {
        get
        {
            lock (_stderr)
            {
                return _stderr.ToString();
            }
        }
    }

    /// <summary>
    /// Runs the proxy with <paramref name="configPath"/> until it exits by itself, as a start that fails
    /// does, and returns its exit code and output; the process is killed after <paramref name="timeout"/>.
    /// </summary>
    public static Task<(int ExitCode, string StdOut, string StdErr)> RunToExitAsync(string configPath, TimeSpan timeout) =>
        ProcessRunner.RunAsync(DotnetHost, [ProxyDll, "--config", configPath], timeout);

    /// <summary>
    /// Starts the proxy with <paramref name="configPath"/>. With <paramref name="openFileLimit"/> or
    /// <paramref name="ignoreInterrupt"/>, through <c>/bin/sh</c> that lowers the limit and/or ignores SIGINT
    /// (as a shell without job control starts background commands) and then execs the proxy (same pid).
    /// <paramref name="environment"/> adds variables to the proxy's environment.
    /// </summary>
    public static ProxyProcess Start(string configPath, int? openFileLimit = null, bool ignoreInterrupt = false, IDictionary<string, string>? environment = null)
    {
        bool throughShell = openFileLimit is not null || ignoreInterrupt;
        var start = new ProcessStartInfo(throughShell ? "/bin/sh" : DotnetHost)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
        };
        if (throughShell)
        {
            var script = new List<string>();
            if (ignoreInterrupt)
            {
                // The ignored disposition survives exec, so the proxy starts with SIGINT ignored.
                script.Add("trap '' INT");
            }

            if (openFileLimit is int limit)
            {
                script.Add($"ulimit -n {limit.ToString(CultureInfo.InvariantCulture)}");
            }

            script.Add("exec \"$0\" \"$@\"");
            start.ArgumentList.Add("-c");
            start.ArgumentList.Add(string.Join(" && ", script));
            start.ArgumentList.Add(DotnetHost);
        }

        start.ArgumentList.Add(ProxyDll);
        start.ArgumentList.Add("--config");
        start.ArgumentList.Add(configPath);
        foreach ((string name, string value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[name] = value;
        }

        var process = new Process { StartInfo = start, EnableRaisingEvents = true };
        var proxy = new ProxyProcess(process);
        process.ErrorDataReceived += (_, e) => proxy.OnStdErr(e.Data);
        process.OutputDataReceived += (_, _) => { };
        process.Exited += (_, _) => proxy._exited.TrySetResult();
        process.Start();
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        return proxy;
    }

    /// <summary>
    /// Polls a TCP connect to <paramref name="port"/> on 127.0.0.1 until the proxy accepts, failing after
    /// <paramref name="timeout"/>, or at once with its exit code and standard error if the process exits.
    /// </summary>
    public async Task WaitListeningAsync(int port, TimeSpan timeout)
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            if (_process.HasExited)
            {
                // Waiting for the exit also waits for the end of standard error, so the message has all of it.
                using var drained = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                try
                {
                    await _process.WaitForExitAsync(drained.Token);
                }
                catch (OperationCanceledException)
                {
                    // Standard error did not end: fail with what arrived.
                }

                Assert.Fail($"fastpgproxy exited with {_process.ExitCode} before listening; stderr:\n{StdErr}");
            }

            using var probe = new Socket(SocketType.Stream, ProtocolType.Tcp);
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                await probe.ConnectAsync("127.0.0.1", port, cts.Token);
                return;
            }
            catch (Exception ex) when (ex is SocketException or OperationCanceledException)
            {
                Assert.True(deadline.Elapsed < timeout, $"fastpgproxy did not listen on port {port} within {timeout.TotalSeconds} s");
                await Task.Delay(50);
            }
        }
    }

    /// <summary>Waits until a line of standard error contains <paramref name="text"/>; fails on timeout or exit.</summary>
    public async Task WaitForLogAsync(string text, TimeSpan timeout)
    {
        TaskCompletionSource seen = new(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_stderr)
        {
            if (_stderr.ToString().Contains(text, StringComparison.Ordinal))
            {
                return;
            }

            _waiters.Add((text, seen));
        }

        Task first = await Task.WhenAny(seen.Task, _exited.Task, Task.Delay(timeout));
        Assert.True(first == seen.Task, $"no log line with '{text}' within {timeout.TotalSeconds} s (exited: {_process.HasExited}); stderr:\n{StdErr}");
    }

    /// <summary>Sends <paramref name="signal"/> (TERM, INT) with kill(1).</summary>
    public async Task SignalAsync(string signal)
    {
        var (code, _, error) = await ProcessRunner.RunAsync("kill", [$"-{signal}", Id.ToString(CultureInfo.InvariantCulture)], TimeSpan.FromSeconds(10));
        Assert.True(code == 0, error);
    }

    /// <summary>Waits for the process to exit and returns its exit code.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await _process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            Assert.Fail($"fastpgproxy did not exit within {timeout.TotalSeconds} s; stderr:\n{StdErr}");
        }

        return _process.ExitCode;
    }

    /// <summary>Kills the process (and its children) if it still runs.</summary>
    public void Dispose()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit(5_000);
        }

        _process.Dispose();
    }

    private void OnStdErr(string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (_stderr)
        {
            _stderr.AppendLine(line);
            for (int i = _waiters.Count - 1; i >= 0; i--)
            {
                if (line.Contains(_waiters[i].Text, StringComparison.Ordinal))
                {
                    _waiters[i].Seen.TrySetResult();
                    _waiters.RemoveAt(i);
                }
            }
        }
    }
}
