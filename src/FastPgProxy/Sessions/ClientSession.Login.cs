using FastPgProxy.Cancellation;
using FastPgProxy.Net;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;
using FastPgProxy.Hosting;

namespace FastPgProxy.Sessions;

/// <summary>
/// The session's side of the login: the <see cref="LoginHandshake"/> reads and checks, and calls back here
/// for what changes the session itself (its id and key, its pool and loop, its state), then the login ends
/// with the tail a PostgreSQL server sends, or hands the connection to the cancel path.
/// </summary>
internal sealed partial class ClientSession
{
    private LoginHandshake? _login;
    private bool _admin;

    /// <summary>The start-up parameters the proxy honours (those it keeps in step on backends), as the client sent them; null before StartupMessage.</summary>
    internal List<KeyValuePair<string, string>>? StartupParameters { get; set; }

    /// <summary>
    /// Names the session after StartupMessage: its user and database, and its id and a cancel key of
    /// <paramref name="keyLength"/> random bytes (4 for protocol 3.0, 32 for 3.2). Only a session that sent
    /// StartupMessage gets an id and a key; both exist before any reply so that the BackendKeyData sent at
    /// the end of login is already valid for cancels, and the key is published before the registry can
    /// hand the session to a cancel. False when no id is free (an instance with <c>peer_id</c> has
    /// <see cref="SessionRegistry.LocalIdCapacity"/>); the caller then refuses the client.
    /// </summary>
    internal bool Identify(string user, string database, int keyLength)
    {
        User = user;
        Database = database;
        byte[] secret = new byte[keyLength];
        Loop.Random.Fill(secret);
        Volatile.Write(ref _secret, secret);
        Id = _proxy.Sessions.Add(this, Loop.Random);
        return Id != 0;
    }

    /// <summary>
    /// Runs <paramref name="step"/> of the login on the session's loop; any thread. Dropped when the session
    /// has closed meanwhile (the client left, or client_login_timeout passed).
    /// </summary>
    internal void PostLoginStep(Action step) => Loop.Post(() =>
    {
        if (State == SessionState.Closed)
        {
            TryFinish();
            return;
        }

        step();
    });

    /// <summary>The session logs in to the admin console, not to a pool.</summary>
    internal void MarkAdminConsole() => _admin = true;

    /// <summary>The proxy asked for the client's password or SCRAM exchange.</summary>
    internal void OnAuthenticationStarted() => State = SessionState.Authenticating;

