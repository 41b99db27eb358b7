using System.Buffers.Binary;
using FastPgProxy.Cancellation;
using FastPgProxy.Hosting;
using FastPgProxy.Protocol;
using FastPgProxy.Sessions;

namespace FastPgProxy.Interception;

/// <summary>
/// Answers, for one client session, the batches <see cref="InterceptedBatch"/> recognises, in terms of proxy
/// sessions: <c>pg_backend_pid()</c> is the session's id, <c>pg_cancel_backend(pid)</c> and
/// <c>pg_terminate_backend(pid[, timeout])</c> act on the proxy session with that id. The session decides
/// when to answer (never ahead of replies still due from the backend) and hands over the batch and a writer
/// over its output buffer; the reply is written whole, or begun and finished later when a termination waits
/// for its target. Made on the session's first answered batch (most sessions never send one). Loop only.
/// </summary>
internal sealed class Interceptor
{
    private readonly ClientSession _session;
    private bool _localReplyPending;
    private bool _closeAfterLocalReply;

    /// <summary>Answers for <paramref name="session"/>.</summary>
    public Interceptor(ClientSession session)
    {
        _session = session;
    }

    /// <summary>
    /// Whether a deferred reply (<c>pg_terminate_backend</c> with a timeout) is still to come: until it is
    /// sent, nothing more of the client's is relayed or answered.
    /// </summary>
    public bool ReplyPending => _localReplyPending;

    /// <summary>Whether the session ends once the reply is sent: the call terminated the session itself (FATAL 57P01).</summary>
    public bool CloseAfterReply => _closeAfterLocalReply;

    /// <summary>
    /// Writes the reply to <paramref name="batch"/>, a Query or Parse..Sync batch that
    /// <see cref="InterceptedBatch.Measure"/> measured. Returns true when the reply is deferred: it is
    /// finished in the session's output buffer and sent when the terminated session is gone or time is up,
    /// and <see cref="ReplyPending"/> holds until then.
    /// </summary>
    public bool Answer(ReadOnlySpan<byte> batch, ref PgWriter writer)
    {
        return batch[0] == (byte)FrontendMessage.Query ? AnswerSimple(batch, ref writer) : AnswerExtended(batch, ref writer);
    }

    /// <summary>A Simple Query: the rows (or error), CommandComplete and ReadyForQuery (55.2.2).</summary>
    private bool AnswerSimple(ReadOnlySpan<byte> message, ref PgWriter writer)
    {
        ReadOnlySpan<byte> sql = MessageFramer.ReadCString(message.Slice(MessageFramer.HeaderLength));
        QueryScanner.TryMatch(sql, out InterceptedCall call);
        if (_session.ClientTransactionStatus == TransactionStatus.Failed)
        {
            InterceptErrors.WriteTransactionAborted(ref writer);
            writer.WriteReadyForQuery(TransactionStatus.Failed);
            return false;
        }

        long? argument = call.Argument.Kind == ArgumentKind.Integer ? call.Argument.Value : null;
        long timeout = call.Timeout.Kind == ArgumentKind.Integer ? call.Timeout.Value : 0;
        bool isNull = call.Argument.Kind == ArgumentKind.Null || call.Timeout.Kind == ArgumentKind.Null;
        bool deferred = Evaluate(call, sql, argument, timeout, isNull, InterceptReplies.TextFormat, describe: true, ref writer, out bool failed);
        if (deferred)
        {
            return true;
        }

        if (!failed)
        {
            InterceptReplies.WriteCommandComplete(ref writer, InterceptReplies.SelectOneTag);
        }

        if (!_closeAfterLocalReply)
        {
            writer.WriteReadyForQuery(_session.ClientTransactionStatus);
        }

        return false;
    }

