using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Net;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

/// <summary>
/// A pooled client's relay: it waits in its pool for a backend, keeps the backend's parameters in line
/// with the client's, frames both directions and forwards runs of messages zero-copy, tracks what the
/// backend still owes the client, and hands the backend back when the client's transaction (transaction
/// mode) or session (session mode) is over. It owns the backend socket while it holds one and is its
/// channel handler; the client socket, the proxy's own output and the session's state are its owner's
/// (<see cref="ClientSession"/>). Made when the client's login names a pool; an admin console session has
/// none. Split by concern: the relay loop (Relay.cs), backends (Relay.Backend.cs), transaction-mode
/// statements (Relay.Tracking.cs), timeouts (Relay.Timeouts.cs), cancels (Relay.Cancel.cs), intercepted
/// calls (Relay.Intercept.cs) and counters (Relay.Stats.cs).
/// </summary>
internal sealed partial class Relay : IChannelHandler, IInternalQueryListener
{
    // Client messages the relay acts on: Terminate ends the session without reaching the backend, so a
    // pooled backend is never told to quit; Query and Parse may be calls the proxy answers itself.
    private static readonly MessageTypeSet s_clientInspect = MessageTypeSet.None
        .With((byte)FrontendMessage.Terminate).With((byte)FrontendMessage.Query).With((byte)FrontendMessage.Parse);

    // Backend messages the relay looks into: ReadyForQuery (transaction status), ParameterStatus (kept for
    // replay to clients), ErrorResponse (so a close after FATAL is not reported twice) and
    // NotificationResponse (its pid rewritten in place to a session id). All are still forwarded within
    // the same run.
    private static readonly MessageTypeSet s_serverInspect = MessageTypeSet.None
        .With((byte)BackendMessage.ReadyForQuery)
        .With((byte)BackendMessage.ParameterStatus)
        .With((byte)BackendMessage.ErrorResponse)
        .With((byte)BackendMessage.NotificationResponse);

    // What PostgreSQL accepts from a client after login (55.7): the simple and extended query messages,
    // FunctionCall, COPY's three, Flush, Sync and Terminate. Anything else would reach a pooled backend,
    // which answers FATAL 08P01 and quits, and the next client to get it would see that: the proxy says
    // it to the sender instead, the way PostgreSQL would, and closes the session.
    private static readonly MessageTypeSet s_frontendTypes = MessageTypeSet.None
        .With((byte)FrontendMessage.Query).With((byte)FrontendMessage.Parse).With((byte)'B').With((byte)'E')
        .With((byte)'D').With((byte)'C').With((byte)'H').With((byte)'S').With((byte)'F')
        .With((byte)'d').With((byte)'c').With((byte)'f').With((byte)FrontendMessage.Terminate);

    // Client messages that each earn one ReadyForQuery: Query, Sync, FunctionCall.
    private static readonly MessageTypeSet s_readyForQueryEarners = MessageTypeSet.None
        .With((byte)FrontendMessage.Query)
        .With((byte)'S')
        .With((byte)'F');

    private MessageFramer _clientFramer;
    private MessageFramer _serverFramer;
    private ReplyBooking _booking;
    private int _clientRun;
    private int _serverRun;
    private bool _terminateAfterRun;
    private bool _serverSentError;

    private readonly ClientSession _session;
    private readonly ProxyServer _proxy;
    private readonly Channel _client;
    private readonly ServerPool _pool;
    private ServerConnection? _server;

    // What the client has been told of the server's parameters (the login tail, then each ParameterStatus
    // relayed): a backend the client gets next is brought in line with it.
    // The tracked parameters as the client last saw them (login tail, then ParameterStatus relayed), by
    // their index in TrackedParameters.Names: what the next backend is brought in line with. The other
    // parameters are not kept per client; they only matter for the login tail.
    private ParameterStatus?[]? _clientTracked;

