using System.Diagnostics;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Net;
using FastPgProxy.Pooling;
using FastPgProxy.Sessions;

namespace FastPgProxy.Admin;

/// <summary>A client session as SHOW CLIENTS lists it.</summary>
internal sealed record ClientRow(
    int Id,
    string User,
    string Database,
    string State,
    string? Address,
    int? Port,
    DateTime ConnectTime,
    DateTime? RequestTime,
    long WaitMicros,
    int? BackendPid,
    string ApplicationName,
    long? QueryMilliseconds,
    ServerPool? Pool,
    string? TlsVersion,
    string? TlsCipher);

/// <summary>A backend connection as SHOW SERVERS lists it.</summary>
internal sealed record ServerRow(
    int Id,
    string User,
    string Database,
    string State,
    string Address,
    int Port,
    DateTime ConnectTime,
    int? BackendPid,
    int? ClientId,
    int PendingCancels,
    ServerPool Pool,
    bool Tls);

/// <summary>A pool's own state and counters, copied on its loop.</summary>
internal sealed record PoolRow(
    ServerPool Pool,
    string Database,
    string User,
    PoolMode Mode,
    bool Paused,
    long MaxWaitMicros,
    int CancelsWaiting,
    int CancelConnections,
    long Transactions,
    long Queries,
    long BytesReceived,
    long BytesSent,
    long TransactionMicros,
    long QueryMicros,
    long WaitMicros,
    long ServerAssignments,
    PoolTotals Period,
    long PeriodTicks);

/// <summary>
/// A pool with its clients and backends counted by state, as SHOW POOLS lists it (cl_* and sv_* columns).
/// </summary>
internal sealed record PoolCounts(
    PoolRow Row,
    long ClientsActive,
    long ClientsWaiting,
    long ClientCancels,
    long ServersActive,
    long ServersIdle,
    long ServersUsed,
    long ServersLogin,
    long ServersBeingCanceled);

/// <summary>
/// One client database's traffic as SHOW STATS lists it: totals since its pools were created, and averages
/// over stats_period (per second for counts and bytes, microseconds per query, transaction or assignment
/// for times), computed as PgBouncer's stats.c does from the last completed period to now.
/// </summary>
internal sealed record DatabaseStats(
    string Database,
    long ServerAssignments,
    long Transactions,
    long Queries,
    long BytesReceived,
    long BytesSent,
    long TransactionMicros,
    long QueryMicros,
    long WaitMicros,
    long AvgServerAssignments,
    long AvgTransactions,
    long AvgQueries,
    long AvgReceived,
    long AvgSent,
    long AvgTransactionMicros,
    long AvgQueryMicros,
    long AvgWaitMicros);

/// <summary>
/// What the proxy looks like at one moment, collected without locks: one work item per loop, posted to it,
/// copies the state of the sessions and pools that loop owns (so nothing is read while its owner changes
/// it), and the parts are merged on the thread pool.
/// </summary>
internal sealed class AdminSnapshot
{
    /// <summary>How long the console waits for every loop to answer.</summary>
    public static readonly TimeSpan CollectTimeout = TimeSpan.FromSeconds(5);

    /// <summary>Client sessions, by id.</summary>
    public List<ClientRow> Clients { get; } = new();

    /// <summary>Backends of every pool.</summary>
    public List<ServerRow> Servers { get; } = new();

    /// <summary>Every pool.</summary>
    public List<PoolRow> Pools { get; } = new();

    /// <summary>Collects the snapshot from every loop of <paramref name="proxy"/>.</summary>
    public static async Task<AdminSnapshot> CollectAsync(ProxyServer proxy)
    {
        ClientSession[] sessions = proxy.Sessions.Snapshot();
        ServerPool[] pools = proxy.Pools.Pools.ToArray();
        var parts = new List<Task<AdminSnapshot>>();
        foreach (EventLoop loop in proxy.Loops.Loops)
        {
            parts.Add(RunOnLoopAsync(loop, () => Take(loop, sessions, pools)));
        }

        AdminSnapshot[] taken = await Task.WhenAll(parts).WaitAsync(CollectTimeout).ConfigureAwait(false);
        var merged = new AdminSnapshot();
        var seen = new HashSet<int>();
        foreach (AdminSnapshot part in taken)
        {
            // A session that moved to its pool's loop between two parts may appear in both.
            merged.Clients.AddRange(part.Clients.Where(c => seen.Add(c.Id)));
            merged.Servers.AddRange(part.Servers);
            merged.Pools.AddRange(part.Pools);
        }

        // Session ids are random: clients are listed in the order they connected.
        merged.Clients.Sort((a, b) => a.ConnectTime != b.ConnectTime ? a.ConnectTime.CompareTo(b.ConnectTime) : a.Id.CompareTo(b.Id));
        merged.Servers.Sort((a, b) => a.Id.CompareTo(b.Id));
        merged.Pools.Sort((a, b) => (string.CompareOrdinal(a.Database, b.Database) is int c && c != 0) ? c : string.CompareOrdinal(a.User, b.User));
        return merged;
    }

