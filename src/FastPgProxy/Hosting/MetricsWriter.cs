using System.Diagnostics;
using System.Globalization;
using System.Text;
using FastPgProxy.Admin;
using FastPgProxy.Cancellation;
using FastPgProxy.Config;

namespace FastPgProxy.Hosting;

/// <summary>
/// Renders the proxy's counters in the Prometheus text exposition format 0.0.4 for the metrics endpoint.
/// The <c>pgbouncer_*</c> families carry the names and labels of the community pgbouncer_exporter, taken
/// from the same snapshot the admin console's SHOW POOLS, SHOW STATS, SHOW DATABASES, SHOW CLIENTS and
/// SHOW LISTS read; the <c>fastpgproxy_*</c> families are the proxy's own (SHOW CANCELS, SHOW PEERS).
/// Every family has its HELP and TYPE lines, written once, before its samples.
/// </summary>
internal sealed class MetricsWriter
{
    /// <summary>The Content-Type of the text format.</summary>
    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";

    private readonly StringBuilder _text = new(16 * 1024);
    private readonly HashSet<string> _families = new(StringComparer.Ordinal);

    /// <summary>
    /// Collects a snapshot from every loop (work posted to each loop, awaited here on the thread pool) and
    /// renders every metric. When a loop does not answer within <see cref="AdminSnapshot.CollectTimeout"/>,
    /// <c>pgbouncer_up</c> is 0 and only the process-wide counters are rendered.
    /// </summary>
    public static async Task<string> RenderAsync(ProxyServer proxy)
    {
        AdminSnapshot? snapshot;
        try
        {
            snapshot = await AdminSnapshot.CollectAsync(proxy).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            Log.Warning("metrics: a loop did not answer within the snapshot timeout; pgbouncer_up is 0");
            snapshot = null;
        }

        var w = new MetricsWriter();
        w.Family("pgbouncer_up", "gauge", "1 when every loop answered for this scrape, else 0 (only the process-wide counters are then shown)");
        w.Sample("pgbouncer_up", snapshot is null ? 0 : 1);
        w.Family("pgbouncer_version_info", "gauge", "The proxy's version, as SHOW VERSION reports it");
        w.Sample("pgbouncer_version_info", 1, ("version", AdminConsole.VersionString));
        w.Family("pgbouncer_config_max_client_connections", "gauge", "Config maximum number of client connections (max_client_conn)");
        w.Sample("pgbouncer_config_max_client_connections", proxy.Options.MaxClientConnections);
        if (snapshot is not null)
        {
            w.WriteLists(proxy, snapshot);
            w.WriteClients(snapshot);
            w.WritePools(snapshot);
            w.WriteStats(snapshot);
            w.WriteDatabases(proxy, snapshot);
        }

        w.WriteProxyCounters(proxy);
        return w._text.ToString();
    }

    private void WriteLists(ProxyServer proxy, AdminSnapshot snapshot)
    {
        Gauge("pgbouncer_databases", "Count of databases ([databases] entries)", proxy.Options.Databases.Count);
        Gauge("pgbouncer_users", "Count of users in auth_file", proxy.Users?.Count ?? 0);
        Gauge("pgbouncer_pools", "Count of pools", snapshot.Pools.Count);
        Gauge("pgbouncer_login_clients", "Count of clients in login state", snapshot.Clients.Count(c => c.State == "login"));
        Gauge("pgbouncer_used_clients", "Count of client sessions", snapshot.Clients.Count);
        Gauge("pgbouncer_used_servers", "Count of backend connections", snapshot.Servers.Count);
    }

    private void WriteClients(AdminSnapshot snapshot)
    {
        Family("pgbouncer_client_connections", "gauge", "Number of client connections grouped by database, user, application name, and state (SHOW CLIENTS)");
        foreach (var group in snapshot.Clients
            .GroupBy(c => (c.Database, c.User, c.ApplicationName, c.State))
            .OrderBy(g => g.Key.Database, StringComparer.Ordinal).ThenBy(g => g.Key.User, StringComparer.Ordinal)
            .ThenBy(g => g.Key.ApplicationName, StringComparer.Ordinal).ThenBy(g => g.Key.State, StringComparer.Ordinal))
        {
            Sample("pgbouncer_client_connections", group.Count(), ("database", group.Key.Database), ("user", group.Key.User), ("application_name", group.Key.ApplicationName), ("state", group.Key.State));
        }
    }

