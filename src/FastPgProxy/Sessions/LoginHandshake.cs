using System.Globalization;
using FastPgProxy.Auth;
using FastPgProxy.Cancellation;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;
using FastPgProxy.Tls;

namespace FastPgProxy.Sessions;

/// <summary>Which authentication message the handshake waits for.</summary>
internal enum AuthStage
{
    /// <summary>PasswordMessage answering an MD5 challenge.</summary>
    Md5,
    /// <summary>SASLInitialResponse with the SCRAM client-first-message.</summary>
    ScramFirst,
    /// <summary>SASLResponse with the SCRAM client-final-message.</summary>
    ScramFinal,
}

/// <summary>
/// A client's way in: the first packet (StartupMessage, SSLRequest, GSSENCRequest or CancelRequest, 55.2.1
/// and 55.2.10-12), the start-up parameters, and authentication (trust, MD5 or SCRAM-SHA-256 against
/// auth_file). It owns what only the login needs (the parameters not yet accepted, the user's secret, the
/// SCRAM exchange) and is dropped once the client is authenticated; the session then goes on as a relay
/// to its pool or as an admin console session. The handshake talks to the client through its owner:
/// the owner's channel, its output buffer and its Fatal.
/// </summary>
internal sealed class LoginHandshake
{
    private readonly ClientSession _owner;
    private readonly ProxyServer _proxy;
    private List<string>? _unrecognizedOptions;
    private int _requestedVersion;
    private DatabaseOptions? _databaseOptions;
    private UserSecret? _userSecret;
    private bool _userKnown;

    // auth_user of a user missing from auth_file while its auth_query lookup is still to run; then null.
    private string? _lookupAuthUser;
    private bool _lookedUp;

    // The method this client authenticates with: auth_type, or with auth_type hba the matching line's; chosen once.
    private AuthType? _authType;
    private AuthStage _authStage;
    private byte[]? _md5Salt;
    private ScramServer? _scramServer;
    private MessageFramer _authFramer;
    private bool _sslAnswered;
    private ClientTls? _tlsAnswered;

    // The first byte of a TLS handshake record: a direct TLS ClientHello (PostgreSQL checks the same byte).
    private const byte TlsRecordHandshake = 0x16;
    private bool _gssAnswered;

    /// <summary>The handshake of <paramref name="owner"/>, which has read nothing yet.</summary>
    public LoginHandshake(ClientSession owner, ProxyServer proxy)
    {
        _owner = owner;
        _proxy = proxy;
    }

