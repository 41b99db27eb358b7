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
    // Idle backends, least recently used first: taken from the end (LIFO), or with server_round_robin from
    // the start. A list of at most pool_size entries, so taking the first is cheap and allocates nothing.
    private readonly List<ServerConnection> _idle = new();
    private readonly List<ServerConnection> _idleScratch = new();
    private readonly LinkedList<Relay> _waiters = new();
    private readonly HashSet<ServerConnection> _all = new();
    private readonly Dictionary<ServerConnection, bool> _cooling = new();
    private readonly CancelBudget _cancels;
    private readonly UserOptions? _userOptions;
    private readonly InternalQueryStep _check;
    private readonly InternalQueryStep _connectQuery;
    private ServerCredentials _credentials;
    private int _connecting;

    // Backends running server_check_query before they go to a waiting client.
    private int _checking;
    private bool _tickScheduled;

    // Logins that failed in a row because PostgreSQL could not be reached or was not accepting yet
    // (a restart); no login starts before _retryAt, and the clients keep waiting (query_wait_timeout).
    private int _loginFailures;
    private long _retryAt;
    private byte[]? _lastLoginError;

    // A login failed for a reason other than a restart and server_login_retry has not passed yet.
    private bool _loginLockedOut;
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

        // A [users] entry wins over the [databases] entry, which wins over the global setting (PgBouncer's order).
        _userOptions = proxy.Options.Users.GetValueOrDefault(user);
        Mode = _userOptions?.PoolMode ?? options.PoolMode ?? proxy.Options.PoolMode;
        Size = _userOptions?.PoolSize ?? options.PoolSize ?? proxy.Options.DefaultPoolSize;
        _cancels = new CancelBudget(this, proxy);
        _check = new InternalQueryStep(this, InternalQueryKind.Check);
        _connectQuery = new InternalQueryStep(this, InternalQueryKind.ConnectQuery);
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

    /// <summary>Backends the pool may open past <see cref="Size"/> for a client waiting longer than reserve_pool_timeout ([users], [databases], then global; read at use, so RELOAD applies it).</summary>
    public int ReserveSize => _userOptions?.ReservePoolSize ?? Options.ReservePoolSize ?? _proxy.Options.ReservePoolSize;

    /// <summary>
    /// Most backends a login may bring the pool to now: <see cref="Size"/>, plus <see cref="ReserveSize"/>
    /// while the longest-waiting client has waited reserve_pool_timeout (and the pool has logged in before,
    /// as PgBouncer's welcome message check).
    /// </summary>
    internal int LoginLimit
    {
        get
        {
            int reserve = ReserveSize;
            TimeSpan timeout = _proxy.Options.ReservePoolTimeout;
            if (reserve > 0 && timeout > TimeSpan.Zero && Welcome is not null
                && _waiters.First is { } first && Stopwatch.GetElapsedTime(first.Value.WaitStarted) >= timeout)
            {
                return Size + reserve;
            }

            return Size;
        }
    }

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
        long now = Stopwatch.GetTimestamp();
        while (!Paused && TryTakeIdle(out ServerConnection? server))
        {
            if (server.State != ServerState.Ready || server.Channel.Closed)
            {
                Drop(server);
                continue;
            }

            if (_proxy.Options.ServerCheckQuery is { } checkQuery && Stopwatch.GetElapsedTime(server.LastUsed, now) >= _proxy.Options.ServerCheckDelay)
            {
                // Idle past server_check_delay: checked first, on this loop without waiting for the answer.
                // The client queues below; the backend comes to it (or to whoever waits first) once the
                // check passes, and one that fails is closed and replaced (OnStepDone).
                _checking++;
                server.RunInternalQuery(checkQuery, _check);
                continue;
            }

            return server;
        }

        if (_loginLockedOut && Total == _connecting && !LoginDue)
        {
            FailLockedOut(client);
            return null;
        }

        // The session's own node is reused for every wait: queueing allocates nothing.
        LinkedListNode<Relay> node = client.QueueNode;
        _waiters.AddLast(node);
        client.WaitNode = node;
        client.WaitStarted = now;
        TimeSpan reserveTimeout = _proxy.Options.ReservePoolTimeout;
        if (_waiters.Count == 1 && reserveTimeout > TimeSpan.Zero && ReserveSize > 0)
        {
            // The reserve pool opens to the head of the queue once it has waited this long; the tick would
            // notice within a second, this notices on time.
            Loop.Schedule(_retryTimer ??= new RetryTimer(this), now + (long)(reserveTimeout.TotalSeconds * Stopwatch.Frequency));
        }

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
        if ((reset || _proxy.Options.ServerResetQueryAlways) && resetQuery.Length > 0)
        {
            if (server.PreparedStatements is { Count: > 0 } && ResetDeallocates(resetQuery))
            {
                // Transaction mode with server_reset_query_always: the reset drops the statements the
                // proxy prepared on this backend, so it forgets them and prepares them again when needed.
                server.PreparedStatements = null;
            }

            server.RunInternalQuery(resetQuery, this);
            return;
        }

        MakeAvailable(server);
    }

    /// <summary>
    /// Within server_login_retry of a failed login and no backend to wait for: the client gets the cached
    /// error at once rather than a wait, told from the loop's queue, not from inside Acquire. A method of its
    /// own, so that Acquire's hot path allocates no closure (a lambda capturing a parameter makes one at entry).
    /// </summary>
    private void FailLockedOut(Relay client)
    {
        byte[]? error = _lastLoginError;
        string reason = $"server login has been failing, cached error: {_lastLoginFailure} (server_login_retry)";
        Log.Info($"pool {Database}/{User}: {reason}");
        Loop.Post(() => client.OnServerUnavailable(error, reason));
    }

    /// <summary>Whether a reset query drops every prepared statement (DISCARD ALL, DEALLOCATE ALL).</summary>
    private static bool ResetDeallocates(string resetQuery) =>
        resetQuery.Contains("discard all", StringComparison.OrdinalIgnoreCase) || resetQuery.Contains("deallocate all", StringComparison.OrdinalIgnoreCase);

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

        _idle.Add(server);
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
        // Backends being opened or checked will each serve one waiter.
        while (!Paused && _waiters.Count > _connecting + _checking && LoginDue && _cancels.LeavesLoginRoom && _proxy.Pools.TryReserveConnection(this))
        {
            Launch();
        }
    }

    private void Launch()
    {
        if (Total >= Size)
        {
            Log.Warning($"pool {Database}/{User}: taking a connection from the reserve pool ({Total + 1} of {Size} + {ReserveSize})");
        }

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
        if (_loginFailures > 0)
        {
            Log.Info($"pool {Database}/{User}: backend login works again after {_loginFailures} failures");
            _loginFailures = 0;
            _loginLockedOut = false;
            _lastLoginError = null;
            _lastLoginFailure = null;
        }

        _proxy.Pools.RegisterBackend(server);
        Log.Write(LogLevel.Info, $"pool {Database}/{User}: server {server.Id} logged in (pid {server.BackendPid})");
        if (Options.ConnectQuery is { } connectQuery)
        {
            // Still counted as connecting: no client sees the backend before connect_query has run.
            server.RunInternalQuery(connectQuery, _connectQuery);
            return;
        }

        OnConnected(server);
    }

    /// <summary>A new backend is logged in (and connect_query has run): it serves the first waiter or goes idle.</summary>
    private void OnConnected(ServerConnection server)
    {
        _connecting--;
        Welcome ??= new Dictionary<string, ParameterStatus>(server.Parameters, StringComparer.OrdinalIgnoreCase);
        MakeAvailable(server);
    }

    /// <summary>The server_check_query or connect_query of <paramref name="server"/> has finished.</summary>
    private void OnStepDone(InternalQueryKind kind, ServerConnection server, bool ok)
    {
        server.Channel.SetHandler(this);
        bool usable = server.State == ServerState.Ready && !server.Channel.Closed && server.TransactionStatus == TransactionStatus.Idle;
        if (kind == InternalQueryKind.ConnectQuery)
        {
            if (!ok)
            {
                // PgBouncer logs a failing connect_query and uses the backend all the same.
                Log.Warning($"pool {Database}/{User}: connect_query failed on server {server.Id} (pid {server.BackendPid})");
            }

            if (usable)
            {
                OnConnected(server);
                return;
            }

            _connecting--;
        }
        else
        {
            _checking--;
            if (ok && usable)
            {
                MakeAvailable(server);
                return;
            }

            Log.Warning($"pool {Database}/{User}: server_check_query failed on server {server.Id} (pid {server.BackendPid}); closing it");
        }

        Drop(server);
        LaunchForWaiters();
    }

    /// <summary>What a query the pool runs before a backend serves a client is for.</summary>
    private enum InternalQueryKind
    {
        /// <summary>server_check_query on a backend idle past server_check_delay.</summary>
        Check,

        /// <summary>connect_query on a backend that just logged in.</summary>
        ConnectQuery,
    }

    /// <summary>Routes the end of a check or connect_query back to the pool; one instance per kind, so running one allocates nothing.</summary>
    private sealed class InternalQueryStep(ServerPool pool, InternalQueryKind kind) : IInternalQueryListener
    {
        public void OnInternalQueryDone(ServerConnection server, bool ok) => pool.OnStepDone(kind, server, ok);
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
            _loginLockedOut = false;
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
        TimeSpan retry = _proxy.Options.ServerLoginRetry;
        if (retry > TimeSpan.Zero)
        {
            // server_login_retry: no login before it has passed, and meanwhile a client that would wait
            // for a pool without a backend gets the cached error at once (PgBouncer's fast fail).
            _loginFailures++;
            _loginLockedOut = true;
            _lastLoginError = errorResponse;
            _lastLoginFailure = reason;
            _retryAt = Stopwatch.GetTimestamp() + (long)(retry.TotalSeconds * Stopwatch.Frequency);
            Loop.Schedule(_retryTimer ??= new RetryTimer(this), _retryAt);
        }

        // The first waiter gets PostgreSQL's own answer. When PostgreSQL refused the login itself and the
        // pool has no backend, so do the others, as PgBouncer does; otherwise they wait for the next attempt.
        bool all = errorResponse is not null && Total == _connecting;
        while (_waiters.First is { } first)
        {
            Relay client = first.Value;
            _waiters.RemoveFirst();
            client.WaitNode = null;
            client.OnServerUnavailable(errorResponse, reason);
            if (!all)
            {
                break;
            }
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
        _idle.Remove(server);
    }

    /// <summary>Takes an idle backend: the most recently used, or with server_round_robin the least recently used.</summary>
    private bool TryTakeIdle([System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out ServerConnection? server)
    {
        if (_idle.Count == 0)
        {
            server = null;
            return false;
        }

        int index = _proxy.Options.ServerRoundRobin ? 0 : _idle.Count - 1;
        server = _idle[index];
        _idle.RemoveAt(index);
        return true;
    }

    /// <summary>
    /// Empties the idle list into a scratch list, least recently used first, for the caller to add back
    /// what stays (in that order). The list is the pool's own, so the tick allocates nothing, and it is
    /// plain code rather than LINQ (see RuntimePreload).
    /// </summary>
    private List<ServerConnection> TakeIdle()
    {
        _idleScratch.Clear();
        _idleScratch.AddRange(_idle);
        _idle.Clear();
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
            _proxy.Pools.ReleaseConnection(this);
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
                    _idle.Add(server);
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
        while (LoginDue && _cancels.LeavesLoginRoom && Total < Math.Min(o.MinPoolSize, Size) && _proxy.Pools.TryReserveConnection(this))
        {
            Launch();
        }

        LaunchForWaiters();
        if (!Paused && _waiters.Count > _connecting + _checking && LoginDue && _cancels.LeavesLoginRoom)
        {
            // Room in the pool but none under max_db_connections or max_user_connections: ask another pool
            // of the same database or user to give up an idle backend.
            _proxy.Pools.EvictIdleFor(this);
        }

        Stats.Roll(now, (long)(o.StatsPeriod.TotalSeconds * Stopwatch.Frequency));
        Loop.Schedule(this, now + Stopwatch.Frequency);
    }

    /// <summary>Closes the least recently used idle backend, if any, for a pool that waits on a shared limit (<see cref="PoolManager.EvictIdleFor"/>).</summary>
    public void CloseOneIdle()
    {
        Debug.Assert(Loop.InLoop);
        if (_idle.Count > 0)
        {
            ServerConnection server = _idle[0];
            _idle.RemoveAt(0);
            Log.Write(LogLevel.Info, $"pool {Database}/{User}: closing idle server {server.Id} for a pool waiting on max_db_connections or max_user_connections");
            Drop(server);
        }
    }

    /// <summary>Closes every idle backend (shutdown); backends in use close with their clients.</summary>
    public void CloseIdle()
    {
        Debug.Assert(Loop.InLoop);
        while (TryTakeIdle(out ServerConnection? server))
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
        while (!paused && _waiters.Count > 0 && TryTakeIdle(out ServerConnection? server))
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