    /// <summary>Runs <paramref name="work"/> on <paramref name="loop"/> and completes with its result on the thread pool.</summary>
    public static Task<T> RunOnLoopAsync<T>(EventLoop loop, Func<T> work)
    {
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        loop.Post(() =>
        {
            try
            {
                done.TrySetResult(work());
            }
            catch (Exception e)
            {
                done.TrySetException(e);
            }
        });
        return done.Task;
    }

    /// <summary>Copies what <paramref name="loop"/> owns; runs on that loop.</summary>
    private static AdminSnapshot Take(EventLoop loop, ClientSession[] sessions, ServerPool[] pools)
    {
        Debug.Assert(loop.InLoop);
        long now = Stopwatch.GetTimestamp();
        DateTime utcNow = DateTime.UtcNow;
        var part = new AdminSnapshot();
        var holders = new Dictionary<ServerConnection, ClientSession>();
        foreach (ClientSession session in sessions)
        {
            if (session.Loop != loop || session.State == SessionState.Closed)
            {
                continue;
            }

            ServerConnection? server = session.AttachedServer;
            if (server is not null)
            {
                holders[server] = session;
            }

            part.Clients.Add(new ClientRow(
                session.Id,
                session.User ?? "",
                session.Database ?? "",
                ClientState(session),
                session.RemoteEndPoint?.Address.ToString(),
                session.RemoteEndPoint?.Port,
                session.ConnectTime,
                session.LastRequest == 0 ? null : ToUtc(session.LastRequest, now, utcNow),
                !session.IsWaiting ? 0 : Micros(now - session.WaitStarted),
                server is { HasCancelKey: true } ? server.BackendPid : null,
                session.ApplicationName,
                session.RequestStarted == 0 ? null : (long)Stopwatch.GetElapsedTime(session.RequestStarted, now).TotalMilliseconds,
                session.Pool,
                session.TlsVersion,
                session.TlsCipher));
        }

        foreach (ServerPool pool in pools)
        {
            if (pool.Loop != loop)
            {
                continue;
            }

            foreach (ServerConnection server in pool.Servers)
            {
                ClientSession? holder = holders.GetValueOrDefault(server);
                string state = server.State switch
                {
                    ServerState.Connecting or ServerState.Login => "login",
                    _ when holder is not null => "active",
                    _ when pool.IsIdle(server) => "idle",
                    _ => "used",
                };
                part.Servers.Add(new ServerRow(
                    server.Id,
                    server.User,
                    pool.Database,
                    state,
                    pool.Options.Host,
                    pool.Options.Port,
                    ToUtc(server.CreatedAt, now, utcNow),
                    server.BackendPid == 0 ? null : server.BackendPid,
                    holder?.Id,
                    server.PendingCancels,
                    pool,
                    server.IsTls));
            }

            PoolStats stats = pool.Stats;
            PoolTotals totals = stats.Totals;
            long oldestWait = pool.OldestWaitStarted;
            part.Pools.Add(new PoolRow(
                pool,
                pool.Database,
                pool.User,
                pool.Mode,
                pool.Paused,
                oldestWait == 0 ? 0 : Micros(now - oldestWait),
                pool.CancelsWaiting,
                pool.CancelConnections,
                stats.Transactions,
                stats.Queries,
                stats.BytesReceived,
                stats.BytesSent,
                Micros(stats.TransactionTicks),
                Micros(stats.QueryTicks),
                Micros(stats.WaitTicks),
                stats.ServerAssignments,
                totals - stats.PeriodStart,
                now - stats.PeriodStartStamp));
        }

        return part;
    }