    /// <summary>The relay of <paramref name="session"/> to <paramref name="pool"/>; nothing is asked of the pool yet.</summary>
    public Relay(ClientSession session, ServerPool pool)
    {
        _session = session;
        _proxy = session.Proxy;
        _client = session.Client;
        _pool = pool;
    }

    /// <summary>The pool the client relays to.</summary>
    public ServerPool Pool => _pool;

    /// <summary>The backend attached now, if any. Loop only.</summary>
    public ServerConnection? Server => _server;

    /// <summary>The session's loop, which owns the pool and its backends too.</summary>
    public EventLoop Loop => _session.Loop;

    /// <summary>The session this relay serves.</summary>
    public ClientSession Session => _session;

    /// <summary>The node that carries this relay in its pool's waiting queue, made once.</summary>
    public LinkedListNode<Relay> QueueNode => _queueNode ??= new LinkedListNode<Relay>(this);

    private LinkedListNode<Relay>? _queueNode;

    /// <summary>Where the relay sits in its pool's waiting queue; null when not waiting.</summary>
    public LinkedListNode<Relay>? WaitNode { get; set; }

    /// <summary>When the relay started waiting for a backend (<see cref="Stopwatch"/> ticks).</summary>
    public long WaitStarted { get; set; }

    /// <summary>The transaction status the client believes in: its backend's, or idle without one.</summary>
    public TransactionStatus ClientTransactionStatus => _server?.TransactionStatus ?? TransactionStatus.Idle;

    /// <summary>The client's application_name as it set it last (ParameterStatus relayed); null when it was never reported.</summary>
    public string? ReportedApplicationName => _clientTracked?[TrackedParameters.ApplicationNameSlot]?.Value;

    /// <summary>
    /// The client is who it says. In transaction mode, once the pool knows the server's parameters, the
    /// login completes without a backend; otherwise the session waits for one (session mode keeps it).
    /// </summary>
    public void OnAuthenticated(ServerCredentials credentials)
    {
        _pool.UpdateCredentials(credentials);
        if (_pool.Mode == PoolMode.Transaction && _pool.Welcome is { } welcome
            && _pool.Spellings.TryResolve(_session.StartupParameters!, welcome) is { } startup)
        {
            SendLoginTail(welcome, startup);
            return;
        }

        // A backend is needed: session mode keeps it, and in transaction mode it tells how PostgreSQL
        // spells a start-up value the pool has not seen yet (OnServerAssigned).

        _session.OnConnectingServer();
        if (_pool.Acquire(this) is { } server)
        {
            OnServerAssigned(server);
        }
    }

    /// <summary>
    /// AuthenticationOk, the server's ParameterStatus set with the client's start-up values on top (as
    /// PostgreSQL spells them: <paramref name="startup"/>), the proxy's BackendKeyData and ReadyForQuery:
    /// the tail of a normal login (55.2.2), with the key replaced by one the proxy can check.
    /// </summary>
    private void SendLoginTail(IReadOnlyDictionary<string, ParameterStatus> serverParameters, List<KeyValuePair<string, ParameterStatus>> startup)
    {
        _clientTracked = TrackedParameters.NewSlots();
        var writer = new PgWriter(_session.RentOut());
        writer.WriteAuthentication(AuthRequest.Ok);
        foreach (KeyValuePair<string, ParameterStatus> p in serverParameters)
        {
            if (!Overridden(p.Key, startup) && !TryWriteParameter(p.Key, p.Value, ref writer))
            {
                return;
            }
        }

        foreach (KeyValuePair<string, ParameterStatus> p in startup)
        {
            if (!TryWriteParameter(p.Key, p.Value, ref writer))
            {
                return;
            }
        }

        writer.WriteBackendKeyData(_session.Id, _session.Secret);
        writer.WriteReadyForQuery(TransactionStatus.Idle);
        Log.Write(LogLevel.Info, $"session {_session.Id}: login ok ({_pool.Mode.ToString().ToLowerInvariant()} mode{(_server is null ? "" : $", backend pid {_server.BackendPid}")})");
        _session.SendOut(writer.Position, AfterSend.StartRelay);
    }