    /// <summary>An extended-protocol batch: each message answered in order, and after an error everything up to Sync skipped (55.2.3).</summary>
    private bool AnswerExtended(ReadOnlySpan<byte> batch, ref PgWriter writer)
    {
        ReadOnlySpan<byte> parseBody = batch.Slice(MessageFramer.HeaderLength, MessageFramer.ReadLength(batch) - sizeof(int));
        ReadOnlySpan<byte> sql = MessageFramer.ReadCString(parseBody.Slice(1));
        QueryScanner.TryMatch(sql, out InterceptedCall call);
        ReadOnlySpan<byte> parameterTypes = parseBody.Slice(1 + sql.Length + 1);
        Span<int> types = stackalloc int[2];
        int declared = parameterTypes.Length >= sizeof(short) ? BinaryPrimitives.ReadInt16BigEndian(parameterTypes) : 0;
        for (int i = 0; i < types.Length; i++)
        {
            types[i] = i < declared && parameterTypes.Length >= sizeof(short) + ((i + 1) * sizeof(int))
                ? BinaryPrimitives.ReadInt32BigEndian(parameterTypes.Slice(sizeof(short) + (i * sizeof(int))))
                : 0;
        }

        ResolveParameterTypes(call, types);
        bool failed = false;
        long? argument = call.Argument.Kind == ArgumentKind.Integer ? call.Argument.Value : null;
        long timeout = call.Timeout.Kind == ArgumentKind.Integer ? call.Timeout.Value : 0;
        bool isNull = call.Argument.Kind == ArgumentKind.Null || call.Timeout.Kind == ArgumentKind.Null;
        short resultFormat = InterceptReplies.TextFormat;
        bool bound = false;
        int pos = 0;
        while (pos < batch.Length)
        {
            int total = MessageFramer.ReadLength(batch.Slice(pos)) + 1;
            ReadOnlySpan<byte> body = batch.Slice(pos + MessageFramer.HeaderLength, total - MessageFramer.HeaderLength);
            byte type = batch[pos];
            pos += total;
            if (type == (byte)'S')
            {
                break;
            }

            if (failed)
            {
                continue;
            }

            switch (type)
            {
                case (byte)FrontendMessage.Parse:
                    if (_session.ClientTransactionStatus == TransactionStatus.Failed)
                    {
                        InterceptErrors.WriteTransactionAborted(ref writer);
                        failed = true;
                        break;
                    }

                    InterceptReplies.WriteParseComplete(ref writer);
                    break;
                case (byte)'B':
                    if (!BindArguments(body, call, types, ref argument, ref timeout, ref isNull, out resultFormat, ref writer))
                    {
                        failed = true;
                        break;
                    }

                    bound = true;
                    InterceptReplies.WriteBindComplete(ref writer);
                    break;
                case (byte)'D':
                    if (body[0] == (byte)'S')
                    {
                        Span<int> described = types.Slice(0, call.ParameterCount);
                        InterceptReplies.WriteParameterDescription(ref writer, described);
                    }

                    WriteResultDescription(call, sql, body[0] == (byte)'S' ? InterceptReplies.TextFormat : resultFormat, ref writer);
                    break;
                case (byte)'E':
                    if (!bound)
                    {
                        writer.WriteError(BackendMessage.ErrorResponse, "ERROR", "34000", "portal \"\" does not exist");
                        failed = true;
                        break;
                    }

                    if (Evaluate(call, sql, argument, timeout, isNull, resultFormat, describe: false, ref writer, out bool evaluationFailed))
                    {
                        return true;
                    }

                    if (evaluationFailed)
                    {
                        failed = true;
                        break;
                    }

                    InterceptReplies.WriteCommandComplete(ref writer, InterceptReplies.SelectOneTag);
                    break;
            }
        }

        if (!_closeAfterLocalReply)
        {
            writer.WriteReadyForQuery(_session.ClientTransactionStatus);
        }

        return false;
    }

    /// <summary>Types PostgreSQL gives undeclared parameters: int4 for the pid, int8 for the timeout (or the cast written).</summary>
    private static void ResolveParameterTypes(InterceptedCall call, Span<int> types)
    {
        Resolve(call.Argument, TypeOids.Int4, types);
        Resolve(call.Timeout, TypeOids.Int8, types);

        static void Resolve(CallArgument argument, int natural, Span<int> types)
        {
            if (argument.Kind == ArgumentKind.Parameter && argument.ParameterIndex <= types.Length && types[argument.ParameterIndex - 1] == 0)
            {
                types[argument.ParameterIndex - 1] = argument.Int8Cast ? TypeOids.Int8 : natural;
            }
        }
    }

