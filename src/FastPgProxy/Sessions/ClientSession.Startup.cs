using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using FastPgProxy.Auth;
using FastPgProxy.Cancellation;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Net;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

/// <summary>Which authentication message the session waits for.</summary>
internal enum AuthStage
{
    /// <summary>PasswordMessage answering an MD5 challenge.</summary>
    Md5,
    /// <summary>SASLInitialResponse with the SCRAM client-first-message.</summary>
    ScramFirst,
    /// <summary>SASLResponse with the SCRAM client-final-message.</summary>
    ScramFinal,
}

internal sealed partial class ClientSession
{
    private List<KeyValuePair<string, string>>? _startupParameters;
    private List<string>? _unrecognizedOptions;
    private int _requestedMinor;
    private DatabaseOptions? _databaseOptions;
    private UserSecret? _userSecret;
    private bool _userKnown;
    private AuthStage _authStage;
    private byte[]? _md5Salt;
    private ScramServer? _scramServer;
    private MessageFramer _authFramer;
    private Dictionary<string, ParameterStatus>? _clientParameters;
    private bool _sslAnswered;
    private bool _admin;
    private bool _gssAnswered;

    /// <summary>Reads the first packet of the connection (protocol 55.2.1 and 55.2.10-12).</summary>
    private void ProcessStartup()
    {
        StartupParseStatus status = StartupPacketHeader.TryRead(_client.Window, out StartupPacketHeader header);
        if (status == StartupParseStatus.NeedMore)
        {
            _client.Receive();
            return;
        }

        if (status == StartupParseStatus.Invalid)
        {
            Fatal(SqlState.ProtocolViolation, "invalid length of startup packet");
            return;
        }

        ReadOnlySpan<byte> packet = _client.Window.Slice(0, header.Length);
        switch (header.Code)
        {
            case StartupCodes.CancelRequestCode:
                HandleCancelRequest(packet);
                return;
            case StartupCodes.SslRequestCode:
            case StartupCodes.GssEncRequestCode:
                if (header.Length != StartupCodes.MinStartupPacketLength)
                {
                    Fatal(SqlState.ProtocolViolation, "invalid length of startup packet");
                    return;
                }

                // Each negotiation may be tried once (PostgreSQL's ssl_done/gss_done); a repeat is treated
                // as the unknown protocol version its code reads as, so a client cannot loop here.
                bool ssl = header.Code == StartupCodes.SslRequestCode;
                if (ssl ? _sslAnswered : _gssAnswered)
                {
                    Fatal(SqlState.FeatureNotSupported, $"unsupported frontend protocol {header.Major}.{header.Minor}: server supports 3.0 to 3.0");
                    return;
                }

                if (ssl)
                {
                    _sslAnswered = true;
                }
                else
                {
                    _gssAnswered = true;
                }

                _client.Consume(header.Length);
                if (_client.Buffered > 0)
                {
                    // The client may not send anything until it has read the answer (55.2.10).
                    Fatal(SqlState.ProtocolViolation, "received unencrypted data after SSL request");
                    return;
                }

                byte[] output = RentOut();
                output[0] = (byte)'N';
                SendOut(1, AfterSend.ReadClient);
                return;
        }

        if (header.Major != 3)
        {
            Fatal(
                header.Major == 1234 ? SqlState.ProtocolViolation : SqlState.FeatureNotSupported,
                $"unsupported frontend protocol {header.Major}.{header.Minor}: server supports 3.0 to 3.0");
            return;
        }

        _requestedMinor = header.Minor;
        var parameters = new List<KeyValuePair<string, string>>();
        if (!StartupParameters.TryParse(packet.Slice(StartupCodes.MinStartupPacketLength), parameters, out string? error))
        {
            Fatal(SqlState.ProtocolViolation, error!);
            return;
        }

        _client.Consume(header.Length);
        HandleStartupMessage(parameters);
    }

