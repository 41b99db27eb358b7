using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using FastPgProxy.Cancellation;
using FastPgProxy.Hosting;
using FastPgProxy.Net;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

/// <summary>Where a client session is in its life.</summary>
internal enum SessionState
{
    /// <summary>Waiting for StartupMessage (or SSLRequest, GSSENCRequest, CancelRequest).</summary>
    Startup,
    /// <summary>Exchanging authentication messages with the client.</summary>
    Authenticating,
    /// <summary>Authenticated; a backend is being connected and logged in.</summary>
    ConnectingServer,
    /// <summary>Relaying between client and backend.</summary>
    Active,
    /// <summary>Closed or closing.</summary>
    Closed,
}

/// <summary>What to do once the proxy's own message to the client has been sent.</summary>
internal enum AfterSend
{
    /// <summary>Read the client's next message.</summary>
    ReadClient,
    /// <summary>Connect the backend (authentication finished).</summary>
    ConnectServer,
    /// <summary>Start relaying.</summary>
    StartRelay,
    /// <summary>Go on relaying the client's messages.</summary>
    ContinueRelay,
    /// <summary>Start the TLS handshake (the <c>S</c> answering SSLRequest went out).</summary>
    StartTls,
    /// <summary>Close the session.</summary>
    Close,
}

/// <summary>
/// One client connection: its socket, its identity (id, user, database, cancel key), its life-cycle state
/// and the proxy's own messages to it. Owned by one loop: every callback runs there, and the only state
/// other threads read is the published <see cref="CancelTarget"/> and the secret. The work is its
/// collaborators': a <see cref="LoginHandshake"/> until the client is authenticated (ClientSession.Login.cs
/// is the session's side of it), then a <see cref="Relay"/> to the client's pool, or an
/// <see cref="Admin.AdminSession"/> for the admin console.
/// </summary>
internal sealed partial class ClientSession : IChannelHandler, ILoopTimer, ILoopWork
{
    private readonly ProxyServer _proxy;
    private ClientChannel _client;
    private Relay? _relay;
    private byte[]? _out;
    private AfterSend _afterSend;
    // The cancel key the client was given: set once in Identify, before the session is registered, and
    // published with a volatile write for the cancel path on other threads; never changed in place.
    private byte[] _secret = [];
    private CancelTarget? _cancelTarget;
    private bool _finished;
    private bool _outOwned;

    // Counted by the proxy's ClientAdmission since accept: as logging in until authenticated, as a
    // connection until closed.
    private bool _countedLoggingIn = true;
    private bool _countedConnection = true;

    // Length of a FATAL waiting in _out for the relay run ahead of it; -1 once it is being sent.
    private int _fatalLength;

    /// <summary>Wraps an accepted socket; <see cref="Execute"/> starts it on <paramref name="loop"/>.</summary>
    public ClientSession(ProxyServer proxy, EventLoop loop, Socket socket)
    {
        _proxy = proxy;
        _loop = loop;
        _client = new SocketChannel(loop, socket, this) { IdleWithoutBuffer = true };
        _login = new LoginHandshake(this, proxy);
        RemoteEndPoint = socket.RemoteEndPoint as IPEndPoint;
        IsUnixSocket = socket.AddressFamily == AddressFamily.Unix;
        PeerUserId = IsUnixSocket ? Auth.PeerCredentials.ReadUserId(socket) : null;
        ConnectTime = DateTime.UtcNow;
    }

    /// <summary>The owning loop: the accepting loop until StartupMessage, then the loop of the session's pool.</summary>
    public EventLoop Loop
    {
        get => Volatile.Read(ref _loop);
        private set => Volatile.Write(ref _loop, value);
    }

    private EventLoop _loop;

    /// <summary>Proxy session id: the pid of the BackendKeyData the client got; 0 until StartupMessage.</summary>
    public int Id { get; private set; }

    /// <summary>Life-cycle state.</summary>
    public SessionState State { get; private set; }

    /// <summary>The client's address; null over the Unix socket.</summary>
    public IPEndPoint? RemoteEndPoint { get; }

    /// <summary>The OS user id of a Unix socket client (SO_PEERCRED), for pg_hba's <c>peer</c>; null over TCP.</summary>
    public uint? PeerUserId { get; }

    /// <summary>What logs call the client: its address and port, or <c>unix socket</c>.</summary>
    internal string ClientName => RemoteEndPoint?.ToString() ?? "unix socket";

    // log_disconnections: why the session ends (the first reason noted wins), and whether it got as far as a login.
    private string? _closeReason;
    private bool _authenticated;

    /// <summary>Notes why the session is about to close, for log_disconnections; the first reason wins.</summary>
    internal void NoteCloseReason(string reason) => _closeReason ??= reason;

