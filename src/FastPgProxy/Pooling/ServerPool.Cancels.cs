using System.Diagnostics;
using System.Net.Sockets;
using FastPgProxy.Cancellation;
using FastPgProxy.Hosting;

namespace FastPgProxy.Pooling;

/// <summary>
/// The pool's cancel connections. A cancel connection to PostgreSQL counts against the pool as a backend
/// does, and cancels may go beyond <c>pool_size</c> by up to <c>max_cancel_connections</c>. Past that they
/// wait in FIFO order, and every connection slot that frees up goes to a waiting cancel before any backend
/// login may use it. A waiting cancel is dropped when it has waited <c>cancel_wait_timeout</c>, or when the
/// request it was meant for ended meanwhile. Loop-owned, like the rest of the pool.
/// </summary>
internal sealed partial class ServerPool
{
    private readonly Queue<WaitingCancel> _waitingCancels = new();
    private int _cancelConnections;
    private bool _servingCancels;

    /// <summary>Cancel connections to PostgreSQL open now; loop only.</summary>
    public int CancelConnections => _cancelConnections;

    /// <summary>Cancels waiting for a cancel connection; loop only.</summary>
    public int CancelsWaiting => _waitingCancels.Count;

    /// <summary>Room for one more cancel connection: pool_size plus max_cancel_connections, backends included.</summary>
    private bool HasCancelRoom => Total + _cancelConnections < Size + _proxy.Options.MaxCancelConnections;

    /// <summary>Room for one more backend login: within pool_size, cancel connections included, and no cancel waiting.</summary>
    private bool HasLoginRoom => _waitingCancels.Count == 0 && Total + _cancelConnections < Size;

    /// <summary>
    /// Cancels the query running on <paramref name="server"/> with the backend's own key, now or when a
    /// cancel connection is free. The backend stays out of the pool until the cancel is settled.
    /// <paramref name="cancelSocket"/> (a client's cancel connection) is closed when it is.
    /// </summary>
    public void CancelQuery(ServerConnection server, Socket? cancelSocket)
    {
        Debug.Assert(Loop.InLoop && server.Pool == this);
        EnsureTick();
        server.PendingCancels++;
        if (_waitingCancels.Count == 0 && HasCancelRoom)
        {
            Forward(server, cancelSocket);
            return;
        }

        _waitingCancels.Enqueue(new WaitingCancel(server, cancelSocket, server.ReadyCount, Stopwatch.GetTimestamp()));
        Log.Debug($"pool {Database}/{User}: cancel for server {server.Id} waits for a cancel connection ({_cancelConnections} open, {_waitingCancels.Count} waiting)");
    }

    private void Forward(ServerConnection server, Socket? cancelSocket)
    {
        _cancelConnections++;
        _ = CancelForwarder.ForwardAsync(
            cancelSocket,
            server.CancelTarget,
            _proxy.Options.CancelTimeout,
            _proxy.CancelStats,
            confirmed => Loop.Post(() => OnCancelConnectionClosed(server, confirmed)));
    }

    private void OnCancelConnectionClosed(ServerConnection server, bool confirmed)
    {
        _cancelConnections--;
        server.CancelUnconfirmed |= !confirmed;
        Settle(server);
        LaunchForWaiters();
    }

    /// <summary>One cancel of <paramref name="server"/> is over; a backend held back for it may go on to the pool.</summary>
    private void Settle(ServerConnection server)
    {
        server.PendingCancels--;
        OnCancelsDone(server);
    }

    /// <summary>Gives free connection slots to waiting cancels, oldest first; runs before any login is considered.</summary>
    private void ServeWaitingCancels()
    {
        if (_servingCancels)
        {
            return;
        }

        _servingCancels = true;
        try
        {
            while (_waitingCancels.Count > 0 && HasCancelRoom)
            {
                WaitingCancel cancel = _waitingCancels.Dequeue();
                ServerConnection server = cancel.Server;
                if (IsWaitOver(cancel, Stopwatch.GetTimestamp()))
                {
                    DropWaiting(cancel, timedOut: true);
                }
                else if (RequestEnded(cancel) || server.State == ServerState.Closed || !_all.Contains(server))
                {
                    DropWaiting(cancel, timedOut: false);
                }
                else
                {
                    Forward(server, cancel.Socket);
                }
            }
        }
        finally
        {
            _servingCancels = false;
        }
    }

    /// <summary>
    /// <paramref name="server"/> went back with cancels for it still waiting: the request they were meant
    /// for has ended, so they are dropped now rather than holding the backend until their turn.
    /// </summary>
    private void DropEndedWaitingCancels(ServerConnection server)
    {
        List<WaitingCancel>? ended = null;
        for (int i = _waitingCancels.Count; i > 0; i--)
        {
            WaitingCancel cancel = _waitingCancels.Dequeue();
            if (cancel.Server == server && RequestEnded(cancel))
            {
                (ended ??= new List<WaitingCancel>()).Add(cancel);
            }
            else
            {
                _waitingCancels.Enqueue(cancel);
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
    private void ExpireWaitingCancels(long now)
    {
        while (_waitingCancels.TryPeek(out WaitingCancel cancel) && IsWaitOver(cancel, now))
        {
            _waitingCancels.Dequeue();
            DropWaiting(cancel, timedOut: true);
        }
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
            Log.Warning($"pool {Database}/{User}: cancel for server {cancel.Server.Id} dropped: no cancel connection free within cancel_wait_timeout");
        }
        else
        {
            _proxy.CancelStats.OnDroppedIdle();
            Log.Debug($"pool {Database}/{User}: waiting cancel for server {cancel.Server.Id} dropped: its request ended");
        }

        cancel.Socket?.Dispose();
        Settle(cancel.Server);
    }

    private readonly record struct WaitingCancel(ServerConnection Server, Socket? Socket, long ReadyCount, long Since);
}
