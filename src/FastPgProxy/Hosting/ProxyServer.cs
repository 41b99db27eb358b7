using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using FastPgProxy.Auth;
using FastPgProxy.Cancellation;
using FastPgProxy.Config;
using FastPgProxy.Net;
using FastPgProxy.Pooling;
using FastPgProxy.Sessions;
using FastPgProxy.Tls;

namespace FastPgProxy.Hosting;

/// <summary>The listener cannot be bound; the message names the address and the reason.</summary>
internal sealed class ListenException : Exception
{
    /// <summary>Creates the exception with a ready message and the socket error behind it.</summary>
    public ListenException(string message, SocketException inner) : base(message, inner)
    {
    }
}

/// <summary>
/// The proxy: one listener, a few event loops, the session registry and the counters. Tests build it from
/// typed <see cref="ProxyOptions"/>; the executable builds it from the config file.
/// </summary>
internal sealed class ProxyServer : IAsyncDisposable
{
    /// <summary>Size of every pooled buffer: a receive window and the proxy's own outgoing messages.</summary>
    public const int BufferSize = 32 * 1024;

    private readonly List<Listener> _listeners;
    private readonly CancellationTokenSource _stopping = new();
    private Task[] _acceptLoops = [];
    private DescriptorReserve? _reserve;
    private int _stopped;

    /// <summary>
    /// Loads the auth file and binds the listener; throws <see cref="ConfigException"/> for a bad auth file
    /// and <see cref="ListenException"/> when the address cannot be bound (a port in use, without so_reuseport).
    /// </summary>
    public ProxyServer(ProxyOptions options)
    {
        Options = options;
        _users = LoadUsers(options);

        if (options.AuthType == AuthType.Hba)
        {
            if (options.AuthHbaFile is null)
            {
                throw new ConfigException("auth_type hba needs auth_hba_file");
            }

            _hba = LoadHba();
        }

        ReloadTls(options);
        Sessions = new SessionRegistry(options.PeerId);
        Peers = new PeerDirectory(options);

        // Unknown users still go through a full SCRAM exchange against this throw-away verifier.
        MockVerifier = ScramVerifier.FromPassword(Convert.ToBase64String(System.Security.Cryptography.RandomNumberGenerator.GetBytes(18)));
        _listeners = Listener.BindAll(options);
        LocalEndPoint = _listeners.Find(static l => !l.IsUnix)?.Socket.LocalEndPoint as IPEndPoint;
        Port = LocalEndPoint?.Port ?? options.ListenPort;
        if (options.MetricsPort != 0)
        {
            try
            {
                Metrics = new MetricsEndpoint(this, options);
            }
            catch
            {
                StopListening();
                throw;
            }
        }

        Loops = new EventLoopGroup(options.EffectiveLoopThreads, BufferSize);
        Pools = new PoolManager(this);
        CancelGuard = new CancelGuard(options.CancelBadKeyLimit);
    }

    /// <summary>auth_query connections kept open between lookups; closed at stop.</summary>
    public AuthLookupPool AuthConnections { get; } = new();

    /// <summary>The Prometheus endpoint; null when metrics_port is 0.</summary>
    public MetricsEndpoint? Metrics { get; }

    /// <summary>Cancel storm and key-guessing protection.</summary>
    public CancelGuard CancelGuard { get; }

    /// <summary>The backend pools.</summary>
    public PoolManager Pools { get; }

    /// <summary>The options the server runs with.</summary>
    public ProxyOptions Options { get; }

    /// <summary>TLS towards clients (client_tls_*); null when disabled. Swapped whole by RELOAD; any thread.</summary>
    public ClientTls? ClientTls => Volatile.Read(ref _clientTls);

    /// <summary>TLS towards PostgreSQL (server_tls_*); null when disabled. Swapped whole by RELOAD; any thread.</summary>
    public ServerTls? ServerTls => Volatile.Read(ref _serverTls);

    private ClientTls? _clientTls;
    private ServerTls? _serverTls;

    /// <summary>
    /// Loads the certificate files of <paramref name="options"/> again and puts them in place for new
    /// handshakes, both sides or neither; throws <see cref="ConfigException"/> (and changes nothing) when a
    /// file or setting cannot be used.
    /// </summary>
    public void ReloadTls(ProxyOptions options)
    {
        ClientTls? client;
        ServerTls? server;
        try
        {
            client = ClientTls.Build(options.ClientTls);
            server = ServerTls.Build(options.ServerTls);
        }
        catch (TlsConfigException e)
        {
            throw new ConfigException(options.SourcePath is null ? e.Message : $"{options.SourcePath}: {e.Message}");
        }

        Volatile.Write(ref _clientTls, client);
        Volatile.Write(ref _serverTls, server);
    }

