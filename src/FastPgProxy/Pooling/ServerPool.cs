using System.Diagnostics;
using System.Net.Sockets;
using FastPgProxy.Cancellation;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Net;
using FastPgProxy.Protocol;
using FastPgProxy.Sessions;

namespace FastPgProxy.Pooling;

/// <summary>
/// The backends of one (database, user) pair. A pool lives on one loop, and so do all its backends and
/// all its clients (a client moves to its pool's loop right after StartupMessage), so handing a backend
/// from one client to the next is a plain method call on one thread.
/// </summary>
/// <remarks>
/// Idle backends wait with a zero-byte receive, holding no buffer, so a backend that PostgreSQL closes
/// while idle (restart, <c>pg_terminate_backend</c>) is noticed and dropped at once. Clients that find no
/// idle backend and no room to open one wait in FIFO order; each released backend goes to the head of the
/// queue. A one-second tick closes backends idle longer than <c>server_idle_timeout</c>, keeps
/// <c>min_pool_size</c> open, and times waiting clients out after <c>query_wait_timeout</c>. Cancel
/// connections count against the pool too (its <see cref="CancelBudget"/>).
/// </remarks>
internal sealed class ServerPool : IServerLoginListener, IChannelHandler, IInternalQueryListener, ILoopTimer
{
    private readonly ProxyServer _proxy;
    private readonly Stack<ServerConnection> _idle = new();
    private readonly List<ServerConnection> _idleScratch = new();
    private readonly LinkedList<Relay> _waiters = new();
    private readonly HashSet<ServerConnection> _all = new();
    private readonly Dictionary<ServerConnection, bool> _cooling = new();
    private readonly CancelBudget _cancels;
    private ServerCredentials _credentials;
    private int _connecting;
    private bool _tickScheduled;

    // Logins that failed in a row because PostgreSQL could not be reached or was not accepting yet
    // (a restart); no login starts before _retryAt, and the clients keep waiting (query_wait_timeout).
    private int _loginFailures;
    private long _retryAt;
    private byte[]? _lastLoginError;
    private string? _lastLoginFailure;
    private RetryTimer? _retryTimer;

    /// <summary>Creates an empty pool on <paramref name="loop"/>.</summary>
    public ServerPool(ProxyServer proxy, EventLoop loop, string database, string user, DatabaseOptions options, ServerCredentials credentials)
    {
        _proxy = proxy;
        Loop = loop;
        Database = database;
        User = user;
        Options = options;
        _credentials = credentials;
        Mode = options.PoolMode ?? proxy.Options.PoolMode;
        Size = options.PoolSize ?? proxy.Options.DefaultPoolSize;
        _cancels = new CancelBudget(this, proxy);
    }

    /// <summary>The loop that owns the pool, its backends and its clients.</summary>
    public EventLoop Loop { get; }

    /// <summary>The database name clients use.</summary>
    public string Database { get; }

    /// <summary>The user backends log in as.</summary>
    public string User { get; }

    /// <summary>The [databases] entry.</summary>
    public DatabaseOptions Options { get; }

    /// <summary>Session or transaction pooling.</summary>
    public PoolMode Mode { get; }

    /// <summary>Most backends this pool opens.</summary>
    public int Size { get; private set; }

    /// <summary>The ParameterStatus set of the first backend that logged in, sent to clients that log in while no backend is needed (transaction mode).</summary>
    public Dictionary<string, ParameterStatus>? Welcome { get; private set; }

    /// <summary>How this pool's PostgreSQL spells the start-up values clients sent their own way.</summary>
    public ParameterSpellings Spellings { get; } = new();

    /// <summary>Backends open or opening.</summary>
    public int Total => _all.Count;

    /// <summary>Cancel connections to PostgreSQL open now; loop only.</summary>
    public int CancelConnections => _cancels.Connections;

    /// <summary>Cancels waiting for a cancel connection; loop only.</summary>
    public int CancelsWaiting => _cancels.Waiting;

    /// <summary>Whether <paramref name="server"/> is one of this pool's backends (not yet closed and forgotten).</summary>
    internal bool Owns(ServerConnection server) => _all.Contains(server);

