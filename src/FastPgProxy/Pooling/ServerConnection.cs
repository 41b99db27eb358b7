using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using FastPgProxy.Auth;
using FastPgProxy.Cancellation;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Net;
using FastPgProxy.Protocol;
using FastPgProxy.Tls;

namespace FastPgProxy.Pooling;

/// <summary>Told how a backend login ended; runs on the backend's loop.</summary>
internal interface IServerLoginListener
{
    /// <summary>The backend sent ReadyForQuery after logging in.</summary>
    void OnServerReady(ServerConnection server);

    /// <summary>
    /// The login failed. <paramref name="errorResponse"/> is PostgreSQL's own ErrorResponse when it sent one
    /// (forward it as is); otherwise <paramref name="reason"/> says what went wrong.
    /// </summary>
    void OnServerLoginFailed(ServerConnection server, byte[]? errorResponse, string reason);
}

/// <summary>Told when a query the proxy itself ran on a backend (reset, SET) has finished; runs on the backend's loop.</summary>
internal interface IInternalQueryListener
{
    /// <summary>The backend answered ReadyForQuery; <paramref name="ok"/> is false when it reported an error or failed.</summary>
    void OnInternalQueryDone(ServerConnection server, bool ok);
}

/// <summary>The state of a backend connection.</summary>
internal enum ServerState
{
    /// <summary>Opening the TCP or Unix connection.</summary>
    Connecting,
    /// <summary>Sent StartupMessage; authenticating and reading parameters.</summary>
    Login,
    /// <summary>Logged in; idle in the pool or serving a client.</summary>
    Ready,
    /// <summary>Running a query of the proxy's own (reset, SET) and reading its answer.</summary>
    InternalQuery,
    /// <summary>Closed.</summary>
    Closed,
}

/// <summary>
/// One connection to PostgreSQL. It connects and logs in by itself (as a channel handler), then its channel
/// is handed to the client session that relays through it. It keeps what the proxy needs from the login:
/// the backend's own pid and cancel key, and the ParameterStatus messages to replay to a client.
/// </summary>
internal sealed class ServerConnection : IChannelHandler, ILoopTimer
{
    private readonly DatabaseOptions _database;
    private readonly ServerCredentials _credentials;
    private readonly string _databaseName;
    private readonly TimeSpan _connectTimeout;

    // The plain channel that connects; replaced by a TLS channel on its socket once PostgreSQL says S.
    private Channel _channel;
    private readonly ServerTls? _tls;
    private bool _negotiatingTls;
    private IServerLoginListener? _listener;
    private MessageFramer _framer;
    private PasswordLogin? _login;
    private readonly TcpKeepalive? _keepalive;
    private byte[]? _out;
    private IInternalQueryListener? _queryListener;
    private bool _queryFailed;
    private bool _loginAnswered;
    private static int s_lastId;

    /// <summary>Creates a connection that will log in as <paramref name="credentials"/> to <paramref name="databaseName"/>.</summary>
    public ServerConnection(
        EventLoop loop,
        DatabaseOptions database,
        string databaseName,
        ServerCredentials credentials,
        TimeSpan connectTimeout,
        ServerTls? tls = null,
        TcpKeepalive? keepalive = null)
    {
        _tls = tls;
        _keepalive = keepalive;
        _database = database;
        _databaseName = databaseName;
        _credentials = credentials;
        _connectTimeout = connectTimeout;
        _channel = new SocketChannel(loop, null, this) { IdleWithoutBuffer = true };
        EndPoint = ResolveEndPoint(database);
        Id = Interlocked.Increment(ref s_lastId);
        CreatedAt = Stopwatch.GetTimestamp();
        LastUsed = CreatedAt;
    }

    /// <summary>Proxy-wide number of this backend connection, for logs and the admin console.</summary>
    public int Id { get; }

    /// <summary>When the connection was opened (<see cref="Stopwatch"/> ticks).</summary>
    public long CreatedAt { get; }

