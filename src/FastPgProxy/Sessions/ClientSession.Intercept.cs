using System.Buffers.Binary;
using System.Diagnostics;
using FastPgProxy.Hosting;
using FastPgProxy.Interception;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

/// <summary>
/// The proxy answers <c>pg_backend_pid()</c>, <c>pg_cancel_backend(pid)</c> and
/// <c>pg_terminate_backend(pid[, timeout])</c> itself, in terms of proxy sessions: a Simple Query that is
/// exactly one such call, or an extended-protocol batch that is exactly one such unnamed statement
/// (Parse, Bind, Describe, Execute, Sync, as drivers send a one-off command). Anything else reaches
/// PostgreSQL untouched. The reply never overtakes replies still due from the backend.
/// </summary>
internal sealed partial class ClientSession
{
    private bool _parkedForLocalReply;
    private bool _localReplyPending;
    private bool _closeAfterLocalReply;

    /// <summary>The transaction status the client believes in: its backend's, or idle without one.</summary>
    private TransactionStatus ClientTransactionStatus => _server?.TransactionStatus ?? TransactionStatus.Idle;

    /// <summary>
    /// Handles an intercepted call at the start of the client's window. Returns true when the caller must
    /// stop pumping: the reply is on its way, or the session waits for the backend's outstanding replies.
    /// </summary>
    private bool TryIntercept()
    {
        if (_localReplyPending)
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
        if (_client.SendPending || _out is not null || _syncingParameters
            || (_server is not null && (_expectedReadyForQuery > 0 || _openExtended || _server.Channel.SendPending || _server.Channel.Buffered > 0)))
        {
            _parkedForLocalReply = true;
            return true;
        }

        _parkedForLocalReply = false;
        byte[] output = RentOut();
        var writer = new PgWriter(output);
        bool deferred = window[0] == (byte)FrontendMessage.Query
            ? AnswerSimple(window.Slice(0, batch), ref writer)
            : AnswerExtended(window.Slice(0, batch), ref writer);
        _client.Consume(batch);
        if (deferred)
        {
            // pg_terminate_backend with a timeout: the reply follows when the target is gone or time is up.
            _localReplyPending = true;
            return true;
        }

        SendOut(writer.Position, _closeAfterLocalReply ? AfterSend.Close : AfterSend.ContinueRelay);
        return true;
    }

    /// <summary>A Simple Query: the rows (or error), CommandComplete and ReadyForQuery (55.2.2).</summary>
    private bool AnswerSimple(ReadOnlySpan<byte> message, ref PgWriter writer)
    {
        ReadOnlySpan<byte> sql = CString(message.Slice(MessageFramer.HeaderLength));
        QueryScanner.TryMatch(sql, out InterceptedCall call);
        if (ClientTransactionStatus == TransactionStatus.Failed)
        {
            InterceptReplies.WriteTransactionAborted(ref writer);
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
            writer.WriteReadyForQuery(ClientTransactionStatus);
        }

        return false;
    }

    /// <summary>An extended-protocol batch: each message answered in order, and after an error everything up to Sync skipped (55.2.3).</summary>
    private bool AnswerExtended(ReadOnlySpan<byte> batch, ref PgWriter writer)
    {
        ReadOnlySpan<byte> parseBody = batch.Slice(MessageFramer.HeaderLength, MessageFramer.ReadLength(batch) - sizeof(int));
        ReadOnlySpan<byte> sql = CString(parseBody.Slice(1));
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
                    if (ClientTransactionStatus == TransactionStatus.Failed)
                    {
                        InterceptReplies.WriteTransactionAborted(ref writer);
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
            writer.WriteReadyForQuery(ClientTransactionStatus);
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
            if (InterceptReplies.WriteParameterError(ref writer, result, type, value, new BindParameterContext(ReadOnlySpan<byte>.Empty, i + 1)))
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

    private static short ReadInt16(ReadOnlySpan<byte> data, ref int pos)
    {
        short value = BinaryPrimitives.ReadInt16BigEndian(data.Slice(pos));
        pos += sizeof(short);
        return value;
    }

    private static int ReadInt32(ReadOnlySpan<byte> data, ref int pos)
    {
        int value = BinaryPrimitives.ReadInt32BigEndian(data.Slice(pos));
        pos += sizeof(int);
        return value;
    }

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

            InterceptReplies.WriteDataRowInt4(ref writer, Id, format);
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
        int timeoutMs = InterceptReplies.PostgresTimeout(timeout);
        if (terminate && timeoutMs < 0)
        {
            InterceptReplies.WriteNegativeTimeout(ref writer);
            failed = true;
            return false;
        }

        long pid = argument.Value;
        ClientSession? target = null;
        if (pid is > 0 and <= int.MaxValue)
        {
            _proxy.Sessions.TryGet((int)pid, out target);
        }

        if (target is not null && target.User != User && !_proxy.Options.AdminUsers.Contains(User!))
        {
            if (terminate)
            {
                InterceptReplies.WriteTerminatePermissionDenied(ref writer);
            }
            else
            {
                InterceptReplies.WriteCancelPermissionDenied(ref writer);
            }

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
            InterceptReplies.WriteNotBackendProcessWarning(ref writer, unchecked((int)pid));
            InterceptReplies.WriteDataRowBool(ref writer, false, format);
            return false;
        }

        Log.Write(LogLevel.Info, $"session {Id} ({User}): {(terminate ? "pg_terminate_backend" : "pg_cancel_backend")}({pid})");
        if (target == this)
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
        if (target == this || timeoutMs == 0)
        {
            InterceptReplies.WriteDataRowBool(ref writer, true, format);
            return false;
        }

        // Wait without blocking the loop, then finish the reply already begun in _out.
        int written = writer.Position;
        _ = WaitForTerminationAsync(target, timeoutMs, written, format, (int)pid, call, sql.ToArray());
        return true;
    }

    private async Task WaitForTerminationAsync(ClientSession target, int timeoutMs, int written, short format, int pid, InterceptedCall call, byte[] sql)
    {
        var deadline = Stopwatch.StartNew();
        while (target.State != SessionState.Closed && deadline.ElapsedMilliseconds < timeoutMs)
        {
            await Task.Delay(5).ConfigureAwait(false);
        }

        bool gone = target.State == SessionState.Closed;
        Loop.Post(() =>
        {
            _localReplyPending = false;
            if (State == SessionState.Closed || _out is null)
            {
                TryFinish();
                return;
            }

            var writer = new PgWriter(_out.AsSpan(written));
            if (!gone)
            {
                InterceptReplies.WriteTerminateTimeoutWarning(ref writer, pid, timeoutMs);
            }

            InterceptReplies.WriteDataRowBool(ref writer, gone, format);
            InterceptReplies.WriteCommandComplete(ref writer, InterceptReplies.SelectOneTag);
            writer.WriteReadyForQuery(ClientTransactionStatus);
            _ = call;
            _ = sql;
            SendOut(written + writer.Position, AfterSend.ContinueRelay);
        });
    }

    /// <summary>Cancels this session's running query, from any thread, through the CancelRequest path.</summary>
    public void CancelFromAnywhere() => RequestCancel(null);

    /// <summary>
    /// Ends this session as an administrator command does (FATAL 57P01), from any thread: a running query
    /// is cancelled first, so its backend is never left busy.
    /// </summary>
    public void TerminateFromAnywhere() => Loop.Post(() =>
    {
        if (State == SessionState.Closed)
        {
            return;
        }

        if (_server is not null && !ServerIsClean())
        {
            CancelRunningQuery(null);
        }

        Fatal(SqlState.AdminShutdown, "terminating connection due to administrator command");
    });
}