    /// <summary>
    /// Cancels the query running on <paramref name="server"/> with the backend's own key, now or when a
    /// cancel connection is free (<see cref="CancelBudget"/>). The backend stays out of the pool until the
    /// cancel is settled; <paramref name="cancelConnection"/> (a client's cancel connection) is closed when it is.
    /// </summary>
    public void CancelQuery(ServerConnection server, IDisposable? cancelConnection)
    {
        EnsureTick();
        _cancels.Cancel(server, cancelConnection);
    }

    /// <summary>A cancel connection closed: its slot may go to a waiting cancel or a login.</summary>
    internal void OnCancelSlotFreed() => LaunchForWaiters();

    /// <summary>Backends idle in the pool.</summary>
    public int IdleCount => _idle.Count;

    /// <summary>Backends being opened.</summary>
    public int ConnectingCount => _connecting;

    /// <summary>Clients waiting for a backend.</summary>
    public int WaitingCount => _waiters.Count;

    /// <summary>Uses the newest credentials a client brought (a SCRAM pass-through key, for example).</summary>
    public void UpdateCredentials(ServerCredentials credentials) => _credentials = credentials;

    /// <summary>
    /// Finds a backend for <paramref name="client"/>: an idle one at once (returned), or null after queueing
    /// the client, which then gets <see cref="Relay.OnServerAssigned"/> or
    /// <see cref="Relay.OnServerUnavailable"/> later.
    /// </summary>
    public ServerConnection? Acquire(Relay client)
    {
        Debug.Assert(Loop.InLoop);
        EnsureTick();
        while (!Paused && _idle.TryPop(out ServerConnection? server))
        {
            if (server.State == ServerState.Ready && !server.Channel.Closed)
            {
                return server;
            }

            Drop(server);
        }

        // The session's own node is reused for every wait: queueing allocates nothing.
        LinkedListNode<Relay> node = client.QueueNode;
        _waiters.AddLast(node);
        client.WaitNode = node;
        client.WaitStarted = Stopwatch.GetTimestamp();
        LaunchForWaiters();
        return null;
    }

    /// <summary>Takes a client out of the waiting queue (it closed, or timed out).</summary>
    public void RemoveWaiter(Relay client)
    {
        if (client.WaitNode is { } node)
        {
            _waiters.Remove(node);
            client.WaitNode = null;
        }
    }

    /// <summary>
    /// A client is done with <paramref name="server"/>. A backend that is not clean (mid-transaction,
    /// mid-COPY, a send outstanding) is closed; in session mode a clean one runs <c>server_reset_query</c>
    /// first; then it serves the next waiting client or goes idle.
    /// </summary>
    public void Release(ServerConnection server, bool clean, bool reset)
    {
        Debug.Assert(Loop.InLoop);
        server.Channel.SetHandler(this);
        if (!clean || server.State != ServerState.Ready || server.Channel.SendPending || server.CancelUnconfirmed)
        {
            // A cancel PostgreSQL received but never confirmed (cancel_timeout) could still interrupt
            // whatever the backend runs next: such a backend is closed, not handed on.
            Drop(server);
            LaunchForWaiters();
            return;
        }

        if (server.PendingCancels > 0)
        {
            // A cancel for the last client's query is still on its way to PostgreSQL: nobody gets this
            // backend until PostgreSQL has acted on it (OnCancelsDone). Cancels for it still waiting for a
            // cancel connection are for a request that has ended: they go now, not when their turn comes.
            _cooling[server] = reset;
            _cancels.DropEnded(server);
            return;
        }

        string resetQuery = _proxy.Options.ServerResetQuery;
        if (reset && resetQuery.Length > 0)
        {
            server.RunInternalQuery(resetQuery, this);
            return;
        }

        MakeAvailable(server);
    }

    /// <summary>The last pending cancel of a backend completed: a backend held back for it goes on to the pool.</summary>
    internal void OnCancelsDone(ServerConnection server)
    {
        Debug.Assert(Loop.InLoop);
        if (server.PendingCancels == 0 && _cooling.Remove(server, out bool reset))
        {
            Release(server, clean: server.State == ServerState.Ready && !server.Channel.Closed, reset);
        }
    }

    /// <summary>server_reset_timeout.</summary>
    public TimeSpan ResetTimeout => _proxy.Options.ServerResetTimeout;

    /// <summary>
    /// Takes a backend whose client left it busy (a query running, a transaction open) and makes it clean
    /// in the background; it joins the pool when done, or is closed.
    /// </summary>
    public void Drain(ServerConnection server, int expectedReadyForQuery, bool batchOpen, MessageFramer framer, bool reset)
    {
        Debug.Assert(Loop.InLoop);
        new ServerDrainer(this, server, expectedReadyForQuery, framer, reset).Start(batchOpen);
    }

