using System.Collections.Concurrent;
using System.Diagnostics.CodeAnalysis;
using System.Security.Cryptography;

namespace FastPgProxy.Sessions;

/// <summary>
/// The live client sessions by proxy session id: the pid clients see in BackendKeyData. Lookups are O(1)
/// from any thread (the cancel path runs on whichever loop accepted the cancel connection). Ids are random
/// positive int32 values from <see cref="RandomNumberGenerator"/>, drawn again when a live session has the
/// one drawn, so an id is never reused while in use. With the secret (4 random bytes for a protocol 3.0
/// client, 32 for 3.2), a cancel key then carries about 63 random bits at least (PgBouncer's is 8 random
/// bytes), and cannot be guessed.
/// </summary>
internal sealed class SessionRegistry
{
    private readonly ConcurrentDictionary<int, ClientSession> _sessions = new();

    /// <summary>Live sessions.</summary>
    public int Count => _sessions.Count;

    /// <summary>Registers <paramref name="session"/> under a fresh random id (never 0) and returns it.</summary>
    public int Add(ClientSession session)
    {
        while (true)
        {
            int id = RandomNumberGenerator.GetInt32(1, int.MaxValue);
            if (_sessions.TryAdd(id, session))
            {
                return id;
            }
        }
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
