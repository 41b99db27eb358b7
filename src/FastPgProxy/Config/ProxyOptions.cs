using System.Collections.Generic;

namespace FastPgProxy.Config;

/// <summary>How the proxy checks a client's password.</summary>
internal enum AuthType
{
    /// <summary>No password; the user must still be listed in auth_file when one is configured.</summary>
    Trust,
    /// <summary>MD5 challenge; a user whose auth_file secret is a SCRAM verifier is asked for SCRAM instead, as PostgreSQL does.</summary>
    Md5,
    /// <summary>SCRAM-SHA-256 (RFC 5802/7677); SCRAM-SHA-256-PLUS with channel binding is offered over TLS.</summary>
    ScramSha256,
    /// <summary>A TLS client certificate, checked against client_tls_ca_file, whose CN is the user name.</summary>
    Cert,
    /// <summary>The method of the first matching line of auth_hba_file (pg_hba.conf format); no line matching refuses the client.</summary>
    Hba,
}

/// <summary>When a backend connection is handed back to the pool.</summary>
internal enum PoolMode
{
    /// <summary>The client keeps its backend for its whole session.</summary>
    Session,
    /// <summary>The client holds a backend only for the duration of a transaction.</summary>
    Transaction,
}

/// <summary>One entry of the [databases] section: where a client database name leads.</summary>
internal sealed class DatabaseOptions
{
    /// <summary>Name clients connect to; <c>*</c> is the fallback for any name.</summary>
    public required string Name { get; init; }

    /// <summary>Host name, IP address, or a directory holding PostgreSQL's Unix socket. Default 127.0.0.1.</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>Server port. Default 5432.</summary>
    public int Port { get; init; } = 5432;

    /// <summary>Database name on the server; null means the name the client asked for.</summary>
    public string? DatabaseName { get; init; }

    /// <summary>User to log in as on the server; null means the client's user.</summary>
    public string? User { get; init; }

    /// <summary>Password for <see cref="User"/>; null means the auth_file secret of the client's user.</summary>
    public string? Password { get; init; }

    /// <summary>Pool mode for this database; null means the global <c>pool_mode</c>.</summary>
    public PoolMode? PoolMode { get; init; }

    /// <summary>Pool size for this database; null means the global <c>default_pool_size</c>.</summary>
    public int? PoolSize { get; init; }

    /// <summary>Most backends of this database over all its users; null means the global <c>max_db_connections</c> (0: no limit).</summary>
    public int? MaxDbConnections { get; init; }

    /// <summary>The <c>auth_user=</c> that looks up users missing from auth_file for this database; null means the global <c>auth_user</c>.</summary>
    public string? AuthUser { get; init; }

    /// <summary>Extra backends for this database's pools (<c>reserve_pool_size</c>, alias <c>reserve_pool</c>); null means the global <c>reserve_pool_size</c>.</summary>
    public int? ReservePoolSize { get; init; }

    /// <summary>A query run once on each new backend after its login, before any client uses it; its errors are logged and the backend kept. Null: none.</summary>
    public string? ConnectQuery { get; init; }
}

/// <summary>One entry of the [users] section: settings for every pool whose backends log in as this user.</summary>
internal sealed class UserOptions
{
    /// <summary>The user name (the user backends log in as).</summary>
    public required string Name { get; init; }

    /// <summary>Pool mode of this user's pools; null means the database's or the global <c>pool_mode</c>.</summary>
    public PoolMode? PoolMode { get; init; }

    /// <summary>Pool size of this user's pools; null means the database's or the global one.</summary>
    public int? PoolSize { get; init; }

    /// <summary>Extra backends of this user's pools; null means the database's or the global <c>reserve_pool_size</c>.</summary>
    public int? ReservePoolSize { get; init; }

    /// <summary>Most backends of this user over all databases; null means the global <c>max_user_connections</c>, 0 no limit.</summary>
    public int? MaxUserConnections { get; init; }
}