    /// <summary>Backends held back until a forwarded cancel completes.</summary>
    public int CoolingCount => _cooling.Count;

    /// <inheritdoc/>
    public void OnInternalQueryDone(ServerConnection server, bool ok)
    {
        server.Channel.SetHandler(this);
        if (!ok || server.TransactionStatus != TransactionStatus.Idle)
        {
            Drop(server);
            LaunchForWaiters();
            return;
        }

        MakeAvailable(server);
    }

    private void MakeAvailable(ServerConnection server)
    {
        long now = Stopwatch.GetTimestamp();
        server.LastUsed = now;
        TimeSpan lifetime = _proxy.Options.ServerLifetime;
        if (lifetime > TimeSpan.Zero && Stopwatch.GetElapsedTime(server.CreatedAt, now) > lifetime)
        {
            Drop(server);
            LaunchForWaiters();
            return;
        }

        while (!Paused && _waiters.First is { } first)
        {
            Relay client = first.Value;
            _waiters.RemoveFirst();
            client.WaitNode = null;
            if (client.Session.State == SessionState.Closed)
            {
                continue;
            }

            Stats.AddWait(now - client.WaitStarted);

            client.OnServerAssigned(server);
            return;
        }

        _idle.Push(server);
        server.Channel.SetHandler(this);
        if (!server.Channel.ReceivePending && !server.Channel.Closed)
        {
            // Watch the idle backend: anything it sends now (a FATAL at shutdown, end of stream) means it is gone.
            server.Channel.Receive();
        }
    }

    /// <summary>
    /// Serves waiting cancels, then opens backends while clients wait for more than are being opened, within
    /// the pool and database limits.
    /// </summary>
    private void LaunchForWaiters()
    {
        _cancels.ServeWaiting();
        while (!Paused && _waiters.Count > _connecting && LoginDue && _cancels.LeavesLoginRoom && _proxy.Pools.TryReserveDatabaseConnection(Options))
        {
            Launch();
        }
    }

    private void Launch()
    {
        var server = new ServerConnection(Loop, Options, Options.DatabaseName ?? Database, _credentials, _proxy.Options.ServerConnectTimeout, _proxy.ServerTls, _proxy.Options.Keepalive)
        {
            Pool = this,
        };
        _all.Add(server);
        _connecting++;
        server.Connect(this);
    }

    /// <inheritdoc/>
    public void OnServerReady(ServerConnection server)
    {
        _connecting--;
        if (_loginFailures > 0)
        {
            Log.Info($"pool {Database}/{User}: backend login works again after {_loginFailures} failures");
            _loginFailures = 0;
            _lastLoginError = null;
            _lastLoginFailure = null;
        }

        Welcome ??= new Dictionary<string, ParameterStatus>(server.Parameters, StringComparer.OrdinalIgnoreCase);
        _proxy.Pools.RegisterBackend(server);
        Log.Write(LogLevel.Info, $"pool {Database}/{User}: server {server.Id} logged in (pid {server.BackendPid})");
        MakeAvailable(server);
    }

    /// <inheritdoc/>
    public void OnServerLoginFailed(ServerConnection server, byte[]? errorResponse, string reason)
    {
        _connecting--;
        server.Channel.SetHandler(this);
        Forget(server);

        // Quiescent already (PostgreSQL's FATAL or end of stream was read): no completion is left to free
        // its receive buffer. Otherwise the last completion comes to OnIdleEvent, which frees it.
        server.DisposeWhenQuiescent();

        if (Welcome is not null && IsRestartFailure(server, errorResponse))
        {
            // PostgreSQL worked for this pool before and is down or starting: the clients wait while the
            // login is tried again with back-off (50 ms doubling to 1 s), until query_wait_timeout.
            _loginFailures++;
            _lastLoginError = errorResponse;
            _lastLoginFailure = reason;
            long delay = Stopwatch.Frequency / 20 << Math.Min(_loginFailures - 1, 4);
            _retryAt = Stopwatch.GetTimestamp() + Math.Min(delay, Stopwatch.Frequency);
            if (_loginFailures == 1 || _loginFailures % 20 == 0)
            {
                Log.Warning($"pool {Database}/{User}: backend login failed ({reason}); clients wait while it is tried again (failure {_loginFailures})");
            }

            Loop.Schedule(_retryTimer ??= new RetryTimer(this), _retryAt);
            return;
        }

        Log.Warning($"pool {Database}/{User}: backend login failed: {reason}");

        // The first waiter gets PostgreSQL's own answer; the others keep waiting for the next attempt.
        if (_waiters.First is { } first)
        {
            Relay client = first.Value;
            _waiters.RemoveFirst();
            client.WaitNode = null;
            client.OnServerUnavailable(errorResponse, reason);
        }

        LaunchForWaiters();
    }