    /// <summary>When the connection last went back to the pool (<see cref="Stopwatch"/> ticks).</summary>
    public long LastUsed { get; set; }

    /// <summary>The pool that owns this connection; set by the pool.</summary>
    public ServerPool? Pool { get; set; }

    /// <summary>
    /// Cancels sent to PostgreSQL for this backend whose cancel connection has not closed yet. While above
    /// zero the pool does not hand the backend to another client (a late cancel must not hit its query).
    /// Loop-owned.
    /// </summary>
    public int PendingCancels { get; set; }

    /// <summary>
    /// ReadyForQuery messages read from the backend for clients (relayed or drained). A cancel that waited
    /// for a cancel connection is dropped when this moved meanwhile: the request it was meant for has ended.
    /// Loop-owned.
    /// </summary>
    public long ReadyCount { get; set; }

    /// <summary>
    /// A cancel was sent for this backend and PostgreSQL did not close the cancel connection within
    /// cancel_timeout: it may still act on it, so the backend must not serve another client. Loop-owned.
    /// </summary>
    public bool CancelUnconfirmed { get; set; }

    /// <summary>
    /// The id of the last client session the backend was assigned to: the session that owns it (session
    /// mode) or last ran a transaction on it (transaction mode); 0 before the first. A NotificationResponse
    /// this backend's NOTIFY causes on another backend shows this id as its pid. Written on the backend's
    /// loop, read from any loop (<see cref="Volatile"/>).
    /// </summary>
    public int LastSessionId
    {
        get => Volatile.Read(ref _lastSessionId);
        set => Volatile.Write(ref _lastSessionId, value);
    }

    private int _lastSessionId;

    /// <summary>The proxy-named prepared statements this backend holds (transaction mode); null until the first.</summary>
    public PreparedStatementCache? PreparedStatements { get; set; }


    /// <summary>The receive window and sends, for the login here and for the relay: plain, or TLS after SSLRequest.</summary>
    public Channel Channel => _channel;

    /// <summary>Whether the connection to PostgreSQL is TLS.</summary>
    public bool IsTls { get; private set; }


    /// <summary>Where PostgreSQL listens; also where cancels for this backend go.</summary>
    public EndPoint EndPoint { get; }

    /// <summary>Current state.</summary>
    public ServerState State { get; private set; }

    /// <summary>The backend's own pid (BackendKeyData).</summary>
    public int BackendPid { get; private set; }

    /// <summary>The backend's own cancel key.</summary>
    public byte[] BackendKey { get; private set; } = [];

    /// <summary>
    /// The protocol version the backend speaks: the 3.2 the proxy asks for, or the lower version (3.0) a
    /// server's NegotiateProtocolVersion names, as PostgreSQL before 18 answers. 0 before the start-up packet.
    /// </summary>
    public int ProtocolVersion { get; private set; }

    /// <summary>Whether the backend sent BackendKeyData (some servers and poolers do not).</summary>
    public bool HasCancelKey => BackendKey.Length > 0;

    /// <summary>Where and how to cancel this backend's query; made once, so attaching a client allocates nothing.</summary>
    public CancelTarget CancelTarget => _cancelTarget ??= new CancelTarget(EndPoint, BackendPid, BackendKey, IsTls ? _tls : null, _database.Host);

    private CancelTarget? _cancelTarget;

    /// <summary>The last transaction status the backend reported.</summary>
    public TransactionStatus TransactionStatus { get; set; } = TransactionStatus.Idle;

    /// <summary>ParameterStatus values as PostgreSQL reported them, by parameter name, with the messages for replay to clients.</summary>
    public Dictionary<string, ParameterStatus> Parameters { get; } = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>The tracked ones among <see cref="Parameters"/>, by index (<see cref="TrackedParameters.NewSlots"/>).</summary>
    public ParameterStatus?[] Tracked { get; } = TrackedParameters.NewSlots();

