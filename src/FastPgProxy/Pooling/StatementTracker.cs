using System.Text;
using FastPgProxy.Hosting;
using FastPgProxy.Net;
using FastPgProxy.Protocol;

namespace FastPgProxy.Pooling;

/// <summary>
/// One client's named prepared statements in transaction mode. A client's statement lives on whichever
/// backend its transaction lands on, so the tracker keeps each client's Parse, gives the statement a
/// process-unique name on backends (two clients' <c>S_1</c> never clash), prepares it on a backend that
/// lacks it just before the Bind or Describe that needs it, and keeps at most max_prepared_statements per
/// backend (least recently used are closed). Replies to messages the proxy added (ParseComplete,
/// CloseComplete) are dropped so the client sees exactly the replies to what it sent (protocol 55.2.3).
/// It owns the client's statement map and what it costs, the queue of expected replies, and the buffer
/// rewritten runs are built in; the session relays and keeps its own counters. A session allocates one
/// only when tracking is on (transaction mode, max_prepared_statements above 0), so session-mode and
/// admin console clients carry no map or queue. Loop-owned, like its session.
/// </summary>
internal sealed partial class StatementTracker
{
    // Reply bookkeeping, in the order the backend answers: a Parse or Close whose reply is forwarded or
    // dropped, and a marker for each message that ends in ReadyForQuery.
    private const byte ForwardParse = (byte)'p';
    private const byte DropParse = (byte)'P';
    private const byte ForwardClose = (byte)'c';
    private const byte DropClose = (byte)'C';
    private const byte SyncMarker = (byte)'S';

    /// <summary>How far into a Bind too large to inspect its portal and statement names are looked for.</summary>
    public const int MaxBindHead = 1024;

    // Bytes a statement costs the proxy besides its name and text: the entry, the object, the backend name.
    private const int StatementOverhead = 96;

    private readonly ProxyServer _proxy;
    // Created with the client's first named statement: most clients never name one, and an idle client's
    // tracker then holds no map.
    private Dictionary<string, ClientStatement>? _statements;
    private long _statementBytes;
    private readonly Queue<byte> _replyActions = new();
    private byte[]? _rewriteBuffer;

    /// <summary>Creates an empty tracker; limits and memory counters are those of <paramref name="proxy"/>.</summary>
    public StatementTracker(ProxyServer proxy) => _proxy = proxy;

    /// <summary>Reply bookkeeping entries not yet consumed (for the debug log).</summary>
    public int PendingReplies => _replyActions.Count;

    /// <summary>The buffer a rewritten run is built in, rented from <paramref name="buffers"/> when there is none.</summary>
    public byte[] RentRewriteBuffer(BufferPool buffers) => _rewriteBuffer ??= buffers.Rent();

    /// <summary>Gives the rewrite buffer back to <paramref name="buffers"/> (the run that used it was sent).</summary>
    public void ReturnRewriteBuffer(BufferPool buffers)
    {
        if (_rewriteBuffer is not null)
        {
            buffers.Return(_rewriteBuffer);
            _rewriteBuffer = null;
        }
    }

    /// <summary>A backend was just assigned: no reply of an earlier one is expected.</summary>
    public void ClearReplyActions() => _replyActions.Clear();

    /// <summary>
    /// Length of the batch of named Parse messages closed by Sync that <paramref name="window"/> starts with,
    /// when it defines no statement the client already has and is all there; 0 otherwise. Such a batch (what
    /// libpq's PQprepare and pgbench -M prepared send) is answered by <see cref="AnswerLocalPrepare"/>.
    /// </summary>
    public int MeasureLocalPrepare(ReadOnlySpan<byte> window)
    {
        int pos = 0;
        int parses = 0;
        while (true)
        {
            int total = MessageFramer.WholeLength(window.Slice(pos));
            if (total == 0)
            {
                return 0;
            }

            byte type = window[pos];

            if (type == (byte)'S' && parses > 0)
            {
                return pos + total;
            }

            if (type != (byte)FrontendMessage.Parse)
            {
                return 0;
            }

            ReadOnlySpan<byte> name = MessageFramer.ReadCString(window.Slice(pos + MessageFramer.HeaderLength, total - MessageFramer.HeaderLength));
            if (name.IsEmpty || FindStatement(name) is not null)
            {
                return 0;
            }

            pos += total;
            parses++;
        }
    }