    /// <summary>Whether the client came through the Unix socket (no TLS there, as PostgreSQL; no address).</summary>
    public bool IsUnixSocket { get; }

    /// <summary>When the client connected (UTC).</summary>
    public DateTime ConnectTime { get; }

    /// <summary>The user name from StartupMessage.</summary>
    public string? User { get; private set; }

    /// <summary>The database name from StartupMessage.</summary>
    public string? Database { get; private set; }

    /// <summary>The backend the client is on now, if any, for cancels from other threads.</summary>
    public CancelTarget? CancelTarget => Volatile.Read(ref _cancelTarget);

    /// <summary>The client's socket: its receive window and sends. Loop only.</summary>
    internal Channel Client => _client;

    /// <summary>The proxy this session belongs to.</summary>
    internal ProxyServer Proxy => _proxy;

    /// <summary>The cancel key the client was given (4 or 32 bytes; empty before StartupMessage); any thread, read-only.</summary>
    internal byte[] Secret => Volatile.Read(ref _secret);

    /// <summary>Whether a message of the proxy's own is on its way to the client. Loop only.</summary>
    internal bool OutPending => _out is not null;

    /// <summary>Starts the session on its loop: arms the login timeout and reads the first packet.</summary>
    public void Execute()
    {
        Debug.Assert(Loop.InLoop);
        long due = Stopwatch.GetTimestamp() + (long)(_proxy.Options.ClientLoginTimeout.TotalSeconds * Stopwatch.Frequency);
        Loop.Schedule(this, due);
        _client.Receive();
    }

    /// <summary>
    /// Compares a cancel key with this session's key in constant time (<see cref="CancelRequestCheck.KeyMatches"/>):
    /// only a key of the issued length can match; any thread.
    /// </summary>
    public bool MatchesSecret(ReadOnlySpan<byte> key) => CancelRequestCheck.KeyMatches(Volatile.Read(ref _secret), key) && Id != 0;

    /// <inheritdoc/>
    public void OnTimer(long dueTimestamp)
    {
        if (!Loop.InLoop)
        {
            // The session moved to its pool's loop after the timer was armed on the accepting one.
            Loop.Post(() => OnTimer(dueTimestamp));
            return;
        }

        if (State < SessionState.Active)
        {
            Log.Info($"client {ClientName} closed: no login within client_login_timeout");
            Close();
        }
    }

    /// <inheritdoc/>
    public void OnReceive(Channel channel, int bytes, SocketError error)
    {
        if (State == SessionState.Closed)
        {
            TryFinish();
            return;
        }

        if (bytes == 0)
        {
            LogPeerClose("client", error);
            Close();
            return;
        }

        if (State == SessionState.Active)
        {
            PumpClient();
            return;
        }

        // Logging in: the handshake reads on in its stage (nothing is read while a backend is connected for the login).
        _login?.Continue();
    }

    /// <inheritdoc/>
    public void OnSend(Channel channel, SocketError error)
    {
        if (State == SessionState.Closed)
        {
            TryFinish();
            return;
        }

        if (error != SocketError.Success)
        {
            LogPeerClose("client", error);
            Close();
            return;
        }

        if (_fatalLength > 0)
        {
            int length = _fatalLength;
            _fatalLength = -1;
            SendOut(length, AfterSend.Close);
            return;
        }

        if (_out is null)
        {
            // A run of the backend's went out of its receive window.
            _relay!.OnServerRunSent();
            return;
        }

        ReturnOut();
        switch (_afterSend)
        {
            case AfterSend.ReadClient:
                _login?.Continue();
                break;
            case AfterSend.ConnectServer:
                OnAuthenticated();
                break;
            case AfterSend.StartTls:
                _login!.OnSslAnswerSent();
                break;
            case AfterSend.StartRelay:
                State = SessionState.Active;
                _relay!.Start();
                break;
            case AfterSend.ContinueRelay:
                PumpClient();
                break;
            default:
                Close();
                break;
        }
    }


    /// <summary>Serves what the client sent once logged in: the console's messages, or the relay's run to the backend.</summary>
    private void PumpClient()
    {
        if (_adminSession is not null)
        {
            _adminSession.Pump();
            return;
        }

        _relay!.PumpClient();
    }

    /// <summary>Sends what the writer holds in <see cref="_out"/> to the client, then does <paramref name="next"/>.</summary>
    internal void SendOut(int length, AfterSend next)
    {
        _afterSend = next;
        _client.Send(_out!, 0, length);
    }

    /// <summary>Rents the buffer for the proxy's own messages to the client.</summary>
    internal byte[] RentOut()
    {
        Debug.Assert(_out is null);
        return _out = Loop.Buffers.Rent();
    }

