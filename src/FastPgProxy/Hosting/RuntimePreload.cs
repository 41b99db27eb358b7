using System.Reflection;

namespace FastPgProxy.Hosting;

/// <summary>
/// Makes the runtime take, at start-up, the descriptors it would otherwise take lazily: when every
/// descriptor is in use (EMFILE), the runtime cannot open an assembly file (a first call into System.Linq
/// fails with FileNotFoundException) nor start a thread (it fails with OutOfMemoryException, since a new
/// thread reads /sys and /proc and makes a pipe before it runs). Both happen on the paths that must work
/// at that moment: the accept loop's back-off, the loops' timers, logging and shutdown.
/// </summary>
internal static class RuntimePreload
{
    private static readonly string[] s_runtimeLoaded = ["System.Diagnostics.StackTrace"];
    private static int s_done;

    /// <summary>
    /// Loads every assembly the proxy can reach (the transitive references of this assembly and of
    /// System.Diagnostics.StackTrace: about 30 framework assemblies, two descriptors each) and starts the
    /// runtime's timer thread, which the first <see cref="Task.Delay(TimeSpan)"/> would otherwise start.
    /// Once per process; any thread.
    /// </summary>
    public static void Run()
    {
        if (Interlocked.Exchange(ref s_done, 1) != 0)
        {
            return;
        }

        // The first timer with a due time starts the runtime's timer thread, which then lives as long as the
        // process does: the accept loop's back-off and shutdown's waits never need a new thread.
        using (var timer = new Timer(static _ => { }, null, TimeSpan.FromMilliseconds(1), Timeout.InfiniteTimeSpan))
        {
        }

        var seen = new HashSet<string>(StringComparer.Ordinal);
        var pending = new Stack<Assembly>();
        pending.Push(typeof(RuntimePreload).Assembly);
        int loaded = 0;

        // Not referenced by the proxy: the runtime loads it (and what it references) to print a logged
        // exception's stack trace with line numbers.
        foreach (string root in s_runtimeLoaded)
        {
            if (seen.Add(root))
            {
                pending.Push(Assembly.Load(root));
                loaded++;
            }
        }

        while (pending.Count > 0)
        {
            foreach (AssemblyName name in pending.Pop().GetReferencedAssemblies())
            {
                if (name.Name is null || !seen.Add(name.Name))
                {
                    continue;
                }

                try
                {
                    pending.Push(Assembly.Load(name));
                    loaded++;
                }
                catch (Exception e) when (e is FileNotFoundException or FileLoadException or BadImageFormatException)
                {
                    // A reference the runtime does not ship (a facade never used at run time): nothing to hold.
                    Log.Debug($"preload: {name.Name}: {e.Message}");
                }
            }
        }

        Log.Debug($"{loaded} assemblies loaded at start-up");
    }
}