    /// <summary>
    /// Records the statements of a <paramref name="batch"/> <see cref="MeasureLocalPrepare"/> accepted and
    /// writes its answer to <paramref name="output"/>: ParseComplete for each, then ReadyForQuery. A Parse
    /// past the client's limits gets the error instead and, as PostgreSQL does after an error, the rest of
    /// the batch up to Sync is skipped; <paramref name="refusal"/> is that error, null when there was none.
    /// Returns the bytes written.
    /// </summary>
    public int AnswerLocalPrepare(ReadOnlySpan<byte> batch, Span<byte> output, out RunRefusal? refusal)
    {
        refusal = null;
        var writer = new PgWriter(output);
        int at = 0;
        while (at < batch.Length)
        {
            int total = MessageFramer.ReadLength(batch.Slice(at)) + 1;
            if (batch[at] == (byte)FrontendMessage.Parse)
            {
                ReadOnlySpan<byte> body = batch.Slice(at + MessageFramer.HeaderLength, total - MessageFramer.HeaderLength);
                refusal = StatementLimitRefusal(body, replaced: null);
                if (refusal is not null)
                {
                    writer.WriteError(BackendMessage.ErrorResponse, "ERROR", refusal.SqlState, refusal.Message, refusal.Detail);
                    break;
                }

                ReadOnlySpan<byte> name = MessageFramer.ReadCString(body);
                AddStatement(Encoding.UTF8.GetString(name), new ClientStatement(body.Slice(name.Length + 1).ToArray()));
                writer.BeginMessage((byte)'1');
                writer.EndMessage();
            }

            at += total;
        }

        writer.WriteReadyForQuery(TransactionStatus.Idle);
        return writer.Position;
    }

    /// <summary>
    /// Whether keeping the statement a named Parse (<paramref name="body"/>: name, text, types) defines
    /// would take this client past max_client_prepared_statements (54000) or max_client_prepared_bytes
    /// (53200); null when it fits. <paramref name="replaced"/> is the statement of that name it redefines,
    /// as the caller found it; null for a name the client has not used.
    /// </summary>
    public RunRefusal? StatementLimitRefusal(ReadOnlySpan<byte> body, ClientStatement? replaced)
    {
        Config.ProxyOptions options = _proxy.Options;
        ReadOnlySpan<byte> name = MessageFramer.ReadCString(body);
        if (replaced is null && (_statements?.Count ?? 0) >= options.MaxClientPreparedStatements)
        {
            return new RunRefusal(SqlState.ProgramLimitExceeded, "too many prepared statements",
                $"The proxy keeps at most {options.MaxClientPreparedStatements} prepared statements per client (max_client_prepared_statements); deallocate some first.");
        }

        long bytes = _statementBytes + StatementCost(name.Length, body.Length - name.Length - 1) - (replaced is null ? 0 : StatementCost(name.Length, replaced.ParseTail.Length));
        if (bytes > options.MaxClientPreparedBytes)
        {
            return new RunRefusal(SqlState.OutOfMemory, "out of memory",
                $"This client's prepared statements would take {bytes} bytes in the proxy, over max_client_prepared_bytes ({options.MaxClientPreparedBytes}).");
        }

        return null;
    }

    private static long StatementCost(int nameLength, int tailLength) => nameLength + tailLength + StatementOverhead;

    private void AddStatement(string name, ClientStatement statement)
    {
        RemoveStatement(name);
        (_statements ??= new(StringComparer.Ordinal))[name] = statement;
        long cost = StatementCost(Encoding.UTF8.GetByteCount(name), statement.ParseTail.Length);
        _statementBytes += cost;
        _proxy.Stats.OnClientStatementBytes(cost);
    }

