using System.Reflection;
using System.Text;
using FastPgProxy.Cancellation;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Net;

namespace FastPgProxy.Admin;

/// <content>The SHOW commands: their columns (known before they run, for Describe) and their rows.</content>
internal sealed partial class AdminConsole
{
    private static readonly AdminColumn[] s_clientColumns =
    [
        new("id", AdminType.Int4),
        new("user", AdminType.Text),
        new("database", AdminType.Text),
        new("state", AdminType.Text),
        new("addr", AdminType.Text),
        new("port", AdminType.Int4),
        new("connect_time", AdminType.TimestampTz),
        new("request_time", AdminType.TimestampTz),
        new("wait_us", AdminType.Int8),
        new("backend_pid", AdminType.Int4),
        new("tls", AdminType.Bool),
        new("tls_version", AdminType.Text),
        new("tls_cipher", AdminType.Text),
        new("application_name", AdminType.Text),
        new("query_ms", AdminType.Int8),
    ];

    private static readonly AdminColumn[] s_peerColumns =
    [
        new("peer_id", AdminType.Int4),
        new("host", AdminType.Text),
        new("port", AdminType.Int4),
        new("state", AdminType.Text),
        new("pool_size", AdminType.Int4),
        new("in_flight", AdminType.Int4),
        new("cancels_forwarded", AdminType.Int8),
        new("cancels_received", AdminType.Int8),
        new("unreachable", AdminType.Int8),
        new("busy", AdminType.Int8),
        new("signals_forwarded", AdminType.Int8),
        new("signals_received", AdminType.Int8),
        new("signals_failed", AdminType.Int8),
    ];

    private static readonly AdminColumn[] s_serverColumns =
    [
        new("id", AdminType.Int4),
        new("user", AdminType.Text),
        new("database", AdminType.Text),
        new("state", AdminType.Text),
        new("addr", AdminType.Text),
        new("port", AdminType.Int4),
        new("connect_time", AdminType.TimestampTz),
        new("backend_pid", AdminType.Int4),
        new("client_id", AdminType.Int4),
        new("being_canceled", AdminType.Bool),
        new("tls", AdminType.Bool),
    ];

    private static readonly AdminColumn[] s_poolColumns =
    [
        new("database", AdminType.Text),
        new("user", AdminType.Text),
        new("cl_active", AdminType.Int8),
        new("cl_waiting", AdminType.Int8),
        new("cl_cancel_req", AdminType.Int8),
        new("sv_active", AdminType.Int8),
        new("sv_idle", AdminType.Int8),
        new("sv_used", AdminType.Int8),
        new("sv_login", AdminType.Int8),
        new("sv_being_canceled", AdminType.Int8),
        new("sv_active_cancel", AdminType.Int8),
        new("cl_waiting_cancel_req", AdminType.Int8),
        new("maxwait_us", AdminType.Int8),
        new("pool_mode", AdminType.Text),
    ];

    // SHOW STATS is PgBouncer 1.25's without the prepared-statement columns; SHOW STATS_TOTALS and
    // SHOW STATS_AVERAGES are its two halves with PgBouncer's unprefixed names.
    private static readonly string[] s_statsNames = ["server_assignment_count", "xact_count", "query_count", "received", "sent", "xact_time", "query_time", "wait_time"];

    private static readonly AdminColumn[] s_statsColumns =
    [
        new("database", AdminType.Text),
        .. s_statsNames.Select(n => new AdminColumn("total_" + n, AdminType.Int8)),
        .. s_statsNames.Select(n => new AdminColumn("avg_" + (n == "received" ? "recv" : n), AdminType.Int8)),
    ];

    private static readonly AdminColumn[] s_statsPartColumns =
    [
        new("database", AdminType.Text),
        .. s_statsNames.Select(n => new AdminColumn(n is "received" or "sent" ? "bytes_" + n : n, AdminType.Int8)),
    ];

    private static readonly AdminColumn[] s_counterColumns = [new("name", AdminType.Text), new("count", AdminType.Int8)];

    private static readonly AdminColumn[] s_configColumns =
    [
        new("key", AdminType.Text),
        new("value", AdminType.Text),
        new("default", AdminType.Text),
        new("changeable", AdminType.Bool),
    ];

    private static readonly AdminColumn[] s_databaseColumns =
    [
        new("name", AdminType.Text),
        new("host", AdminType.Text),
        new("port", AdminType.Int4),
        new("dbname", AdminType.Text),
        new("force_user", AdminType.Text),
        new("pool_mode", AdminType.Text),
        new("pool_size", AdminType.Int4),
        new("paused", AdminType.Bool),
    ];

    private static readonly AdminColumn[] s_listColumns = [new("list", AdminType.Text), new("items", AdminType.Int8)];

    private static readonly AdminColumn[] s_memoryColumns = [new("name", AdminType.Text), new("value", AdminType.Int8)];

