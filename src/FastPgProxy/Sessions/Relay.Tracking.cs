using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

/// <summary>
/// The relay's side of named prepared statements in transaction mode: the client's run is looked at
/// message by message, and those that name a client statement are rebuilt by the session's
/// <see cref="StatementTracker"/> (which owns the statements, the reply queue and the rewrite buffer)
/// while the relay keeps its own counters of replies expected.
/// </summary>
internal sealed partial class Relay
{
    private static readonly MessageTypeSet s_trackingClientInspect = MessageTypeSet.None
        .With((byte)FrontendMessage.Terminate).With((byte)FrontendMessage.Parse).With((byte)'B').With((byte)'D')
        .With((byte)'C').With((byte)'E').With((byte)'H').With((byte)'S').With((byte)FrontendMessage.Query).With((byte)'F');

    // Spelt out rather than built on s_serverInspect: static initialisers of partial files run in an unspecified order.
    private static readonly MessageTypeSet s_trackingServerInspect = MessageTypeSet.None
        .With((byte)BackendMessage.ReadyForQuery).With((byte)BackendMessage.ParameterStatus).With((byte)BackendMessage.ErrorResponse)
        .With((byte)'1').With((byte)'3');

    // Inspected types that may legitimately exceed a buffer: they are reported at their start
    // (FrameStatus.Oversized) so their bookkeeping is done and, for Bind, the statement renamed.
    private static readonly MessageTypeSet s_oversized = MessageTypeSet.None.With((byte)'B').With((byte)FrontendMessage.Parse)
        .With((byte)FrontendMessage.Query).With((byte)'F');

