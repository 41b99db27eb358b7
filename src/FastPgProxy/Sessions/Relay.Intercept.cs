using FastPgProxy.Interception;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

/// <summary>
/// The proxy answers <c>pg_backend_pid()</c>, <c>pg_cancel_backend(pid)</c> and
/// <c>pg_terminate_backend(pid[, timeout])</c> itself, in terms of proxy sessions: a Simple Query that is
/// exactly one such call, or an extended-protocol batch that is exactly one such unnamed statement
/// (Parse, Bind, Describe, Execute, Sync, as drivers send a one-off command). Anything else reaches
/// PostgreSQL untouched. The reply never overtakes replies still due from the backend. This part is the
/// relay's side: when to answer; <see cref="InterceptedBatch"/> recognises the batch and
/// <see cref="Interceptor"/> answers it.
/// </summary>
internal sealed partial class Relay
{
    // Made on the first batch the session answers itself.
    private Interceptor? _interceptor;

    // An intercepted batch waits at the start of the client's window for the backend's outstanding
    // replies: each run the client takes may be the last of them, so the relay tries again.
    private bool _parkedForLocalReply;

    /// <summary>
    /// Handles an intercepted call at the start of the client's window. Returns true when the caller must
    /// stop pumping: the reply is on its way, or the session waits for the backend's outstanding replies.
    /// </summary>
    private bool TryIntercept()
    {
        if (_interceptor is { ReplyPending: true })
        {
            return true;
        }

        // Only at a message boundary: inside a message streaming through (a large Bind's parameters), the
        // window's first byte is data, not a message type.
        ReadOnlySpan<byte> window = _client.Window;
        if (!_clientFramer.AtBoundary || window.Length < MessageFramer.HeaderLength || window[0] is not ((byte)FrontendMessage.Query or (byte)FrontendMessage.Parse))
        {
            return false;
        }

        int batch = InterceptedBatch.Measure(window);
        if (batch == 0)
        {
            return false;
        }

        // Replies go out in request order: wait for whatever the backend still owes the client.
        if (_client.SendPending || _session.OutPending || _syncingParameters
            || (_server is not null && (_booking.ReadyForQueryDue > 0 || _booking.BatchOpen || _server.Channel.SendPending || _server.Channel.Buffered > 0)))
        {
            _parkedForLocalReply = true;
            return true;
        }

        _parkedForLocalReply = false;
        _interceptor ??= new Interceptor(_session);
        var writer = new PgWriter(_session.RentOut());
        bool deferred = _interceptor.Answer(window.Slice(0, batch), ref writer);
        _client.Consume(batch);
        if (deferred)
        {
            // pg_terminate_backend with a timeout: the reply follows when the target is gone or time is up.
            return true;
        }

        _session.SendOut(writer.Position, _interceptor.CloseAfterReply ? AfterSend.Close : AfterSend.ContinueRelay);
        return true;
    }

    /// <summary>A termination is due (pg_terminate_backend, KILL): a query running on the backend is cancelled first, so the backend is never left busy. Loop only.</summary>
    public void CancelIfRunning()
    {
        if (_server is not null && !ServerIsClean())
        {
            CancelRunningQuery(null);
        }
    }
}