    /// <summary>
    /// Whether a failed login is what a PostgreSQL restart looks like: no connection (refused, reset,
    /// timed out), or a refusal for now: 57P03 (starting up, shutting down, in recovery) or 57P01/57P02
    /// (shut down or crashed while the login ran).
    /// </summary>
    private static bool IsRestartFailure(ServerConnection server, byte[]? errorResponse)
    {
        if (errorResponse is null)
        {
            return server.FailedToConnect;
        }

        return ErrorFields.SqlStateOf(errorResponse) is SqlState.CannotConnectNow or SqlState.AdminShutdown or SqlState.CrashShutdown;
    }

    /// <summary>Whether a login may start now: not while a failed one waits out its back-off.</summary>
    private bool LoginDue => _loginFailures == 0 || Stopwatch.GetTimestamp() >= _retryAt;

    /// <summary>Starts the login that a back-off held back (LaunchForWaiters checks that it is due).</summary>
    private sealed class RetryTimer(ServerPool pool) : ILoopTimer
    {
        public void OnTimer(long dueTimestamp) => pool.LaunchForWaiters();
    }

    /// <inheritdoc/>
    public void OnReceive(Channel channel, int bytes, SocketError error) => OnIdleEvent(channel);

    /// <inheritdoc/>
    public void OnSend(Channel channel, SocketError error) => OnIdleEvent(channel);

    /// <inheritdoc/>
    public void OnConnect(Channel channel, SocketError error) => OnIdleEvent(channel);

    /// <summary>An idle (or closing) backend's socket finished an operation: anything but a close is unexpected.</summary>
    private void OnIdleEvent(Channel channel)
    {
        foreach (ServerConnection server in _all)
        {
            if (server.Channel == channel)
            {
                if (server.State != ServerState.Closed)
                {
                    Log.Write(LogLevel.Info, $"pool {Database}/{User}: idle server {server.Id} (pid {server.BackendPid}) closed or sent data; dropping it");
                    _cooling.Remove(server);
                    RemoveIdle(server);
                    Drop(server);
                    LaunchForWaiters();
                }
                else
                {
                    server.DisposeWhenQuiescent();
                }

                return;
            }
        }

        // A backend already forgotten: its last completion.
        if (channel.Closed && channel.Quiescent)
        {
            channel.Dispose();
        }
    }

    private void RemoveIdle(ServerConnection server)
    {
        if (!_idle.Contains(server))
        {
            return;
        }

        foreach (ServerConnection idle in TakeIdle())
        {
            if (idle != server)
            {
                _idle.Push(idle);
            }
        }
    }

    /// <summary>
    /// Empties the idle stack into a scratch list, least recently used first, for the caller to push back
    /// what stays (in that order, so the most recently used is on top again). The list is the pool's own,
    /// so the tick allocates nothing, and it is plain code rather than LINQ (see RuntimePreload).
    /// </summary>
    private List<ServerConnection> TakeIdle()
    {
        _idleScratch.Clear();
        while (_idle.TryPop(out ServerConnection? server))
        {
            _idleScratch.Add(server);
        }

        _idleScratch.Reverse();
        return _idleScratch;
    }

    /// <summary>Closes a backend and forgets it; its socket is released once quiescent.</summary>
    public void Drop(ServerConnection server)
    {
        server.Channel.SetHandler(this);
        server.Close();
        Forget(server);
        server.DisposeWhenQuiescent();
    }

    private void Forget(ServerConnection server)
    {
        if (_all.Remove(server))
        {
            _proxy.Pools.ReleaseDatabaseConnection(Options);
            _proxy.Pools.UnregisterBackend(server);
        }
    }

    private void EnsureTick()
    {
        if (!_tickScheduled)
        {
            _tickScheduled = true;
            Loop.Schedule(this, Stopwatch.GetTimestamp() + Stopwatch.Frequency);
        }
    }

