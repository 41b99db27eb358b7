using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

/// <summary>
/// The relay's side of named prepared statements in transaction mode: the session's
/// <see cref="StatementTracker"/> (which owns the statements, the reply queue and the rewrite buffer)
/// scans and rebuilds the client's run and books it; the relay sends it and reads the replies.
/// </summary>
internal sealed partial class Relay
{
    // Spelt out rather than built on s_serverInspect: static initialisers of partial files run in an unspecified order.
    private static readonly MessageTypeSet s_trackingServerInspect = MessageTypeSet.None
        .With((byte)BackendMessage.ReadyForQuery).With((byte)BackendMessage.ParameterStatus).With((byte)BackendMessage.ErrorResponse)
        .With((byte)BackendMessage.NotificationResponse).With((byte)'1').With((byte)'3');

    // Inspected types that may legitimately exceed a buffer: they are reported at their start
    // (FrameStatus.Oversized) so their bookkeeping is done and, for Bind, the statement renamed.
    private static readonly MessageTypeSet s_oversized = MessageTypeSet.None.With((byte)'B').With((byte)FrontendMessage.Parse)
        .With((byte)FrontendMessage.Query).With((byte)'F');

    // The client's statements when tracking is on (transaction mode, max_prepared_statements above 0);
    // null otherwise, so a session-mode or admin console client allocates none of it.
    private StatementTracker? _tracker;

    /// <summary>Relay set-up: tracking is on in transaction mode with max_prepared_statements above 0, and only then is a tracker allocated.</summary>
    private void ConfigureTracking()
    {
        bool tracking = _pool.Mode == PoolMode.Transaction && _proxy.Options.MaxPreparedStatements > 0;
        if (tracking)
        {
            _tracker ??= new StatementTracker(_proxy);
        }

        _clientFramer.CountSet = tracking ? MessageTypeSet.None : s_readyForQueryEarners;
        _clientFramer.OversizedSet = tracking ? s_oversized : MessageTypeSet.None;
    }

    /// <summary>
    /// The relay's client side with statement tracking: the tracker scans the run (every extended-protocol
    /// message is looked at; runs without a named statement still go out zero-copy, runs with one are
    /// rebuilt in its buffer) and the relay sends it.
    /// </summary>
    private void PumpClientTracking()
    {
        StatementTracker tracker = _tracker!;
        ServerConnection server = _server!;
        server.PreparedStatements ??= new PreparedStatementCache(_proxy.Options.MaxPreparedStatements);
        if (tracker.ScanRun(_client.Window, ref _clientFramer, ref _booking, server.PreparedStatements, Loop.Buffers, out TrackedRun run) is { } refusal)
        {
            if (refusal.ForeignType is { } foreign)
            {
                FatalForeignMessage(foreign);
                return;
            }

            if (refusal.Warning is not null)
            {
                Log.Warning($"session {_session.Id}: {refusal.Warning}");
            }

            _session.Fatal(refusal.SqlState, refusal.Message, refusal.Detail);
            return;
        }

        _terminateAfterRun |= run.Terminate;
        if (Log.IsEnabled(LogLevel.Debug))
        {
            Log.Debug($"session {_session.Id}: client run {run.Length} bytes, rewritten {run.Output is not null}, window {_client.Buffered}, expected Z {_booking.ReadyForQueryDue}, open {_booking.BatchOpen}, actions {tracker.PendingReplies}");
        }

        if (run.Length > 0)
        {
            _clientRun = run.Length;
            if (run.Output is not null)
            {
                server.Channel.Send(run.Output, 0, run.OutputLength);
            }
            else
            {
                server.Channel.Send(_client.Buffer!, _client.Start, run.Length);
            }

            return;
        }

        if (_terminateAfterRun)
        {
            CloseOnTerminate();
            return;
        }

        ReceiveClient();
    }

    /// <summary>
    /// Outside a transaction, a batch of named Parse messages closed by Sync (what libpq's PQprepare and
    /// pgbench -M prepared send) needs no backend: the statements are recorded and prepared on whichever
    /// backend first runs them, and the client gets ParseComplete and ReadyForQuery at once. This saves a
    /// backend round trip per prepare, and a client that prepares while holding no backend cannot wait
    /// behind clients it itself is blocking (pgbench prepares synchronously on each thread). A syntax
    /// error in such a statement is reported by the Bind or Describe that first uses it.
    /// </summary>
    private bool TryAnswerPrepareLocally()
    {
        StatementTracker tracker = _tracker!;
        ReadOnlySpan<byte> window = _client.Window;
        int batch = tracker.MeasureLocalPrepare(window);
        if (batch == 0)
        {
            return false;
        }

        int written = tracker.AnswerLocalPrepare(window.Slice(0, batch), _session.RentOut(), out RunRefusal? refusal);
        if (refusal is not null)
        {
            Log.Warning($"client {_session.ClientName} session {_session.Id}: {refusal.Message}");
        }

        _client.Consume(batch);
        _session.SendOut(written, AfterSend.ContinueRelay);
        return true;
    }
}