    /// <summary>Reads the first packet of the connection (protocol 55.2.1 and 55.2.10-12).</summary>
    private void ReadStartup()
    {
        if (!_sslAnswered && _owner.Client.Buffered > 0 && _owner.Client.Window[0] == TlsRecordHandshake && !_owner.IsUnixSocket && _proxy.ClientTls is { } directTls)
        {
            // PostgreSQL 17's sslnegotiation=direct: a TLS ClientHello from the first byte, no SSLRequest.
            _sslAnswered = true;
            byte[] hello = _owner.Client.Window.ToArray();
            _owner.Client.Consume(hello.Length);
            _owner.StartTls(directTls, hello, direct: true);
            return;
        }

        StartupParseStatus status = StartupPacketHeader.TryRead(_owner.Client.Window, out StartupPacketHeader header);
        if (status == StartupParseStatus.NeedMore)
        {
            _owner.Client.Receive();
            return;
        }

        if (status == StartupParseStatus.Invalid)
        {
            _owner.Fatal(SqlState.ProtocolViolation, "invalid length of startup packet");
            return;
        }

        ReadOnlySpan<byte> packet = _owner.Client.Window.Slice(0, header.Length);
        switch (header.Code)
        {
            case StartupCodes.CancelRequestCode:
                _owner.OnCancelRequest(packet);
                return;
            case PeerCancel.RequestCode when _proxy.Peers.SelfId != 0:
                _owner.OnPeerCancelRequest(packet);
                return;
            case StartupCodes.SslRequestCode:
            case StartupCodes.GssEncRequestCode:
                if (header.Length != StartupCodes.MinStartupPacketLength)
                {
                    _owner.Fatal(SqlState.ProtocolViolation, "invalid length of startup packet");
                    return;
                }

                // Each negotiation may be tried once (PostgreSQL's ssl_done/gss_done); a repeat is treated
                // as the unknown protocol version its code reads as, so a client cannot loop here.
                bool ssl = header.Code == StartupCodes.SslRequestCode;
                if (ssl ? _sslAnswered : _gssAnswered)
                {
                    _owner.Fatal(SqlState.FeatureNotSupported, $"unsupported frontend protocol {header.Major}.{header.Minor}: server supports {ProtocolNegotiation.SupportedRange}");
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

                _owner.Client.Consume(header.Length);
                if (_owner.Client.Buffered > 0)
                {
                    // The client may not send anything until it has read the answer (55.2.10).
                    _owner.Fatal(SqlState.ProtocolViolation, "received unencrypted data after SSL request");
                    return;
                }

                // S, then the handshake once the S is out; GSSENCRequest always gets N, and so does an
                // SSLRequest over the Unix socket, as PostgreSQL answers it there.
                ClientTls? tls = ssl && !_owner.IsUnixSocket ? _proxy.ClientTls : null;
                _tlsAnswered = tls;
                byte[] output = _owner.RentOut();
                output[0] = tls is null ? (byte)'N' : (byte)'S';
                _owner.SendOut(1, tls is null ? AfterSend.ReadClient : AfterSend.StartTls);
                return;
        }

        if (header.Major != 3)
        {
            _owner.Fatal(
                header.Major == 1234 ? SqlState.ProtocolViolation : SqlState.FeatureNotSupported,
                $"unsupported frontend protocol {header.Major}.{header.Minor}: server supports {ProtocolNegotiation.SupportedRange}");
            return;
        }

        if (!_owner.IsTls && !_owner.IsUnixSocket && _proxy.ClientTls is { Mode: >= TlsMode.Require })
        {
            // Before anything is read from the packet: a plain client learns nothing but that TLS is required.
            _owner.Fatal(SqlState.InvalidAuthorization, "SSL required");
            return;
        }

        _requestedVersion = header.Code;
        var parameters = new List<KeyValuePair<string, string>>();
        if (!StartupParameters.TryParse(packet.Slice(StartupCodes.MinStartupPacketLength), parameters, out string? error))
        {
            _owner.Fatal(SqlState.ProtocolViolation, error!);
            return;
        }

        _owner.Client.Consume(header.Length);
        HandleStartupMessage(parameters);
    }

    private void HandleStartupMessage(List<KeyValuePair<string, string>> parameters)
    {
        // Backends are shared, so only the parameters the proxy keeps in step on every backend it hands
        // out (the ones PostgreSQL reports with ParameterStatus) are honoured; others must be listed in
        // ignore_startup_parameters, as with PgBouncer.
        var tracked = new List<KeyValuePair<string, string>>();
        string? user = null, database = null;
        foreach (KeyValuePair<string, string> p in parameters)
        {
            switch (p.Key)
            {
                case "user":
                    user = p.Value;
                    break;
                case "database":
                    database = p.Value;
                    break;
                case "replication":
                    _owner.Fatal(SqlState.FeatureNotSupported, "replication connections are not supported by the proxy");
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
                        _owner.Fatal(SqlState.ProtocolViolation, $"unsupported startup parameter: {p.Key}");
                        return;
                    }

                    break;
            }
        }

        _owner.StartupParameters = tracked;
        if (string.IsNullOrEmpty(user))
        {
            _owner.Fatal(SqlState.InvalidAuthorization, "no PostgreSQL user name specified in startup packet");
            return;
        }

        if (string.IsNullOrEmpty(database))
        {
            database = user;
        }

        bool identified = _owner.Identify(user, database, ProtocolNegotiation.CancelKeyLength(_requestedVersion));

        // Every client connection counts, this one included: logged in, logging in, or a cancel not yet read.
        // Under peer_id an instance also has at most SessionRegistry.LocalIdCapacity ids to give.
        if (!identified || _proxy.Admission.Connections > _proxy.Options.MaxClientConnections)
        {
            _owner.Fatal(SqlState.TooManyConnections, "sorry, too many clients already");
            return;
        }

        if (Admin.AdminConsole.IsConsoleDatabase(database))
        {
            // The admin console is a virtual database on the proxy's own listener: no pool, no backend.
            _owner.MarkAdminConsole();
            _userKnown = _proxy.Users is { } consoleUsers && consoleUsers.TryGet(user, out _userSecret);
            Log.Write(LogLevel.Info, $"session {_owner.Id}: admin console login attempt from {_owner.ClientName}: user={user}");
            BeginAuthentication();
            return;
        }

        _databaseOptions = _proxy.Options.FindDatabase(database);
        if (_databaseOptions is null)
        {
            _owner.Fatal(SqlState.InvalidCatalogName, $"database \"{database}\" does not exist");
            return;
        }

        Log.Write(LogLevel.Info, $"session {_owner.Id}: login attempt from {_owner.ClientName}: db={database} user={user}");
        if (_proxy.Options.ApplicationNameAddHost)
        {
            AddHostToApplicationName(tracked);
        }

        _userKnown = _proxy.Users is { } users && users.TryGet(user, out _userSecret);
        if (!_userKnown)
        {
            // PgBouncer's order: auth_file first, then the database's auth_user, then the global one.
            _lookupAuthUser = _databaseOptions.AuthUser ?? _proxy.Options.AuthUser;
        }

        ServerCredentials credentials = BuildCredentials(_databaseOptions);
        if (_owner.JoinPool(_proxy.Pools.Get(database, credentials.User, _databaseOptions, credentials)))
        {
            BeginAuthentication();
        }
    }