    // Room a named Parse must leave in a buffer: when its statement is prepared again on another backend,
    // the Parse goes out in one buffer with a Bind's head (names up to MaxBindHead) and an eviction Close.
    private const int NamedParseReserve = 2 * StatementTracker.MaxBindHead;

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
    /// The relay's client side with statement tracking: every extended-protocol message is looked at;
    /// runs without a named statement still go out zero-copy, runs with one are rebuilt in a buffer.
    /// </summary>
    private void PumpClientTracking()
    {
        StatementTracker tracker = _tracker!;
        ServerConnection server = _server!;
        server.PreparedStatements ??= new PreparedStatementCache(_proxy.Options.MaxPreparedStatements);
        Span<byte> window = _client.Window;
        int run = 0;
        int copied = 0;
        int outLength = 0;
        byte[]? output = null;
        while (true)
        {
            // Once something was rewritten, the run goes out of the rewrite buffer: scan no further than
            // what still fits in it.
            int end = output is null ? window.Length : Math.Min(window.Length, copied + Loop.Buffers.BufferSize - outLength);
            FrameStatus status = _clientFramer.Scan(window.Slice(run, end - run), s_trackingClientInspect, Loop.Buffers.BufferSize, out int passThrough, out int length);
            run += passThrough;
            if (status == FrameStatus.Invalid)
            {
                _session.Fatal(SqlState.ProtocolViolation, "invalid message length");
                return;
            }

            if (status == FrameStatus.Foreign)
            {
                if (run == 0 && output is null)
                {
                    FatalForeignMessage(window[0]);
                    return;
                }

                // What precedes it goes first; it is refused on the next pass.
                break;
            }

            if (status == FrameStatus.Oversized)
            {
                // A Bind longer than a buffer (large parameters): only its head is rewritten. A Parse that
                // long can only be the unnamed statement's.
                byte large = window[run];
                LargeBind next = large switch
                {
                    (byte)'B' => RewriteLargeBindHead(tracker, window, ref run, ref copied, ref outLength, ref output, length, server.PreparedStatements),
                    (byte)FrontendMessage.Parse => CheckLargeParse(window.Slice(run), length, run),
                    _ => LargeBind.Streaming,
                };
                if (next == LargeBind.Streaming && large != (byte)'B')
                {
                    // An unnamed Parse, a Query or a FunctionCall: forwarded as it is, and booked.
                    NoteForwarded(large);
                    _clientFramer.StreamRest(length, MessageFramer.HeaderLength);
                    run += MessageFramer.HeaderLength;
                }

                if (next == LargeBind.Streaming)
                {
                    continue;
                }

                if (next == LargeBind.Failed)
                {
                    return;
                }

                break;
            }

            if (status != FrameStatus.Inspect)
            {
                break;
            }

            ReadOnlySpan<byte> message = window.Slice(run, length);
            byte type = message[0];
            if (type == (byte)FrontendMessage.Terminate)
            {
                _terminateAfterRun = true;
                break;
            }

            if (type is (byte)FrontendMessage.Query or (byte)FrontendMessage.Parse && !_openExtended && Interception.InterceptedBatch.Measure(window.Slice(run)) > 0)
            {
                // Answered by the proxy once what precedes it is through.
                break;
            }

            ClientStatement? statement = tracker.FindStatementFor(message);
            bool namedParse = type == (byte)FrontendMessage.Parse && length > MessageFramer.HeaderLength && message[MessageFramer.HeaderLength] != 0;
            if (namedParse && tracker.StatementLimitRefusal(message.Slice(MessageFramer.HeaderLength), statement) is { } refusal)
            {
                if (run > 0)
                {
                    // What precedes it goes first; the refusal comes on the next pass.
                    break;
                }

                // On a backend, in the middle of the client's batch, an ERROR cannot be put in the reply
                // stream without PostgreSQL's own replies to sort around it: the session ends.
                _session.Fatal(refusal.SqlState, refusal.Message, refusal.Detail);
                return;
            }
            if (statement is null && !namedParse && !StatementTracker.IsStatementClose(message))
            {
                NoteForwarded(type);
                run += length;
                continue;
            }

            // Room for what this message may turn into: itself renamed, a Close to evict, and for a Bind or
            // Describe a Parse to prepare the statement again. A named Parse leaves room for that Parse
            // beside a Bind's head later (NamedParseReserve).
            int worst = length + (namedParse ? NamedParseReserve : 128) + (type is (byte)'B' or (byte)'D' ? statement!.ParseTail.Length : 0);
            if (worst + (run - copied) + outLength > Loop.Buffers.BufferSize)
            {
                if (run > 0)
                {
                    break;
                }

                if (type == (byte)'B')
                {
                    // A Bind whose parameters and statement do not fit together: renamed in its head, the
                    // parameters stream through, as for a Bind longer than a buffer.
                    LargeBind next = RewriteLargeBindHead(tracker, window, ref run, ref copied, ref outLength, ref output, length, server.PreparedStatements);
                    if (next == LargeBind.Failed)
                    {
                        return;
                    }

                    break;
                }

                _session.Fatal(SqlState.ProgramLimitExceeded, "prepared statement too large for the proxy to prepare again on another server");
                return;
            }

            output ??= tracker.RentRewriteBuffer(Loop.Buffers);
            window.Slice(copied, run - copied).CopyTo(output.AsSpan(outLength));
            outLength += run - copied;
            outLength += tracker.Rewrite(message, statement, server.PreparedStatements, output.AsSpan(outLength));
            NoteForwarded(type);
            run += length;
            copied = run;
        }

        if (output is not null)
        {
            window.Slice(copied, run - copied).CopyTo(output.AsSpan(outLength));
            outLength += run - copied;
        }

        if (Log.IsEnabled(LogLevel.Debug))
        {
            Log.Debug($"session {_session.Id}: client run {run} bytes, rewritten {output is not null}, window {window.Length}, expected Z {_expectedReadyForQuery}, open {_openExtended}, actions {tracker.PendingReplies}");
        }

        if (run > 0)
        {
            _clientRun = run;
            if (output is not null)
            {
                server.Channel.Send(output, 0, outLength);
            }
            else
            {
                server.Channel.Send(_client.Buffer!, _client.Start, run);
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

    /// <summary>What <see cref="RewriteLargeBindHead"/> or <see cref="CheckLargeParse"/> did with a message too long to inspect.</summary>
    private enum LargeBind
    {
        /// <summary>Forwarded as it is (no client statement named): the framer streams it.</summary>
        Streaming,
        /// <summary>Its head went into the output renamed (the rest streams on the next pump), or it must wait: send what is pending.</summary>
        Stop,
        /// <summary>The session was closed.</summary>
        Failed,
    }

    /// <summary>
    /// A Parse too long to hold whole (statement text over a buffer). The unnamed statement streams through:
    /// it lives until the client's next Parse, within its own batch. A named one cannot be kept to prepare
    /// again on other backends, and forwarded under the client's own name it would outlive the transaction
    /// on that backend, where another client could bind it: the session is closed with 54000 instead.
    /// </summary>
    private LargeBind CheckLargeParse(ReadOnlySpan<byte> message, int total, int run)
    {
        ReadOnlySpan<byte> body = message.Slice(MessageFramer.HeaderLength);
        int nameEnd = body.IndexOf((byte)0);
        if (nameEnd < 0 && body.Length < StatementTracker.MaxBindHead)
        {
            return LargeBind.Stop;
        }

        if (nameEnd == 0)
        {
            return LargeBind.Streaming;
        }

        if (run > 0)
        {
            // What precedes it goes out first; the refusal comes on the next pass.
            return LargeBind.Stop;
        }

        Log.Warning($"session {_session.Id}: named Parse of {total} bytes refused in transaction mode");
        _session.Fatal(SqlState.ProgramLimitExceeded, $"prepared statement of {total} bytes is too large for the proxy to prepare again on another server; use an unnamed statement or session pooling");
        return LargeBind.Failed;
    }

    /// <summary>
    /// A Bind too long to hold whole (its parameters exceed a buffer) that names a client statement: the
    /// statement is prepared on this backend when it lacks it, the head (header, portal, statement name) is
    /// written to the output with the backend's name and the length adjusted, and the framer streams the
    /// rest of the message through unchanged. A Bind of the unnamed statement streams through as it is.
    /// </summary>
    private LargeBind RewriteLargeBindHead(StatementTracker tracker, ReadOnlySpan<byte> window, ref int run, ref int copied, ref int outLength, ref byte[]? output, int total, PreparedStatementCache cache)
    {
        if (!tracker.TryReadLargeBindHead(window.Slice(run), out ClientStatement? statement, out int headLength))
        {
            // The names are not all here yet.
            return LargeBind.Stop;
        }

        if (statement is null)
        {
            NoteForwarded((byte)'B');
            _clientFramer.StreamRest(total, MessageFramer.HeaderLength);
            run += MessageFramer.HeaderLength;
            return LargeBind.Streaming;
        }

        int worst = (run - copied) + outLength + headLength + statement.ParseTail.Length + statement.ServerNameBytes.Length + 128;
        if (worst > Loop.Buffers.BufferSize)
        {
            if (run > 0)
            {
                return LargeBind.Stop;
            }

            _session.Fatal(SqlState.ProgramLimitExceeded, "prepared statement too large for the proxy to prepare again on another server");
            return LargeBind.Failed;
        }

        output ??= tracker.RentRewriteBuffer(Loop.Buffers);
        window.Slice(copied, run - copied).CopyTo(output.AsSpan(outLength));
        outLength += run - copied;
        outLength += tracker.WriteLargeBindHead(window.Slice(run, headLength), total, statement, cache, output.AsSpan(outLength));
        NoteForwarded((byte)'B');
        _clientFramer.StreamRest(total, headLength);
        run += headLength;
        copied = run;
        return LargeBind.Stop;
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

        int written = tracker.AnswerLocalPrepare(window.Slice(0, batch), _session.RentOut(), out StatementTracker.StatementRefusal? refusal);
        if (refusal is not null)
        {
            Log.Warning($"client {_session.RemoteEndPoint} session {_session.Id}: {refusal.Message}");
        }

        _client.Consume(batch);
        _session.SendOut(written, AfterSend.ContinueRelay);
        return true;
    }

    /// <summary>
    /// Books a message sent to the backend: what reply it earns (in the tracker's queue, after the entries
    /// of what the proxy added before it) and whether it leaves a batch open.
    /// </summary>
    private void NoteForwarded(byte type)
    {
        _tracker?.BookForwarded(type);
        switch (type)
        {
            case (byte)'S':
                _expectedReadyForQuery++;
                _openExtended = false;
                break;
            case (byte)FrontendMessage.Query or (byte)'F':
                _expectedReadyForQuery++;
                break;
            default:
                _openExtended = true;
                break;
        }
    }
}
