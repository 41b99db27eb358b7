using System.Diagnostics;
using System.Net.Sockets;
using FastPgProxy.Hosting;
using FastPgProxy.Pooling;

namespace FastPgProxy.Cancellation;

/// <summary>
/// One pool's cancel connections to PostgreSQL. A cancel connection counts against the pool as a backend
/// does, and cancels may go beyond <c>pool_size</c> by up to <c>max_cancel_connections</c>. Past that they
/// wait in FIFO order, and every connection slot that frees up goes to a waiting cancel before any backend
/// login may use it. A waiting cancel is dropped when it has waited <c>cancel_wait_timeout</c>, or when the
/// request it was meant for ended meanwhile. Owned by its pool, on the pool's loop.
/// </summary>
internal sealed class CancelBudget
{
    private readonly ServerPool _pool;
    private readonly ProxyServer _proxy;
    private readonly Queue<WaitingCancel> _waiting = new();
    private int _connections;
    private bool _serving;

    /// <summary>Budgets the cancel connections of <paramref name="pool"/>.</summary>
    public CancelBudget(ServerPool pool, ProxyServer proxy)
    {
        _pool = pool;
        _proxy = proxy;
    }

    /// <summary>Cancel connections to PostgreSQL open now; loop only.</summary>
    public int Connections => _connections;

    /// <summary>Cancels waiting for a cancel connection; loop only.</summary>
    public int Waiting => _waiting.Count;

    /// <summary>Whether a backend login may take a connection slot: within pool_size (and the reserve pool when due), cancel connections included, and no cancel waiting.</summary>
    public bool LeavesLoginRoom => _waiting.Count == 0 && _pool.Total + _connections < _pool.LoginLimit;

    /// <summary>Room for one more cancel connection: pool_size plus max_cancel_connections, backends included.</summary>
    private bool HasRoom => _pool.Total + _connections < _pool.Size + _proxy.Options.MaxCancelConnections;

    /// <summary>
    /// Cancels the query running on <paramref name="server"/> with the backend's own key, now or when a
    /// cancel connection is free. The backend stays out of the pool until the cancel is settled.
    /// <paramref name="cancelConnection"/> (a client's cancel connection) is closed when it is.
    /// </summary>
    public void Cancel(ServerConnection server, IDisposable? cancelConnection)
    {
        Debug.Assert(_pool.Loop.InLoop && server.Pool == _pool);
        server.PendingCancels++;
        if (_waiting.Count == 0 && HasRoom)
        {
            Forward(server, cancelConnection);
            return;
        }

        _waiting.Enqueue(new WaitingCancel(server, cancelConnection, server.ReadyCount, Stopwatch.GetTimestamp()));
        Log.Debug($"pool {_pool.Database}/{_pool.User}: cancel for server {server.Id} waits for a cancel connection ({_connections} open, {_waiting.Count} waiting)");
    }

    /// <summary>Gives free connection slots to waiting cancels, oldest first; the pool runs this before it considers any login.</summary>
    public void ServeWaiting()
    {
        if (_serving)
        {
            return;
        }

        _serving = true;
        try
        {
            while (_waiting.Count > 0 && HasRoom)
            {
                WaitingCancel cancel = _waiting.Dequeue();
                ServerConnection server = cancel.Server;
                if (IsWaitOver(cancel, Stopwatch.GetTimestamp()))
                {
                    DropWaiting(cancel, timedOut: true);
                }
                else if (RequestEnded(cancel) || server.State == ServerState.Closed || !_pool.Owns(server))
                {
                    DropWaiting(cancel, timedOut: false);
                }
                else
                {
                    Forward(server, cancel.Connection);
                }
            }
        }
        finally
        {
            _serving = false;
        }
    }

    /// <summary>
    /// <paramref name="server"/> went back with cancels for it still waiting: the request they were meant
    /// for has ended, so they are dropped now rather than holding the backend until their turn.
    /// </summary>
    public void DropEnded(ServerConnection server)
    {
        List<WaitingCancel>? ended = null;
        for (int i = _waiting.Count; i > 0; i--)
        {
            WaitingCancel cancel = _waiting.Dequeue();
            if (cancel.Server == server && RequestEnded(cancel))
            {
                (ended ??= new List<WaitingCancel>()).Add(cancel);
            }
            else
            {
                _waiting.Enqueue(cancel);
            }
        }

        if (ended is not null)
        {
            foreach (WaitingCancel cancel in ended)
            {
                DropWaiting(cancel, timedOut: false);
            }
        }
    }

    /// <summary>Drops cancels that waited longer than cancel_wait_timeout (the queue is oldest first).</summary>
    public void ExpireWaiting(long now)
    {
        while (_waiting.TryPeek(out WaitingCancel cancel) && IsWaitOver(cancel, now))
        {
            _waiting.Dequeue();
            DropWaiting(cancel, timedOut: true);
        }
    }

    private void Forward(ServerConnection server, IDisposable? cancelConnection)
    {
        _connections++;
        _ = CancelForwarder.ForwardAsync(
            cancelConnection,
            server.CancelTarget,
            _proxy.Options.CancelTimeout,
            _proxy.CancelStats,
            confirmed => _pool.Loop.Post(() => OnConnectionClosed(server, confirmed)));
    }

    private void OnConnectionClosed(ServerConnection server, bool confirmed)
    {
        _connections--;
        server.CancelUnconfirmed |= !confirmed;
        Settle(server);
        _pool.OnCancelSlotFreed();
    }

    /// <summary>One cancel of <paramref name="server"/> is over; a backend held back for it may go on to the pool.</summary>
    private void Settle(ServerConnection server)
    {
        server.PendingCancels--;
        _pool.OnCancelsDone(server);
    }

    /// <summary>The backend answered ReadyForQuery since the cancel started waiting: what it was meant for has ended.</summary>
    private static bool RequestEnded(WaitingCancel cancel) => cancel.Server.ReadyCount != cancel.ReadyCount;

    private bool IsWaitOver(WaitingCancel cancel, long now) =>
        Stopwatch.GetElapsedTime(cancel.Since, now) >= _proxy.Options.CancelWaitTimeout;

    private void DropWaiting(WaitingCancel cancel, bool timedOut)
    {
        if (timedOut)
        {
            _proxy.CancelStats.OnWaitTimedOut();
            Log.Warning($"pool {_pool.Database}/{_pool.User}: cancel for server {cancel.Server.Id} dropped: no cancel connection free within cancel_wait_timeout");
        }
        else
        {
            _proxy.CancelStats.OnDroppedIdle();
            Log.Debug($"pool {_pool.Database}/{_pool.User}: waiting cancel for server {cancel.Server.Id} dropped: its request ended");
        }

        cancel.Connection?.Dispose();
        Settle(cancel.Server);
    }

    private readonly record struct WaitingCancel(ServerConnection Server, IDisposable? Connection, long ReadyCount, long Since);
}
