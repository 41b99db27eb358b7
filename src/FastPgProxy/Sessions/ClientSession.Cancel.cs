using System.Net.Sockets;
using FastPgProxy.Cancellation;
using FastPgProxy.Hosting;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

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
    private bool _cancelPendingRequest;
    private MessageFramer _swallowFramer;

    /// <summary>Asks this session's loop to cancel its running query; <paramref name="cancelSocket"/> (a client's cancel connection) is closed when done. Any thread.</summary>
    public void RequestCancel(Socket? cancelSocket) => Loop.Post(() =>
    {
        CancelStats stats = _proxy.CancelStats;
        if (State == SessionState.Active && (WaitNode is not null || _syncingParameters) && !_cancelPendingRequest)
        {
            // The request has not reached PostgreSQL: waiting for a backend, or behind the proxy's own
            // SETs on it. It is answered 57014 here once it has been read whole, and never forwarded.
            stats.OnQueued();
            Log.Debug($"session {Id}: cancel of a request not sent to PostgreSQL; answered 57014 by the proxy");
            cancelSocket?.Dispose();
            _pool?.RemoveWaiter(this);
            _cancelPendingRequest = true;
            if (!_syncingParameters && !_client.ReceivePending && !_client.SendPending && _out is null)
            {
                PumpClient();
            }

            return;
        }

        if (State != SessionState.Active || _server is null || ServerIsClean())
        {
            stats.OnDroppedIdle();
            Log.Debug($"session {Id}: cancel dropped, no query running (state {State}, backend {_server?.Id}, expected {_expectedReadyForQuery}, open {_openExtended})");
            cancelSocket?.Dispose();
            return;
        }

        CancelRunningQuery(cancelSocket);
    });

    /// <summary>Has the pool send the backend's own CancelRequest, holding the backend until PostgreSQL has acted. Loop only.</summary>
    private void CancelRunningQuery(Socket? cancelSocket)
    {
        ServerConnection server = _server!;
        if (!server.HasCancelKey)
        {
            _proxy.CancelStats.OnNoBackend();
            cancelSocket?.Dispose();
            return;
        }

        server.Pool!.CancelQuery(server, cancelSocket);
    }

    /// <summary>
    /// Reads and drops the client's pending request (the first Query, or an extended batch through its
    /// Sync), reading more from the socket when it is not all here, then answers ERROR 57014 and
    /// ReadyForQuery, as PostgreSQL answers a cancelled request.
    /// </summary>
    private void SwallowCancelledRequest()
    {
        while (true)
        {
            Span<byte> window = _client.Window;
            FrameStatus status = _swallowFramer.Scan(window, MessageTypeSet.All, Loop.Buffers.BufferSize, out int passThrough, out int length);
            _client.Consume(passThrough);
            if (status == FrameStatus.Invalid)
            {
                Fatal(SqlState.ProtocolViolation, "invalid message length");
                return;
            }

            if (status == FrameStatus.Inspect)
            {
                _client.Consume(length);
            }

            if (_swallowFramer.AtBoundary && _swallowFramer.LastType is (byte)FrontendMessage.Query or (byte)'S')
            {
                break;
            }

            if (status == FrameStatus.NeedMore)
            {
                ReceiveClient();
                return;
            }
        }

        _swallowFramer.Reset();
        _cancelPendingRequest = false;
        if (_server is not null)
        {
            // Cancelled during the parameter sync: the backend did nothing for the client and goes back.
            TryReleaseServer();
        }

        var writer = new PgWriter(RentOut());
        writer.WriteError(BackendMessage.ErrorResponse, "ERROR", SqlState.QueryCanceled, "canceling statement due to user request");
        writer.WriteReadyForQuery(ClientTransactionStatus);
        SendOut(writer.Position, AfterSend.ContinueRelay);
    }
}