    private void HandleStartupMessage(List<KeyValuePair<string, string>> parameters)
    {
        // Backends are shared, so only the parameters the proxy keeps in step on every backend it hands
        // out (the ones PostgreSQL reports with ParameterStatus) are honoured; others must be listed in
        // ignore_startup_parameters, as with PgBouncer.
        var tracked = new List<KeyValuePair<string, string>>();
        foreach (KeyValuePair<string, string> p in parameters)
        {
            switch (p.Key)
            {
                case "user":
                    User = p.Value;
                    break;
                case "database":
                    Database = p.Value;
                    break;
                case "replication":
                    Fatal(SqlState.FeatureNotSupported, "replication connections are not supported by the proxy");
                    return;
                default:
                    if (p.Key.StartsWith("_pq_.", StringComparison.Ordinal))
                    {
                        (_unrecognizedOptions ??= new()).Add(p.Key);
                    }
                    else if (TrackedParameters.Find(p.Key) is { } name)
                    {
                        tracked.Add(new KeyValuePair<string, string>(name, p.Value));
                    }
                    else if (!_proxy.Options.IgnoreStartupParameters.Contains(p.Key))
                    {
                        Fatal(SqlState.ProtocolViolation, $"unsupported startup parameter: {p.Key}");
                        return;
                    }

                    break;
            }
        }

        _startupParameters = tracked;
        if (string.IsNullOrEmpty(User))
        {
            Fatal(SqlState.InvalidAuthorization, "no PostgreSQL user name specified in startup packet");
            return;
        }

        if (string.IsNullOrEmpty(Database))
        {
            Database = User;
        }

        // Only a session that sent StartupMessage gets an id and a key; both exist before any reply so
        // that the BackendKeyData sent at the end of login is already valid for cancels.
        Span<byte> random = stackalloc byte[sizeof(int)];
        RandomNumberGenerator.Fill(random);
        Volatile.Write(ref _secret, BinaryPrimitives.ReadInt32BigEndian(random));
        Id = _proxy.Sessions.Add(this);

        // Every client connection counts, this one included: logged in, logging in, or a cancel not yet read.
        if (_proxy.Admission.Connections > _proxy.Options.MaxClientConnections)
        {
            Fatal(SqlState.TooManyConnections, "sorry, too many clients already");
            return;
        }

        if (Admin.AdminConsole.IsConsoleDatabase(Database))
        {
            // The admin console is a virtual database on the proxy's own listener: no pool, no backend.
            _admin = true;
            _userKnown = _proxy.Users is { } consoleUsers && consoleUsers.TryGet(User, out _userSecret);
            Log.Write(LogLevel.Info, $"session {Id}: admin console login attempt from {RemoteEndPoint}: user={User}");
            BeginAuthentication();
            return;
        }

        _databaseOptions = _proxy.Options.FindDatabase(Database);
        if (_databaseOptions is null)
        {
            Fatal(SqlState.InvalidCatalogName, $"database \"{Database}\" does not exist");
            return;
        }

        Log.Write(LogLevel.Info, $"session {Id}: login attempt from {RemoteEndPoint}: db={Database} user={User}");
        _userKnown = _proxy.Users is { } users && users.TryGet(User, out _userSecret);
        ServerCredentials credentials = BuildCredentials(_databaseOptions);
        _pool = _proxy.Pools.Get(Database, credentials.User, _databaseOptions, credentials);
        if (_pool.Loop != Loop)
        {
            MoveTo(_pool.Loop);
            return;
        }

        BeginAuthentication();
    }

    /// <summary>
    /// Hands the session to its pool's loop, so the client, the pool and its backends share one owner.
    /// Nothing is outstanding on the client socket here; unread bytes travel along.
    /// </summary>
    private void MoveTo(EventLoop target)
    {
        byte[] pending = _client.Window.ToArray();
        _client.ReleaseBuffer();
        _client.MoveTo(target);
        Loop = target;
        target.Post(() =>
        {
            if (State == SessionState.Closed)
            {
                TryFinish();
                return;
            }

            _client.Restore(pending);
            BeginAuthentication();
        });
    }

    /// <summary>Sends NegotiateProtocolVersion when the client asked for a newer minor version or for _pq_ options (55.2.1).</summary>
    private void WriteNegotiateIfNeeded(ref PgWriter writer)
    {
        if (_requestedMinor == 0 && _unrecognizedOptions is null)
        {
            return;
        }

        writer.BeginMessage((byte)BackendMessage.NegotiateProtocolVersion);
        writer.WriteInt32(0);
        writer.WriteInt32(_unrecognizedOptions?.Count ?? 0);
        foreach (string option in _unrecognizedOptions ?? [])
        {
            writer.WriteCString(option);
        }

        writer.EndMessage();
    }

