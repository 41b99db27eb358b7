using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using FastPgProxy.Hosting;

namespace FastPgProxy.Cancellation;

/// <summary>
/// Slows key guessing down: counts wrong keys per source address in one-minute windows and blocks a source
/// over cancel_bad_key_limit for a minute, during which its wrong keys are dropped without a log line of
/// their own. A correct key is honoured whatever its source: keys are random (a 31-bit session id and a
/// secret of 4 or 32 bytes), so a block must not cost everyone behind one address (a NAT) their Ctrl-C.
/// (Cancel connections to PostgreSQL are bounded by each pool, see ServerPool.Cancels.cs.) Thread-safe;
/// ordinary traffic never touches it.
/// </summary>
internal sealed class CancelGuard
{
    private static readonly long s_window = Stopwatch.Frequency * 60;
    private readonly ConcurrentDictionary<IPAddress, Source> _sources = new();
    private readonly int _badKeyLimit;

    /// <summary>Creates a guard with the given limits (0 disables the bad-key limit).</summary>
    public CancelGuard(int badKeyLimit) => _badKeyLimit = badKeyLimit;

    /// <summary>Whether wrong keys from <paramref name="address"/> are being dropped.</summary>
    public bool IsBlocked(IPAddress? address)
    {
        if (_badKeyLimit == 0 || address is null || !_sources.TryGetValue(address, out Source? source))
        {
            return false;
        }

        lock (source)
        {
            return source.BlockedUntil > Stopwatch.GetTimestamp();
        }
    }

    /// <summary>Counts a wrong key or unknown session from <paramref name="address"/>; may start a block.</summary>
    public void OnBadKey(IPAddress? address)
    {
        if (_badKeyLimit == 0 || address is null)
        {
            return;
        }

        Source source = _sources.GetOrAdd(address, _ => new Source());
        long now = Stopwatch.GetTimestamp();
        lock (source)
        {
            if (now - source.WindowStart > s_window)
            {
                source.WindowStart = now;
                source.Count = 0;
            }

            if (++source.Count > _badKeyLimit && source.BlockedUntil <= now)
            {
                source.BlockedUntil = now + s_window;
                Log.Warning($"cancel requests from {address} blocked for a minute: more than {_badKeyLimit} wrong keys in a minute");
            }
        }
    }

    private sealed class Source
    {
        public long WindowStart = Stopwatch.GetTimestamp();
        public int Count;
        public long BlockedUntil;
    }
}