    /// <summary>Reads the Bind's parameter values into the call's arguments; writes the error and returns false on a bad value.</summary>
    private static bool BindArguments(scoped ReadOnlySpan<byte> body, InterceptedCall call, scoped ReadOnlySpan<int> types, ref long? argument, ref long timeout, ref bool isNull, out short resultFormat, ref PgWriter writer)
    {
        resultFormat = InterceptReplies.TextFormat;
        int pos = 2; // empty portal and statement names
        int formatCount = ReadInt16(body, ref pos);
        int formatsAt = pos;
        pos += formatCount * sizeof(short);
        int parameterCount = ReadInt16(body, ref pos);
        for (int i = 0; i < parameterCount; i++)
        {
            int length = ReadInt32(body, ref pos);
            ReadOnlySpan<byte> value = length < 0 ? ReadOnlySpan<byte>.Empty : body.Slice(pos, length);
            if (length > 0)
            {
                pos += length;
            }

            short format = formatCount == 0 ? InterceptReplies.TextFormat
                : BinaryPrimitives.ReadInt16BigEndian(body.Slice(formatsAt + ((formatCount == 1 ? 0 : i) * sizeof(short))));
            int type = i < types.Length ? types[i] : TypeOids.Unspecified;
            ParamDecodeResult result = InterceptReplies.TryDecodeIntParameter(value, length < 0, format, type, out long decoded);
            if (InterceptErrors.WriteParameterError(ref writer, result, type, value, new BindParameterContext(ReadOnlySpan<byte>.Empty, i + 1)))
            {
                return false;
            }

            bool valueIsNull = result == ParamDecodeResult.Null;
            if (call.Argument.Kind == ArgumentKind.Parameter && call.Argument.ParameterIndex == i + 1)
            {
                argument = valueIsNull ? null : decoded;
                isNull |= valueIsNull;
            }

            if (call.Timeout.Kind == ArgumentKind.Parameter && call.Timeout.ParameterIndex == i + 1)
            {
                timeout = valueIsNull ? 0 : decoded;
                isNull |= valueIsNull;
            }
        }

        int resultCount = ReadInt16(body, ref pos);
        if (resultCount > 0)
        {
            resultFormat = BinaryPrimitives.ReadInt16BigEndian(body.Slice(pos));
        }

        return true;
    }

    /// <summary>Reads a big-endian int16 at <paramref name="pos"/> and moves past it.</summary>
    private static short ReadInt16(ReadOnlySpan<byte> data, ref int pos)
    {
        short value = BinaryPrimitives.ReadInt16BigEndian(data.Slice(pos));
        pos += sizeof(short);
        return value;
    }

    /// <summary>Reads a big-endian int32 at <paramref name="pos"/> and moves past it.</summary>
    private static int ReadInt32(ReadOnlySpan<byte> data, ref int pos)
    {
        int value = BinaryPrimitives.ReadInt32BigEndian(data.Slice(pos));
        pos += sizeof(int);
        return value;
    }

    /// <summary>The RowDescription of the call's one column: its name as PostgreSQL derives it, int4 or bool, in <paramref name="format"/>.</summary>
    private static void WriteResultDescription(InterceptedCall call, scoped ReadOnlySpan<byte> sql, short format, ref PgWriter writer)
    {
        Span<byte> name = stackalloc byte[QueryScanner.MaxIdentifierLength + 1];
        int length = call.CopyColumnName(sql, name);
        int type = call.Function == InterceptedFunction.BackendPid ? TypeOids.Int4 : TypeOids.Bool;
        InterceptReplies.WriteRowDescription(ref writer, name.Slice(0, length), type, format);
    }

