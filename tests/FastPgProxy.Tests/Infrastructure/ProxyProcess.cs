using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Xunit;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>
/// The real <c>fastpgproxy</c> executable running in the background, optionally under a lower open-file
/// limit (<c>ulimit -n</c>), with its standard error collected line by line so a test can wait for a log line.
/// </summary>
internal sealed class ProxyProcess : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _stderr = new();
    private readonly List<(string Text, TaskCompletionSource Seen)> _waiters = new();
    private readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private ProxyProcess(Process process) => _process = process;

    /// <summary>The proxy assembly the project reference copies next to the tests.</summary>
    public static string ProxyDll
    {
        get
        {
            string dll = Path.Combine(AppContext.BaseDirectory, "fastpgproxy.dll");
            Assert.True(File.Exists(dll), $"{dll} is missing");
            return dll;
        }
    }

    /// <summary>The dotnet host: the one running the tests when the SDK says so, else the one on PATH.</summary>
    public static string DotnetHost =>
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
    /// Starts the proxy with <paramref name="configPath"/>; with <paramref name="openFileLimit"/>, through
    /// <c>/bin/sh</c> that lowers the limit and then execs the proxy (same pid).
    /// </summary>
    public static ProxyProcess Start(string configPath, int? openFileLimit = null)
    {
        var start = new ProcessStartInfo(openFileLimit is null ? DotnetHost : "/bin/sh")
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
        };
        if (openFileLimit is int limit)
        {
            start.ArgumentList.Add("-c");
            start.ArgumentList.Add($"ulimit -n {limit.ToString(CultureInfo.InvariantCulture)} && exec \"$0\" \"$@\"");
            start.ArgumentList.Add(DotnetHost);
        }

        start.ArgumentList.Add(ProxyDll);
        start.ArgumentList.Add("--config");
        start.ArgumentList.Add(configPath);
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

    /// <summary>Polls a TCP connect to the proxy until it accepts, failing early if the process exits.</summary>
    public async Task WaitListeningAsync(int port, TimeSpan timeout)
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            Assert.False(_process.HasExited, $"fastpgproxy exited before listening; stderr:\n{StdErr}");
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
