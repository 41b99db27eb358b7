using System.Globalization;
using FastPgProxy.Config;

namespace FastPgProxy.Admin;

/// <summary>
/// One <c>[fastpgproxy]</c> setting as the console shows it (SHOW CONFIG) and reloads it (RELOAD): how to
/// read its value, and, when it can change while the proxy runs, how to copy a new value into the running
/// options. Settings without <see cref="Apply"/> need a restart.
/// </summary>
internal sealed record ConfigSetting(string Key, Func<ProxyOptions, string> Get, Action<ProxyOptions, ProxyOptions>? Apply)
{
    /// <summary>Whether RELOAD applies it.</summary>
    public bool Changeable => Apply is not null;

    /// <summary>
    /// Every setting, in the README's order. Changeable ones are read where they are used (the pool's
    /// tick, a new login, a new backend), so writing them into the running options applies them; the
    /// writes are single references or 64-bit values, which readers on other loops see whole.
    /// </summary>
    public static IReadOnlyList<ConfigSetting> All { get; } =
    [
        new("listen_addr", o => o.ListenAddress, null),
        new("listen_port", o => Int(o.ListenPort), null),
        new("listen_backlog", o => Int(o.ListenBacklog), null),
        new("unix_socket_dir", o => o.UnixSocketDir ?? "", null),
        new("unix_socket_mode", o => "0" + Convert.ToString(o.UnixSocketMode, 8), null),
        new("unix_socket_group", o => o.UnixSocketGroup ?? "", null),
        new("so_reuseport", o => o.SoReusePort ? "1" : "0", null),
        new("peer_id", o => Int(o.PeerId), null),
        new("auth_type", o => o.AuthType switch { AuthType.Trust => "trust", AuthType.Md5 => "md5", AuthType.Cert => "cert", AuthType.Hba => "hba", _ => "scram-sha-256" }, null),
        new("auth_file", o => o.AuthFile ?? "", (t, s) => t.AuthFile = s.AuthFile),
        new("auth_user", o => o.AuthUser ?? "", (t, s) => t.AuthUser = s.AuthUser),
        new("auth_query", o => o.AuthQuery, (t, s) => t.AuthQuery = s.AuthQuery),
        new("auth_dbname", o => o.AuthDbname ?? "", (t, s) => t.AuthDbname = s.AuthDbname),
        new("auth_hba_file", o => o.AuthHbaFile ?? "", null),
        new("pool_mode", o => o.PoolMode == PoolMode.Session ? "session" : "transaction", null),
        new("default_pool_size", o => Int(o.DefaultPoolSize), (t, s) => t.DefaultPoolSize = s.DefaultPoolSize),
        new("min_pool_size", o => Int(o.MinPoolSize), (t, s) => t.MinPoolSize = s.MinPoolSize),
        new("max_db_connections", o => Int(o.MaxDbConnections), (t, s) => t.MaxDbConnections = s.MaxDbConnections),
        new("max_user_connections", o => Int(o.MaxUserConnections), (t, s) => t.MaxUserConnections = s.MaxUserConnections),
        new("reserve_pool_size", o => Int(o.ReservePoolSize), (t, s) => t.ReservePoolSize = s.ReservePoolSize),
        new("reserve_pool_timeout", o => Seconds(o.ReservePoolTimeout), (t, s) => t.ReservePoolTimeout = s.ReservePoolTimeout),
        new("server_check_query", o => o.ServerCheckQuery switch { null => "", "" => "<empty>", var q => q }, (t, s) => t.ServerCheckQuery = s.ServerCheckQuery),
        new("server_check_delay", o => Seconds(o.ServerCheckDelay), (t, s) => t.ServerCheckDelay = s.ServerCheckDelay),
        new("server_login_retry", o => Seconds(o.ServerLoginRetry), (t, s) => t.ServerLoginRetry = s.ServerLoginRetry),
        new("server_round_robin", o => o.ServerRoundRobin ? "1" : "0", (t, s) => t.ServerRoundRobin = s.ServerRoundRobin),
        new("server_reset_query_always", o => o.ServerResetQueryAlways ? "1" : "0", (t, s) => t.ServerResetQueryAlways = s.ServerResetQueryAlways),
        new("application_name_add_host", o => o.ApplicationNameAddHost ? "1" : "0", (t, s) => t.ApplicationNameAddHost = s.ApplicationNameAddHost),
        new("server_idle_timeout", o => Seconds(o.ServerIdleTimeout), (t, s) => t.ServerIdleTimeout = s.ServerIdleTimeout),
        new("server_lifetime", o => Seconds(o.ServerLifetime), (t, s) => t.ServerLifetime = s.ServerLifetime),
        new("query_wait_timeout", o => Seconds(o.QueryWaitTimeout), (t, s) => t.QueryWaitTimeout = s.QueryWaitTimeout),
        new("server_reset_query", o => o.ServerResetQuery, (t, s) => t.ServerResetQuery = s.ServerResetQuery),
        new("max_prepared_statements", o => Int(o.MaxPreparedStatements), (t, s) => t.MaxPreparedStatements = s.MaxPreparedStatements),
        new("max_client_prepared_statements", o => Int(o.MaxClientPreparedStatements), (t, s) => t.MaxClientPreparedStatements = s.MaxClientPreparedStatements),
        new("max_client_prepared_bytes", o => o.MaxClientPreparedBytes.ToString(CultureInfo.InvariantCulture), (t, s) => t.MaxClientPreparedBytes = s.MaxClientPreparedBytes),
        new("ignore_startup_parameters", o => List(o.IgnoreStartupParameters), null),
        new("query_timeout", o => Seconds(o.QueryTimeout), (t, s) => t.QueryTimeout = s.QueryTimeout),
        new("idle_transaction_timeout", o => Seconds(o.IdleTransactionTimeout), (t, s) => t.IdleTransactionTimeout = s.IdleTransactionTimeout),
        new("client_idle_timeout", o => Seconds(o.ClientIdleTimeout), (t, s) => t.ClientIdleTimeout = s.ClientIdleTimeout),
        new("shutdown_wait_timeout", o => Seconds(o.ShutdownWaitTimeout), (t, s) => t.ShutdownWaitTimeout = s.ShutdownWaitTimeout),
        new("cancel_on_disconnect", o => o.CancelOnDisconnect ? "on" : "off", (t, s) => t.CancelOnDisconnect = s.CancelOnDisconnect),
        new("server_reset_timeout", o => Seconds(o.ServerResetTimeout), (t, s) => t.ServerResetTimeout = s.ServerResetTimeout),

        // Both size the cancel guard, which is built once at start.
        new("cancel_bad_key_limit", o => Int(o.CancelBadKeyLimit), null),
        new("max_cancel_connections", o => Int(o.MaxCancelConnections), (t, s) => t.MaxCancelConnections = s.MaxCancelConnections),
        new("cancel_wait_timeout", o => Seconds(o.CancelWaitTimeout), (t, s) => t.CancelWaitTimeout = s.CancelWaitTimeout),
        new("admin_users", o => List(o.AdminUsers), (t, s) => t.AdminUsers = s.AdminUsers),
        new("stats_users", o => List(o.StatsUsers), (t, s) => t.StatsUsers = s.StatsUsers),
        new("peer_users", o => List(o.PeerUsers), (t, s) => t.PeerUsers = s.PeerUsers),
        new("max_client_conn", o => Int(o.MaxClientConnections), (t, s) => t.MaxClientConnections = s.MaxClientConnections),
        new("max_login_clients", o => Int(o.MaxLoginClients), (t, s) => t.MaxLoginClients = s.MaxLoginClients),
        new("loop_threads", o => Int(o.LoopThreads), null),
        new("socket_threads", o => Int(o.SocketThreads), null),
        new("client_login_timeout", o => Seconds(o.ClientLoginTimeout), (t, s) => t.ClientLoginTimeout = s.ClientLoginTimeout),
        new("client_message_timeout", o => Seconds(o.ClientMessageTimeout), (t, s) => t.ClientMessageTimeout = s.ClientMessageTimeout),
        new("server_connect_timeout", o => Seconds(o.ServerConnectTimeout), (t, s) => t.ServerConnectTimeout = s.ServerConnectTimeout),
        new("cancel_timeout", o => Seconds(o.CancelTimeout), (t, s) => t.CancelTimeout = s.CancelTimeout),
        new("verbose", o => Int(o.Verbose), (t, s) => t.Verbose = s.Verbose),
        new("log_connections", o => o.LogConnections ? "1" : "0", (t, s) => t.LogConnections = s.LogConnections),
        new("log_disconnections", o => o.LogDisconnections ? "1" : "0", (t, s) => t.LogDisconnections = s.LogDisconnections),
        new("log_pooler_errors", o => o.LogPoolerErrors ? "1" : "0", (t, s) => t.LogPoolerErrors = s.LogPoolerErrors),
        new("stats_period", o => Seconds(o.StatsPeriod), (t, s) => t.StatsPeriod = s.StatsPeriod),

        // The endpoint binds its socket at start.
        new("metrics_addr", o => o.MetricsAddress, null),
        new("metrics_port", o => Int(o.MetricsPort), null),
        new("logfile", o => o.LogFile ?? "", (t, s) => t.LogFile = s.LogFile),
        new("pidfile", o => o.PidFile ?? "", null),
        new("tcp_keepalive", o => o.Keepalive.Enabled ? "1" : "0", null),
        new("tcp_keepidle", o => Int(o.Keepalive.IdleSeconds), null),
        new("tcp_keepintvl", o => Int(o.Keepalive.IntervalSeconds), null),
        new("tcp_keepcnt", o => Int(o.Keepalive.Count), null),
        new("tcp_user_timeout", o => Int(o.Keepalive.UserTimeoutMilliseconds), null),

        // RELOAD reads the certificate files again whether or not these changed (certificates rotate in place).
        new("client_tls_sslmode", o => TlsSettings.Name(o.ClientTls.Mode), (t, s) => t.ClientTls = s.ClientTls),
        new("client_tls_key_file", o => o.ClientTls.KeyFile ?? "", (t, s) => t.ClientTls = s.ClientTls),
        new("client_tls_cert_file", o => o.ClientTls.CertFile ?? "", (t, s) => t.ClientTls = s.ClientTls),
        new("client_tls_ca_file", o => o.ClientTls.CaFile ?? "", (t, s) => t.ClientTls = s.ClientTls),
        new("client_tls_protocols", o => o.ClientTls.Protocols, (t, s) => t.ClientTls = s.ClientTls),
        new("client_tls_ciphers", o => o.ClientTls.Ciphers, (t, s) => t.ClientTls = s.ClientTls),
        new("server_tls_sslmode", o => TlsSettings.Name(o.ServerTls.Mode), (t, s) => t.ServerTls = s.ServerTls),
        new("server_tls_key_file", o => o.ServerTls.KeyFile ?? "", (t, s) => t.ServerTls = s.ServerTls),
        new("server_tls_cert_file", o => o.ServerTls.CertFile ?? "", (t, s) => t.ServerTls = s.ServerTls),
        new("server_tls_ca_file", o => o.ServerTls.CaFile ?? "", (t, s) => t.ServerTls = s.ServerTls),
        new("server_tls_protocols", o => o.ServerTls.Protocols, (t, s) => t.ServerTls = s.ServerTls),
        new("server_tls_ciphers", o => o.ServerTls.Ciphers, (t, s) => t.ServerTls = s.ServerTls),
    ];

    private static string Int(int value) => value.ToString(CultureInfo.InvariantCulture);

    private static string Seconds(TimeSpan value) => value.TotalSeconds.ToString(CultureInfo.InvariantCulture);

    private static string List(IEnumerable<string> values) => string.Join(",", values.Order(StringComparer.Ordinal));
}