/// <summary>Everything the server needs to run; the config file is parsed into this, and tests build it directly.</summary>
internal sealed class ProxyOptions
{
    /// <summary>
    /// Addresses to listen on for TCP, comma-separated: IP addresses, <c>localhost</c>, or <c>*</c> for every
    /// IPv4 and IPv6 address; empty: the Unix socket only. Default 127.0.0.1.
    /// </summary>
    public string ListenAddress { get; set; } = "127.0.0.1";

    /// <summary>The <c>listen(2)</c> backlog of each listener: connections the kernel queues before the proxy accepts them. Default 1024.</summary>
    public int ListenBacklog { get; set; } = 1024;

    /// <summary>
    /// Folder of the Unix socket <c>.s.PGSQL.PORT</c> clients may connect through (psql's <c>host=/tmp</c>);
    /// a name starting with <c>@</c> is in Linux's abstract namespace; null or empty: no Unix socket. Default /tmp, as PgBouncer.
    /// </summary>
    public string? UnixSocketDir { get; set; } = "/tmp";

    /// <summary>File mode of the Unix socket. Default 0777.</summary>
    public int UnixSocketMode { get; set; } = Convert.ToInt32("777", 8);

    /// <summary>Group (name or number) the Unix socket file is given to; null: the process's group. Default null.</summary>
    public string? UnixSocketGroup { get; set; }

    /// <summary>Port to listen on; 0 picks a free port (tests). Default 6432.</summary>
    public int ListenPort { get; set; } = 6432;

    /// <summary>
    /// Whether the listener sets SO_REUSEPORT, so several instances that all set it share one port (the
    /// kernel spreads new connections over them). Off: a port another listener holds fails the start. Default off.
    /// </summary>
    public bool SoReusePort { get; set; }

    /// <summary>
    /// This instance's id among several behind a load balancer (PgBouncer's <c>peer_id</c>), 1 to 16383, or 0
    /// for none. Session ids then carry it in their top bits, so they never collide between instances and
    /// name the instance that owns them; an instance then holds at most 131,071 sessions. Default 0.
    /// </summary>
    public int PeerId { get; set; }

    /// <summary>The <c>[peers]</c> section: the instances of the cluster by peer id (this one may be listed too).</summary>
    public List<PeerOptions> Peers { get; } = new();

    /// <summary>Client authentication method. Default md5, as PgBouncer.</summary>
    public AuthType AuthType { get; set; } = AuthType.Md5;

    /// <summary>TLS towards clients: <c>client_tls_*</c>. Default disabled, as PgBouncer.</summary>
    public TlsSettings ClientTls { get; set; } = new() { Mode = TlsMode.Disable };

    /// <summary>TLS towards PostgreSQL: <c>server_tls_*</c>. Default prefer, as PgBouncer.</summary>
    public TlsSettings ServerTls { get; set; } = new() { Mode = TlsMode.Prefer };

    /// <summary>Path of the PgBouncer-format user list; required unless auth_type is trust or auth_user is set.</summary>
    public string? AuthFile { get; set; }

    /// <summary>PgBouncer 1.25's default <c>auth_query</c>: the role's secret, NULL once it has expired, for a role that may log in.</summary>
    public const string DefaultAuthQuery =
        "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin";

    /// <summary>
    /// The role that runs <see cref="AuthQuery"/> for a user missing from auth_file (its own secret, if any,
    /// comes from auth_file); null for none, when such a user is unknown. A database's <c>auth_user=</c> wins.
    /// </summary>
    public string? AuthUser { get; set; }

    /// <summary>The query that returns (user name, secret) for the user name in <c>$1</c>. Default <see cref="DefaultAuthQuery"/>.</summary>
    public string AuthQuery { get; set; } = DefaultAuthQuery;

    /// <summary>The [databases] entry <see cref="AuthQuery"/> runs in; null means the database the client asked for.</summary>
    public string? AuthDbname { get; set; }

    /// <summary>The pg_hba.conf-format file <see cref="AuthType.Hba"/> reads; required with it.</summary>
    public string? AuthHbaFile { get; set; }

