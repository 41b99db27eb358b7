using FastPgProxy.Net;
using FastPgProxy.Protocol;

namespace FastPgProxy.Pooling;

/// <summary>A run of client messages <see cref="StatementTracker.ScanRun"/> took: <see cref="Length"/> bytes of the client's window, sent as they are, or as the <see cref="OutputLength"/> bytes of <see cref="Output"/> when rewritten.</summary>
internal readonly record struct TrackedRun(int Length, byte[]? Output, int OutputLength, bool Terminate);

/// <summary>
/// Why the proxy refuses a client's message: PostgreSQL's error fields, a warning for the log, and for a
/// message type no client may send after login, that type. A refused run on a backend ends the session;
/// a refused Parse the proxy answers itself gets an ERROR and the session goes on.
/// </summary>
internal sealed record RunRefusal(string SqlState, string Message, string? Detail = null, string? Warning = null, byte? ForeignType = null);

/// <summary>The client's run with statement tracking: what <see cref="ScanRun"/> sends a backend for it.</summary>
internal sealed partial class StatementTracker
{
    // Client messages looked at one by one: the extended protocol's, Query, FunctionCall, Terminate.
    private static readonly MessageTypeSet s_trackingClientInspect = MessageTypeSet.None
        .With((byte)FrontendMessage.Terminate).With((byte)FrontendMessage.Parse).With((byte)'B').With((byte)'D')
        .With((byte)'C').With((byte)'E').With((byte)'H').With((byte)'S').With((byte)FrontendMessage.Query).With((byte)'F');

    // Room a named Parse must leave in a buffer: when its statement is prepared again on another backend,
    // the Parse goes out in one buffer with a Bind's head (names up to MaxBindHead) and an eviction Close.
    private const int NamedParseReserve = 2 * MaxBindHead;