    /// <summary>Every pool with its clients and backends counted by state (SHOW POOLS, the metrics endpoint).</summary>
    public List<PoolCounts> CountPools()
    {
        var counts = new List<PoolCounts>(Pools.Count);
        foreach (PoolRow p in Pools)
        {
            long clientsActive = 0, clientsWaiting = 0;
            foreach (ClientRow c in Clients)
            {
                if (c.Pool == p.Pool)
                {
                    if (c.State == "waiting")
                    {
                        clientsWaiting++;
                    }
                    else if (c.State is "active" or "idle")
                    {
                        clientsActive++;
                    }
                }
            }

            long active = 0, idle = 0, used = 0, login = 0, canceling = 0, cancels = 0;
            foreach (ServerRow s in Servers)
            {
                if (s.Pool != p.Pool)
                {
                    continue;
                }

                switch (s.State)
                {
                    case "active":
                        active++;
                        break;
                    case "idle":
                        idle++;
                        break;
                    case "login":
                        login++;
                        break;
                    default:
                        used++;
                        break;
                }

                cancels += s.PendingCancels;
                if (s.PendingCancels > 0)
                {
                    canceling++;
                }
            }

            counts.Add(new PoolCounts(p, clientsActive, clientsWaiting, cancels, active, idle, used, login, canceling));
        }

        return counts;
    }

    /// <summary>
    /// Traffic per client database, its pools summed, ordered by name (SHOW STATS, SHOW STATS_TOTALS,
    /// SHOW STATS_AVERAGES, the metrics endpoint). Rates add up pool by pool (each pool's span starts when
    /// its own last period ended); times are divided by the counts of the same span.
    /// </summary>
    public List<DatabaseStats> StatsByDatabase()
    {
        var rows = new List<DatabaseStats>();
        foreach (IGrouping<string, PoolRow> db in Pools.GroupBy(p => p.Database).OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            double assignmentRate = 0, transactionRate = 0, queryRate = 0, receivedRate = 0, sentRate = 0;
            long assignments = 0, transactions = 0, queries = 0, transactionTicks = 0, queryTicks = 0, waitTicks = 0;
            foreach (PoolRow p in db)
            {
                PoolTotals d = p.Period;
                double seconds = (double)p.PeriodTicks / Stopwatch.Frequency;
                if (seconds > 0)
                {
                    assignmentRate += d.ServerAssignments / seconds;
                    transactionRate += d.Transactions / seconds;
                    queryRate += d.Queries / seconds;
                    receivedRate += d.BytesReceived / seconds;
                    sentRate += d.BytesSent / seconds;
                }

                assignments += d.ServerAssignments;
                transactions += d.Transactions;
                queries += d.Queries;
                transactionTicks += d.TransactionTicks;
                queryTicks += d.QueryTicks;
                waitTicks += d.WaitTicks;
            }

            rows.Add(new DatabaseStats(
                db.Key,
                db.Sum(p => p.ServerAssignments),
                db.Sum(p => p.Transactions),
                db.Sum(p => p.Queries),
                db.Sum(p => p.BytesReceived),
                db.Sum(p => p.BytesSent),
                db.Sum(p => p.TransactionMicros),
                db.Sum(p => p.QueryMicros),
                db.Sum(p => p.WaitMicros),
                (long)assignmentRate,
                (long)transactionRate,
                (long)queryRate,
                (long)receivedRate,
                (long)sentRate,
                transactions == 0 ? 0 : Micros(transactionTicks) / transactions,
                queries == 0 ? 0 : Micros(queryTicks) / queries,
                assignments == 0 ? 0 : Micros(waitTicks) / assignments));
        }

        return rows;
    }

    /// <summary>login, waiting (for a backend), active (a backend attached), idle (logged in, no backend), admin (a console session).</summary>
    private static string ClientState(ClientSession session)
    {
        if (session.State is SessionState.Startup or SessionState.Authenticating)
        {
            return "login";
        }

        if (session.IsAdminConsole)
        {
            return "admin";
        }

        if (session.IsWaiting || session.State == SessionState.ConnectingServer)
        {
            return "waiting";
        }

        return session.AttachedServer is null ? "idle" : "active";
    }

    /// <summary><see cref="Stopwatch"/> ticks to microseconds.</summary>
    public static long Micros(long ticks) => (long)(ticks * (1_000_000.0 / Stopwatch.Frequency));

    private static DateTime ToUtc(long timestamp, long now, DateTime utcNow) => utcNow - Stopwatch.GetElapsedTime(timestamp, now);
}