    /// <summary>Records a ParameterStatus message the backend sent.</summary>
    public void OnParameterStatus(ReadOnlySpan<byte> message)
    {
        if (ParameterStatus.TryParse(message) is { } p)
        {
            SetParameter(p.Name, p.Status);
        }
    }

    /// <summary>Records the value the backend reported for <paramref name="name"/>.</summary>
    public void SetParameter(string name, ParameterStatus status)
    {
        Parameters[name] = status;
        TrackedParameters.Record(Tracked, name, status);
    }

    /// <summary>The user the backend is logged in as.</summary>
    public string User => _credentials.User;

    /// <summary>Maps a [databases] entry to an endpoint: a directory means PostgreSQL's Unix socket in it.</summary>
    public static EndPoint ResolveEndPoint(DatabaseOptions database)
    {
        if (database.Host.StartsWith('/'))
        {
            return new UnixDomainSocketEndPoint(Path.Combine(database.Host, $".s.PGSQL.{database.Port}"));
        }

        return IPAddress.TryParse(database.Host, out IPAddress? address)
            ? new IPEndPoint(address, database.Port)
            : new DnsEndPoint(database.Host, database.Port);
    }

    /// <summary>Starts connecting; the outcome reaches <paramref name="listener"/> on this loop.</summary>
    public void Connect(IServerLoginListener listener)
    {
        Debug.Assert(Channel.Loop.InLoop);
        _listener = listener;
        State = ServerState.Connecting;
        Channel.Loop.Schedule(this, Stopwatch.GetTimestamp() + (long)(_connectTimeout.TotalSeconds * Stopwatch.Frequency));
        ((SocketChannel)_channel).Connect(EndPoint, _keepalive);
    }

    /// <inheritdoc/>
    public void OnTimer(long dueTimestamp)
    {
        if (State is ServerState.Connecting or ServerState.Login)
        {
            FailToConnect($"timeout while connecting to server {_database.Host}:{_database.Port} (server_connect_timeout)");
        }
    }

    /// <inheritdoc/>
    public void OnConnect(Channel channel, SocketError error)
    {
        if (State != ServerState.Connecting)
        {
            return;
        }

        if (channel is TlsChannel tlsChannel)
        {
            OnTlsHandshake(tlsChannel, error);
            return;
        }

        if (error != SocketError.Success)
        {
            FailToConnect($"could not connect to server {_database.Host}:{_database.Port}: {DescribeError(error)}");
            return;
        }

        if (_tls is { AsksForTls: true } && EndPoint is not UnixDomainSocketEndPoint)
        {
            // SSLRequest (55.2.10); PostgreSQL answers one byte. Unix sockets never carry TLS, as with libpq.
            _negotiatingTls = true;
            _out = Channel.Loop.Buffers.Rent();
            var request = new PgWriter(_out);
            request.WriteInt32(StartupCodes.MinStartupPacketLength);
            request.WriteInt32(StartupCodes.SslRequestCode);
            Channel.Send(_out, 0, request.Position);
            return;
        }

        SendStartup();
    }

    /// <summary>PostgreSQL's one-byte answer to SSLRequest: S starts the handshake, N goes on in plain text unless TLS is required.</summary>
    private void OnSslAnswer()
    {
        _negotiatingTls = false;
        byte answer = Channel.Window[0];
        if (answer == (byte)'S')
        {
            if (Channel.Buffered > 1)
            {
                // Bytes after S before the handshake could only have been injected in plain text (CVE-2021-23222).
                Fail(null, "server sent unencrypted data after SSL response");
                return;
            }

            Channel.Consume(1);
            var plain = (SocketChannel)_channel;
            var socket = (Socket)plain.DetachForCancel()!;
            plain.Dispose();
            var tlsChannel = new TlsChannel(plain.Loop, socket, null, this) { IdleWithoutBuffer = true };
            _channel = tlsChannel;
            tlsChannel.AuthenticateAsClient(_tls!.Options(_database.Host));
            return;
        }

        if (answer == (byte)'N' && !_tls!.Required)
        {
            Channel.Consume(1);
            SendStartup();
            return;
        }

        Fail(null, answer == (byte)'N'
            ? $"server {_database.Host}:{_database.Port} does not support TLS, and server_tls_sslmode is {TlsSettings.Name(_tls!.Mode)}"
            : "server sent an invalid answer to SSLRequest");
    }

