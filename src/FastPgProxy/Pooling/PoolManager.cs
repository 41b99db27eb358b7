using System.Collections.Concurrent;
using System.Net;
using System.Runtime.CompilerServices;
using FastPgProxy.Config;
using FastPgProxy.Hosting;

namespace FastPgProxy.Pooling;

/// <summary>Finds or creates the pool of a (database, user) pair, and counts backends per database and per user for max_db_connections and max_user_connections.</summary>
internal sealed class PoolManager
{
    private readonly ProxyServer _proxy;
    private readonly ConcurrentDictionary<(string Database, string User), ServerPool> _pools = new();
    private readonly ConcurrentDictionary<DatabaseOptions, StrongBox<int>> _perDatabase = new();
    private readonly ConcurrentDictionary<string, StrongBox<int>> _perUser = new(StringComparer.Ordinal);

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

    /// <summary>
    /// Takes one of the pool's database's max_db_connections slots and one of its user's max_user_connections
    /// slots; false, taking neither, when either is used up. Any thread.
    /// </summary>
    public bool TryReserveConnection(ServerPool pool)
    {
        StrongBox<int> database = _perDatabase.GetOrAdd(pool.Options, static _ => new StrongBox<int>());
        if (!TryTake(database, MaxDbConnections(pool.Options)))
        {
            return false;
        }

        StrongBox<int> user = _perUser.GetOrAdd(pool.User, static _ => new StrongBox<int>());
        if (!TryTake(user, MaxUserConnections(pool.User)))
        {
            Interlocked.Decrement(ref database.Value);
            return false;
        }

        return true;
    }

    /// <summary>Gives back the slots <see cref="TryReserveConnection"/> took. Any thread.</summary>
    public void ReleaseConnection(ServerPool pool)
    {
        if (_perDatabase.TryGetValue(pool.Options, out StrongBox<int>? database))
        {
            Interlocked.Decrement(ref database.Value);
        }

        if (_perUser.TryGetValue(pool.User, out StrongBox<int>? user))
        {
            Interlocked.Decrement(ref user.Value);
        }
    }

    /// <summary>Backends of <paramref name="user"/> open or opening over all databases (admin console, tests). Any thread.</summary>
    public int UserConnections(string user) => _perUser.TryGetValue(user, out StrongBox<int>? count) ? Volatile.Read(ref count.Value) : 0;

    /// <summary>The max_db_connections of a [databases] entry: its own, else the global one (0: no limit).</summary>
    private int MaxDbConnections(DatabaseOptions database) => database.MaxDbConnections ?? _proxy.Options.MaxDbConnections;

    /// <summary>The max_user_connections of <paramref name="user"/>: its [users] entry, else the global one (0 in either means the global one, then no limit, as PgBouncer).</summary>
    private int MaxUserConnections(string user) =>
        _proxy.Options.Users.GetValueOrDefault(user)?.MaxUserConnections is > 0 and int own ? own : _proxy.Options.MaxUserConnections;

    // IdleCount is read off the pool's loop here: a hint only; CloseOneIdle finds out on the loop.

    /// <summary>
    /// A pool whose clients wait found the database or user limit used up: one idle backend of another pool
    /// with the same database entry or user is closed on its own loop, so that the limit lets the waiting
    /// pool open one (PgBouncer's eviction). Called from a pool's once-a-second tick, so it closes at most
    /// one backend per waiting pool and second.
    /// </summary>
    public void EvictIdleFor(ServerPool waiting)
    {
        bool userFull = MaxUserConnections(waiting.User) is > 0 and int maxUser && UserConnections(waiting.User) >= maxUser;
        int maxDb = MaxDbConnections(waiting.Options);
        bool databaseFull = maxDb > 0 && _perDatabase.TryGetValue(waiting.Options, out StrongBox<int>? db) && Volatile.Read(ref db.Value) >= maxDb;
        if (!userFull && !databaseFull)
        {
            return;
        }

        foreach (ServerPool pool in _pools.Values)
        {
            if (pool != waiting && ((userFull && pool.User == waiting.User) || (databaseFull && pool.Options == waiting.Options)) && pool.IdleCount > 0)
            {
                pool.Loop.Post(pool.CloseOneIdle);
                return;
            }
        }
    }

    private static bool TryTake(StrongBox<int> count, int max)
    {
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