    /// <summary>Whether one of the client's start-up values (<paramref name="startup"/>) replaces the server's value of <paramref name="name"/> in the login tail.</summary>
    private static bool Overridden(string name, List<KeyValuePair<string, ParameterStatus>> startup)
    {
        foreach (KeyValuePair<string, ParameterStatus> p in startup)
        {
            if (string.Equals(p.Key, name, StringComparison.OrdinalIgnoreCase))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>Writes one ParameterStatus of the login tail and records it when tracked; false (the session failed) when the tail outgrows a buffer.</summary>
    private bool TryWriteParameter(string name, ParameterStatus parameter, ref PgWriter writer)
    {
        if (parameter.Message.Length > writer.Remaining - 64)
        {
            _session.ReturnOut();
            _session.Fatal(SqlState.InternalError, "server parameters do not fit in a buffer");
            return false;
        }

        writer.WriteBytes(parameter.Message);
        TrackedParameters.Record(_clientTracked!, name, parameter);
        return true;
    }

    /// <inheritdoc/>
    public void OnReceive(Channel channel, int bytes, SocketError error)
    {
        if (_session.State == SessionState.Closed || _server is null || channel != _server.Channel)
        {
            // Closing, or a backend already handed back or closed: only its last completions come here.
            _session.TryFinish();
            return;
        }

        if (bytes == 0)
        {
            OnServerClosed(error);
            return;
        }

        PumpServer();
    }

    /// <inheritdoc/>
    public void OnSend(Channel channel, SocketError error)
    {
        if (_session.State == SessionState.Closed)
        {
            _session.TryFinish();
            return;
        }

        if (error != SocketError.Success)
        {
            if (_server is not null && channel == _server.Channel && _session.State == SessionState.Active)
            {
                // The backend went away under the client's request: the client is told, never just dropped.
                OnServerClosed(error);
                return;
            }

            _session.LogPeerClose("server", error);
            _session.Close();
            return;
        }

        if (_server is not null && channel == _server.Channel)
        {
            OnClientRunSent();
        }
    }

    /// <inheritdoc/>
    public void OnConnect(Channel channel, SocketError error) => _session.TryFinish();

    /// <summary>The login tail is out and the session is active: relay from now on. A backend held only for the login goes back in transaction mode.</summary>
    public void Start()
    {
        _proxy.Stats.OnSessionOpened();
        _clientFramer.AllowedSet = s_frontendTypes;
        _clientFramer.WholeMessages = true;
        ConfigureTracking();
        if (_server is null || TryReleaseServer())
        {
            PumpClient();
            return;
        }

        StartServerWork();
    }

    /// <summary>
    /// Frames what the client sent and forwards the run of complete (or streaming) messages to the backend
    /// with one send straight out of the client's receive buffer. Called when the previous run was sent.
    /// In transaction mode a client without a backend asks the pool for one when its next message arrives.
    /// </summary>
    public void PumpClient()
    {
        Debug.Assert(Loop.InLoop && !_client.ReceivePending);
        if (_cancelPendingRequest && !_syncingParameters)
        {
            SwallowCancelledRequest();
            return;
        }

        if (_proxy.StoppingSafely && !_client.Window.IsEmpty && IdleBetweenTransactions)
        {
            // Safe shutdown: the client's last transaction is over and it starts another; it is let go instead.
            _session.Fatal(SqlState.AdminShutdown, "terminating connection due to administrator command");
            return;
        }

        if (TryIntercept())
        {
            return;
        }

        Span<byte> window = _client.Window;
        if (_server is null)
        {
            if (window.IsEmpty)
            {
                ReceiveClient();
            }
            else if (!s_frontendTypes.Contains(window[0]))
            {
                FatalForeignMessage(window[0]);
            }
            else if (window[0] == (byte)FrontendMessage.Terminate)
            {
                CloseOnTerminate();
            }
            else if (!FirstMessageReady(window))
            {
                // No backend for half a message: a client that stalls here holds nothing but a few bytes.
            }
            else if (_tracker is not null && TryAnswerPrepareLocally())
            {
                return;
            }
            else if (WaitNode is null)
            {
                RequestServer();
            }

            return;
        }

        if (_syncingParameters || _server.Channel.SendPending)
        {
            return;
        }

        if (_tracker is not null)
        {
            PumpClientTracking();
            return;
        }

        int run = 0;
        bool heldBack = false;
        while (true)
        {
            FrameStatus status = _clientFramer.Scan(window.Slice(run), s_clientInspect, Loop.Buffers.BufferSize, out int passThrough, out int length);
            run += passThrough;
            if (status == FrameStatus.Inspect)
            {
                byte type = window[run];
                if (type != (byte)FrontendMessage.Terminate)
                {
                    // Only a call that starts a new batch is the proxy's to answer: inside an extended
                    // batch not yet ended by Sync it belongs to PostgreSQL with the rest of the batch.
                    bool batchOpen = IsExtendedMessage(_clientFramer.PreviousType);
                    if (batchOpen || Interception.InterceptedBatch.Measure(window.Slice(run)) == 0)
                    {
                        run += length;
                        continue;
                    }

                    // Answered by the proxy once what precedes it is through; it was counted, and is not sent.
                    if (type == (byte)FrontendMessage.Query)
                    {
                        _booking.ReadyForQueryDue--;
                    }

                    heldBack = true;
                    break;
                }

                // Terminate: forward what came before it, then end the session.
                _terminateAfterRun = true;
                break;
            }

            if (status == FrameStatus.Invalid)
            {
                _session.Fatal(SqlState.ProtocolViolation, "invalid message length");
                return;
            }

            if (status == FrameStatus.Foreign && run == 0)
            {
                FatalForeignMessage(window[0]);
                return;
            }

            // (A foreign type after other messages: they go first, it is refused on the next pass.)
            break;
        }

        _booking.ReadyForQueryDue += _clientFramer.TakeCounted();
        _booking.BatchOpen = IsExtendedMessage(heldBack ? _clientFramer.PreviousType : _clientFramer.LastType);
        if (run > 0)
        {
            _clientRun = run;
            _server.Channel.Send(_client.Buffer!, _client.Start, run);
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
    /// Whether the first message in the window is all there, or is longer than a buffer and must stream;
    /// until then the client gets no backend, and its next bytes are read.
    /// </summary>
    private bool FirstMessageReady(ReadOnlySpan<byte> window)
    {
        if (window.Length >= MessageFramer.HeaderLength)
        {
            int length = MessageFramer.ReadLength(window);
            if (length < sizeof(int) || length > MessageFramer.MaxMessageLength)
            {
                _session.Fatal(SqlState.ProtocolViolation, "invalid message length");
                return false;
            }

            if (length + 1 <= window.Length || length + 1 > Loop.Buffers.BufferSize)
            {
                return true;
            }
        }

        ReceiveClient();
        return false;
    }

    /// <summary>A message type PostgreSQL does not take from a client after login: FATAL 08P01 to the sender, as PostgreSQL says it.</summary>
    private void FatalForeignMessage(byte type)
    {
        Log.Warning($"client {_session.ClientName} session {_session.Id}: invalid frontend message type {type}");
        _session.Fatal(SqlState.ProtocolViolation, $"invalid frontend message type {type}");
    }

    /// <summary>The client said Terminate: the session ends without the backend being told (it may be pooled).</summary>
    private void CloseOnTerminate()
    {
        Log.Write(LogLevel.Info, $"session {_session.Id}: client sent Terminate");
        _session.NoteCloseReason("client close request");
        _session.Close();
    }

    /// <summary>Whether a message of this type leaves an extended-protocol batch open until Sync.</summary>
    private static bool IsExtendedMessage(byte type) => type is (byte)'P' or (byte)'B' or (byte)'E' or (byte)'D' or (byte)'C' or (byte)'H';

    /// <summary>The backend took the client's run: drop it from the client's window and go on.</summary>
    private void OnClientRunSent()
    {
        CountClientRun(_clientRun);
        _client.Consume(_clientRun);
        _clientRun = 0;
        _tracker?.ReturnRewriteBuffer(Loop.Buffers);
        OnQuerySent();
        if (_terminateAfterRun)
        {
            CloseOnTerminate();
            return;
        }

        TryReleaseServer();
        PumpClient();
    }

    /// <summary>
    /// Frames what the backend sent and forwards it to the client in one send, noting ReadyForQuery status
    /// and ParameterStatus on the way. Only the pid of a NotificationResponse is rewritten, in place in the
    /// receive buffer (<see cref="RewriteNotificationPid"/>); BackendKeyData only occurs during login.
    /// </summary>
    private void PumpServer()
    {
        Debug.Assert(Loop.InLoop && !_client.SendPending && _server is not null);
        Net.Channel channel = _server!.Channel;
        Debug.Assert(!channel.ReceivePending);
        Span<byte> window = channel.Window;
        int run = 0;
        MessageTypeSet inspect = _tracker is not null ? s_trackingServerInspect : s_serverInspect;
        while (true)
        {
            FrameStatus status = _serverFramer.Scan(window.Slice(run), inspect, Loop.Buffers.BufferSize, out int passThrough, out int length);
            run += passThrough;
            if (status == FrameStatus.Inspect)
            {
                byte type = window[run];
                if (type is (byte)'1' or (byte)'3')
                {
                    if (_tracker?.ShouldDropReply(type) == true)
                    {
                        if (run > 0)
                        {
                            // Forward what precedes it first; the reply is dropped on the next pass.
                            break;
                        }

                        _tracker?.OnReplyHandled(type);
                        channel.Consume(length);
                        window = channel.Window;
                        continue;
                    }

                    _tracker?.OnReplyHandled(type);
                    run += length;
                    continue;
                }

                OnServerMessage(window.Slice(run, length));
                _tracker?.OnReplyHandled(type);

                run += length;
                continue;
            }

            if (status == FrameStatus.Invalid)
            {
                Log.Warning($"session {_session.Id}: backend pid {_server.BackendPid} sent an invalid message length");
                _session.Fatal(SqlState.ProtocolViolation, "server sent an invalid message");
                return;
            }

            break;
        }

        if (Log.IsEnabled(LogLevel.Debug))
        {
            Log.Debug($"session {_session.Id}: server run {run} bytes, window {window.Length}, status {(char)_server.TransactionStatus}, expected Z {_booking.ReadyForQueryDue}, open {_booking.BatchOpen}");
        }

        if (run > 0)
        {
            _serverRun = run;
            _client.Send(channel.Buffer!, channel.Start, run);
            return;
        }

        channel.Receive();
    }

    /// <summary>Acts on one inspected backend message; <paramref name="message"/> is its bytes in the receive buffer, which a NotificationResponse's pid is rewritten in.</summary>
    private void OnServerMessage(Span<byte> message)
    {
        switch ((BackendMessage)message[0])
        {
            case BackendMessage.NotificationResponse:
                RewriteNotificationPid(message);
                break;
            case BackendMessage.ReadyForQuery:
                if (message.Length == MessageFramer.HeaderLength + sizeof(byte))
                {
                    _server!.TransactionStatus = (TransactionStatus)message[MessageFramer.HeaderLength];
                }

                if (_booking.ReadyForQueryDue > 0)
                {
                    _booking.ReadyForQueryDue--;
                }

                _server!.ReadyCount++;
                CountReadyForQuery(_server!.TransactionStatus);
                _serverSentError = false;
                OnReadyForQueryRelayed(_server!.TransactionStatus);
                break;
            case BackendMessage.ErrorResponse:
                _serverSentError = true;
                break;
            default:
                // ParameterStatus: the client saw it, and the backend has it; both are remembered so the
                // next backend this client gets can be brought in line.
                if (ParameterStatus.TryParse(message) is { } p)
                {
                    _server!.SetParameter(p.Name, p.Status);
                    if (_clientTracked is not null)
                    {
                        TrackedParameters.Record(_clientTracked, p.Name, p.Status);
                    }
                }

                break;
        }
    }

    /// <summary>
    /// A NotificationResponse (55.7: Int32 length, Int32 pid, String channel, String payload) names the
    /// PostgreSQL pid of the backend that ran NOTIFY, which a client of the proxy never sees anywhere else:
    /// its own pid is its session id (BackendKeyData, <c>pg_backend_pid()</c>). The pid is replaced in
    /// place, same four bytes, by the session behind that backend: this client's own when its backend
    /// notified itself, else the session that owns (session mode) or last ran a transaction on
    /// (transaction mode) the notifying backend, if this instance opened it. A pid of a backend this
    /// instance does not know (a client connected to PostgreSQL directly, another proxy instance) stays
    /// PostgreSQL's: the approximate case. So is a transaction-mode backend that went on to another
    /// client's transaction before the notification got here: that client is named, as the last session
    /// is read now, not when NOTIFY ran. Always inspected whole: a NOTIFY payload is under 8000 bytes,
    /// far below a buffer. Allocates nothing; the proxy-wide lookup runs only for this message type.
    /// </summary>
    private void RewriteNotificationPid(Span<byte> message)
    {
        const int pidOffset = MessageFramer.HeaderLength; // type byte + Int32 length
        if (message.Length < pidOffset + sizeof(int))
        {
            // Malformed; the client's driver judges it, as it would straight from PostgreSQL.
            return;
        }

        Span<byte> pidBytes = message.Slice(pidOffset, sizeof(int));
        int backendPid = BinaryPrimitives.ReadInt32BigEndian(pidBytes);
        ServerConnection server = _server!;
        int sessionId;
        if (backendPid == server.BackendPid)
        {
            sessionId = _session.Id;
        }
        else if (_proxy.Pools.FindBackend(backendPid, server.EndPoint) is { LastSessionId: var last and not 0 })
        {
            sessionId = last;
        }
        else
        {
            return;
        }

        BinaryPrimitives.WriteInt32BigEndian(pidBytes, sessionId);
    }

    /// <summary>The client took the backend's run.</summary>
    public void OnServerRunSent()
    {
        CountServerRun(_serverRun);
        _server!.Channel.Consume(_serverRun);
        _serverRun = 0;
        if (TryReleaseServer())
        {
            if (!_client.ReceivePending)
            {
                PumpClient();
            }

            return;
        }

        PumpServer();
        if (_parkedForLocalReply && _session.State == SessionState.Active && !_client.ReceivePending && _server is not null && !_server.Channel.SendPending)
        {
            PumpClient();
        }
    }

    /// <summary>
    /// The backend closed. After its own FATAL (administrator command, crash recovery) the client has the
    /// reason already; otherwise it is told the connection was lost (08006), then the session ends.
    /// </summary>
    private void OnServerClosed(SocketError error)
    {
        Log.Write(LogLevel.Info, $"session {_session.Id}: backend pid {_server?.BackendPid} closed ({(error == SocketError.Success ? "end of stream" : error.ToString())})");
        _server!.Close();
        if (_serverSentError)
        {
            _session.Close();
            return;
        }

        _session.Fatal(SqlState.ConnectionFailure, "server closed the connection unexpectedly");
    }
}