    private void OnTlsHandshake(TlsChannel channel, SocketError error)
    {
        if (error != SocketError.Success)
        {
            FailToConnect($"TLS handshake with server {_database.Host}:{_database.Port} failed: {channel.FailureReason ?? DescribeError(error)}");
            return;
        }

        IsTls = true;
        if (channel.Ssl.RemoteCertificate is { } certificate)
        {
            TlsServerEndPoint = ChannelBinding.TryComputeTlsServerEndPoint(certificate, out byte[]? binding) ? binding : null;
        }

        SendStartup();
    }

    private void SendStartup()
    {
        State = ServerState.Login;
        _out = Channel.Loop.Buffers.Rent();
        var writer = new PgWriter(_out);
        writer.BeginStartupPacket();
        writer.WriteInt32(ProtocolVersion = ProtocolNegotiation.Requested);
        writer.WriteCString("user");
        writer.WriteCString(_credentials.User);
        writer.WriteCString("database");
        writer.WriteCString(_databaseName);
        writer.WriteByte(0);
        writer.EndMessage();
        Channel.Send(_out, 0, writer.Position);
    }

    /// <inheritdoc/>
    public void OnSend(Channel channel, SocketError error)
    {
        ReturnOut();
        if (_negotiatingTls && State == ServerState.Connecting)
        {
            if (error != SocketError.Success)
            {
                FailToConnect($"could not send to server: {DescribeError(error)}");
                return;
            }

            Channel.Receive();
            return;
        }

        if (State is not (ServerState.Login or ServerState.InternalQuery))
        {
            return;
        }

        if (error != SocketError.Success)
        {
            FailToConnect($"could not send to server: {DescribeError(error)}");
            return;
        }

        if (!Channel.ReceivePending)
        {
            ProcessControl();
        }
    }

    /// <inheritdoc/>
    public void OnReceive(Channel channel, int bytes, SocketError error)
    {
        if (_negotiatingTls && State == ServerState.Connecting)
        {
            if (bytes == 0)
            {
                FailToConnect(error == SocketError.Success ? "server closed the connection unexpectedly" : $"server connection failed: {DescribeError(error)}");
                return;
            }

            OnSslAnswer();
            return;
        }

        if (State is not (ServerState.Login or ServerState.InternalQuery))
        {
            return;
        }

        if (Channel.SendPending)
        {
            // An answer (or end of stream) that came before the completion of the send that asked for it:
            // an internal query run while a receive was already outstanding. OnSend goes on from here
            // (reading again finds end of stream again); were the listener told now, the send's completion
            // would reach the listener, and _out would never be returned to the pool.
            return;
        }

        if (bytes == 0)
        {
            FailToConnect(error == SocketError.Success ? "server closed the connection unexpectedly" : $"server connection failed: {DescribeError(error)}");
            return;
        }

        ProcessControl();
    }

    /// <summary>
    /// Runs <paramref name="sql"/> (one Simple Query) on this idle backend for the proxy itself, reading
    /// the answer here rather than relaying it; ParameterStatus changes are recorded.
    /// </summary>
    public void RunInternalQuery(string sql, IInternalQueryListener listener)
    {
        Debug.Assert(Channel.Loop.InLoop && State == ServerState.Ready && !Channel.SendPending);
        State = ServerState.InternalQuery;
        _queryListener = listener;
        _queryFailed = false;
        Channel.SetHandler(this);
        _framer.Reset();
        _out = Channel.Loop.Buffers.Rent();
        var writer = new PgWriter(_out);
        writer.BeginMessage((byte)FrontendMessage.Query);
        writer.WriteCString(sql);
        writer.EndMessage();
        Channel.Send(_out, 0, writer.Position);
    }

