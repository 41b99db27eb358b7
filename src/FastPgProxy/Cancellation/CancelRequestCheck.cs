using System.Net;
using System.Security.Cryptography;
using FastPgProxy.Hosting;
using FastPgProxy.Protocol;
using FastPgProxy.Sessions;

namespace FastPgProxy.Cancellation;

/// <summary>
/// The check of a CancelRequest read on a new connection (55.2.7): the session is looked up, the key
/// compared in constant time, and every failure counted and logged. A key outside 4..256 bytes is malformed;
/// one of another length than the session was given (4 bytes for protocol 3.0, 32 for 3.2) is a wrong key.
/// A source over cancel_bad_key_limit has its wrong keys dropped (rate_limited); its correct keys still
/// cancel. Nothing is ever written back.
/// </summary>
internal static class CancelRequestCheck
{
    // Compared with a presented key that cannot match (an unknown session, or a key of another length than
    // the one issued), so that it is refused as slowly as a wrong key of the right length.
    private static readonly byte[] s_noSecret = new byte[StartupCodes.MaxCancelKeyLength];

    /// <summary>
    /// Whether <paramref name="presented"/> is the key <paramref name="issued"/>, in time that depends only on
    /// the presented key's length: a key of another length never matches, and is compared with a dummy of
    /// its own length all the same (as PostgreSQL 18 checks the issued length, then the bytes). Before a
    /// key is issued (empty) nothing matches.
    /// </summary>
    public static bool KeyMatches(ReadOnlySpan<byte> issued, ReadOnlySpan<byte> presented)
    {
        if (issued.IsEmpty || issued.Length != presented.Length)
        {
            CompareWithDummy(presented);
            return false;
        }

        return CryptographicOperations.FixedTimeEquals(issued, presented);
    }

    // The outcome is ignored: only the time it takes matters. Keys reaching here are at most 256 bytes.
    private static void CompareWithDummy(ReadOnlySpan<byte> presented)
    {
        int length = Math.Min(presented.Length, s_noSecret.Length);
        CryptographicOperations.FixedTimeEquals(s_noSecret.AsSpan(0, length), presented.Slice(0, length));
    }

    /// <summary>
    /// The session a CancelRequest <paramref name="packet"/> from <paramref name="source"/> names, when
    /// its key is right; null (counted and logged) when the packet is malformed, the session unknown or the
    /// key wrong. The caller then hands the connection to the target or closes it.
    /// </summary>
    public static ClientSession? FindTarget(ProxyServer proxy, ReadOnlySpan<byte> packet, IPEndPoint? source)
    {
        CancelStats stats = proxy.CancelStats;
        stats.OnReceived();
        if (!CancelRequest.TryParse(packet, out int pid, out ReadOnlySpan<byte> key))
        {
            stats.OnMalformed();
            Log.Debug($"cancel from {source}: malformed packet of {packet.Length} bytes");
            return null;
        }

        return FindTarget(proxy, pid, key, source?.Address);
    }

    /// <summary>
    /// The session <paramref name="pid"/> names when <paramref name="key"/> is its key; null (counted and
    /// logged against <paramref name="source"/>, the client that sent the cancel, also when a peer forwarded it).
    /// </summary>
    public static ClientSession? FindTarget(ProxyServer proxy, int pid, ReadOnlySpan<byte> key, IPAddress? source)
    {
        CancelStats stats = proxy.CancelStats;

        // The key is checked first, and a matching key is always honoured, whatever else came from its
        // address: ids and keys are random (at least 63 bits together), so the guard only has guessing to
        // slow down. Wrong keys from a blocked address are dropped without being counted against it again.
        bool known = proxy.Sessions.TryGet(pid, out ClientSession? target);
        if (!known)
        {
            // Compared all the same, so an unknown session takes as long to refuse as a wrong key.
            CompareWithDummy(key);
        }

        if (known && target!.MatchesSecret(key))
        {
            return target;
        }

        IPAddress? address = source;
        if (proxy.CancelGuard.IsBlocked(address))
        {
            stats.OnRateLimited();
            Log.Debug($"cancel from {source}: dropped, source blocked for wrong keys");
        }
        else if (!known)
        {
            stats.OnUnknownSession();
            proxy.CancelGuard.OnBadKey(address);
            Log.Debug($"cancel from {source}: no session {pid}");
        }
        else
        {
            stats.OnWrongKey();
            proxy.CancelGuard.OnBadKey(address);
            Log.Info($"cancel from {source}: wrong key for session {pid}");
        }

        return null;
    }
}