    /// <summary>The auth_hba_file rules when auth_type is hba; null otherwise. Replaced whole by RELOAD; any thread.</summary>
    public HbaRules? Hba => Volatile.Read(ref _hba);

    private HbaRules? _hba;

    /// <summary>
    /// Reads the running auth_hba_file again when auth_type is hba (null otherwise); throws
    /// <see cref="ConfigException"/> naming file and line when it does not parse. Put in place with <see cref="UseHba"/>.
    /// </summary>
    public HbaRules? LoadHba()
    {
        if (Options.AuthType != AuthType.Hba || Options.AuthHbaFile is not { } path)
        {
            return null;
        }

        return HbaRules.TryLoad(path, out HbaRules? rules, out string? error) ? rules : throw new ConfigException(error);
    }

    /// <summary>New logins match against <paramref name="rules"/> (from <see cref="LoadHba"/>); logins under way keep the method they chose.</summary>
    public void UseHba(HbaRules? rules)
    {
        if (rules is not null)
        {
            Volatile.Write(ref _hba, rules);
        }
    }

    /// <summary>The auth_file contents; null when none is configured. Replaced whole by RELOAD (any thread).</summary>
    public UserList? Users => Volatile.Read(ref _users);

    private UserList? _users;

    /// <summary>
    /// Reads the auth_file <paramref name="options"/> name (null when none); a file that cannot be read or
    /// parsed is a <see cref="ConfigException"/> naming the config file and the key that points to it.
    /// </summary>
    public static UserList? LoadUsers(ProxyOptions options)
    {
        if (options.AuthFile is null)
        {
            return null;
        }

        return UserList.TryLoad(options.AuthFile, out UserList? users, out string? error)
            ? users
            : throw new ConfigException($"{options.SourcePath ?? "config"}: auth_file: {error}");
    }

    /// <summary>Puts a freshly read auth_file in force (RELOAD): logins from now on check against it.</summary>
    public void SetUsers(UserList? users) => Volatile.Write(ref _users, users);

    /// <summary>The verifier used to fail unknown users in SCRAM without revealing that they are unknown.</summary>
    public ScramVerifier MockVerifier { get; }

    /// <summary>Where the listener is bound (the real port when 0 was asked).</summary>
    public IPEndPoint? LocalEndPoint { get; }

    /// <summary>The port clients connect to, over TCP and in the Unix socket's name; the one picked when <c>listen_port</c> is 0.</summary>
    public int Port { get; }

    /// <summary>Where the proxy listens, for logs: TCP addresses and the Unix socket's path.</summary>
    public string ListenNames => string.Join(", ", _listeners.ConvertAll(static l => l.Name));

    /// <summary>The event loops.</summary>
    public EventLoopGroup Loops { get; }

    /// <summary>Client connections open and logging in; refuses connections over max_login_clients.</summary>
    public ClientAdmission Admission { get; } = new();

    /// <summary>The other instances of the cluster ([peers]) and cancel forwarding to them.</summary>
    public PeerDirectory Peers { get; }

    /// <summary>Live sessions by proxy session id.</summary>
    public SessionRegistry Sessions { get; }

    /// <summary>Outcomes of CancelRequests.</summary>
    public CancelStats CancelStats { get; } = new();

    /// <summary>Other counters.</summary>
    public ProxyStats Stats { get; } = new();

    // What one client must have freed to be worth giving memory back to the system for, and how seldom.
    private const long TrimThreshold = 8L * 1024 * 1024;
    private static readonly long s_trimInterval = Stopwatch.Frequency * 10;
    private long _lastTrim = -s_trimInterval;

