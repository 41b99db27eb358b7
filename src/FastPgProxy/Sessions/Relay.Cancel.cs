using System.Net.Sockets;
using System.Runtime.CompilerServices;
using FastPgProxy.Cancellation;
using FastPgProxy.Hosting;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

/// <summary>
/// The session's side of a cancel: what <see cref="CancelDecision"/> decides is carried out here, on the
/// session's loop. A forwarded cancel goes through the backend's pool (its <see cref="CancelBudget"/>); a
/// request the proxy still holds is read and answered 57014 without touching PostgreSQL.
/// </summary>
internal sealed partial class Relay
{
    private bool _cancelPendingRequest;
    // Framing of the request being swallowed; boxed at the first swallowed cancel, so an idle relay does not
    // carry a framer it has never used.
    private StrongBox<MessageFramer>? _swallowFramer;

    /// <summary>A cancel of the client's running request, on the session's loop; <paramref name="cancelConnection"/> (a client's cancel connection) is closed when done.</summary>
    public void Cancel(IDisposable? cancelConnection)
    {
        CancelStats stats = _proxy.CancelStats;
        bool relaying = _session.State == SessionState.Active;
        bool running = _server is not null && !ServerIsClean();
        switch (CancelDecision.Decide(relaying, WaitNode is not null || _syncingParameters, _cancelPendingRequest, running))
        {
            case CancelAction.AnswerLocally:
                stats.OnQueued();
                Log.Debug($"session {_session.Id}: cancel of a request not sent to PostgreSQL; answered 57014 by the proxy");
                cancelConnection?.Dispose();
                _pool.RemoveWaiter(this);
                _cancelPendingRequest = true;
                if (!_syncingParameters && !_client.ReceivePending && !_client.SendPending && !_session.OutPending)
                {
                    PumpClient();
                }

                return;
            case CancelAction.Drop:
                stats.OnDroppedIdle();
                Log.Debug($"session {_session.Id}: cancel dropped, no query running (state {_session.State}, backend {_server?.Id}, expected {_booking.ReadyForQueryDue}, open {_booking.BatchOpen})");
                cancelConnection?.Dispose();
                return;
            default:
                CancelRunningQuery(cancelConnection);
                return;
        }
    }

    /// <summary>Has the pool send the backend's own CancelRequest, holding the backend until PostgreSQL has acted. Loop only.</summary>
    public void CancelRunningQuery(IDisposable? cancelConnection)
    {
        ServerConnection server = _server!;
        if (!server.HasCancelKey)
        {
            _proxy.CancelStats.OnNoBackend();
            cancelConnection?.Dispose();
            return;
        }

        server.Pool!.CancelQuery(server, cancelConnection);
    }

    /// <summary>
    /// Reads and drops the client's pending request (the first Query, or an extended batch through its
    /// Sync), reading more from the socket when it is not all here, then answers ERROR 57014 and
    /// ReadyForQuery, as PostgreSQL answers a cancelled request.
    /// </summary>
    private void SwallowCancelledRequest()
    {
        ref MessageFramer framer = ref (_swallowFramer ??= new()).Value;
        while (true)
        {
            Span<byte> window = _client.Window;
            FrameStatus status = framer.Scan(window, MessageTypeSet.All, Loop.Buffers.BufferSize, out int passThrough, out int length);
            _client.Consume(passThrough);
            if (status == FrameStatus.Invalid)
            {
                _session.Fatal(SqlState.ProtocolViolation, "invalid message length");
                return;
            }

            if (status == FrameStatus.Inspect)
            {
                _client.Consume(length);
            }

            if (framer.AtBoundary && framer.LastType is (byte)FrontendMessage.Query or (byte)'S')
            {
                break;
            }

            if (status == FrameStatus.NeedMore)
            {
                ReceiveClient();
                return;
            }
        }

        framer.Reset();
        _cancelPendingRequest = false;
        if (_server is not null)
        {
            // Cancelled during the parameter sync: the backend did nothing for the client and goes back.
            TryReleaseServer();
        }

        var writer = new PgWriter(_session.RentOut());
        writer.WriteError(BackendMessage.ErrorResponse, "ERROR", SqlState.QueryCanceled, "canceling statement due to user request");
        writer.WriteReadyForQuery(ClientTransactionStatus);
        _session.SendOut(writer.Position, AfterSend.ContinueRelay);
    }
}

