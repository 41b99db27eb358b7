using System.Collections.Concurrent;
using System.Net;
using System.Runtime.CompilerServices;
using FastPgProxy.Config;
using FastPgProxy.Hosting;

namespace FastPgProxy.Pooling;

/// <summary>Finds or creates the pool of a (database, user) pair, and counts backends per database for max_db_connections.</summary>
internal sealed class PoolManager
{
    private readonly ProxyServer _proxy;
    private readonly ConcurrentDictionary<(string Database, string User), ServerPool> _pools = new();
    private readonly ConcurrentDictionary<DatabaseOptions, StrongBox<int>> _perDatabase = new();

    // Every logged-in backend of this instance by its PostgreSQL pid (BackendKeyData), so a relay can name
    // the session behind the pid of a NotificationResponse. Written when a login completes and when the
    // backend is forgotten, read only for NotificationResponse: never on the per-message path.
    private readonly ConcurrentDictionary<int, ServerConnection> _byBackendPid = new();

    /// <summary>Creates the manager.</summary>
    public PoolManager(ProxyServer proxy) => _proxy = proxy;

    /// <summary>Every pool.</summary>
    public ICollection<ServerPool> Pools => _pools.Values;

    /// <summary>The pool for a client database and server user; a new pool is placed on the next loop.</summary>
    public ServerPool Get(string database, string user, DatabaseOptions options, ServerCredentials credentials) =>
        _pools.GetOrAdd((database, user), key => CreatePool(key.Database, key.User, options, credentials));

    /// <summary>Takes one of the database's max_db_connections slots; false when none is left.</summary>
    public bool TryReserveDatabaseConnection(DatabaseOptions database)
    {
        int max = _proxy.Options.MaxDbConnections;
        StrongBox<int> count = _perDatabase.GetOrAdd(database, _ => new StrongBox<int>());
        while (true)
        {
            int current = Volatile.Read(ref count.Value);
            if (max > 0 && current >= max)
            {
                return false;
            }

            if (Interlocked.CompareExchange(ref count.Value, current + 1, current) == current)
            {
                return true;
            }
        }
    }

    /// <summary>Gives a max_db_connections slot back.</summary>
    public void ReleaseDatabaseConnection(DatabaseOptions database)
    {
        if (_perDatabase.TryGetValue(database, out StrongBox<int>? count))
        {
            Interlocked.Decrement(ref count.Value);
        }
    }

    /// <summary>
    /// Records a backend whose login completed under its PostgreSQL pid; any thread. A pid PostgreSQL
    /// reuses after a backend of ours exited replaces the old entry.
    /// </summary>
    public void RegisterBackend(ServerConnection server)
    {
        if (server.HasCancelKey)
        {
            _byBackendPid[server.BackendPid] = server;
        }
    }

    /// <summary>Forgets a backend that closed; an entry a newer backend with the same pid made stays. Any thread.</summary>
    public void UnregisterBackend(ServerConnection server)
    {
        if (server.HasCancelKey)
        {
            _byBackendPid.TryRemove(new KeyValuePair<int, ServerConnection>(server.BackendPid, server));
        }
    }

    /// <summary>
    /// The logged-in backend of this instance with PostgreSQL pid <paramref name="backendPid"/> on the
    /// PostgreSQL at <paramref name="endPoint"/>; null for a backend not opened by this instance (another
    /// client of PostgreSQL, another proxy instance) or one on another server whose pid happens to match.
    /// Any thread; allocates nothing.
    /// </summary>
    public ServerConnection? FindBackend(int backendPid, EndPoint endPoint) =>
        _byBackendPid.TryGetValue(backendPid, out ServerConnection? server) && server.EndPoint.Equals(endPoint) ? server : null;

    // PAUSE state, kept here as well as on each pool so that a pool created during a PAUSE starts paused.
    private readonly object _pauseGate = new();
    private readonly HashSet<string> _pausedDatabases = new(StringComparer.Ordinal);
    private bool _pausedAll;

    /// <summary>Whether pools of <paramref name="database"/> should hand out no backends (PAUSE); any thread.</summary>
    public bool IsPaused(string database)
    {
        lock (_pauseGate)
        {
            return _pausedAll || _pausedDatabases.Contains(database);
        }
    }

    /// <summary>
    /// Records PAUSE or RESUME for one database, or for all when <paramref name="database"/> is null
    /// (RESUME without a database resumes every one). The pools themselves are told on their loops.
    /// </summary>
    public void SetPaused(string? database, bool paused)
    {
        lock (_pauseGate)
        {
            if (database is null)
            {
                _pausedAll = paused;
                if (!paused)
                {
                    _pausedDatabases.Clear();
                }
            }
            else if (paused)
            {
                _pausedDatabases.Add(database);
            }
            else
            {
                _pausedDatabases.Remove(database);
            }
        }
    }

    private ServerPool CreatePool(string database, string user, DatabaseOptions options, ServerCredentials credentials)
    {
        var pool = new ServerPool(_proxy, _proxy.Loops.Next(), database, user, options, credentials);
        if (IsPaused(database))
        {
            pool.StartPaused();
        }

        return pool;
    }
}