    /// <summary>
    /// A client that held many megabytes of statements went: collect and give the memory back to the system
    /// now (on the thread pool, at most every 10 s), rather than whenever the next full collection comes,
    /// which on an otherwise allocation-free proxy may be never.
    /// </summary>
    public void OnClientMemoryFreed(long bytes)
    {
        long now = Stopwatch.GetTimestamp();
        long last = Volatile.Read(ref _lastTrim);
        if (bytes < TrimThreshold || now - last < s_trimInterval || Interlocked.CompareExchange(ref _lastTrim, now, last) != last)
        {
            return;
        }

        ThreadPool.UnsafeQueueUserWorkItem(static _ => GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true), null);
    }

    /// <summary>Starts accepting clients.</summary>
    public void Start()
    {
        RuntimePreload.Run();
        _reserve = new DescriptorReserve();
        var loops = new Task[_listeners.Count];
        for (int i = 0; i < _listeners.Count; i++)
        {
            Listener listener = _listeners[i];
            listener.Socket.Listen(Options.ListenBacklog);
            loops[i] = Task.Run(() => AcceptLoopAsync(listener));
        }

        _acceptLoops = loops;
        Log.Info($"listening on {ListenNames} with {Loops.Loops.Count} loop threads");
        Metrics?.Start();
    }

    /// <summary>
    /// Accepts until the server stops. A failed accept leaves the connection in the listen queue; the loop
    /// waits, from 10 ms doubling up to 1 s, and tries again, for as long as it takes. When it failed for
    /// lack of descriptors (EMFILE, ENFILE), the loop also releases the descriptors it holds back for the
    /// runtime and accepts again only once it could take them back with room to spare (see
    /// <see cref="DescriptorReserve"/>). Nothing may end this loop but a stop: an exception that escaped it
    /// would leave the listener open and nobody accepting.
    /// </summary>
    private async Task AcceptLoopAsync(Listener listener)
    {
        DescriptorReserve reserve = _reserve!;
        int failures = 0;
        TimeSpan backOff = FirstBackOff;
        while (!_stopping.IsCancellationRequested)
        {
            if (reserve.Enabled && !reserve.IsHeld)
            {
                if (!reserve.TryTake())
                {
                    await BackOffAsync(backOff).ConfigureAwait(false);
                    backOff = backOff * 2 < LongestBackOff ? backOff * 2 : LongestBackOff;
                    continue;
                }

                Log.Warning("descriptors are free again: accepting");
                failures = 0;
            }

            Socket socket;
            try
            {
                socket = await listener.Socket.AcceptAsync(_stopping.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException || Volatile.Read(ref _listening) == 0)
            {
                // Stopped, or the listeners were closed under the pending accept (a safe shutdown).
                return;
            }
            catch (Exception e)
            {
                failures++;
                if (e is SocketException { SocketErrorCode: SocketError.TooManyOpenSockets } && reserve.IsHeld)
                {
                    reserve.Release();
                    Log.Warning($"accept failed: every file descriptor is in use (EMFILE or ENFILE); the {DescriptorReserve.Size} held back for the runtime are released, and accepting waits until descriptors are free");
                }
                else if (failures == 1)
                {
                    Log.Warning($"accept failed: {(e is SocketException s ? s.SocketErrorCode.ToString() : e.GetType().Name)}: {e.Message}; trying again until it succeeds");
                }

                await BackOffAsync(backOff).ConfigureAwait(false);
                backOff = backOff * 2 < LongestBackOff ? backOff * 2 : LongestBackOff;
                continue;
            }

            if (failures > 0)
            {
                Log.Warning($"accepting again after {failures} failed accepts");
                failures = 0;
            }

            backOff = FirstBackOff;
            Admit(socket, listener.IsUnix);
        }
    }

    private static readonly TimeSpan FirstBackOff = TimeSpan.FromMilliseconds(10);
    private static readonly TimeSpan LongestBackOff = TimeSpan.FromSeconds(1);

    /// <summary>Waits before the next accept; returns early when the server stops. Never throws.</summary>
    private async Task BackOffAsync(TimeSpan delay)
    {
        try
        {
            // The runtime's timer thread was started by RuntimePreload, so this needs no new thread.
            await Task.Delay(delay, _stopping.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
        catch (Exception e)
        {
            // Still no timer: wait on a thread-pool thread rather than on the socket thread that may run this.
            Log.Warning($"accept back-off: {e.GetType().Name}: {e.Message}");
            await Task.Yield();
            Thread.Sleep(delay);
        }
    }

    /// <summary>
    /// Hands an accepted socket to a session on the next loop, or refuses it at once (FATAL 53300) while
    /// max_login_clients connections are logging in.
    /// </summary>
    private void Admit(Socket socket, bool unix)
    {
        if (!Admission.TryAdmit(socket, Options.EffectiveMaxLoginClients))
        {
            return;
        }

        try
        {
            if (!unix)
            {
                socket.NoDelay = true;
                Options.Keepalive.Apply(socket);
            }

            EventLoop loop = Loops.Next();
            loop.Post(new ClientSession(this, loop, socket));
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Reset by the peer before it could be set up.
            Log.Debug($"accepted connection dropped: {e.Message}");
            Admission.OnLoginDone();
            Admission.OnClosed();
            socket.Dispose();
        }
    }

    /// <summary>
    /// Safe shutdown (SIGINT, PgBouncer's SHUTDOWN WAIT_FOR_SERVERS): stops accepting, then ends each
    /// session as soon as it holds no open transaction, for up to <paramref name="wait"/>
    /// (shutdown_wait_timeout); whatever is left then is ended as <see cref="StopAsync"/> ends it. Returns
    /// early when an immediate stop began meanwhile.
    /// </summary>
    public async Task StopSafelyAsync(TimeSpan wait, TimeSpan grace)
    {
        StopListening();
        Volatile.Write(ref _stoppingSafely, true);
        var waited = Stopwatch.StartNew();
        while (Sessions.Count > 0 && waited.Elapsed < wait && Volatile.Read(ref _stopped) == 0)
        {
            foreach (ClientSession session in Sessions.Snapshot())
            {
                session.TerminateIfIdleFromAnywhere();
            }

            await Task.Delay(100).ConfigureAwait(false);
        }

        if (Sessions.Count > 0 && Volatile.Read(ref _stopped) == 0)
        {
            Log.Warning($"shutdown_wait_timeout ({wait.TotalSeconds:0.###} s) passed with {Sessions.Count} sessions still in a transaction: terminating them");
        }

        await StopAsync(grace).ConfigureAwait(false);
    }

    /// <summary>Closes every listener (and removes the Unix socket file); clients already in stay. Once only.</summary>
    private void StopListening()
    {
        if (Interlocked.Exchange(ref _listening, 0) == 0)
        {
            return;
        }

        foreach (Listener listener in _listeners)
        {
            listener.Close();
        }
    }

    private int _listening = 1;
    private bool _stoppingSafely;

    /// <summary>Whether a safe shutdown began: a client between transactions that starts another is let go instead (any thread).</summary>
    public bool StoppingSafely => Volatile.Read(ref _stoppingSafely);

    /// <summary>
    /// Stops accepting, tells every client the server is going away (FATAL 57P01, as PostgreSQL's fast
    /// shutdown does), waits up to <paramref name="grace"/> for the sessions to close, then stops the loops.
    /// </summary>
    public async Task StopAsync(TimeSpan grace)
    {
        if (Interlocked.Exchange(ref _stopped, 1) != 0)
        {
            return;
        }

        await _stopping.CancelAsync().ConfigureAwait(false);
        StopListening();
        if (Metrics is not null)
        {
            await Metrics.DisposeAsync().ConfigureAwait(false);
        }

        AuthConnections.Dispose();
        foreach (Task acceptLoop in _acceptLoops)
        {
            try
            {
                await acceptLoop.ConfigureAwait(false);
            }
            catch (Exception e)
            {
                // The loop catches everything it expects; whatever else ended it must not stop the shutdown.
                Log.Error($"accept loop failed: {e}");
            }
        }

        foreach (ClientSession session in Sessions.Snapshot())
        {
            session.Loop.Post(() => session.Terminate("terminating connection due to administrator command"));
        }

        var deadline = Stopwatch.StartNew();
        while (Sessions.Count > 0 && deadline.Elapsed < grace)
        {
            await Task.Delay(20).ConfigureAwait(false);
        }

        // Backends left idle in the pools are closed too, so PostgreSQL sees a clean goodbye.
        var closed = new List<Task>();
        foreach (ServerPool pool in Pools.Pools)
        {
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            pool.Loop.Post(() =>
            {
                pool.CloseIdle();
                done.TrySetResult();
            });
            closed.Add(done.Task);
        }

        try
        {
            await Task.WhenAll(closed).WaitAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            Log.Warning("idle backends did not close within 2 s");
        }

        Loops.Stop(TimeSpan.FromSeconds(2));
        _reserve?.Dispose();
        _stopping.Dispose();
        _stoppedSource.TrySetResult();
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync() => await StopAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);

    private readonly TaskCompletionSource _stoppedSource = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Completes when a stop finished, whoever asked for it (a signal, the admin console's SHUTDOWN).</summary>
    public Task Stopped => _stoppedSource.Task;
}