    /// <summary>Pool mode. Default session.</summary>
    public PoolMode PoolMode { get; set; } = PoolMode.Session;

    /// <summary>Most client connections at once, counting those still logging in; further logins get 53300. Default 100.</summary>
    public int MaxClientConnections { get; set; } = 100;

    /// <summary>
    /// Most client connections at once that have not finished logging in (start-up packet, authentication;
    /// a CancelRequest until read); a connection over it gets FATAL 53300 at accept and is closed. 0 means
    /// <see cref="MaxClientConnections"/>, so that every client may send a cancel at the same moment. Default 0.
    /// </summary>
    public int MaxLoginClients { get; set; }

    /// <summary>The cap on connections logging in: <see cref="MaxLoginClients"/>, or <see cref="MaxClientConnections"/> when it is 0.</summary>
    public int EffectiveMaxLoginClients => MaxLoginClients > 0 ? MaxLoginClients : MaxClientConnections;

    /// <summary>Number of event-loop threads; 0 picks from the processor count. Default 0.</summary>
    public int LoopThreads { get; set; }

    /// <summary>
    /// Number of the runtime's socket (epoll) threads, which run the loops' work inline; 0 = half the
    /// loops, at least one. Default 0. Applies to the executable only, at start.
    /// </summary>
    public int SocketThreads { get; set; }