    /// <summary>
    /// Scans the client's window for the next run to send a backend with statement tracking: every
    /// extended-protocol message is looked at; a run without a client statement is left to go out as it
    /// is (zero copy), a run with one is rebuilt in the rewrite buffer with the backend's names, the
    /// statement prepared first on a backend that lacks it and a statement evicted when the backend's
    /// cache is full. Each message taken is booked: its reply action here, what the backend then owes in
    /// <paramref name="booking"/>. The run stops before a Terminate (<see cref="TrackedRun.Terminate"/>),
    /// before a call the proxy answers itself, and before a message that must wait for what precedes it.
    /// Returns why the session must end instead, with nothing taken; null otherwise.
    /// </summary>
    public RunRefusal? ScanRun(ReadOnlySpan<byte> window, ref MessageFramer framer, ref ReplyBooking booking, PreparedStatementCache cache, BufferPool buffers, out TrackedRun run)
    {
        RunRefusal? refusal = null;
        bool terminate = false;
        int used = 0;
        int copied = 0;
        int outLength = 0;
        byte[]? output = null;
        while (true)
        {
            // Once something was rewritten, the run goes out of the rewrite buffer: scan no further than
            // what still fits in it.
            int end = output is null ? window.Length : Math.Min(window.Length, copied + buffers.BufferSize - outLength);
            FrameStatus status = framer.Scan(window.Slice(used, end - used), s_trackingClientInspect, buffers.BufferSize, out int passThrough, out int length);
            used += passThrough;
            if (status == FrameStatus.Invalid)
            {
                run = default;
                return new RunRefusal(SqlState.ProtocolViolation, "invalid message length");
            }

            if (status == FrameStatus.Foreign)
            {
                if (used == 0 && output is null)
                {
                    run = default;
                    return new RunRefusal(SqlState.ProtocolViolation, $"invalid frontend message type {window[0]}", ForeignType: window[0]);
                }

                // What precedes it goes first; it is refused on the next pass.
                break;
            }

            if (status == FrameStatus.Oversized)
            {
                // A Bind longer than a buffer (large parameters): only its head is rewritten. A Parse that
                // long can only be the unnamed statement's.
                byte large = window[used];
                LargeBind next = large switch
                {
                    (byte)'B' => RewriteLargeBindHead(window, ref used, ref copied, ref outLength, ref output, length, cache, ref framer, ref booking, buffers, out refusal),
                    (byte)FrontendMessage.Parse => CheckLargeParse(window.Slice(used), length, used, out refusal),
                    _ => LargeBind.Streaming,
                };
                if (next == LargeBind.Streaming && large != (byte)'B')
                {
                    // An unnamed Parse, a Query or a FunctionCall: forwarded as it is, and booked.
                    Book(large, ref booking);
                    framer.StreamRest(length, MessageFramer.HeaderLength);
                    used += MessageFramer.HeaderLength;
                }

                if (next == LargeBind.Streaming)
                {
                    continue;
                }

                if (next == LargeBind.Failed)
                {
                    run = default;
                    return refusal;
                }

                break;
            }

            if (status != FrameStatus.Inspect)
            {
                break;
            }

            ReadOnlySpan<byte> message = window.Slice(used, length);
            byte type = message[0];
            if (type == (byte)FrontendMessage.Terminate)
            {
                terminate = true;
                break;
            }

            if (type is (byte)FrontendMessage.Query or (byte)FrontendMessage.Parse && !booking.BatchOpen && Interception.InterceptedBatch.Measure(window.Slice(used)) > 0)
            {
                // Answered by the proxy once what precedes it is through.
                break;
            }

            ClientStatement? statement = FindStatementFor(message);
            bool namedParse = type == (byte)FrontendMessage.Parse && length > MessageFramer.HeaderLength && message[MessageFramer.HeaderLength] != 0;
            if (namedParse && StatementLimitRefusal(message.Slice(MessageFramer.HeaderLength), statement) is { } limit)
            {
                if (used > 0)
                {
                    // What precedes it goes first; the refusal comes on the next pass.
                    break;
                }

                // On a backend, in the middle of the client's batch, an ERROR cannot be put in the reply
                // stream without PostgreSQL's own replies to sort around it: the session ends.
                run = default;
                return limit;
            }
            if (statement is null && !namedParse && !IsStatementClose(message))
            {
                Book(type, ref booking);
                used += length;
                continue;
            }

            // Room for what this message may turn into: itself renamed, a Close to evict, and for a Bind or
            // Describe a Parse to prepare the statement again. A named Parse leaves room for that Parse
            // beside a Bind's head later (NamedParseReserve).
            int worst = length + (namedParse ? NamedParseReserve : 128) + (type is (byte)'B' or (byte)'D' ? statement!.ParseTail.Length : 0);
            if (worst + (used - copied) + outLength > buffers.BufferSize)
            {
                if (used > 0)
                {
                    break;
                }

                if (type == (byte)'B')
                {
                    // A Bind whose parameters and statement do not fit together: renamed in its head, the
                    // parameters stream through, as for a Bind longer than a buffer.
                    LargeBind next = RewriteLargeBindHead(window, ref used, ref copied, ref outLength, ref output, length, cache, ref framer, ref booking, buffers, out refusal);
                    if (next == LargeBind.Failed)
                    {
                        run = default;
                        return refusal;
                    }

                    break;
                }

                run = default;
                return new RunRefusal(SqlState.ProgramLimitExceeded, "prepared statement too large for the proxy to prepare again on another server");
            }

            output ??= RentRewriteBuffer(buffers);
            window.Slice(copied, used - copied).CopyTo(output.AsSpan(outLength));
            outLength += used - copied;
            outLength += Rewrite(message, statement, cache, output.AsSpan(outLength));
            Book(type, ref booking);
            used += length;
            copied = used;
        }

        if (output is not null)
        {
            window.Slice(copied, used - copied).CopyTo(output.AsSpan(outLength));
            outLength += used - copied;
        }

        run = new TrackedRun(used, output, outLength, terminate);
        return null;
    }

