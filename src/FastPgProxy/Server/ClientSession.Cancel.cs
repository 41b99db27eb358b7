using System.Net.Sockets;
using FastPgProxy.Protocol;

namespace FastPgProxy.Server;

/// <summary>
/// Cancels bound to the query running when they are issued. Whatever starts a cancel (a CancelRequest, a
/// <c>pg_cancel_backend</c>, a termination), the decision is made on the session's own loop: a query is
/// running on an attached backend, so the backend's own key goes to PostgreSQL and the backend is held out
/// of the pool until PostgreSQL has closed the cancel connection; the session waits in the pool's queue,
/// so its pending query is answered 57014 without touching PostgreSQL; or nothing runs, and the cancel is
/// dropped. A cancel can therefore never reach another client's query on a reused backend.
/// </summary>
internal sealed partial class ClientSession
{
    /// <summary>Asks this session's loop to cancel its running query; <paramref name="cancelSocket"/> (a client's cancel connection) is closed when done. Any thread.</summary>
    public void RequestCancel(Socket? cancelSocket) => Loop.Post(() =>
    {
        CancelStats stats = _proxy.CancelStats;
        if (State == SessionState.Active && WaitNode is not null)
        {
            stats.OnQueued();
            cancelSocket?.Dispose();
            AnswerQueuedCancel();
            return;
        }

        if (State != SessionState.Active || _server is null || ServerIsClean())
        {
            stats.OnDroppedIdle();
            Log.Debug($"session {Id}: cancel dropped, no query running");
            cancelSocket?.Dispose();
            return;
        }

        CancelRunningQuery(cancelSocket);
    });

    /// <summary>Sends the backend's own CancelRequest and holds the backend until PostgreSQL has acted. Loop only.</summary>
    private void CancelRunningQuery(Socket? cancelSocket)
    {
        ServerConnection server = _server!;
        if (!server.HasCancelKey)
        {
            _proxy.CancelStats.OnNoBackend();
            cancelSocket?.Dispose();
            return;
        }

        server.PendingCancels++;
        CancelTarget target = server.CancelTarget;
        Net.EventLoop loop = Loop;
        _ = CancelForwarder.ForwardAsync(
            cancelSocket,
            target,
            _proxy.Options.CancelTimeout,
            _proxy.CancelStats,
            () => loop.Post(() =>
            {
                server.PendingCancels--;
                if (server.PendingCancels == 0 && server != _server)
                {
                    // Handed back meanwhile: the pool held it for this moment.
                    server.Pool?.OnCancelsDone(server);
                }
            }),
            _proxy.CancelGuard,
            _proxy.Options.CancelWaitTimeout);
    }

    /// <summary>
    /// The client waits for a backend and cancels: its pending query (the first Query, or the extended
    /// batch up to Sync) is answered ERROR 57014 and ReadyForQuery without touching PostgreSQL.
    /// </summary>
    private void AnswerQueuedCancel()
    {
        _pool!.RemoveWaiter(this);
        ReadOnlySpan<byte> window = _client.Window;
        int pos = 0;
        while (window.Length - pos >= MessageFramer.HeaderLength)
        {
            int total = MessageFramer.ReadLength(window.Slice(pos)) + 1;
            if (total < MessageFramer.HeaderLength || total > window.Length - pos)
            {
                break;
            }

            byte type = window[pos];
            pos += total;
            if (type is (byte)FrontendMessage.Query or (byte)'S')
            {
                break;
            }
        }

        _client.Consume(pos);
        if (_out is not null || _client.SendPending)
        {
            Close();
            return;
        }

        var writer = new PgWriter(RentOut());
        writer.WriteError(BackendMessage.ErrorResponse, "ERROR", SqlState.QueryCanceled, "canceling statement due to user request");
        writer.WriteReadyForQuery(TransactionStatus.Idle);
        SendOut(writer.Position, AfterSend.ContinueRelay);
    }
}