    /// <summary>Once a second: idle timeout, lifetime, waiting timeouts (clients and cancels), min_pool_size, retries for waiters, the end of a stats_period.</summary>
    public void OnTimer(long dueTimestamp)
    {
        long now = Stopwatch.GetTimestamp();
        ProxyOptions o = _proxy.Options;
        if (_idle.Count > 0 && Total > o.MinPoolSize)
        {
            foreach (ServerConnection server in TakeIdle())
            {
                bool idleTooLong = o.ServerIdleTimeout > TimeSpan.Zero && Stopwatch.GetElapsedTime(server.LastUsed, now) > o.ServerIdleTimeout;
                bool tooOld = o.ServerLifetime > TimeSpan.Zero && Stopwatch.GetElapsedTime(server.CreatedAt, now) > o.ServerLifetime;
                if ((idleTooLong || tooOld) && Total > o.MinPoolSize)
                {
                    // Drop forgets it at once, so Total counts what is left.
                    Log.Write(LogLevel.Info, $"pool {Database}/{User}: closing idle server {server.Id}");
                    Drop(server);
                }
                else
                {
                    _idle.Push(server);
                }
            }
        }

        if (o.QueryWaitTimeout > TimeSpan.Zero)
        {
            while (_waiters.First is { } first && Stopwatch.GetElapsedTime(first.Value.WaitStarted, now) > o.QueryWaitTimeout)
            {
                Relay client = first.Value;
                _waiters.RemoveFirst();
                client.WaitNode = null;
                if (_loginFailures > 0)
                {
                    // Waited out a PostgreSQL that never came back: say why, not just that time is up.
                    client.OnServerUnavailable(_lastLoginError, _lastLoginFailure!);
                }
                else
                {
                    client.OnWaitTimeout();
                }
            }
        }

        _cancels.ExpireWaiting(now);
        while (LoginDue && _cancels.LeavesLoginRoom && Total < Math.Min(o.MinPoolSize, Size) && _proxy.Pools.TryReserveDatabaseConnection(Options))
        {
            Launch();
        }

        LaunchForWaiters();
        Stats.Roll(now, (long)(o.StatsPeriod.TotalSeconds * Stopwatch.Frequency));
        Loop.Schedule(this, now + Stopwatch.Frequency);
    }

    /// <summary>Closes every idle backend (shutdown); backends in use close with their clients.</summary>
    public void CloseIdle()
    {
        Debug.Assert(Loop.InLoop);
        while (_idle.TryPop(out ServerConnection? server))
        {
            Drop(server);
        }
    }

    /// <summary>Changes the pool size (RELOAD); takes effect for new backends.</summary>
    public void Resize(int size) => Size = size;

    /// <summary>Traffic totals for the admin console (SHOW STATS); loop-owned.</summary>
    public PoolStats Stats { get; } = new();

    /// <summary>
    /// PAUSE: no backend is handed out or opened; clients that need one wait (query_wait_timeout still
    /// applies), while clients that hold one finish what they run. Loop-owned.
    /// </summary>
    public bool Paused { get; private set; }

    /// <summary>Pauses or resumes the pool (PAUSE, RESUME); on resume, idle backends go to the waiting clients first.</summary>
    public void SetPaused(bool paused)
    {
        Debug.Assert(Loop.InLoop);
        Paused = paused;
        while (!paused && _waiters.Count > 0 && _idle.TryPop(out ServerConnection? server))
        {
            if (server.State == ServerState.Ready && !server.Channel.Closed)
            {
                MakeAvailable(server);
            }
            else
            {
                Drop(server);
            }
        }

        LaunchForWaiters();
    }

    /// <summary>Marks a pool created during a PAUSE paused; only before it is published, when no other thread can see it.</summary>
    public void StartPaused() => Paused = true;

    /// <summary>Every backend open or opening (admin console); loop only.</summary>
    public IReadOnlyCollection<ServerConnection> Servers => _all;

    /// <summary>Whether <paramref name="server"/> sits idle in the pool (admin console); loop only.</summary>
    public bool IsIdle(ServerConnection server) => _idle.Contains(server);

    /// <summary>When the longest-waiting client started waiting (<see cref="Stopwatch"/> ticks), 0 when none waits; loop only.</summary>
    public long OldestWaitStarted => _waiters.First?.Value.WaitStarted ?? 0;
}
