using System.Collections.Concurrent;
using System.Diagnostics.CodeAnalysis;
using FastPgProxy.Net;

namespace FastPgProxy.Sessions;

/// <summary>
/// The live client sessions by proxy session id: the pid clients see in BackendKeyData. Lookups are O(1)
/// from any thread (the cancel path runs on whichever loop accepted the cancel connection). Ids are
/// positive int32 values drawn from the login loop's <see cref="LoopRandom"/>, never one a live session holds.
/// </summary>
/// <remarks>
/// <para>
/// Without <c>peer_id</c> an id is 31 random bits. With it, an id is the peer id in its top 14 bits and
/// a random local number of <see cref="LocalIdBits"/> bits below (1 to <see cref="LocalIdCapacity"/>), so
/// the instance that owns a session can be read from its pid alone and pids never collide between
/// instances: <c>peer_id &lt;&lt; 17 | local</c>, at most int.MaxValue for peer 16383.
/// </para>
/// <para>
/// With the secret (4 random bytes for a protocol 3.0 client, 32 for 3.2), a cancel key carries at least
/// 63 random bits without peering and 49 with it (PgBouncer's 8-byte key, peer id included, has fewer),
/// and cannot be guessed at the rate the cancel guard allows.
/// </para>
/// </remarks>
internal sealed class SessionRegistry
{
    /// <summary>Bits of an id below the peer id when <c>peer_id</c> is set.</summary>
    public const int LocalIdBits = 17;

    /// <summary>Sessions one instance can hold at once when <c>peer_id</c> is set (local numbers 1 to this).</summary>
    public const int LocalIdCapacity = (1 << LocalIdBits) - 1;

    /// <summary>The largest <c>peer_id</c>: 14 bits, as PgBouncer's.</summary>
    public const int MaxPeerId = (1 << (31 - LocalIdBits)) - 1;

    private readonly ConcurrentDictionary<int, ClientSession> _sessions = new();
    private readonly int _peerId;

    /// <summary>A registry whose ids carry <paramref name="peerId"/> (0: no peering, ids are 31 random bits).</summary>
    public SessionRegistry(int peerId = 0)
    {
        if (peerId is < 0 or > MaxPeerId)
        {
            throw new ArgumentOutOfRangeException(nameof(peerId), peerId, $"a peer id is 0 (none) or 1 to {MaxPeerId}");
        }

        _peerId = peerId;
    }

    /// <summary>Live sessions.</summary>
    public int Count => _sessions.Count;

    /// <summary>The peer id in the top bits of <paramref name="id"/>: the instance that owns it, when ids are issued under <c>peer_id</c>.</summary>
    public static int PeerOf(int id) => id >> LocalIdBits;

    /// <summary>
    /// Registers <paramref name="session"/> under a fresh id (never 0) and returns it; 0 when every id is in
    /// use (only possible with <c>peer_id</c>, whose instances hold at most <see cref="LocalIdCapacity"/>
    /// sessions).
    /// </summary>
    public int Add(ClientSession session, LoopRandom random)
    {
        if (_peerId == 0)
        {
            while (true)
            {
                int id = random.NextInt32(1, int.MaxValue);
                if (_sessions.TryAdd(id, session))
                {
                    return id;
                }
            }
        }

        // A random start, then the next free number: bounded however full the instance is.
        int start = random.NextInt32(0, LocalIdCapacity);
        for (int i = 0; i < LocalIdCapacity; i++)
        {
            int local = ((start + i) % LocalIdCapacity) + 1;
            int id = (_peerId << LocalIdBits) | local;
            if (_sessions.TryAdd(id, session))
            {
                return id;
            }
        }

        return 0;
    }

    /// <summary>Finds a live session.</summary>
    public bool TryGet(int id, [NotNullWhen(true)] out ClientSession? session) => _sessions.TryGetValue(id, out session);

    /// <summary>Forgets a session; its id becomes free.</summary>
    public void Remove(int id) => _sessions.TryRemove(id, out _);

    /// <summary>A snapshot of the live sessions (shutdown, administration).</summary>
    public ClientSession[] Snapshot()
    {
        // ConcurrentDictionary.Values is already a copy; no LINQ on the shutdown path (see RuntimePreload).
        ICollection<ClientSession> sessions = _sessions.Values;
        var snapshot = new ClientSession[sessions.Count];
        sessions.CopyTo(snapshot, 0);
        return snapshot;
    }
}