    private void BeginAuthentication()
    {
        UserList? users = _proxy.Users;
        AuthType authType = _proxy.Options.AuthType;
        var writer = new PgWriter(RentOut());
        WriteNegotiateIfNeeded(ref writer);
        if (authType == AuthType.Trust)
        {
            if (users is not null && !_userKnown)
            {
                ReturnOut();
                Fatal(SqlState.InvalidAuthorization, $"role \"{User}\" does not exist");
            }
            else if (writer.Position > 0)
            {
                SendOut(writer.Position, AfterSend.ConnectServer);
            }
            else
            {
                ReturnOut();
                OnAuthenticated();
            }

            return;
        }

        // Like PostgreSQL, an md5 setup still uses SCRAM for a user whose only secret is a SCRAM verifier,
        // and an unknown user goes through a full exchange that fails, so user names cannot be probed.
        bool scram = authType == AuthType.ScramSha256 || (_userSecret?.Kind == SecretKind.ScramSha256);
        State = SessionState.Authenticating;
        if (scram)
        {
            ScramVerifier verifier = _proxy.MockVerifier;
            if (_userKnown && _userSecret!.Kind != SecretKind.Md5 && _userSecret.TryGetScramVerifier(out ScramVerifier? real))
            {
                verifier = real;
            }

            _scramServer = new ScramServer(verifier);
            _authStage = AuthStage.ScramFirst;
            writer.WriteAuthenticationSasl();
        }
        else
        {
            _md5Salt = new byte[Md5Auth.SaltLength];
            RandomNumberGenerator.Fill(_md5Salt);
            _authStage = AuthStage.Md5;
            writer.WriteAuthentication(AuthRequest.Md5Password, _md5Salt);
        }

        SendOut(writer.Position, AfterSend.ReadClient);
    }

    /// <summary>Reads the client's next PasswordMessage/SASL message and acts on it.</summary>
    private void ProcessAuthentication()
    {
        Span<byte> window = _client.Window;
        FrameStatus status = _authFramer.Scan(window, MessageTypeSet.All, _client.Loop.Buffers.BufferSize, out _, out int length);
        if (status == FrameStatus.NeedMore)
        {
            if (!_authFramer.AtBoundary)
            {
                Fatal(SqlState.ProtocolViolation, "authentication message too long");
                return;
            }

            _client.Receive();
            return;
        }

        if (status == FrameStatus.Invalid)
        {
            Fatal(SqlState.ProtocolViolation, "invalid message length");
            return;
        }

        if (window[0] != (byte)FrontendMessage.Password)
        {
            Fatal(SqlState.ProtocolViolation, $"expected password response, got message type {window[0]}");
            return;
        }

        ReadOnlySpan<byte> body = window.Slice(MessageFramer.HeaderLength, length - MessageFramer.HeaderLength);
        _client.Consume(length);
        switch (_authStage)
        {
            case AuthStage.Md5:
                if (_userKnown && Md5Auth.Verify(_userSecret!, User!, _md5Salt, PasswordMessages.ReadPassword(body)))
                {
                    OnAuthenticated();
                }
                else
                {
                    PasswordFailed();
                }

                return;
            case AuthStage.ScramFirst:
                HandleSaslInitialResponse(body);
                return;
            default:
                HandleSaslResponse(body);
                return;
        }
    }

    private void HandleSaslInitialResponse(ReadOnlySpan<byte> body)
    {
        if (!PasswordMessages.TryReadSaslInitialResponse(body, PgWriter.ScramMechanism, out ReadOnlySpan<byte> data, out string? malformed))
        {
            Fatal(SqlState.ProtocolViolation, malformed);
            return;
        }

        if (!_scramServer!.TryHandleClientFirst(data, out byte[]? serverFirst, out string? error))
        {
            Fatal(SqlState.ProtocolViolation, error ?? "malformed SCRAM message");
            return;
        }

        _authStage = AuthStage.ScramFinal;
        var writer = new PgWriter(RentOut());
        writer.WriteAuthentication(AuthRequest.SaslContinue, serverFirst);
        SendOut(writer.Position, AfterSend.ReadClient);
    }

    private void HandleSaslResponse(ReadOnlySpan<byte> body)
    {
        if (!_scramServer!.TryHandleClientFinal(body, out byte[]? serverFinal, out string? error))
        {
            if (_scramServer.State == ScramServerState.Malformed)
            {
                Fatal(SqlState.ProtocolViolation, error ?? "malformed SCRAM message");
            }
            else
            {
                PasswordFailed();
            }

            return;
        }

        if (!_userKnown || _userSecret!.Kind == SecretKind.Md5)
        {
            PasswordFailed();
            return;
        }

        var writer = new PgWriter(RentOut());
        writer.WriteAuthentication(AuthRequest.SaslFinal, serverFinal);
        SendOut(writer.Position, AfterSend.ConnectServer);
    }

    private void PasswordFailed()
    {
        _proxy.Stats.OnLoginFailed();
        Fatal(SqlState.InvalidPassword, $"password authentication failed for user \"{User}\"");
    }

    /// <summary>
    /// The client is who it says. In transaction mode, once the pool knows the server's parameters, the
    /// login completes without a backend; otherwise the session waits for one (session mode keeps it).
    /// </summary>
    private void OnAuthenticated()
    {
        OnLoginDone();
        if (_admin)
        {
            OnAdminAuthenticated();
            return;
        }

        _pool!.UpdateCredentials(BuildCredentials(_databaseOptions!));
        if (_pool.Mode == PoolMode.Transaction && _pool.Welcome is { } welcome)
        {
            SendLoginTail(welcome);
            return;
        }

        State = SessionState.ConnectingServer;
        if (_pool.Acquire(this) is { } server)
        {
            OnServerAssigned(server);
        }
    }