    private void WritePools(AdminSnapshot snapshot)
    {
        List<PoolCounts> pools = snapshot.CountPools();
        void Pools(string name, string help, Func<PoolCounts, double> value)
        {
            string family = "pgbouncer_pools_" + name;
            Family(family, "gauge", help);
            foreach (PoolCounts p in pools)
            {
                Sample(family, value(p), ("database", p.Row.Database), ("user", p.Row.User));
            }
        }

        Pools("client_active_connections", "Client connections logged in and not waiting for a server (cl_active)", p => p.ClientsActive);
        Pools("client_waiting_connections", "Client connections waiting on a server connection (cl_waiting)", p => p.ClientsWaiting);
        Pools("client_active_cancel_connections", "Cancel requests forwarded to the server and not yet answered", p => Math.Max(0, p.ClientCancels - p.Row.CancelsWaiting));
        Pools("client_waiting_cancel_connections", "Cancel requests waiting for a cancel connection (cl_waiting_cancel_req)", p => p.Row.CancelsWaiting);
        Pools("server_active_connections", "Server connections linked to a client connection (sv_active)", p => p.ServersActive);
        Pools("server_idle_connections", "Server connections idle and ready for a client query (sv_idle)", p => p.ServersIdle);
        Pools("server_used_connections", "Server connections neither linked to a client nor idle in the pool (sv_used)", p => p.ServersUsed);
        Pools("server_login_connections", "Server connections currently in the process of logging in (sv_login)", p => p.ServersLogin);
        Pools("server_being_canceled_connections", "Server connections with a cancel request in flight (sv_being_canceled)", p => p.ServersBeingCanceled);
        Pools("server_active_cancel_connections", "Cancel connections to the server open now (sv_active_cancel)", p => p.Row.CancelConnections);
        Pools("client_maxwait_seconds", "Age of the oldest unserved client connection, in seconds (maxwait)", p => p.Row.MaxWaitMicros / 1e6);
    }

    private void WriteStats(AdminSnapshot snapshot)
    {
        List<DatabaseStats> stats = snapshot.StatsByDatabase();
        void Stats(string name, string help, Func<DatabaseStats, double> value)
        {
            string family = "pgbouncer_stats_" + name;
            Family(family, "counter", help);
            foreach (DatabaseStats d in stats)
            {
                Sample(family, value(d), ("database", d.Database));
            }
        }

        Stats("queries_pooled_total", "Total number of SQL queries pooled (total_query_count)", d => d.Queries);
        Stats("queries_duration_seconds_total", "Total number of seconds spent executing queries on PostgreSQL (total_query_time)", d => d.QueryMicros / 1e6);
        Stats("sql_transactions_pooled_total", "Total number of SQL transactions pooled (total_xact_count)", d => d.Transactions);
        Stats("server_in_transaction_seconds_total", "Total number of seconds spent in transactions on PostgreSQL (total_xact_time)", d => d.TransactionMicros / 1e6);
        Stats("received_bytes_total", "Total bytes received from clients and relayed (total_received)", d => d.BytesReceived);
        Stats("sent_bytes_total", "Total bytes sent to clients from servers (total_sent)", d => d.BytesSent);
        Stats("client_wait_seconds_total", "Time spent by clients waiting for a server, in seconds (total_wait_time)", d => d.WaitMicros / 1e6);
        Stats("server_assignments_total", "Total number of times a server connection was assigned to a client (total_server_assignment_count)", d => d.ServerAssignments);
    }

    private void WriteDatabases(ProxyServer proxy, AdminSnapshot snapshot)
    {
        ProxyOptions options = proxy.Options;
        (string, string)[] Labels(DatabaseOptions db) =>
        [
            ("name", db.Name),
            ("host", db.Host),
            ("port", db.Port.ToString(CultureInfo.InvariantCulture)),
            ("database", db.DatabaseName ?? db.Name),
            ("force_user", db.User ?? ""),
            ("pool_mode", (db.PoolMode ?? options.PoolMode) == PoolMode.Session ? "session" : "transaction"),
        ];
        void Databases(string name, string help, Func<DatabaseOptions, double> value)
        {
            string family = "pgbouncer_databases_" + name;
            Family(family, "gauge", help);
            foreach (DatabaseOptions db in options.Databases)
            {
                Sample(family, value(db), Labels(db));
            }
        }

        Databases("pool_size", "Maximum number of server connections per pool of this database", db => db.PoolSize ?? options.DefaultPoolSize);
        Databases("max_connections", "Maximum number of server connections for this database (max_db_connections; 0 = no limit)", _ => options.MaxDbConnections);
        Databases("current_connections", "Current number of server connections for this database", db => snapshot.Servers.Count(s => s.Pool.Options == db));
        Databases("paused", "1 if this database is currently paused, else 0", db => proxy.Pools.IsPaused(db.Name) ? 1 : 0);
    }