    /// <summary>
    /// application_name_add_host: the start-up application_name (<c>app</c> when none was sent) gets
    /// <c> - address:port</c> of the client appended, <c>[address]:port</c> for IPv6, as PgBouncer does. Only
    /// at login: a later SET is left alone. Console logins keep theirs (peers find each other by it).
    /// </summary>
    private void AddHostToApplicationName(List<KeyValuePair<string, string>> tracked)
    {
        if (_owner.RemoteEndPoint is not { } remote)
        {
            return;
        }

        string address = remote.Address.IsIPv4MappedToIPv6 ? remote.Address.MapToIPv4().ToString() : remote.Address.ToString();
        string host = remote.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 && !remote.Address.IsIPv4MappedToIPv6
            ? $"[{address}]:{remote.Port.ToString(CultureInfo.InvariantCulture)}"
            : $"{address}:{remote.Port.ToString(CultureInfo.InvariantCulture)}";
        int index = tracked.FindIndex(static p => p.Key == "application_name");
        string application = index >= 0 ? tracked[index].Value : "app";
        var entry = new KeyValuePair<string, string>("application_name", $"{application} - {host}");
        if (index >= 0)
        {
            tracked[index] = entry;
        }
        else
        {
            tracked.Add(entry);
        }
    }

    /// <summary>
    /// Sends NegotiateProtocolVersion when the client asked for a minor version above 3.2 or for _pq_ options
    /// (55.2.1): the version the session runs (the request, at most 3.2) and the options not recognised.
    /// </summary>
    private void WriteNegotiateIfNeeded(ref PgWriter writer)
    {
        if (!ProtocolNegotiation.NeedsAnswer(_requestedVersion, _unrecognizedOptions is not null))
        {
            return;
        }

        writer.BeginMessage((byte)BackendMessage.NegotiateProtocolVersion);
        writer.WriteInt32(ProtocolNegotiation.Effective(_requestedVersion));
        writer.WriteInt32(_unrecognizedOptions?.Count ?? 0);
        foreach (string option in _unrecognizedOptions ?? [])
        {
            writer.WriteCString(option);
        }

        writer.EndMessage();
    }