    private void RemoveStatement(string name)
    {
        if (_statements is not null && _statements.Remove(name, out ClientStatement? old))
        {
            long cost = StatementCost(Encoding.UTF8.GetByteCount(name), old.ParseTail.Length);
            _statementBytes -= cost;
            _proxy.Stats.OnClientStatementBytes(-cost);
        }
    }

    /// <summary>Forgets every statement of the client (the session ended): nothing of it stays in the proxy.</summary>
    public void ForgetStatements()
    {
        _statements = null;
        _proxy.Stats.OnClientStatementBytes(-_statementBytes);
        _proxy.OnClientMemoryFreed(_statementBytes);
        _statementBytes = 0;
    }

    /// <summary>
    /// Books the reply a message sent to the backend earns, after the entries of what the proxy added
    /// before it: a Parse's ParseComplete or a Close's CloseComplete is forwarded, and a Sync, Query or
    /// FunctionCall ends in ReadyForQuery.
    /// </summary>
    public void BookForwarded(byte type)
    {
        switch (type)
        {
            case (byte)FrontendMessage.Parse:
                _replyActions.Enqueue(ForwardParse);
                break;
            case (byte)'C':
                _replyActions.Enqueue(ForwardClose);
                break;
            case (byte)'S' or (byte)FrontendMessage.Query or (byte)'F':
                _replyActions.Enqueue(SyncMarker);
                break;
        }
    }

    /// <summary>The client statement a Bind, Describe or Close names, or for a Parse the one it (re)defines; null for unnamed ones.</summary>
    public ClientStatement? FindStatementFor(ReadOnlySpan<byte> message)
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

                name = MessageFramer.ReadCString(body.Slice(portalEnd + 1));
                break;
            case (byte)'D' or (byte)'C':
                if (body.IsEmpty || body[0] != (byte)'S')
                {
                    return null;
                }