    private void WriteProxyCounters(ProxyServer proxy)
    {
        Counter("fastpgproxy_cancel_requests_total", "CancelRequest packets read", proxy.CancelStats.Received);
        Family("fastpgproxy_cancels_total", "counter", "Cancels by outcome, as SHOW CANCELS counts them (timed_out: queries cancelled by query_timeout)");
        foreach ((string name, long count) in AdminConsole.CancelCounters(proxy.CancelStats))
        {
            if (name != "received")
            {
                Sample("fastpgproxy_cancels_total", count, ("outcome", name));
            }
        }

        PeerLink[] peers = proxy.Peers.All.OrderBy(p => p.Options.Id).ToArray();
        void Peers(string name, string type, string help, Func<PeerLink, double> value)
        {
            Family(name, type, help);
            foreach (PeerLink peer in peers)
            {
                Sample(name, value(peer), ("peer", peer.Options.Id.ToString(CultureInfo.InvariantCulture)));
            }
        }

        Peers("fastpgproxy_peer_cancels_forwarded_total", "counter", "Cancels forwarded to this peer and acknowledged", p => p.Forwarded);
        Peers("fastpgproxy_peer_cancels_received_total", "counter", "Cancels this peer forwarded here", p => p.Received);
        Peers("fastpgproxy_peer_cancels_unreachable_total", "counter", "Cancels for this peer that could not be delivered", p => p.Unreachable);
        Peers("fastpgproxy_peer_cancels_busy_total", "counter", "Cancels for this peer dropped because its forwarding slots were all taken", p => p.Busy);
        Peers("fastpgproxy_peer_signals_forwarded_total", "counter", "pg_cancel_backend, pg_terminate_backend and KILL signals sent to this peer", p => p.SignalsForwarded);
        Peers("fastpgproxy_peer_signals_received_total", "counter", "Signals this peer sent here", p => p.SignalsReceived);
        Peers("fastpgproxy_peer_signals_failed_total", "counter", "Signals for this peer that got no answer", p => p.SignalsFailed);
        Peers("fastpgproxy_peer_in_flight", "gauge", "Cancels and signals being forwarded to this peer now", p => p.InFlight);

        Counter("fastpgproxy_logins_failed_total", "Client logins refused for a wrong password", proxy.Stats.LoginsFailed);
        Counter("fastpgproxy_sessions_opened_total", "Client sessions that completed login", proxy.Stats.SessionsOpened);
        Counter("fastpgproxy_refused_connections_total", "Connections refused over max_login_clients", proxy.Admission.Refused);
        Gauge("fastpgproxy_client_connections", "Client connections open, logged in or not", proxy.Admission.Connections);
        Gauge("fastpgproxy_connections_logging_in", "Client connections that have not finished logging in", proxy.Admission.LoggingIn);
    }

    private void Gauge(string name, string help, double value)
    {
        Family(name, "gauge", help);
        Sample(name, value);
    }

    private void Counter(string name, string help, double value)
    {
        Family(name, "counter", help);
        Sample(name, value);
    }

    /// <summary>Writes the HELP and TYPE lines of a family; each family once.</summary>
    private void Family(string name, string type, string help)
    {
        bool added = _families.Add(name);
        Debug.Assert(added, $"metric family {name} written twice");
        _text.Append("# HELP ").Append(name).Append(' ').Append(EscapeHelp(help)).Append('\n');
        _text.Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');
    }

    private void Sample(string name, double value, params (string Name, string Value)[] labels)
    {
        Debug.Assert(_families.Contains(name), $"sample of {name} before its HELP and TYPE");
        _text.Append(name);
        if (labels.Length > 0)
        {
            _text.Append('{');
            for (int i = 0; i < labels.Length; i++)
            {
                if (i > 0)
                {
                    _text.Append(',');
                }

                _text.Append(labels[i].Name).Append("=\"").Append(EscapeLabel(labels[i].Value)).Append('"');
            }

            _text.Append('}');
        }

        _text.Append(' ').Append(FormatValue(value)).Append('\n');
    }

    /// <summary>A sample value: integers without a fraction, NaN and infinities as the format spells them.</summary>
    public static string FormatValue(double value) => value switch
    {
        double.NaN => "NaN",
        double.PositiveInfinity => "+Inf",
        double.NegativeInfinity => "-Inf",
        _ => value.ToString("R", CultureInfo.InvariantCulture),
    };

    /// <summary>A label value with backslash, double quote and line feed escaped, as the text format requires.</summary>
    public static string EscapeLabel(string value)
    {
        if (value.AsSpan().IndexOfAny("\\\"\n") < 0)
        {
            return value;
        }

        return value.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\"", "\\\"", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);
    }

    /// <summary>HELP text with backslash and line feed escaped.</summary>
    private static string EscapeHelp(string value) =>
        value.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);
}
