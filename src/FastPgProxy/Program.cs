using System.Reflection;
using System.Runtime.InteropServices;
using FastPgProxy.Config;
using FastPgProxy.Hosting;

namespace FastPgProxy;

/// <summary>Entry point of the <c>fastpgproxy</c> executable.</summary>
internal static class Program
{
    private const string Usage = "usage: fastpgproxy --config FILE.ini | fastpgproxy FILE.ini | fastpgproxy --review FILE.ini | fastpgproxy --version";

    /// <summary>Runs the proxy until SIGTERM (at once) or SIGINT (once transactions end); exit code 0 on a clean stop, 1 on a config error.</summary>
    public static async Task<int> Main(string[] args)
    {
        // Socket completions only enqueue work on a loop, so they may run on the runtime's epoll thread
        // itself instead of hopping through the thread pool (see docs/ARCHITECTURE.md). Must be set before
        // the first socket exists; an explicit setting in the environment wins.
        if (Environment.GetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS") is null)
        {
            Environment.SetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS", "1");
        }

        string? configPath = null;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--config" or "-c" when i + 1 < args.Length:
                    configPath = args[++i];
                    break;
                case "--version" or "-V":
                    Console.WriteLine($"fastpgproxy {typeof(Program).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "0"}");
                    return 0;
                case "--review" when i + 1 < args.Length:
                    return Review(args[i + 1]);
                case "--help" or "-h":
                    Console.WriteLine(Usage);
                    return 0;
                default:
                    if (args[i].StartsWith('-') || configPath is not null)
                    {
                        Console.Error.WriteLine($"fastpgproxy: unexpected argument '{args[i]}'\n{Usage}");
                        return 1;
                    }

                    configPath = args[i];
                    break;
            }
        }

        if (configPath is null)
        {
            Console.Error.WriteLine(Usage);
            return 1;
        }

        ProxyServer server;
        try
        {
            ProxyOptions options = ConfigLoader.Load(configPath);
            Log.SetVerbosity(options.Verbose);
            Log.SetFile(options.LogFile);

            // The runtime reads this when the first socket is made, which is the listener, next.
            if (Environment.GetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_THREAD_COUNT") is null)
            {
                Environment.SetEnvironmentVariable(
                    "DOTNET_SYSTEM_NET_SOCKETS_THREAD_COUNT",
                    options.EffectiveSocketThreads.ToString(System.Globalization.CultureInfo.InvariantCulture));
            }

            server = new ProxyServer(options);
        }
        catch (ConfigException e)
        {
            Console.Error.WriteLine($"fastpgproxy: {e.Message}");
            return 1;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"fastpgproxy: logfile: {e.Message}");
            return 1;
        }
        catch (ListenException e)
        {
            Console.Error.WriteLine($"fastpgproxy: {e.Message}");
            return 1;
        }
        catch (System.Net.Sockets.SocketException e)
        {
            Console.Error.WriteLine($"fastpgproxy: cannot listen: {e.Message}");
            return 1;
        }

        // SIGTERM stops at once (FATAL 57P01 to every client); SIGINT is PgBouncer's safe shutdown: no new
        // clients, and each one is let go once its transaction is over. A second SIGINT stops at once.
        var immediate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var safe = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        void OnTerminate(PosixSignalContext context)
        {
            context.Cancel = true;
            immediate.TrySetResult();
        }

        void OnInterrupt(PosixSignalContext context)
        {
            context.Cancel = true;
            if (!safe.TrySetResult())
            {
                immediate.TrySetResult();
            }
        }

        // PgBouncer's signals: SIGHUP reloads the config file (what `systemctl reload` sends), SIGUSR1
        // pauses every database and SIGUSR2 resumes them, each as its console command does.
        var console = new Admin.AdminConsole(server);
        PosixSignalRegistration OnCommand(PosixSignal signal, string name, Admin.AdminCommandKind kind) =>
            PosixSignalRegistration.Create(signal, context =>
            {
                context.Cancel = true;
                _ = console.RunForSignalAsync(new Admin.AdminCommand(kind), name);
            });