    /// <summary>Handles every complete message buffered during login or an internal query; receives more, or waits for a reply to be sent.</summary>
    private void ProcessControl()
    {
        while (true)
        {
            Span<byte> window = Channel.Window;
            FrameStatus status = _framer.Scan(window, MessageTypeSet.All, window.Length, out _, out int length);
            if (status == FrameStatus.Invalid)
            {
                Fail(null, "server sent an invalid message during login");
                return;
            }

            if (status == FrameStatus.NeedMore)
            {
                if (Channel.Buffered >= Channel.Loop.Buffers.BufferSize)
                {
                    Fail(null, "server sent a login message larger than the buffer");
                    return;
                }

                Channel.Receive();
                return;
            }

            ReadOnlySpan<byte> message = window.Slice(0, length);
            if (State == ServerState.InternalQuery)
            {
                bool done = HandleInternalQueryMessage(message);
                Channel.Consume(length);
                if (done)
                {
                    State = ServerState.Ready;
                    IInternalQueryListener queryListener = _queryListener!;
                    _queryListener = null;
                    queryListener.OnInternalQueryDone(this, !_queryFailed);
                    return;
                }

                continue;
            }

            // Consumed first: a login that fails on this message is disposed by its listener, its receive
            // buffer back in the pool, before HandleLoginMessage returns; the channel is not touched after.
            Channel.Consume(length);
            bool ready = HandleLoginMessage(message, out bool sent);
            if (State == ServerState.Closed)
            {
                return;
            }

            if (ready)
            {
                State = ServerState.Ready;
                IServerLoginListener listener = _listener!;
                _listener = null;
                listener.OnServerReady(this);
                return;
            }

            if (sent)
            {
                // One reply in flight at a time: OnSend resumes with whatever is buffered by then.
                return;
            }
        }
    }

    private bool HandleInternalQueryMessage(ReadOnlySpan<byte> message)
    {
        switch ((BackendMessage)message[0])
        {
            case BackendMessage.ParameterStatus:
                OnParameterStatus(message);
                return false;
            case BackendMessage.ErrorResponse:
                _queryFailed = true;
                Log.Warning($"server {Id} (pid {BackendPid}): internal query failed");
                return false;
            case BackendMessage.ReadyForQuery:
                TransactionStatus = message.Length > MessageFramer.HeaderLength ? (TransactionStatus)message[MessageFramer.HeaderLength] : TransactionStatus.Idle;
                return true;
            default:
                return false;
        }
    }

    private bool HandleLoginMessage(ReadOnlySpan<byte> message, out bool sent)
    {
        sent = false;
        bool first = !_loginAnswered;
        _loginAnswered = true;
        ReadOnlySpan<byte> body = message.Slice(MessageFramer.HeaderLength);
        switch ((BackendMessage)message[0])
        {
            case BackendMessage.Authentication:
                sent = HandleAuthentication(body);
                return false;
            case BackendMessage.ParameterStatus:
                OnParameterStatus(message);
                return false;
            case BackendMessage.BackendKeyData:
                if (body.Length < sizeof(int) + StartupCodes.MinCancelKeyLength || body.Length > sizeof(int) + StartupCodes.MaxCancelKeyLength)
                {
                    Fail(null, "server sent an invalid BackendKeyData message");
                    return false;
                }

                BackendPid = BinaryPrimitives.ReadInt32BigEndian(body);
                BackendKey = body.Slice(sizeof(int)).ToArray();
                return false;
            case BackendMessage.NegotiateProtocolVersion:
                // A server older than 3.2 (PostgreSQL before 18) names the newest version it speaks and goes
                // on in it; checked as libpq checks it. It comes once, before anything else.
                if (!first)
                {
                    Fail(null, "server sent an unexpected NegotiateProtocolVersion message");
                    return false;
                }

                if (!ProtocolNegotiation.TryReadServerAnswer(body, ProtocolNegotiation.Requested, out int version, out string? error))
                {
                    Fail(null, error);
                    return false;
                }

                ProtocolVersion = version;
                return false;
            case BackendMessage.ErrorResponse:
                Fail(message.ToArray(), "server refused the login");
                return false;
            case BackendMessage.ReadyForQuery:
                TransactionStatus = body.Length == 1 ? (TransactionStatus)body[0] : TransactionStatus.Idle;
                return true;
            default:
                // NoticeResponse needs no action during login.
                return false;
        }
    }

