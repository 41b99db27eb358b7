using System.Collections.Concurrent;
using System.Diagnostics.CodeAnalysis;

namespace FastPgProxy.Server;

/// <summary>
/// The live client sessions by proxy session id: the pid clients see in BackendKeyData. Lookups are O(1)
/// from any thread (the cancel path runs on whichever loop accepted the cancel connection). Ids are
/// positive int32 values handed out in sequence and skipped while still in use, so an id is never reused
/// by two live sessions.
/// </summary>
internal sealed class SessionRegistry
{
    private readonly ConcurrentDictionary<int, ClientSession> _sessions = new();
    private int _lastId;

    /// <summary>Live sessions.</summary>
    public int Count => _sessions.Count;

    /// <summary>Registers <paramref name="session"/> under a fresh id and returns it.</summary>
    public int Add(ClientSession session)
    {
        while (true)
        {
            int id = Interlocked.Increment(ref _lastId) & int.MaxValue;
            if (id != 0 && _sessions.TryAdd(id, session))
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