    /// <summary>
    /// The session will relay to <paramref name="pool"/>. Returns true when the login goes on here; false
    /// when the session first moves to the pool's loop, where the handshake goes on.
    /// </summary>
    internal bool JoinPool(ServerPool pool)
    {
        _relay = new Relay(this, pool);

        // Keep the pool's copies of the names, not this client's: two strings less per logged-in client.
        User = string.Equals(User, pool.User, StringComparison.Ordinal) ? pool.User : User;
        Database = string.Equals(Database, pool.Database, StringComparison.Ordinal) ? pool.Database : Database;
        if (pool.Loop != Loop)
        {
            MoveTo(pool.Loop);
            return false;
        }

        return true;
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
            _login!.BeginAuthentication();
        });
    }

    /// <summary>
    /// The client is who it says. In transaction mode, once the pool knows the server's parameters, the
    /// login completes without a backend; otherwise the session waits for one (session mode keeps it).
    /// </summary>
    internal void OnAuthenticated()
    {
        OnLoginDone();
        _authenticated = true;
        if (_proxy.Options.LogConnections)
        {
            Log.Always($"client {ClientName} session {Id}: login: db={Database} user={User} tls={(IsTls ? "yes" : "no")}{(_admin ? " (admin console)" : "")}");
        }

        LoginHandshake login = _login!;
        _login = null;
        if (_admin)
        {
            OnAdminAuthenticated();
            return;
        }

        _relay!.OnAuthenticated(login.Credentials);
    }

    /// <summary>No login tail without a backend: the session waits for one (session mode, or a pool that has not logged in yet).</summary>
    internal void OnConnectingServer() => State = SessionState.ConnectingServer;

    /// <summary>
    /// A CancelRequest (55.2.7): checked by <see cref="CancelRequestCheck"/>. From here on the connection is
    /// the cancel path's: with the right key its socket goes to the target session, which keeps it open
    /// until PostgreSQL has acted; otherwise it is closed without a word.
    /// </summary>
    internal void OnCancelRequest(ReadOnlySpan<byte> packet)
    {
        State = SessionState.Closed;

        // Read: the connection no longer counts as a client.
        OnConnectionClosed();
        PeerDirectory peers = _proxy.Peers;
        if (peers.SelfId != 0 && CancelRequest.TryParse(packet, out int pid, out ReadOnlySpan<byte> key) && SessionRegistry.PeerOf(pid) != peers.SelfId)
        {
            // Another instance's session: its owner checks the key.
            _proxy.CancelStats.OnReceived();
            ForwardToPeer(1, RemoteEndPoint?.Address, pid, key);
            return;
        }

        if (CancelRequestCheck.FindTarget(_proxy, packet, RemoteEndPoint) is not { } target)
        {
            CloseCancelSocket();
            return;
        }

        HandToTarget(target);
    }

    /// <summary>
    /// A cancel another instance forwarded (<see cref="PeerCancel"/>): taken only from a peer's address; for a
    /// session here it is checked as a client's own, against the client's address; for another instance's
    /// it goes on, until <see cref="PeerCancel.MaxHops"/>.
    /// </summary>
    internal void OnPeerCancelRequest(ReadOnlySpan<byte> packet)
    {
        State = SessionState.Closed;
        OnConnectionClosed();
        CancelStats stats = _proxy.CancelStats;
        stats.OnReceived();
        PeerDirectory peers = _proxy.Peers;
        PeerLink? from = peers.SelfId == 0 ? null : peers.FindByAddress(RemoteEndPoint?.Address);
        if (from is null || !PeerCancel.TryParse(packet, out int hops, out System.Net.IPAddress client, out int pid, out ReadOnlySpan<byte> key))
        {
            stats.OnMalformed();
            Log.Info($"forwarded cancel from {ClientName} refused: {(from is null ? "not a configured peer" : "malformed")}");
            CloseCancelSocket();
            return;
        }

        from.OnReceived();
        stats.OnPeerReceived();
        if (SessionRegistry.PeerOf(pid) != peers.SelfId)
        {
            if (hops >= PeerCancel.MaxHops)
            {
                stats.OnPeerTtlExhausted();
                Log.Warning($"forwarded cancel for session {pid} dropped after {hops} hops (check the [peers] sections: peer {SessionRegistry.PeerOf(pid)} does not lead to its owner)");
                CloseCancelSocket();
                return;
            }

            ForwardToPeer(hops + 1, client, pid, key);
            return;
        }

        if (CancelRequestCheck.FindTarget(_proxy, pid, key, client) is not { } target)
        {
            CloseCancelSocket();
            return;
        }

        HandToTarget(target);
    }

    private void ForwardToPeer(int hops, System.Net.IPAddress? client, int pid, ReadOnlySpan<byte> key)
    {
        int owner = SessionRegistry.PeerOf(pid);
        if (_proxy.Peers.Find(owner) is not { } peer)
        {
            _proxy.CancelStats.OnPeerUnreachable();
            Log.Info($"cancel from {ClientName} for session {pid}: its peer {owner} is not in [peers]");
            CloseCancelSocket();
            return;
        }

        byte[] envelope = PeerCancel.Wrap(hops, client, pid, key);
        IDisposable? connection = _client.DetachForCancel();
        TryFinish();
        _ = PeerDirectory.ForwardAsync(_proxy, peer, connection, envelope);
    }

    private void HandToTarget(ClientSession target)
    {
        // The decision is the target's own loop's: only there is it known whether a query is running and
        // on which backend, atomically with that backend being handed back to the pool.
        IDisposable? connection = _client.DetachForCancel();
        TryFinish();
        target.RequestCancel(connection);
    }

    private void CloseCancelSocket()
    {
        _client.Close();
        TryFinish();
    }
}