    /// <summary>Asks for the client's password (or SCRAM exchange), or with trust goes straight on; NegotiateProtocolVersion first when due.</summary>
    public void BeginAuthentication()
    {
        if (_authType is null && !ChooseMethod())
        {
            return;
        }

        if (_lookupAuthUser is not null)
        {
            StartLookup(_lookupAuthUser);
            return;
        }

        UserList? users = _proxy.Users;
        AuthType authType = _authType!.Value;
        if (authType == AuthType.Cert && !CertificateNamesUser())
        {
            return;
        }

        var writer = new PgWriter(_owner.RentOut());
        WriteNegotiateIfNeeded(ref writer);

        if (authType is AuthType.Trust or AuthType.Cert)
        {
            if ((users is not null || _lookedUp) && !_userKnown)
            {
                _owner.ReturnOut();
                _owner.Fatal(SqlState.InvalidAuthorization, $"role \"{_owner.User}\" does not exist");
            }
            else if (writer.Position > 0)
            {
                _owner.SendOut(writer.Position, AfterSend.ConnectServer);
            }
            else
            {
                _owner.ReturnOut();
                _owner.OnAuthenticated();
            }

            return;
        }

        // Like PostgreSQL, an md5 setup still uses SCRAM for a user whose only secret is a SCRAM verifier,
        // and an unknown user goes through a full exchange that fails, so user names cannot be probed.
        bool scram = authType == AuthType.ScramSha256 || (_userSecret?.Kind == SecretKind.ScramSha256);
        _owner.OnAuthenticationStarted();
        if (scram)
        {
            ScramVerifier verifier = _proxy.MockVerifier;
            if (_userKnown && _userSecret!.Kind != SecretKind.Md5 && _userSecret.TryGetScramVerifier(out ScramVerifier? real))
            {
                verifier = real;
            }

            _scramServer = new ScramServer(verifier, _owner.Tls?.ChannelBinding);
            _authStage = AuthStage.ScramFirst;
            writer.WriteAuthenticationSasl(_scramServer.Mechanisms);
        }
        else
        {
            _md5Salt = new byte[Md5Auth.SaltLength];
            _owner.Loop.Random.Fill(_md5Salt);
            _authStage = AuthStage.Md5;
            writer.WriteAuthentication(AuthRequest.Md5Password, _md5Salt);
        }

        _owner.SendOut(writer.Position, AfterSend.ReadClient);
    }

    /// <summary>
    /// Sets <see cref="_authType"/>: auth_type, or with auth_type hba the method of the first auth_hba_file
    /// line that matches the connection (every client is TCP for now), database and user. False after the
    /// FATAL PostgreSQL gives when no line matches or the line is <c>reject</c>.
    /// </summary>
    private bool ChooseMethod()
    {
        if (_proxy.Options.AuthType != AuthType.Hba || _proxy.Hba is not { } hba)
        {
            _authType = _proxy.Options.AuthType;
            return true;
        }

        string database = _owner.Database!, user = _owner.User!;
        bool ssl = _owner.IsTls;
        System.Net.IPAddress? address = _owner.RemoteEndPoint?.Address;
        HbaRule? rule = hba.Match(_owner.IsUnixSocket ? HbaConnectionType.Local : HbaConnectionType.Host, ssl, address, database, user);
        string host = _owner.IsUnixSocket ? "[local]" : $"{(address is { IsIPv4MappedToIPv6: true } ? address.MapToIPv4() : address)}";
        string connection = $"host \"{host}\", user \"{user}\", database \"{database}\", {(ssl ? "SSL encryption" : "no encryption")}";
        switch (rule?.Method)
        {
            case null:
                _proxy.Stats.OnLoginFailed();
                _owner.Fatal(SqlState.InvalidAuthorization, $"no pg_hba.conf entry for {connection}");
                return false;
            case HbaMethod.Reject:
                _proxy.Stats.OnLoginFailed();
                _owner.Fatal(SqlState.InvalidAuthorization, $"pg_hba.conf rejects connection for {connection}");
                return false;
            case HbaMethod.Peer when _owner.PeerUserId is not { } uid || PeerCredentials.UserName(uid) != user:
                // Only local lines carry peer: the OS user at the other end of the socket must be the user.
                _proxy.Stats.OnLoginFailed();
                _owner.Fatal(SqlState.InvalidAuthorization, $"peer authentication failed for user \"{user}\"");
                return false;
        }

        Log.Debug($"session {_owner.Id}: auth_hba_file line {rule.Line} matches: {rule.Method}");
        _authType = rule.Method switch
        {
            HbaMethod.Trust or HbaMethod.Peer => AuthType.Trust,
            HbaMethod.Md5 => AuthType.Md5,
            HbaMethod.ScramSha256 => AuthType.ScramSha256,
            _ => AuthType.Cert,
        };
        return true;
    }