    /// <summary>A client that has not finished logging in by then is closed. Default 60 s.</summary>
    public TimeSpan ClientLoginTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// A client that stops in the middle of a message (sent part of it, then nothing) for this long is
    /// closed with FATAL 08P01, and a backend holding half of that message is closed; zero disables. Default 60 s.
    /// </summary>
    public TimeSpan ClientMessageTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>Longest wait for a backend connection and its login. Default 15 s.</summary>
    public TimeSpan ServerConnectTimeout { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>Longest a forwarded cancel may take before its connections are closed. Default 10 s.</summary>
    public TimeSpan CancelTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Backends per (database, user) pool. Default 20.</summary>
    public int DefaultPoolSize { get; set; } = 20;

    /// <summary>Backends each pool keeps open even when idle. Default 0.</summary>
    public int MinPoolSize { get; set; }

    /// <summary>Most backends per database over all its users; 0 means no limit. Default 0.</summary>
    public int MaxDbConnections { get; set; }

    /// <summary>Most backends per user (the user backends log in as) over all databases; 0 means no limit. Default 0.</summary>
    public int MaxUserConnections { get; set; }

    /// <summary>Backends a pool may open past its size for a client that has waited <see cref="ReservePoolTimeout"/>; 0 disables. Default 0.</summary>
    public int ReservePoolSize { get; set; }

    /// <summary>How long the first waiting client of a full pool waits before the reserve pool is used; zero disables it. Default 5 s.</summary>
    public TimeSpan ReservePoolTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Run on a backend idle longer than <see cref="ServerCheckDelay"/> before a client gets it; a backend whose
    /// check fails is closed. Null disables the check; empty sends an empty query (PgBouncer's <c>&lt;empty&gt;</c>). Default empty.
    /// </summary>
    public string? ServerCheckQuery { get; set; } = "";

    /// <summary>A backend idle at most this long is handed out without <see cref="ServerCheckQuery"/>; zero checks every time. Default 30 s.</summary>
    public TimeSpan ServerCheckDelay { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// After a backend login fails (other than while PostgreSQL restarts, which retries sooner), no login is
    /// tried for this long, and a client that would wait for a pool without backends meanwhile gets the
    /// error at once; zero retries at once. Default 15 s.
    /// </summary>
    public TimeSpan ServerLoginRetry { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>Idle backends are reused oldest first (round robin) instead of most recently used first. Default off.</summary>
    public bool ServerRoundRobin { get; set; }

    /// <summary>Runs <see cref="ServerResetQuery"/> in transaction mode too, after every transaction. Default off.</summary>
    public bool ServerResetQueryAlways { get; set; }

    /// <summary>Appends <c> - address:port</c> of the client to the application_name it logs in with (<c>app</c> when it sends none). Default off.</summary>
    public bool ApplicationNameAddHost { get; set; }

    /// <summary>An idle backend unused this long is closed (down to min_pool_size); zero disables. Default 600 s.</summary>
    public TimeSpan ServerIdleTimeout { get; set; } = TimeSpan.FromSeconds(600);

    /// <summary>A backend older than this is closed when it next becomes idle; zero disables. Default 3600 s.</summary>
    public TimeSpan ServerLifetime { get; set; } = TimeSpan.FromSeconds(3600);

    /// <summary>A client waiting longer than this for a backend gets an error and is closed; zero disables. Default 120 s.</summary>
    public TimeSpan QueryWaitTimeout { get; set; } = TimeSpan.FromSeconds(120);

    /// <summary>Run on a backend before it goes back to the pool in session mode; empty disables. Default DISCARD ALL.</summary>
    public string ServerResetQuery { get; set; } = "DISCARD ALL";

    /// <summary>Named prepared statements kept per backend in transaction mode (least recently used are closed); 0 turns tracking off. Default 200.</summary>
    public int MaxPreparedStatements { get; set; } = 200;

    /// <summary>
    /// Named prepared statements one client may keep in transaction mode (the proxy holds each to prepare
    /// it again on other backends); a Parse past it is refused with 54000. Default 2000.
    /// </summary>
    public int MaxClientPreparedStatements { get; set; } = 2000;

    /// <summary>
    /// Bytes of statement text and parameter types one client's prepared statements may take in the proxy
    /// in transaction mode; a Parse past it is refused with 53200. Default 32 MiB.
    /// </summary>
    public long MaxClientPreparedBytes { get; set; } = 32L * 1024 * 1024;

    /// <summary>Start-up parameters accepted from clients and not applied to backends (PgBouncer's ignore_startup_parameters).</summary>
    public HashSet<string> IgnoreStartupParameters { get; } = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>A query running longer than this is cancelled on PostgreSQL (the client gets 57014 and keeps its session); zero disables. Default 0.</summary>
    public TimeSpan QueryTimeout { get; set; }

    /// <summary>A client idle inside a transaction longer than this is closed and its backend rolled back; zero disables. Default 0.</summary>
    public TimeSpan IdleTransactionTimeout { get; set; }

    /// <summary>A logged-in client that sends nothing this long between transactions is closed (FATAL 08P01 <c>client_idle_timeout</c>, PgBouncer's); zero is off. Default 0.</summary>
    public TimeSpan ClientIdleTimeout { get; set; }

    /// <summary>
    /// Safe shutdown (SIGINT) waits this long for sessions inside a transaction to finish it; those still in
    /// one then are terminated. Default 60 s.
    /// </summary>
    public TimeSpan ShutdownWaitTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>When a client disconnects mid-query, cancel the query, drain and roll back the backend and keep it. Default on.</summary>
    public bool CancelOnDisconnect { get; set; } = true;

    /// <summary>Longest the proxy spends making a backend clean (drain, rollback, reset) before closing it instead. Default 5 s.</summary>
    public TimeSpan ServerResetTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Wrong-key cancels per minute from one address before its cancels are dropped for a minute; 0 disables. Default 100.</summary>
    public int CancelBadKeyLimit { get; set; } = 100;

    /// <summary>Cancel connections open at once to one PostgreSQL server; further cancels wait. Default 32.</summary>
    public int MaxCancelConnections { get; set; } = 32;

    /// <summary>A cancel that waits this long for a cancel connection is dropped. Default 5 s.</summary>
    public TimeSpan CancelWaitTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Users that may signal any session (pg_cancel_backend, pg_terminate_backend) and run every admin console command. Replaced whole by RELOAD, never changed in place.</summary>
    public HashSet<string> AdminUsers { get; set; } = new(StringComparer.Ordinal);

    /// <summary>Users that may run the admin console's SHOW commands. Replaced whole by RELOAD, never changed in place.</summary>
    public HashSet<string> StatsUsers { get; set; } = new(StringComparer.Ordinal);

    /// <summary>
    /// Users other instances log in as to signal this instance's sessions (<c>PEER</c> on the console):
    /// <c>pg_cancel_backend</c>, <c>pg_terminate_backend</c> and KILL for a session that lives here. Only
    /// they may run PEER. Replaced whole by RELOAD, never changed in place.
    /// </summary>
    public HashSet<string> PeerUsers { get; set; } = new(StringComparer.Ordinal);

    /// <summary>TCP keepalive and user timeout for client and backend sockets (PgBouncer's <c>tcp_*</c> keys).</summary>
    public Net.TcpKeepalive Keepalive { get; } = new();

    /// <summary>A file every log line is appended to as well as standard error (PgBouncer's <c>logfile</c>); reopened by RELOAD and SIGHUP, so a rotated file is let go. Null: standard error only.</summary>
    public string? LogFile { get; set; }

    /// <summary>A file the process id is written to at start and removed from at exit (PgBouncer's <c>pidfile</c>). Null: none.</summary>
    public string? PidFile { get; set; }

    /// <summary>What the loader let pass with a warning (PgBouncer settings FastPgProxy does not implement), logged at start.</summary>
    public List<string> Warnings { get; } = new();

    /// <summary>Log each successful login (database, user, TLS) whatever <see cref="Verbose"/> is, as PgBouncer's <c>log_connections</c>. Default on.</summary>
    public bool LogConnections { get; set; } = true;

    /// <summary>Log each logged-in client's disconnection with its reason and age, as PgBouncer's <c>log_disconnections</c>. Default on.</summary>
    public bool LogDisconnections { get; set; } = true;

    /// <summary>Log each FATAL error the proxy itself sends a client, as a warning, as PgBouncer's <c>log_pooler_errors</c>. Default on.</summary>
    public bool LogPoolerErrors { get; set; } = true;
    /// <summary>The span SHOW STATS's avg_* columns average over (PgBouncer's <c>stats_period</c>). Default 60 s.</summary>
    public TimeSpan StatsPeriod { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>Address the Prometheus endpoint listens on (<c>metrics_addr</c>). Default 127.0.0.1.</summary>
    public string MetricsAddress { get; set; } = "127.0.0.1";

    /// <summary>Port of the Prometheus endpoint (<c>GET /metrics</c>); 0 turns it off. Default 0.</summary>
    public int MetricsPort { get; set; }

    /// <summary>Log verbosity: 0 warnings and start-up, 1 connections, 2 debug. Default 0.</summary>
    public int Verbose { get; set; }

    /// <summary>The [databases] section, in file order.</summary>
    public List<DatabaseOptions> Databases { get; } = new();

    /// <summary>The [users] section by user name.</summary>
    public Dictionary<string, UserOptions> Users { get; } = new(StringComparer.Ordinal);

    /// <summary>Where the options came from, for messages; null when built in code.</summary>
    public string? SourcePath { get; set; }

    /// <summary>The number of loop threads to start: the configured count, or the processor count capped at 4.</summary>
    public int EffectiveLoopThreads => LoopThreads > 0 ? LoopThreads : Math.Clamp(Environment.ProcessorCount, 1, 4);

    /// <summary>The socket threads to ask the runtime for: <see cref="SocketThreads"/>, or half the loops (at least one).</summary>
    public int EffectiveSocketThreads => SocketThreads > 0 ? SocketThreads : Math.Max(1, EffectiveLoopThreads / 2);

    /// <summary>Finds the entry for a client database name: an exact match, else <c>*</c>, else null.</summary>
    public DatabaseOptions? FindDatabase(string name)
    {
        DatabaseOptions? fallback = null;
        foreach (DatabaseOptions db in Databases)
        {
            if (db.Name == name)
            {
                return db;
            }

            if (db.Name == "*")
            {
                fallback = db;
            }
        }

        return fallback;
    }
}