    /// <summary>
    /// Runs the call and writes its row (and, when <paramref name="describe"/>, the RowDescription first).
    /// Returns true when the reply is deferred (terminate with a timeout); <paramref name="failed"/> when an
    /// error was written instead of a row.
    /// </summary>
    private bool Evaluate(InterceptedCall call, scoped ReadOnlySpan<byte> sql, long? argument, long timeout, bool isNull, short format, bool describe, ref PgWriter writer, out bool failed)
    {
        failed = false;
        if (call.Function == InterceptedFunction.BackendPid)
        {
            if (describe)
            {
                WriteResultDescription(call, sql, format, ref writer);
            }

            InterceptReplies.WriteDataRowInt4(ref writer, _session.Id, format);
            return false;
        }

        if (isNull || argument is null)
        {
            // The functions are strict: a NULL argument gives a NULL result.
            if (describe)
            {
                WriteResultDescription(call, sql, format, ref writer);
            }

            InterceptReplies.WriteDataRowNull(ref writer);
            return false;
        }

        bool terminate = call.Function == InterceptedFunction.TerminateBackend;
        int timeoutMs = InterceptErrors.PostgresTimeout(timeout);
        if (terminate && timeoutMs < 0)
        {
            InterceptErrors.WriteNegativeTimeout(ref writer);
            failed = true;
            return false;
        }

        long pid = argument.Value;
        bool admin = _session.Proxy.Options.AdminUsers.Contains(_session.User!);
        ClientSession? target = null;
        if (pid is > 0 and <= int.MaxValue && !_session.Proxy.Sessions.TryGet((int)pid, out target)
            && _session.Proxy.Peers.OwnerOf((int)pid) is { } owner)
        {
            // Another instance's session: asked there, for this user, off the loop; the reply is finished
            // when it answers, as a local target's would be.
            var signal = new PeerSignal(terminate ? PeerSignalKind.Terminate : PeerSignalKind.Cancel, (int)pid, _session.User!, admin, terminate ? timeoutMs : 0);
            _localReplyPending = true;
            _ = SignalPeerAsync(owner, signal, writer.Position, format, describe, call, sql.ToArray());
            return true;
        }

        if (target is not null && !PeerSignal.MaySignal(target.User, _session.User, admin))
        {
            WritePermissionDenied(terminate, ref writer);
            failed = true;
            return false;
        }

        if (describe)
        {
            WriteResultDescription(call, sql, format, ref writer);
        }

        if (target is null)
        {
            // Notice first, then the row, as PostgreSQL sends them.
            InterceptErrors.WriteNotBackendProcessWarning(ref writer, unchecked((int)pid));
            InterceptReplies.WriteDataRowBool(ref writer, false, format);
            return false;
        }

        Log.Write(LogLevel.Info, $"session {_session.Id} ({_session.User}): {(terminate ? "pg_terminate_backend" : "pg_cancel_backend")}({pid})");
        if (target == _session)
        {
            // Signalling itself interrupts this very statement, as in PostgreSQL: a cancel fails it with
            // 57014; a termination ends the session with FATAL 57P01 and nothing after it.
            failed = true;
            if (terminate)
            {
                writer.WriteError(BackendMessage.ErrorResponse, "FATAL", SqlState.AdminShutdown, "terminating connection due to administrator command");
                _closeAfterLocalReply = true;
            }
            else
            {
                writer.WriteError(BackendMessage.ErrorResponse, "ERROR", SqlState.QueryCanceled, "canceling statement due to user request");
            }

            return false;
        }

        if (!terminate)
        {
            target.CancelFromAnywhere();
            InterceptReplies.WriteDataRowBool(ref writer, true, format);
            return false;
        }

        target.TerminateFromAnywhere();
        if (target == _session || timeoutMs == 0)
        {
            InterceptReplies.WriteDataRowBool(ref writer, true, format);
            return false;
        }

        // Wait without blocking the loop, then finish the reply already begun in the session's output buffer.
        // Nothing more of the client's is read until then.
        int written = writer.Position;
        _localReplyPending = true;
        _ = WaitForTerminationAsync(target, timeoutMs, written, format, (int)pid);
        return true;
    }