    /// <summary>
    /// Looks the user up with auth_query as <paramref name="authUser"/> (<see cref="AuthLookup"/>), in a task
    /// off the loops; the answer comes back to the session's loop, where authentication goes on with the
    /// secret found. Nothing is read from the client meanwhile. Runs at every login of such a user: nothing is
    /// cached but the credentials the pool's backends log in with, as in PgBouncer.
    /// </summary>
    private void StartLookup(string authUser)
    {
        _lookupAuthUser = null;
        _lookedUp = true;
        AuthLookupTarget? target = AuthLookup.Resolve(_proxy, _databaseOptions!, _owner.Database!, authUser, out string? error);
        if (target is null)
        {
            Log.Warning($"session {_owner.Id}: {error}");
            _owner.Fatal(SqlState.InvalidAuthorization, error!);
            return;
        }

        ClientSession owner = _owner;
        ProxyServer proxy = _proxy;
        string user = owner.User!;
        int sessionId = owner.Id;
        _ = Task.Run(async () =>
        {
            AuthLookupResult result = AuthLookupResult.Failure;
            try
            {
                result = await AuthLookup.RunAsync(proxy, target, user, sessionId).ConfigureAwait(false);
            }
            finally
            {
                owner.PostLoginStep(() => OnLookupDone(result));
            }
        });
    }

    /// <summary>The lookup's answer, on the session's loop: authentication goes on, or the login fails.</summary>
    private void OnLookupDone(AuthLookupResult result)
    {
        switch (result.Status)
        {
            case AuthLookupStatus.Found:
                _userKnown = true;
                _userSecret = result.Secret;
                break;
            case AuthLookupStatus.NotFound:
                // As for a user missing from auth_file: a password exchange that fails, so names cannot be probed.
                Log.Write(LogLevel.Info, $"session {_owner.Id}: no such user: {_owner.User}");
                break;
            default:
                _proxy.Stats.OnLoginFailed();
                _owner.Fatal(SqlState.InvalidAuthorization, $"authentication failed for user \"{_owner.User}\": the user could not be looked up");
                return;
        }

        BeginAuthentication();
    }

    /// <summary>
    /// auth_type cert: the client's certificate (checked against client_tls_ca_file in the handshake) must
    /// have the user name as its CN, as PostgreSQL's cert method without a user map. False after a FATAL.
    /// </summary>
    private bool CertificateNamesUser()
    {
        if (_owner.ClientCertificate is not { } certificate)
        {
            _owner.Fatal(SqlState.InvalidAuthorization, "connection requires a valid client certificate");
            return false;
        }

        string commonName = certificate.GetNameInfo(System.Security.Cryptography.X509Certificates.X509NameType.SimpleName, forIssuer: false);
        if (!string.Equals(commonName, _owner.User, StringComparison.Ordinal))
        {
            _proxy.Stats.OnLoginFailed();
            _owner.Fatal(
                SqlState.InvalidAuthorization,
                $"certificate authentication failed for user \"{_owner.User}\"",
                $"The certificate's common name \"{commonName}\" is not the user name.");
            return false;
        }

        return true;
    }