    /// <summary>Books a message sent to the backend: its reply action here (after those of what the proxy added before it), and what the backend owes.</summary>
    private void Book(byte type, ref ReplyBooking booking)
    {
        BookForwarded(type);
        booking.Note(type);
    }

    /// <summary>What <see cref="RewriteLargeBindHead"/> or <see cref="CheckLargeParse"/> did with a message too long to inspect.</summary>
    private enum LargeBind
    {
        /// <summary>Forwarded as it is (no client statement named): the framer streams it.</summary>
        Streaming,
        /// <summary>Its head went into the output renamed (the rest streams on the next pump), or it must wait: send what is pending.</summary>
        Stop,
        /// <summary>The session must end (the refusal says why).</summary>
        Failed,
    }

    /// <summary>
    /// A Parse too long to hold whole (statement text over a buffer). The unnamed statement streams through:
    /// it lives until the client's next Parse, within its own batch. A named one cannot be kept to prepare
    /// again on other backends, and forwarded under the client's own name it would outlive the transaction
    /// on that backend, where another client could bind it: the session is closed with 54000 instead.
    /// </summary>
    private static LargeBind CheckLargeParse(ReadOnlySpan<byte> message, int total, int run, out RunRefusal? refusal)
    {
        refusal = null;
        ReadOnlySpan<byte> body = message.Slice(MessageFramer.HeaderLength);
        int nameEnd = body.IndexOf((byte)0);
        if (nameEnd < 0 && body.Length < MaxBindHead)
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

        refusal = new RunRefusal(
            SqlState.ProgramLimitExceeded,
            $"prepared statement of {total} bytes is too large for the proxy to prepare again on another server; use an unnamed statement or session pooling",
            Warning: $"named Parse of {total} bytes refused in transaction mode");
        return LargeBind.Failed;
    }

    /// <summary>
    /// A Bind too long to hold whole (its parameters exceed a buffer) that names a client statement: the
    /// statement is prepared on this backend when it lacks it, the head (header, portal, statement name) is
    /// written to the output with the backend's name and the length adjusted, and the framer streams the
    /// rest of the message through unchanged. A Bind of the unnamed statement streams through as it is.
    /// </summary>
    private LargeBind RewriteLargeBindHead(ReadOnlySpan<byte> window, ref int run, ref int copied, ref int outLength, ref byte[]? output, int total, PreparedStatementCache cache, ref MessageFramer framer, ref ReplyBooking booking, BufferPool buffers, out RunRefusal? refusal)
    {
        refusal = null;
        if (!TryReadLargeBindHead(window.Slice(run), out ClientStatement? statement, out int headLength))
        {
            // The names are not all here yet.
            return LargeBind.Stop;
        }

        if (statement is null)
        {
            Book((byte)'B', ref booking);
            framer.StreamRest(total, MessageFramer.HeaderLength);
            run += MessageFramer.HeaderLength;
            return LargeBind.Streaming;
        }

        int worst = (run - copied) + outLength + headLength + statement.ParseTail.Length + statement.ServerNameBytes.Length + 128;
        if (worst > buffers.BufferSize)
        {
            if (run > 0)
            {
                return LargeBind.Stop;
            }

            refusal = new RunRefusal(SqlState.ProgramLimitExceeded, "prepared statement too large for the proxy to prepare again on another server");
            return LargeBind.Failed;
        }

        output ??= RentRewriteBuffer(buffers);
        window.Slice(copied, run - copied).CopyTo(output.AsSpan(outLength));
        outLength += run - copied;
        outLength += WriteLargeBindHead(window.Slice(run, headLength), total, statement, cache, output.AsSpan(outLength));
        Book((byte)'B', ref booking);
        framer.StreamRest(total, headLength);
        run += headLength;
        copied = run;
        return LargeBind.Stop;
    }
}