                name = MessageFramer.ReadCString(body.Slice(1));
                break;
            case (byte)FrontendMessage.Parse:
                name = MessageFramer.ReadCString(body);
                break;
            default:
                return null;
        }

        if (name.IsEmpty)
        {
            return null;
        }

        return FindStatement(name);
    }

    /// <summary>
    /// The client's statement named by the UTF-8 bytes <paramref name="name"/>, or null; looked up without
    /// making a string of the name (this runs for every Bind of a named statement).
    /// </summary>
    private ClientStatement? FindStatement(ReadOnlySpan<byte> name)
    {
        if (_statements is null)
        {
            return null;
        }

        // UTF-8 never decodes to more UTF-16 units than it has bytes (an invalid byte becomes one U+FFFD,
        // as Encoding.UTF8.GetString, which made the keys, replaces it).
        Span<char> chars = name.Length <= 256 ? stackalloc char[name.Length] : new char[name.Length];
        int length = Encoding.UTF8.GetChars(name, chars);
        return _statements.GetAlternateLookup<ReadOnlySpan<char>>().TryGetValue(chars[..length], out ClientStatement? statement) ? statement : null;
    }

    /// <summary>Whether <paramref name="message"/> is a Close of a statement (not of a portal).</summary>
    public static bool IsStatementClose(ReadOnlySpan<byte> message) =>
        message[0] == (byte)'C' && message.Length > MessageFramer.HeaderLength && message[MessageFramer.HeaderLength] == (byte)'S';

    /// <summary>
    /// Reads the head of a Bind too long to hold whole (<paramref name="message"/>: its first bytes): the
    /// client statement it names, null for the unnamed statement, an unknown name or names longer than
    /// <see cref="MaxBindHead"/> (it then goes through as it is), and <paramref name="headLength"/>, the
    /// header, portal and statement name. False while the names are not all there yet.
    /// </summary>
    public bool TryReadLargeBindHead(ReadOnlySpan<byte> message, out ClientStatement? statement, out int headLength)
    {
        ReadOnlySpan<byte> body = message.Slice(MessageFramer.HeaderLength);
        int portalEnd = body.IndexOf((byte)0);
        int nameEnd = portalEnd < 0 ? -1 : body.Slice(portalEnd + 1).IndexOf((byte)0);
        statement = null;
        headLength = 0;
        if (nameEnd < 0 && body.Length < MaxBindHead)
        {
            return false;
        }

        if (nameEnd > 0)
        {
            statement = FindStatement(body.Slice(portalEnd + 1, nameEnd));
            headLength = MessageFramer.HeaderLength + portalEnd + 1 + nameEnd + 1;
        }

        return true;
    }

    /// <summary>
    /// Writes the head of a Bind too long to hold whole (<paramref name="head"/>: header, portal, statement
    /// name, as <see cref="TryReadLargeBindHead"/> measured it) with the statement's backend name and the
    /// length of the message of <paramref name="total"/> bytes adjusted, after a Parse when this backend
    /// lacks the statement. The rest of the message follows unchanged. Returns the bytes written.
    /// </summary>
    public int WriteLargeBindHead(ReadOnlySpan<byte> head, int total, ClientStatement statement, PreparedStatementCache cache, Span<byte> output)
    {
        ReadOnlySpan<byte> portal = MessageFramer.ReadCString(head.Slice(MessageFramer.HeaderLength));
        int nameEnd = head.Length - MessageFramer.HeaderLength - portal.Length - 2;
        var writer = new PgWriter(output);
        EnsurePrepared(ref writer, statement, cache);
        writer.WriteByte((byte)'B');
        writer.WriteInt32(total - sizeof(byte) - nameEnd + statement.ServerNameBytes.Length);
        writer.WriteCString(portal);
        writer.WriteCString(statement.ServerNameBytes);
        return writer.Position;
    }

    /// <summary>
    /// Writes what the backend must receive for <paramref name="message"/>; returns the bytes written. The
    /// replies to what the proxy adds are booked; the message's own is left to the caller
    /// (<see cref="BookForwarded"/>), which books it after them.
    /// </summary>
    public int Rewrite(ReadOnlySpan<byte> message, ClientStatement? statement, PreparedStatementCache cache, Span<byte> output)
    {
        var writer = new PgWriter(output);
        ReadOnlySpan<byte> body = message.Slice(MessageFramer.HeaderLength);
        switch (message[0])
        {
            case (byte)FrontendMessage.Parse:
            {
                ReadOnlySpan<byte> name = MessageFramer.ReadCString(body);
                if (name.IsEmpty)
                {
                    writer.WriteBytes(message);
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
                break;
            }

            case (byte)'B':
            {
                EnsurePrepared(ref writer, statement!, cache);
                ReadOnlySpan<byte> portal = MessageFramer.ReadCString(body);
                ReadOnlySpan<byte> rest = body.Slice(portal.Length + 1);
                rest = rest.Slice(rest.IndexOf((byte)0) + 1);
                writer.BeginMessage((byte)'B');
                writer.WriteCString(portal);
                writer.WriteCString(statement!.ServerNameBytes);
                writer.WriteBytes(rest);
                writer.EndMessage();
                break;
            }

            case (byte)'D':
                EnsurePrepared(ref writer, statement!, cache);
                writer.BeginMessage((byte)'D');
                writer.WriteByte((byte)'S');
                writer.WriteCString(statement!.ServerNameBytes);
                writer.EndMessage();
                break;

            default:
            {
                // Close of a statement: the client forgets it; the backend closes it if it has it, and a
                // close of a name it lacks is no error (55.7, Close), so it is always forwarded renamed.
                ReadOnlySpan<byte> name = MessageFramer.ReadCString(body.Slice(1));
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

    /// <summary>Closes the statement the backend's full cache gave up, if any; the CloseComplete is dropped.</summary>
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

    /// <summary>Writes the Parse that prepares the statement under its backend name.</summary>
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
    public bool ShouldDropReply(byte type)
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
    public void OnReplyHandled(byte type)
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
}