    /// <summary>Reads the client's next PasswordMessage/SASL message and acts on it.</summary>
    private void ReadAuthentication()
    {
        Span<byte> window = _owner.Client.Window;
        FrameStatus status = _authFramer.Scan(window, MessageTypeSet.All, _owner.Client.Loop.Buffers.BufferSize, out _, out int length);
        if (status == FrameStatus.NeedMore)
        {
            if (!_authFramer.AtBoundary)
            {
                _owner.Fatal(SqlState.ProtocolViolation, "authentication message too long");
                return;
            }

            _owner.Client.Receive();
            return;
        }

        if (status == FrameStatus.Invalid)
        {
            _owner.Fatal(SqlState.ProtocolViolation, "invalid message length");
            return;
        }

        if (window[0] != (byte)FrontendMessage.Password)
        {
            _owner.Fatal(SqlState.ProtocolViolation, $"expected password response, got message type {window[0]}");
            return;
        }

        ReadOnlySpan<byte> body = window.Slice(MessageFramer.HeaderLength, length - MessageFramer.HeaderLength);
        _owner.Client.Consume(length);
        switch (_authStage)
        {
            case AuthStage.Md5:
                if (_userKnown && Md5Auth.Verify(_userSecret!, _owner.User!, _md5Salt, PasswordMessages.ReadPassword(body)))
                {
                    _owner.OnAuthenticated();
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
        if (!PasswordMessages.TryReadSaslInitialResponse(
                body, _scramServer!.Mechanisms, out ReadOnlySpan<byte> mechanism, out ReadOnlySpan<byte> data, out string? malformed))
        {
            _owner.Fatal(SqlState.ProtocolViolation, malformed);
            return;
        }

        if (!_scramServer.TryHandleClientFirst(mechanism, data, out byte[]? serverFirst, out string? error))
        {
            ScramFailed(error);
            return;
        }

        _authStage = AuthStage.ScramFinal;
        var writer = new PgWriter(_owner.RentOut());
        writer.WriteAuthentication(AuthRequest.SaslContinue, serverFirst);
        _owner.SendOut(writer.Position, AfterSend.ReadClient);
    }

    private void HandleSaslResponse(ReadOnlySpan<byte> body)
    {
        if (!_scramServer!.TryHandleClientFinal(body, out byte[]? serverFinal, out string? error))
        {
            ScramFailed(error);
            return;
        }

        if (!_userKnown || _userSecret!.Kind == SecretKind.Md5)
        {
            PasswordFailed();
            return;
        }

        var writer = new PgWriter(_owner.RentOut());
        writer.WriteAuthentication(AuthRequest.SaslFinal, serverFinal);
        _owner.SendOut(writer.Position, AfterSend.ConnectServer);
    }

    /// <summary>Ends a failed SCRAM exchange with PostgreSQL's SQLSTATE for how it failed.</summary>
    private void ScramFailed(string error)
    {
        switch (_scramServer!.State)
        {
            case ScramServerState.ProofRejected:
                PasswordFailed();
                return;
            case ScramServerState.ChannelBindingRejected:
                _owner.Fatal(SqlState.InvalidAuthorization, error, _scramServer.ErrorDetail);
                return;
            default:
                _owner.Fatal(SqlState.ProtocolViolation, error);
                return;
        }
    }

    private void PasswordFailed()
    {
        _proxy.Stats.OnLoginFailed();
        _owner.Fatal(SqlState.InvalidPassword, $"password authentication failed for user \"{_owner.User}\"");
    }

    /// <summary>
    /// The database line's user and password win; otherwise the client's own user with what auth_file
    /// holds for it: a plaintext password, an md5 hash (enough for md5 logins), or, for a SCRAM verifier,
    /// the ClientKey recovered from the client's own SCRAM proof.
    /// </summary>
    private ServerCredentials BuildCredentials(DatabaseOptions db)
    {
        UserSecret? secret = _userSecret;
        string user = _owner.User!;
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

    /// <summary>The credentials for the backends of the client's pool, once the client has authenticated (see <see cref="BuildCredentials"/>).</summary>
    public ServerCredentials Credentials => BuildCredentials(_databaseOptions!);

    /// <summary>The <c>S</c> answering SSLRequest went out: the TLS handshake starts.</summary>
    public void OnSslAnswerSent() => _owner.StartTls(_tlsAnswered!, null, direct: false);

    /// <summary>Reads on in the stage the handshake is in: new bytes arrived, or the proxy's own message went out.</summary>
    public void Continue()
    {
        if (_owner.State == SessionState.Startup)
        {
            ReadStartup();
        }
        else if (_owner.State == SessionState.Authenticating)
        {
            ReadAuthentication();
        }
    }
}