    private static readonly AdminColumn[] s_versionColumns = [new("version", AdminType.Text)];

    private static readonly PropertyInfo[] s_cancelCounters = typeof(CancelStats)
        .GetProperties(BindingFlags.Public | BindingFlags.Instance)
        .Where(p => p.PropertyType == typeof(long))
        .OrderBy(p => p.MetadataToken)
        .ToArray();

    /// <summary>The columns <paramref name="command"/> returns; empty for commands without rows. Known without running it.</summary>
    public static AdminColumn[] Columns(AdminCommand command) => command.Kind != AdminCommandKind.Show ? [] : command.Item switch
    {
        ShowItem.Clients => s_clientColumns,
        ShowItem.Servers => s_serverColumns,
        ShowItem.Pools => s_poolColumns,
        ShowItem.Stats => s_statsColumns,
        ShowItem.StatsTotals or ShowItem.StatsAverages => s_statsPartColumns,
        ShowItem.Cancels => s_counterColumns,
        ShowItem.Peers => s_peerColumns,
        ShowItem.Config => s_configColumns,
        ShowItem.Databases => s_databaseColumns,
        ShowItem.Lists => s_listColumns,
        ShowItem.Memory => s_memoryColumns,
        ShowItem.Version => s_versionColumns,
        _ => [],
    };

    /// <summary>The proxy's name and version, as SHOW VERSION reports it.</summary>
    public static string VersionString { get; } =
        "FastPgProxy " + (typeof(AdminConsole).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "0");

    private async Task<AdminResult> ShowAsync(ShowItem item)
    {
        AdminColumn[] columns = Columns(new AdminCommand(AdminCommandKind.Show, item));
        var result = new AdminResult { Columns = columns, Tag = "SHOW" };
        switch (item)
        {
            case ShowItem.Clients:
                foreach (ClientRow c in (await AdminSnapshot.CollectAsync(Proxy).ConfigureAwait(false)).Clients)
                {
                    result.Rows.Add([c.Id, c.User, c.Database, c.State, c.Address, c.Port, c.ConnectTime, c.RequestTime, c.WaitMicros, c.BackendPid, c.TlsVersion is not null, c.TlsVersion, c.TlsCipher, c.ApplicationName, c.QueryMilliseconds]);
                }

                break;
            case ShowItem.Servers:
                foreach (ServerRow s in (await AdminSnapshot.CollectAsync(Proxy).ConfigureAwait(false)).Servers)
                {
                    result.Rows.Add([s.Id, s.User, s.Database, s.State, s.Address, s.Port, s.ConnectTime, s.BackendPid, s.ClientId, s.PendingCancels > 0, s.Tls]);
                }

                break;
            case ShowItem.Pools:
                AddPoolRows(result, await AdminSnapshot.CollectAsync(Proxy).ConfigureAwait(false));
                break;
            case ShowItem.Stats or ShowItem.StatsTotals or ShowItem.StatsAverages:
                AddStatsRows(result, await AdminSnapshot.CollectAsync(Proxy).ConfigureAwait(false), item);
                break;
            case ShowItem.Lists:
                AddListRows(result, await AdminSnapshot.CollectAsync(Proxy).ConfigureAwait(false));
                break;
            case ShowItem.Peers:
                foreach (PeerLink peer in Proxy.Peers.All.OrderBy(p => p.Options.Id))
                {
                    result.Rows.Add([peer.Options.Id, peer.Options.Host, peer.Options.Port, peer.State, peer.Options.PoolSize ?? Proxy.Options.MaxCancelConnections, peer.InFlight, peer.Forwarded, peer.Received, peer.Unreachable, peer.Busy, peer.SignalsForwarded, peer.SignalsReceived, peer.SignalsFailed]);
                }

                break;
            case ShowItem.Cancels:
                foreach ((string name, long count) in CancelCounters(Proxy.CancelStats))
                {
                    result.Rows.Add([name, count]);
                }

                break;
            case ShowItem.Config:
                var defaults = new ProxyOptions();
                foreach (ConfigSetting setting in ConfigSetting.All)
                {
                    result.Rows.Add([setting.Key, setting.Get(Proxy.Options), setting.Get(defaults), setting.Changeable]);
                }

                break;
            case ShowItem.Databases:
                foreach (DatabaseOptions db in Proxy.Options.Databases)
                {
                    string? mode = db.PoolMode switch { PoolMode.Session => "session", PoolMode.Transaction => "transaction", _ => null };
                    result.Rows.Add([db.Name, db.Host, db.Port, db.DatabaseName, db.User, mode, db.PoolSize, Proxy.Pools.IsPaused(db.Name)]);
                }

                break;
            case ShowItem.Memory:
                AddMemoryRows(result);
                break;
            case ShowItem.Version:
                result.Rows.Add([VersionString]);
                break;
            case ShowItem.Help:
                result.Notices.Add(new AdminMessage(AdminSqlState.Success, "Console commands: " + AdminCommand.CommandList));
                break;
        }

        return result;
    }