    private bool HandleAuthentication(ReadOnlySpan<byte> body)
    {
        _login ??= new PasswordLogin(_credentials, TlsServerEndPoint);
        byte[] output = _out = Channel.Loop.Buffers.Rent();
        var writer = new PgWriter(output);
        LoginStep step = _login.Respond(body, ref writer, out string? error);
        if (step != LoginStep.Answer)
        {
            ReturnOut();
            if (step == LoginStep.Failed)
            {
                Fail(null, error!);
            }

            return false;
        }

        Channel.Send(output, 0, writer.Position);
        return true;
    }

    /// <summary>
    /// The tls-server-end-point channel binding data of PostgreSQL's certificate
    /// (<see cref="ChannelBinding.TryComputeTlsServerEndPoint"/> of the TLS stream's remote certificate) when
    /// this connection is TLS, so the SCRAM login uses SCRAM-SHA-256-PLUS where offered; null on a plain
    /// connection. Set before the server's AuthenticationSASL arrives.
    /// </summary>
    public byte[]? TlsServerEndPoint { get; private set; }

    /// <summary>
    /// The login failed at the connection itself (refused, reset, closed, timed out), as it does while
    /// PostgreSQL restarts: worth trying again, unlike a refused password.
    /// </summary>
    public bool FailedToConnect { get; private set; }

    private void FailToConnect(string reason)
    {
        FailedToConnect = true;
        Fail(null, reason);
    }

    private void Fail(byte[]? errorResponse, string reason)
    {
        if (State == ServerState.Closed)
        {
            return;
        }

        Close();
        IServerLoginListener? listener = _listener;
        _listener = null;
        listener?.OnServerLoginFailed(this, errorResponse, reason);
        IInternalQueryListener? queryListener = _queryListener;
        _queryListener = null;
        if (queryListener is not null)
        {
            Log.Warning($"server {Id} (pid {BackendPid}): {reason}");
            queryListener.OnInternalQueryDone(this, false);
        }
    }

    /// <summary>Closes the connection; buffers are released by <see cref="DisposeWhenQuiescent"/>.</summary>
    public void Close()
    {
        State = ServerState.Closed;
        Channel.Close();
    }

    /// <summary>Frees the channel once no operation is outstanding; returns whether it did. Idempotent.</summary>
    public bool DisposeWhenQuiescent()
    {
        if (_disposed)
        {
            return true;
        }

        if (!Channel.Quiescent)
        {
            return false;
        }

        _disposed = true;
        ReturnOut();
        Channel.Dispose();
        return true;
    }

    private bool _disposed;

    private void ReturnOut()
    {
        if (_out is not null && !Channel.SendPending)
        {
            Channel.Loop.Buffers.Return(_out);
            _out = null;
        }
    }

    /// <summary>Words for a socket error in messages.</summary>
    public static string DescribeError(SocketError error) => error switch
    {
        SocketError.ConnectionRefused => "Connection refused",
        SocketError.ConnectionReset => "Connection reset by peer",
        SocketError.TimedOut => "Connection timed out",
        SocketError.HostNotFound => "Name or service not known",
        SocketError.OperationAborted => "operation aborted",
        _ => error.ToString(),
    };
}