    internal void ReturnOut()
    {
        if (_out is not null)
        {
            if (!_outOwned)
            {
                Loop.Buffers.Return(_out);
            }

            _out = null;
            _outOwned = false;
        }
    }

    /// <summary>
    /// Sends <paramref name="length"/> bytes of a buffer that is not from the pool (a reply larger than a
    /// pooled buffer, such as a long admin console listing), then does <paramref name="next"/>.
    /// </summary>
    internal void SendOwned(byte[] data, int length, AfterSend next)
    {
        Debug.Assert(_out is null);
        _out = data;
        _outOwned = true;
        SendOut(length, next);
    }

    /// <summary>Sends a FATAL ErrorResponse and closes (protocol 55.2: the server may report an error then close).</summary>
    internal void Fatal(string sqlState, string message, string? detail = null)
    {
        _closeReason ??= message;
        Log.Write(
            sqlState == SqlState.InternalError || _proxy.Options.LogPoolerErrors ? LogLevel.Warning : LogLevel.Info,
            $"client {ClientName} session {Id}: pooler error: {sqlState} {message}");
        if (_out is not null || _fatalLength > 0 || _tlsHandshaking)
        {
            // Another message of the proxy's own is on its way, or a TLS handshake is: nothing can be put in front of it.
            Close();
            return;
        }

        var writer = new PgWriter(RentOut());
        writer.WriteError(BackendMessage.ErrorResponse, "FATAL", sqlState, message, detail);
        if (_client.SendPending)
        {
            // A relay run is on its way: the error follows it, then the session closes.
            _fatalLength = writer.Position;
            return;
        }

        SendOut(writer.Position, AfterSend.Close);
    }

    /// <summary>Forwards PostgreSQL's own ErrorResponse to the client and closes.</summary>
    internal void ForwardErrorAndClose(byte[] errorResponse)
    {
        byte[] output = RentOut();
        if (errorResponse.Length > output.Length)
        {
            ReturnOut();
            Close();
            return;
        }

        errorResponse.CopyTo(output, 0);
        SendOut(errorResponse.Length, AfterSend.Close);
    }

    /// <summary>Closes once: unregisters, withdraws the cancel target, closes both sockets.</summary>
    public void Close()
    {
        Debug.Assert(Loop.InLoop);
        if (State == SessionState.Closed)
        {
            return;
        }

        bool wasActive = State == SessionState.Active;
        if (_authenticated && _proxy.Options.LogDisconnections)
        {
            Log.Always($"client {ClientName} session {Id} db={Database} user={User}: closing because: {_closeReason ?? "closed"} (age={(DateTime.UtcNow - ConnectTime).TotalSeconds:0}s)");
        }

        State = SessionState.Closed;
        OnConnectionClosed();
        Volatile.Write(ref _cancelTarget, null);
        if (Id != 0)
        {
            _proxy.Sessions.Remove(Id);
        }

        _relay?.LeavePool();
        _client.Close();
        _relay?.LetGoOfServer(wasActive);
        TryFinish();
    }

    /// <summary>The session no longer counts as logging in (authenticated, or closing). Loop only; once.</summary>
    private void OnLoginDone()
    {
        if (_countedLoggingIn)
        {
            _countedLoggingIn = false;
            _proxy.Admission.OnLoginDone();
        }
    }

    /// <summary>The session no longer counts as a client connection (closing). Loop only; once.</summary>
    private void OnConnectionClosed()
    {
        OnLoginDone();
        if (_countedConnection)
        {
            _countedConnection = false;
            _proxy.Admission.OnClosed();
        }
    }

    /// <summary>Releases buffers and socket arguments once no operation of either socket is outstanding.</summary>
    internal void TryFinish()
    {
        if (_finished || !_client.Quiescent || (_relay is not null && !_relay.Quiescent))
        {
            return;
        }

        _finished = true;
        ReturnOut();
        _client.Dispose();
        _relay?.Finish();
    }

    /// <summary>Stops the session for a server shutdown: FATAL 57P01 to the client, then close.</summary>
    public void Terminate(string message)
    {
        if (State == SessionState.Closed)
        {
            return;
        }

        Fatal(SqlState.AdminShutdown, message);
    }

    internal void LogPeerClose(string who, SocketError error)
    {
        _closeReason ??= error == SocketError.Success ? $"{who} closed the connection" : $"{who} connection error: {error}";
        if (Log.IsEnabled(LogLevel.Debug))
        {
            Log.Debug($"session {Id}: {who} closed the connection ({(error == SocketError.Success ? "end of stream" : error.ToString())})");
        }
    }
}
