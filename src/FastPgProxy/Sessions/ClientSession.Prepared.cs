using System.Text;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

/// <summary>
/// Named prepared statements in transaction mode. A client's statement lives on whichever backend its
/// transaction lands on, so the proxy keeps each client's Parse, gives the statement a process-unique name
/// on backends (two clients' <c>S_1</c> never clash), prepares it on a backend that lacks it just before
/// the Bind or Describe that needs it, and keeps at most max_prepared_statements per backend (least
/// recently used are closed). Replies to messages the proxy added (ParseComplete, CloseComplete) are
/// dropped so the client sees exactly the replies to what it sent (protocol 55.2.3).
/// </summary>
internal sealed partial class ClientSession
{
    // Reply bookkeeping, in the order the backend answers: a Parse or Close whose reply is forwarded or
    // dropped, and a marker for each message that ends in ReadyForQuery.
    private const byte ForwardParse = (byte)'p';
    private const byte DropParse = (byte)'P';
    private const byte ForwardClose = (byte)'c';
    private const byte DropClose = (byte)'C';
    private const byte SyncMarker = (byte)'S';

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
    private const int NamedParseReserve = 2 * MaxBindHead;

    // How far into a Bind too large to inspect its portal and statement names are looked for.
    private const int MaxBindHead = 1024;

    // Bytes a statement costs the proxy besides its name and text: the entry, the object, the backend name.
    private const int StatementOverhead = 96;

    private readonly Dictionary<string, ClientStatement> _statements = new(StringComparer.Ordinal);
    private long _statementBytes;
    private readonly Queue<byte> _replyActions = new();
    private byte[]? _rewriteBuffer;
    private bool _tracking;

    private void ConfigureTracking()
    {
        _tracking = _pool!.Mode == PoolMode.Transaction && _proxy.Options.MaxPreparedStatements > 0;
        _clientFramer.CountSet = _tracking ? MessageTypeSet.None : s_readyForQueryEarners;
        _clientFramer.OversizedSet = _tracking ? s_oversized : MessageTypeSet.None;
    }

    /// <summary>
    /// The relay's client side with statement tracking: every extended-protocol message is looked at;
    /// runs without a named statement still go out zero-copy, runs with one are rebuilt in a buffer.
    /// </summary>
    private void PumpClientTracking()
    {
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
                Fatal(SqlState.ProtocolViolation, "invalid message length");
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
                    (byte)'B' => RewriteLargeBindHead(window, ref run, ref copied, ref outLength, ref output, length, server.PreparedStatements),
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

            ClientStatement? statement = FindStatementFor(message);
            bool namedParse = type == (byte)FrontendMessage.Parse && length > MessageFramer.HeaderLength && message[MessageFramer.HeaderLength] != 0;
            if (namedParse && StatementLimitRefusal(message.Slice(MessageFramer.HeaderLength), statement) is { } refusal)
            {
                if (run > 0)
                {
                    // What precedes it goes first; the refusal comes on the next pass.
                    break;
                }

                // On a backend, in the middle of the client's batch, an ERROR cannot be put in the reply
                // stream without PostgreSQL's own replies to sort around it: the session ends.
                Fatal(refusal.SqlState, refusal.Message, refusal.Detail);
                return;
            }
            if (statement is null && !namedParse && !IsStatementClose(message))
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
                    LargeBind next = RewriteLargeBindHead(window, ref run, ref copied, ref outLength, ref output, length, server.PreparedStatements);
                    if (next == LargeBind.Failed)
                    {
                        return;
                    }

                    break;
                }

