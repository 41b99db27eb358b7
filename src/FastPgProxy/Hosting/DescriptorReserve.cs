using Microsoft.Win32.SafeHandles;

namespace FastPgProxy.Hosting;

/// <summary>
/// A few descriptors (handles on /dev/null) the accept loop holds back for the runtime. When every
/// descriptor is in use, the runtime still needs some: it starts a new thread for every SIGTERM and
/// SIGINT (and a thread cannot start without reading /proc and making a pipe), the thread pool may start
/// a worker. So when an accept fails for lack of descriptors the loop releases the reserve and accepts
/// nothing more until it can take the reserve back with room to spare. Only the accept loop uses it.
/// </summary>
internal sealed class DescriptorReserve : IDisposable
{
    /// <summary>Descriptors held back: enough for the signal thread and a few thread-pool workers.</summary>
    public const int Size = 16;

    /// <summary>Descriptors that must be free on top of the reserve before accepting resumes.</summary>
    public const int Headroom = 16;

    private readonly SafeFileHandle?[] _handles = new SafeFileHandle?[Size];

    /// <summary>Takes the reserve; when that fails at start-up (no /dev/null), the proxy runs without one.</summary>
    public DescriptorReserve()
    {
        Enabled = TryTake(headroom: 0);
        if (!Enabled)
        {
            Log.Warning("cannot open /dev/null: no descriptors are held back for the runtime when the descriptor limit is reached");
        }
    }

    /// <summary>Whether the proxy keeps a reserve at all.</summary>
    public bool Enabled { get; }

    /// <summary>Whether the reserve is held now (always false when not <see cref="Enabled"/>).</summary>
    public bool IsHeld { get; private set; }

    /// <summary>
    /// Takes the reserve back, but only when <paramref name="headroom"/> more descriptors are free beyond
    /// it; false (and nothing held) when descriptors are still short.
    /// </summary>
    public bool TryTake(int headroom = Headroom)
    {
        // Each listener's accept loop may call this; one at a time.
        lock (_handles)
        {
            return TryTakeLocked(headroom);
        }
    }

    private bool TryTakeLocked(int headroom)
    {
        if (IsHeld)
        {
            return true;
        }

        var probes = new SafeFileHandle?[headroom];
        try
        {
            for (int i = 0; i < Size; i++)
            {
                _handles[i] = File.OpenHandle("/dev/null");
            }

            for (int i = 0; i < probes.Length; i++)
            {
                probes[i] = File.OpenHandle("/dev/null");
            }

            IsHeld = true;
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            CloseAll(_handles);
            return false;
        }
        finally
        {
            CloseAll(probes);
        }
    }

    /// <summary>Closes the reserved descriptors so the runtime can use them.</summary>
    public void Release()
    {
        lock (_handles)
        {
            CloseAll(_handles);
            IsHeld = false;
        }
    }

    /// <inheritdoc/>
    public void Dispose() => Release();

    private static void CloseAll(SafeFileHandle?[] handles)
    {
        for (int i = 0; i < handles.Length; i++)
        {
            handles[i]?.Dispose();
            handles[i] = null;
        }
    }
}