    private static void AddPoolRows(AdminResult result, AdminSnapshot snapshot)
    {
        foreach (PoolCounts c in snapshot.CountPools())
        {
            PoolRow p = c.Row;
            result.Rows.Add([p.Database, p.User, c.ClientsActive, c.ClientsWaiting, c.ClientCancels, c.ServersActive, c.ServersIdle, c.ServersUsed, c.ServersLogin, c.ServersBeingCanceled, (long)p.CancelConnections, (long)p.CancelsWaiting, p.MaxWaitMicros, p.Mode == PoolMode.Session ? "session" : "transaction"]);
        }
    }

    private static void AddStatsRows(AdminResult result, AdminSnapshot snapshot, ShowItem item)
    {
        foreach (DatabaseStats d in snapshot.StatsByDatabase())
        {
            object?[] totals = [d.ServerAssignments, d.Transactions, d.Queries, d.BytesReceived, d.BytesSent, d.TransactionMicros, d.QueryMicros, d.WaitMicros];
            object?[] averages = [d.AvgServerAssignments, d.AvgTransactions, d.AvgQueries, d.AvgReceived, d.AvgSent, d.AvgTransactionMicros, d.AvgQueryMicros, d.AvgWaitMicros];
            result.Rows.Add(item switch
            {
                ShowItem.StatsTotals => [d.Database, .. totals],
                ShowItem.StatsAverages => [d.Database, .. averages],
                _ => [d.Database, .. totals, .. averages],
            });
        }
    }

    private void AddListRows(AdminResult result, AdminSnapshot snapshot)
    {
        void Add(string name, long items) => result.Rows.Add([name, items]);
        Add("databases", Proxy.Options.Databases.Count);
        Add("users", Proxy.Users?.Count ?? 0);
        Add("pools", snapshot.Pools.Count);
        Add("clients", snapshot.Clients.Count);
        Add("login_clients", snapshot.Clients.Count(c => c.State == "login"));
        Add("waiting_clients", snapshot.Clients.Count(c => c.State == "waiting"));
        Add("admin_clients", snapshot.Clients.Count(c => c.State == "admin"));
        Add("client_connections", Proxy.Admission.Connections);
        Add("connections_logging_in", Proxy.Admission.LoggingIn);
        Add("refused_connections", Proxy.Admission.Refused);
        Add("servers", snapshot.Servers.Count);
        Add("idle_servers", snapshot.Servers.Count(s => s.State == "idle"));
        Add("active_servers", snapshot.Servers.Count(s => s.State == "active"));
        Add("loops", Proxy.Loops.Loops.Count);
    }

    private void AddMemoryRows(AdminResult result)
    {
        void Add(string name, long value) => result.Rows.Add([name, value]);
        long inUse = 0, allocated = 0;
        foreach (EventLoop loop in Proxy.Loops.Loops)
        {
            inUse += loop.Buffers.InUse;
            allocated += loop.Buffers.Allocated;
        }

        GCMemoryInfo gc = GC.GetGCMemoryInfo();
        Add("gc_heap_bytes", gc.HeapSizeBytes);
        Add("gc_committed_bytes", gc.TotalCommittedBytes);
        Add("allocated_bytes", GC.GetTotalAllocatedBytes(precise: false));
        Add("gen0_collections", GC.CollectionCount(0));
        Add("gen1_collections", GC.CollectionCount(1));
        Add("gen2_collections", GC.CollectionCount(2));
        Add("buffer_size", ProxyServer.BufferSize);
        Add("buffers_in_use", inUse);
        Add("buffers_allocated", allocated);
        Add("buffer_bytes_in_use", inUse * ProxyServer.BufferSize);
        Add("client_statement_bytes", Proxy.Stats.ClientStatementBytes);
    }

    /// <summary>Every counter of <paramref name="stats"/> by its SHOW CANCELS name (<c>DroppedIdle</c> is <c>dropped_idle</c>), in declaration order.</summary>
    public static IEnumerable<(string Name, long Count)> CancelCounters(CancelStats stats) =>
        s_cancelCounters.Select(counter => (SnakeCase(counter.Name), (long)counter.GetValue(stats)!));

    /// <summary><c>DroppedIdle</c> → <c>dropped_idle</c>.</summary>
    private static string SnakeCase(string name)
    {
        var text = new StringBuilder(name.Length + 4);
        for (int i = 0; i < name.Length; i++)
        {
            if (char.IsUpper(name[i]) && i > 0)
            {
                text.Append('_');
            }

            text.Append(char.ToLowerInvariant(name[i]));
        }

        return text.ToString();
    }
}
