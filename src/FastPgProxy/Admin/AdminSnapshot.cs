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
    long WaitMicros);

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
                Micros(stats.WaitTicks)));
        }

        return part;
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