    /// <summary>
    /// The database line's user and password win; otherwise the client's own user with what auth_file
    /// holds for it: a plaintext password, an md5 hash (enough for md5 logins), or, for a SCRAM verifier,
    /// the ClientKey recovered from the client's own SCRAM proof.
    /// </summary>
    private ServerCredentials BuildCredentials(DatabaseOptions db)
    {
        UserSecret? secret = _userSecret;
        string user = User!;
        if (db.User is not null)
        {
            user = db.User;
            secret = null;
            if (db.Password is null && _proxy.Users is not null)
            {
                _proxy.Users.TryGet(user, out secret);
            }

            if (db.Password is not null)
            {
                return new ServerCredentials { User = user, Password = db.Password };
            }
        }
        else if (db.Password is not null)
        {
            return new ServerCredentials { User = user, Password = db.Password };
        }

        if (secret is null)
        {
            return new ServerCredentials { User = user };
        }

        byte[]? clientKey = null, serverKey = null;
        if (secret.Kind == SecretKind.ScramSha256 && db.User is null && _scramServer is not null && secret.TryGetScramVerifier(out ScramVerifier? verifier))
        {
            clientKey = _scramServer.ClientKey.ToArray();
            serverKey = verifier.ServerKey.ToArray();
        }

        return new ServerCredentials
        {
            User = user,
            Password = secret.Password,
            Md5Hash = secret.Kind == SecretKind.Md5 ? secret.Raw : null,
            ScramClientKey = clientKey,
            ScramServerKey = serverKey,
        };
    }

    /// <summary>
    /// AuthenticationOk, the server's ParameterStatus set with the client's own start-up values on top,
    /// the proxy's BackendKeyData and ReadyForQuery: the tail of a normal login (55.2.2), with the key
    /// replaced by one the proxy can check.
    /// </summary>
    private void SendLoginTail(IReadOnlyDictionary<string, ParameterStatus> serverParameters)
    {
        _clientParameters = new Dictionary<string, ParameterStatus>(serverParameters, StringComparer.OrdinalIgnoreCase);
        foreach (KeyValuePair<string, string> p in _startupParameters!)
        {
            _clientParameters[p.Key] = ParameterStatus.Create(p.Key, p.Value);
        }

        var writer = new PgWriter(RentOut());
        writer.WriteAuthentication(AuthRequest.Ok);
        foreach (ParameterStatus parameter in _clientParameters.Values)
        {
            if (parameter.Message.Length > writer.Remaining - 64)
            {
                ReturnOut();
                Fatal(SqlState.InternalError, "server parameters do not fit in a buffer");
                return;
            }

            writer.WriteBytes(parameter.Message);
        }

        writer.WriteBackendKeyData(Id, Volatile.Read(ref _secret));
        writer.WriteReadyForQuery(TransactionStatus.Idle);
        Log.Write(LogLevel.Info, $"session {Id}: login ok ({_pool!.Mode.ToString().ToLowerInvariant()} mode{(_server is null ? "" : $", backend pid {_server.BackendPid}")})");
        SendOut(writer.Position, AfterSend.StartRelay);
    }

    /// <summary>
    /// A CancelRequest (55.2.7): checked by <see cref="CancelRequestCheck"/>. From here on the connection is
    /// the cancel path's: with the right key its socket goes to the target session, which keeps it open
    /// until PostgreSQL has acted; otherwise it is closed without a word.
    /// </summary>
    private void HandleCancelRequest(ReadOnlySpan<byte> packet)
    {
        State = SessionState.Closed;

        // Read: the connection no longer counts as a client.
        OnConnectionClosed();
        if (CancelRequestCheck.FindTarget(_proxy, packet, RemoteEndPoint) is not { } target)
        {
            CloseCancelSocket();
            return;
        }

        // The decision is the target's own loop's: only there is it known whether a query is running and
        // on which backend, atomically with that backend being handed back to the pool.
        System.Net.Sockets.Socket? socket = _client.DetachSocket();
        TryFinish();
        target.RequestCancel(socket);
    }

    private void CloseCancelSocket()
    {
        _client.Close();
        TryFinish();
    }

    private void ContinueReading()
    {
        switch (State)
        {
            case SessionState.Startup:
                ProcessStartup();
                break;
            case SessionState.Authenticating:
                ProcessAuthentication();
                break;
        }
    }
}