    /// <summary>42501 as PostgreSQL words it for a cancel or a termination.</summary>
    private static void WritePermissionDenied(bool terminate, ref PgWriter writer)
    {
        if (terminate)
        {
            InterceptErrors.WriteTerminatePermissionDenied(ref writer);
        }
        else
        {
            InterceptErrors.WriteCancelPermissionDenied(ref writer);
        }
    }

    /// <summary>
    /// Waits on the thread pool until <paramref name="target"/> is closed or <paramref name="timeoutMs"/> is
    /// up, then finishes the reply begun in the output buffer (the first <paramref name="written"/> bytes).
    /// </summary>
    private async Task WaitForTerminationAsync(ClientSession target, int timeoutMs, int written, short format, int pid)
    {
        bool gone = await target.WaitUntilClosedAsync(timeoutMs).ConfigureAwait(false);
        FinishDeferred(written, (ref PgWriter writer) =>
        {
            if (!gone)
            {
                InterceptErrors.WriteTerminateTimeoutWarning(ref writer, pid, timeoutMs);
            }

            InterceptReplies.WriteDataRowBool(ref writer, gone, format);
            InterceptReplies.WriteCommandComplete(ref writer, InterceptReplies.SelectOneTag);
        });
    }

    /// <summary>
    /// Sends <paramref name="signal"/> to the instance that owns its session, then finishes the reply begun
    /// in the output buffer with what a local target would have given: 42501, <c>f</c> with PostgreSQL's
    /// warning (unknown pid, a termination that timed out, an owner that could not be asked), or <c>t</c>.
    /// </summary>
    private async Task SignalPeerAsync(PeerLink owner, PeerSignal signal, int written, short format, bool describe, InterceptedCall call, byte[] sql)
    {
        PeerSignalOutcome outcome = await PeerSignalSender.SendAsync(_session.Proxy, owner, signal).ConfigureAwait(false);
        bool terminate = signal.Kind == PeerSignalKind.Terminate;
        FinishDeferred(written, (ref PgWriter writer) =>
        {
            if (outcome == PeerSignalOutcome.Denied)
            {
                WritePermissionDenied(terminate, ref writer);
                return;
            }

            if (describe)
            {
                WriteResultDescription(call, sql, format, ref writer);
            }

            switch (outcome)
            {
                case PeerSignalOutcome.NotFound:
                    InterceptErrors.WriteNotBackendProcessWarning(ref writer, signal.SessionId);
                    break;
                case PeerSignalOutcome.TimedOut:
                    InterceptErrors.WriteTerminateTimeoutWarning(ref writer, signal.SessionId, signal.TimeoutMs);
                    break;
                case PeerSignalOutcome.Unreachable:
                    InterceptErrors.WriteSignalNotSentWarning(ref writer, signal.SessionId, owner.Options.Id);
                    break;
            }

            InterceptReplies.WriteDataRowBool(ref writer, outcome == PeerSignalOutcome.Signalled, format);
            InterceptReplies.WriteCommandComplete(ref writer, InterceptReplies.SelectOneTag);
        });
    }

    /// <summary>Writes the rest of a deferred reply after the bytes already in the output buffer.</summary>
    private delegate void DeferredReply(ref PgWriter writer);

    /// <summary>
    /// On the session's loop: finishes the reply begun in the output buffer (its first
    /// <paramref name="written"/> bytes) with <paramref name="rest"/> and ReadyForQuery, sends it, and lets
    /// the client's next messages through.
    /// </summary>
    private void FinishDeferred(int written, DeferredReply rest)
    {
        _session.Loop.Post(() =>
        {
            _localReplyPending = false;
            byte[]? output = _session.OutBuffer;
            if (_session.State == SessionState.Closed || output is null)
            {
                _session.TryFinish();
                return;
            }

            var writer = new PgWriter(output.AsSpan(written));
            rest(ref writer);
            writer.WriteReadyForQuery(_session.ClientTransactionStatus);
            _session.SendOut(written + writer.Position, AfterSend.ContinueRelay);
        });
    }
}