        SignalDisposition.ResetInterrupt();
        using PosixSignalRegistration term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnTerminate);
        using PosixSignalRegistration interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnInterrupt);
        using PosixSignalRegistration hangUp = OnCommand(PosixSignal.SIGHUP, "SIGHUP", Admin.AdminCommandKind.Reload);
        using PosixSignalRegistration user1 = OnCommand((PosixSignal)SignalNumbers.User1, "SIGUSR1", Admin.AdminCommandKind.Pause);
        using PosixSignalRegistration user2 = OnCommand((PosixSignal)SignalNumbers.User2, "SIGUSR2", Admin.AdminCommandKind.Resume);
        server.Start();
        foreach (string warning in server.Options.Warnings)
        {
            Log.Warning(warning);
        }

        if (!PidFile.TryWrite(server.Options.PidFile))
        {
            await server.StopAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
            return 1;
        }

        Log.Write(LogLevel.Warning, $"fastpgproxy started: listening on {server.ListenNames}");
        DescriptorLimit.LogAtStart(server.Options);
        SystemdNotify.Send($"READY=1\nSTATUS=listening on {server.ListenNames}\nMAINPID={Environment.ProcessId}");
        Task first = await Task.WhenAny(immediate.Task, safe.Task, server.Stopped).ConfigureAwait(false);
        SystemdNotify.Send("STOPPING=1");
        if (first == safe.Task)
        {
            TimeSpan wait = server.Options.ShutdownWaitTimeout;
            Log.Write(LogLevel.Warning, $"safe shutdown: no new clients; each client is let go once its transaction ends (at most {wait.TotalSeconds:0.###} s, shutdown_wait_timeout; SIGINT again stops at once)");
            Task safeStop = server.StopSafelyAsync(wait, TimeSpan.FromSeconds(5));
            if (await Task.WhenAny(safeStop, immediate.Task).ConfigureAwait(false) != safeStop)
            {
                Log.Write(LogLevel.Warning, "shutting down at once");
            }
        }
        else
        {
            Log.Write(LogLevel.Warning, "shutting down");
        }

        await server.StopAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        await server.Stopped.ConfigureAwait(false);
        PidFile.Remove(server.Options.PidFile);
        Log.Write(LogLevel.Warning, $"stopped: {server.Stats.SessionsOpened} sessions served, {GC.GetTotalAllocatedBytes(precise: true)} bytes allocated since start, {GC.CollectionCount(0)} gen0 collections");
        return 0;
    }

    /// <summary>
    /// <c>--review FILE</c>: prints, as a Markdown table, what the loader makes of every key of a config file
    /// (a pgbouncer.ini being moved over): supported, ignored with a warning, or refused and why. Exit code 0
    /// when the file would start, 1 when something is refused.
    /// </summary>
    private static int Review(string path)
    {
        List<ConfigReviewEntry> entries;
        try
        {
            entries = ConfigLoader.Review(path);
        }
        catch (ConfigException e)
        {
            Console.Error.WriteLine($"fastpgproxy: {e.Message}");
            return 1;
        }

        Console.Write(ConfigReview.ToMarkdown(entries));
        return ConfigReview.Starts(entries) ? 0 : 1;
    }
}

/// <summary>Linux's numbers for the signals <see cref="PosixSignal"/> has no name for (signal(7)); a raw number is passed cast to <see cref="PosixSignal"/>.</summary>
internal static class SignalNumbers
{
    /// <summary>SIGUSR1 on Linux.</summary>
    public const int User1 = 10;

    /// <summary>SIGUSR2 on Linux.</summary>
    public const int User2 = 12;
}

/// <summary>PgBouncer's <c>pidfile</c>: the process id, written once listening and removed at a clean exit.</summary>
internal static class PidFile
{
    /// <summary>Writes the pid to <paramref name="path"/> (nothing when null); false, logged, when it cannot.</summary>
    public static bool TryWrite(string? path)
    {
        if (path is null)
        {
            return true;
        }

        try
        {
            File.WriteAllText(path, Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture) + "\n");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Log.Error($"pidfile {path}: cannot write it: {e.Message}");
            return false;
        }
    }

    /// <summary>Removes the pid file written at start (nothing when null or already gone).</summary>
    public static void Remove(string? path)
    {
        try
        {
            if (path is not null)
            {
                File.Delete(path);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Log.Warning($"pidfile {path}: cannot remove it: {e.Message}");
        }
    }
}