                Fatal(SqlState.ProgramLimitExceeded, "prepared statement too large for the proxy to prepare again on another server");
                return;
            }

            output ??= _rewriteBuffer ??= Loop.Buffers.Rent();
            window.Slice(copied, run - copied).CopyTo(output.AsSpan(outLength));
            outLength += run - copied;
            outLength += Rewrite(message, statement, server.PreparedStatements, output.AsSpan(outLength));
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
            Log.Debug($"session {Id}: client run {run} bytes, rewritten {output is not null}, window {window.Length}, expected Z {_expectedReadyForQuery}, open {_openExtended}, actions {_replyActions.Count}");
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

        Log.Warning($"session {Id}: named Parse of {total} bytes refused in transaction mode");
        Fatal(SqlState.ProgramLimitExceeded, $"prepared statement of {total} bytes is too large for the proxy to prepare again on another server; use an unnamed statement or session pooling");
        return LargeBind.Failed;
    }

    /// <summary>
    /// A Bind too long to hold whole (its parameters exceed a buffer) that names a client statement: the
    /// statement is prepared on this backend when it lacks it, the head (header, portal, statement name) is
    /// written to the output with the backend's name and the length adjusted, and the framer streams the
    /// rest of the message through unchanged. A Bind of the unnamed statement streams through as it is.
    /// </summary>
    private LargeBind RewriteLargeBindHead(ReadOnlySpan<byte> window, ref int run, ref int copied, ref int outLength, ref byte[]? output, int total, PreparedStatementCache cache)
    {
        ReadOnlySpan<byte> body = window.Slice(run + MessageFramer.HeaderLength);
        int portalEnd = body.IndexOf((byte)0);
        int nameEnd = portalEnd < 0 ? -1 : body.Slice(portalEnd + 1).IndexOf((byte)0);
        if (nameEnd < 0 && body.Length < MaxBindHead)
        {
            // The names are not all here yet.
            return LargeBind.Stop;
        }

        ClientStatement? statement = nameEnd <= 0 ? null
            : _statements.GetValueOrDefault(Encoding.UTF8.GetString(body.Slice(portalEnd + 1, nameEnd)));
        if (statement is null)
        {
            NoteForwarded((byte)'B');
            _clientFramer.StreamRest(total, MessageFramer.HeaderLength);
            run += MessageFramer.HeaderLength;
            return LargeBind.Streaming;
        }

        int headLength = MessageFramer.HeaderLength + portalEnd + 1 + nameEnd + 1;
        int worst = (run - copied) + outLength + headLength + statement.ParseTail.Length + statement.ServerNameBytes.Length + 128;
        if (worst > Loop.Buffers.BufferSize)
        {
            if (run > 0)
            {
                return LargeBind.Stop;
            }

            Fatal(SqlState.ProgramLimitExceeded, "prepared statement too large for the proxy to prepare again on another server");
            return LargeBind.Failed;
        }

        output ??= _rewriteBuffer ??= Loop.Buffers.Rent();
        window.Slice(copied, run - copied).CopyTo(output.AsSpan(outLength));
        outLength += run - copied;
        var writer = new PgWriter(output.AsSpan(outLength));
        EnsurePrepared(ref writer, statement, cache);
        writer.WriteByte((byte)'B');
        writer.WriteInt32(total - sizeof(byte) - nameEnd + statement.ServerNameBytes.Length);
        writer.WriteCString(body.Slice(0, portalEnd));
        writer.WriteCString(statement.ServerNameBytes);
        outLength += writer.Position;
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
        ReadOnlySpan<byte> window = _client.Window;
        int pos = 0;
        int parses = 0;
        while (true)
        {
            if (window.Length - pos < MessageFramer.HeaderLength)
            {
                return false;
            }

            byte type = window[pos];
            int total = MessageFramer.ReadLength(window.Slice(pos)) + 1;
            if (total < MessageFramer.HeaderLength || total > window.Length - pos)
            {
                return false;
            }

            if (type == (byte)'S' && parses > 0)
            {
                pos += total;
                break;
            }

            if (type != (byte)FrontendMessage.Parse)
            {
                return false;
            }

            ReadOnlySpan<byte> name = CString(window.Slice(pos + MessageFramer.HeaderLength, total - MessageFramer.HeaderLength));
            if (name.IsEmpty || _statements.ContainsKey(Encoding.UTF8.GetString(name)))
            {
                return false;
            }

            pos += total;
            parses++;
        }

        var writer = new PgWriter(RentOut());
        int at = 0;
        while (at < pos)
        {
            int total = MessageFramer.ReadLength(window.Slice(at)) + 1;
            if (window[at] == (byte)FrontendMessage.Parse)
            {
                ReadOnlySpan<byte> body = window.Slice(at + MessageFramer.HeaderLength, total - MessageFramer.HeaderLength);
                if (StatementLimitRefusal(body, replaced: null) is { } refusal)
                {
                    // As PostgreSQL does after an error: the rest of the batch up to Sync is skipped.
                    Log.Warning($"client {RemoteEndPoint} session {Id}: {refusal.Message}");
                    writer.WriteError(BackendMessage.ErrorResponse, "ERROR", refusal.SqlState, refusal.Message, refusal.Detail);
                    break;
                }

                ReadOnlySpan<byte> name = CString(body);
                AddStatement(Encoding.UTF8.GetString(name), new ClientStatement(body.Slice(name.Length + 1).ToArray()));
                writer.BeginMessage((byte)'1');
                writer.EndMessage();
            }

            at += total;
        }

        writer.WriteReadyForQuery(TransactionStatus.Idle);
        _client.Consume(pos);
        SendOut(writer.Position, AfterSend.ContinueRelay);
        return true;
    }

    /// <summary>Why a named Parse is refused: PostgreSQL's error fields.</summary>
    private sealed record StatementRefusal(string SqlState, string Message, string Detail);

    /// <summary>
    /// Whether keeping the statement a named Parse (<paramref name="body"/>: name, text, types) defines
    /// would take this client past max_client_prepared_statements (54000) or max_client_prepared_bytes
    /// (53200); null when it fits. <paramref name="replaced"/> is the statement of that name it redefines,
    /// as the caller found it; null for a name the client has not used.
    /// </summary>
    private StatementRefusal? StatementLimitRefusal(ReadOnlySpan<byte> body, ClientStatement? replaced)
    {
        Config.ProxyOptions options = _proxy.Options;
        ReadOnlySpan<byte> name = CString(body);
        if (replaced is null && _statements.Count >= options.MaxClientPreparedStatements)
        {
            return new StatementRefusal(SqlState.ProgramLimitExceeded, "too many prepared statements",
                $"The proxy keeps at most {options.MaxClientPreparedStatements} prepared statements per client (max_client_prepared_statements); deallocate some first.");
        }

        long bytes = _statementBytes + StatementCost(name.Length, body.Length - name.Length - 1) - (replaced is null ? 0 : StatementCost(name.Length, replaced.ParseTail.Length));
        if (bytes > options.MaxClientPreparedBytes)
        {
            return new StatementRefusal(SqlState.OutOfMemory, "out of memory",
                $"This client's prepared statements would take {bytes} bytes in the proxy, over max_client_prepared_bytes ({options.MaxClientPreparedBytes}).");
        }

        return null;
    }

    private static long StatementCost(int nameLength, int tailLength) => nameLength + tailLength + StatementOverhead;

    private void AddStatement(string name, ClientStatement statement)
    {
        RemoveStatement(name);
        _statements[name] = statement;
        long cost = StatementCost(Encoding.UTF8.GetByteCount(name), statement.ParseTail.Length);
        _statementBytes += cost;
        _proxy.Stats.OnClientStatementBytes(cost);
    }

    private void RemoveStatement(string name)
    {
        if (_statements.Remove(name, out ClientStatement? old))
        {
            long cost = StatementCost(Encoding.UTF8.GetByteCount(name), old.ParseTail.Length);
            _statementBytes -= cost;
            _proxy.Stats.OnClientStatementBytes(-cost);
        }
    }

    /// <summary>Forgets every statement of the client (the session ended): nothing of it stays in the proxy.</summary>
    private void ForgetStatements()
    {
        _statements.Clear();
        _statements.TrimExcess();
        _proxy.Stats.OnClientStatementBytes(-_statementBytes);
        _proxy.OnClientMemoryFreed(_statementBytes);
        _statementBytes = 0;
    }

    /// <summary>Books a message forwarded unchanged: what reply it earns and whether it leaves a batch open.</summary>
    private void NoteForwarded(byte type)
    {
        switch (type)
        {
            case (byte)FrontendMessage.Parse:
                _replyActions.Enqueue(ForwardParse);
                _openExtended = true;
                break;
            case (byte)'C':
                _replyActions.Enqueue(ForwardClose);
                _openExtended = true;
                break;
            case (byte)'S':
                _replyActions.Enqueue(SyncMarker);
                _expectedReadyForQuery++;
                _openExtended = false;
                break;
            case (byte)FrontendMessage.Query or (byte)'F':
                _replyActions.Enqueue(SyncMarker);
                _expectedReadyForQuery++;
                break;
            default:
                _openExtended = true;
                break;
        }
    }

    /// <summary>The client statement a Bind, Describe or Close names, or for a Parse the one it (re)defines; null for unnamed ones.</summary>
    private ClientStatement? FindStatementFor(ReadOnlySpan<byte> message)
    {
        ReadOnlySpan<byte> body = message.Slice(MessageFramer.HeaderLength);
        ReadOnlySpan<byte> name;
        switch (message[0])
        {
            case (byte)'B':
                int portalEnd = body.IndexOf((byte)0);
                if (portalEnd < 0)
                {
                    return null;
                }

                name = CString(body.Slice(portalEnd + 1));
                break;
            case (byte)'D' or (byte)'C':
                if (body.IsEmpty || body[0] != (byte)'S')
                {
                    return null;
                }

                name = CString(body.Slice(1));
                break;
            case (byte)FrontendMessage.Parse:
                name = CString(body);
                break;
            default:
                return null;
        }

        if (name.IsEmpty)
        {
            return null;
        }

        return _statements.TryGetValue(Encoding.UTF8.GetString(name), out ClientStatement? statement) ? statement : null;
    }

    private static bool IsStatementClose(ReadOnlySpan<byte> message) =>
        message[0] == (byte)'C' && message.Length > MessageFramer.HeaderLength && message[MessageFramer.HeaderLength] == (byte)'S';

    private static ReadOnlySpan<byte> CString(ReadOnlySpan<byte> data)
    {
        int end = data.IndexOf((byte)0);
        return end < 0 ? ReadOnlySpan<byte>.Empty : data.Slice(0, end);
    }

    /// <summary>Writes what the backend must receive for <paramref name="message"/>; returns the bytes written.</summary>
    private int Rewrite(ReadOnlySpan<byte> message, ClientStatement? statement, PreparedStatementCache cache, Span<byte> output)
    {
        var writer = new PgWriter(output);
        ReadOnlySpan<byte> body = message.Slice(MessageFramer.HeaderLength);
        switch (message[0])
        {
            case (byte)FrontendMessage.Parse:
            {
                ReadOnlySpan<byte> name = CString(body);
                if (name.IsEmpty)
                {
                    writer.WriteBytes(message);
                    NoteForwarded((byte)FrontendMessage.Parse);
                    break;
                }

                ReadOnlySpan<byte> tail = body.Slice(name.Length + 1);
                if (statement is null || !tail.SequenceEqual(statement.ParseTail))
                {
                    statement = new ClientStatement(tail.ToArray());
                    AddStatement(Encoding.UTF8.GetString(name), statement);
                }

                WriteEviction(ref writer, cache.Add(statement.ServerName));
                WriteParse(ref writer, statement);
                NoteForwarded((byte)FrontendMessage.Parse);
                break;
            }

            case (byte)'B':
            {
                EnsurePrepared(ref writer, statement!, cache);
                ReadOnlySpan<byte> portal = CString(body);
                ReadOnlySpan<byte> rest = body.Slice(portal.Length + 1);
                rest = rest.Slice(rest.IndexOf((byte)0) + 1);
                writer.BeginMessage((byte)'B');
                writer.WriteCString(portal);
                writer.WriteCString(statement!.ServerNameBytes);
                writer.WriteBytes(rest);
                writer.EndMessage();
                NoteForwarded((byte)'B');
                break;
            }

            case (byte)'D':
                EnsurePrepared(ref writer, statement!, cache);
                writer.BeginMessage((byte)'D');
                writer.WriteByte((byte)'S');
                writer.WriteCString(statement!.ServerNameBytes);
                writer.EndMessage();
                NoteForwarded((byte)'D');
                break;

            default:
            {
                // Close of a statement: the client forgets it; the backend closes it if it has it, and a
                // close of a name it lacks is no error (55.7, Close), so it is always forwarded renamed.
                ReadOnlySpan<byte> name = CString(body.Slice(1));
                RemoveStatement(Encoding.UTF8.GetString(name));
                writer.BeginMessage((byte)'C');
                writer.WriteByte((byte)'S');
                if (statement is not null)
                {
                    cache.Remove(statement.ServerName);
                    writer.WriteCString(statement.ServerNameBytes);
                }
                else
                {
                    writer.WriteCString(name);
                }

                writer.EndMessage();
                NoteForwarded((byte)'C');
                break;
            }
        }

        return writer.Position;
    }

    /// <summary>Prepares the statement on this backend first when it lacks it; the ParseComplete is dropped.</summary>
    private void EnsurePrepared(ref PgWriter writer, ClientStatement statement, PreparedStatementCache cache)
    {
        if (cache.Touch(statement.ServerName))
        {
            return;
        }

        WriteEviction(ref writer, cache.Add(statement.ServerName));
        WriteParse(ref writer, statement);
        _replyActions.Enqueue(DropParse);
    }

    private void WriteEviction(ref PgWriter writer, string? evicted)
    {
        if (evicted is null)
        {
            return;
        }

        writer.BeginMessage((byte)'C');
        writer.WriteByte((byte)'S');
        writer.WriteCString(evicted);
        writer.EndMessage();
        _replyActions.Enqueue(DropClose);
    }

    private static void WriteParse(ref PgWriter writer, ClientStatement statement)
    {
        writer.BeginMessage((byte)FrontendMessage.Parse);
        writer.WriteCString(statement.ServerNameBytes);
        writer.WriteBytes(statement.ParseTail);
        writer.EndMessage();
    }

    /// <summary>
    /// A ParseComplete or CloseComplete arrived: whether it answers a message the proxy added (drop it)
    /// or one the client sent (forward it).
    /// </summary>
    private bool ShouldDropReply(byte type)
    {
        if (!_replyActions.TryPeek(out byte action))
        {
            return false;
        }

        bool parse = type == (byte)'1';
        if (parse ? action is ForwardParse or DropParse : action is ForwardClose or DropClose)
        {
            return action is DropParse or DropClose;
        }

        return false;
    }

    /// <summary>Consumes the bookkeeping entry of the reply just handled.</summary>
    private void OnReplyHandled(byte type)
    {
        switch (type)
        {
            case (byte)'1' or (byte)'3':
                if (_replyActions.TryPeek(out byte action) && action != SyncMarker)
                {
                    _replyActions.Dequeue();
                }

                break;
            case (byte)BackendMessage.ErrorResponse:
                // The backend skips everything up to the next Sync after an error (55.2.3).
                while (_replyActions.TryPeek(out byte next) && next != SyncMarker)
                {
                    _replyActions.Dequeue();
                }

                break;
            case (byte)BackendMessage.ReadyForQuery:
                while (_replyActions.TryDequeue(out byte next) && next != SyncMarker)
                {
                }

                break;
        }
    }

    private void ReturnRewriteBuffer()
    {
        if (_rewriteBuffer is not null)
        {
            Loop.Buffers.Return(_rewriteBuffer);
            _rewriteBuffer = null;
        }
    }
}
