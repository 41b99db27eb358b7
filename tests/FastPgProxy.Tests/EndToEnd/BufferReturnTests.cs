using System.Diagnostics;
using FastPgProxy.Config;
using FastPgProxy.Net;
using FastPgProxy.Pooling;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// Every rented buffer goes back to its loop's pool when PostgreSQL goes away under load: a backend
/// killed with SIGKILL (the postmaster then ends every backend and runs crash recovery, refusing logins
/// meanwhile) or a fast restart. Once the clients are gone and the idle backends are closed, the proxy
/// holds no buffer at all.
/// </summary>
/// <remarks>
/// Clients use distinct application names, so in transaction mode every backend they get first runs the
/// proxy's own SET (an internal query), as well as sleeping queries an outage catches running, and
/// transactions.
/// </remarks>
[Collection(PostgresCollection.Name)]
public sealed class BufferReturnTests(PostgresFixture fixture)
{
    private const string User = PostgresServer.TrustUser;
    private const int Clients = 12;
    private const int Rounds = 3;

    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    private readonly PostgresServer _pg = fixture.Server;

    /// <summary>How PostgreSQL goes away.</summary>
    public enum Outage
    {
        /// <summary>SIGKILL of a backend: crash recovery.</summary>
        KillBackend,

        /// <summary><c>pg_ctl restart -m fast</c>.</summary>
        Restart,
    }

    [Theory]
    [InlineData(false, false, Outage.KillBackend)]
    [InlineData(false, true, Outage.KillBackend)]
    [InlineData(true, false, Outage.KillBackend)]
    [InlineData(true, true, Outage.KillBackend)]
    [InlineData(false, false, Outage.Restart)]
    [InlineData(false, true, Outage.Restart)]
    [InlineData(true, false, Outage.Restart)]
    [InlineData(true, true, Outage.Restart)]
    public async Task Every_buffer_is_returned_after_PostgreSQL_goes_away_under_load(bool transactionMode, bool prepared, Outage outage)
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, transactionMode ? PoolMode.Transaction : PoolMode.Session, poolSize: 8);
        try
        {
            // The same load without an outage first: what it leaves behind is not the outage's doing.
            await RunLoadAsync(proxy, prepared, TimeSpan.FromSeconds(1), outage: null);
            Assert.Equal(0, await BuffersInUseOnceIdleAsync(proxy));

            await RunLoadAsync(proxy, prepared, TimeSpan.FromSeconds(1.5), outage);
            long inUse = await BuffersInUseOnceIdleAsync(proxy);
            Assert.True(inUse == 0, $"{inUse} buffers still in use once idle after {Rounds} outages ({outage}, transaction mode: {transactionMode}, prepared: {prepared})");
        }
        finally
        {
            await EnsurePostgresRunningAsync();
        }
    }

    /// <summary>
    /// Runs <see cref="Clients"/> clients; with an <paramref name="outage"/>, brings PostgreSQL down
    /// <see cref="Rounds"/> times, each time letting the clients run on for <paramref name="between"/>
    /// once it is back. The clients reconnect after every error and are all closed at the end.
    /// </summary>
    private async Task RunLoadAsync(ProxyHarness proxy, bool prepared, TimeSpan between, Outage? outage)
    {
        using var stop = new CancellationTokenSource();
        var workers = new List<Task>();
        for (int i = 0; i < Clients; i++)
        {
            int index = i;
            workers.Add(Task.Run(() => ClientLoopAsync(proxy, index, prepared, stop)));
        }

        try
        {
            await Task.Delay(between);
            for (int round = 0; outage is not null && round < Rounds; round++)
            {
                if (outage == Outage.KillBackend)
                {
                    _pg.KillBackend(await BusyProxyBackendAsync());
                }
                else
                {
                    _pg.Restart();
                }

                await WaitForPostgresAsync();
                await Task.Delay(between);
            }
        }
        finally
        {
            await stop.CancelAsync();
            await Task.WhenAll(workers).WaitAsync(Patience);
        }
    }

    /// <summary>
    /// One client: connects, then loops over short queries, pg_sleep (so outages catch queries running)
    /// and transactions; after any error it closes and connects again, until <paramref name="stop"/> is
    /// cancelled. Nothing is cancelled with it: a query under way finishes.
    /// </summary>
    private static async Task ClientLoopAsync(ProxyHarness proxy, int index, bool prepared, CancellationTokenSource stop)
    {
        string connectionString = new NpgsqlConnectionStringBuilder(proxy.ConnectionString(User)) { ApplicationName = $"client{index}" }.ConnectionString;
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await using var c = new NpgsqlConnection(connectionString);
                await c.OpenAsync();
                await using var select = new NpgsqlCommand("SELECT $1::int", c) { Parameters = { new() { Value = index } } };
                await using var sleep = new NpgsqlCommand("SELECT pg_sleep(0.2)", c);
                if (prepared)
                {
                    await select.PrepareAsync();
                    await sleep.PrepareAsync();
                }

                for (int n = 0; !stop.IsCancellationRequested; n++)
                {
                    switch ((index + n) % 4)
                    {
                        case 0:
                            await sleep.ExecuteNonQueryAsync();
                            break;
                        case 1:
                            await using (NpgsqlTransaction tx = await c.BeginTransactionAsync())
                            {
                                select.Transaction = tx;
                                await select.ExecuteScalarAsync();
                                await tx.CommitAsync();
                            }

                            select.Transaction = null;
                            break;
                        default:
                            await select.ExecuteScalarAsync();
                            break;
                    }
                }
            }
            catch (Exception e) when (e is NpgsqlException or InvalidOperationException or IOException or TimeoutException)
            {
                // PostgreSQL went away under this client: connect again.
                await Task.Delay(20, CancellationToken.None);
            }
        }
    }

    /// <summary>A backend of the proxy's user, one running a query when there is one.</summary>
    private async Task<int> BusyProxyBackendAsync()
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            int pid = await _pg.ScalarAsync<int>(
                $"SELECT pid FROM pg_stat_activity WHERE usename = '{User}' AND backend_type = 'client backend' ORDER BY (state = 'active') DESC, backend_start LIMIT 1");
            if (pid != 0)
            {
                return pid;
            }

            Assert.True(sw.Elapsed < Patience, "the proxy opened no backend to kill");
            await Task.Delay(20);
        }
    }

    /// <summary>Waits until PostgreSQL accepts logins again (crash recovery refuses them for a while).</summary>
    private async Task WaitForPostgresAsync()
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                await _pg.ScalarAsync<int>("SELECT 1");
                return;
            }
            catch (NpgsqlException) when (sw.Elapsed < Patience)
            {
                await Task.Delay(50);
            }
        }
    }

    /// <summary>
    /// Waits until no client is left and every pool is idle (nothing opening, waiting, cooling or
    /// cancelling, every backend idle), closes the idle backends, and returns the buffers still in use
    /// once that has settled. Closing them makes the figure exact: an idle backend whose zero-byte receive
    /// was woken without data (the runtime completes it on any readiness notification) holds a receive
    /// buffer until data comes; closed, it holds nothing.
    /// </summary>
    internal static async Task<long> BuffersInUseOnceIdleAsync(ProxyHarness proxy)
    {
        var sw = Stopwatch.StartNew();
        while (proxy.Server.Sessions.Count > 0 || !await OnPoolLoopsAsync(proxy, PoolIdle))
        {
            Assert.True(sw.Elapsed < Patience, $"the proxy did not go idle: {proxy.Server.Sessions.Count} sessions");
            await Task.Delay(50);
        }

        await OnPoolLoopsAsync(proxy, pool =>
        {
            pool.CloseIdle();
            return true;
        });

        // Closed sessions and backends return their buffers once their last socket operation completes.
        long inUse = BuffersInUse(proxy);
        sw.Restart();
        while ((inUse != 0 || !await OnPoolLoopsAsync(proxy, pool => pool.Total == 0)) && sw.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(50);
            inUse = BuffersInUse(proxy);
        }

        return inUse;
    }

    private static bool PoolIdle(ServerPool pool) =>
        pool.WaitingCount == 0 && pool.ConnectingCount == 0 && pool.CoolingCount == 0
        && pool.CancelConnections == 0 && pool.CancelsWaiting == 0 && pool.IdleCount == pool.Total;

    private static long BuffersInUse(ProxyHarness proxy)
    {
        long inUse = 0;
        foreach (EventLoop loop in proxy.Server.Loops.Loops)
        {
            inUse += loop.Buffers.InUse;
        }

        return inUse;
    }

    /// <summary>Runs <paramref name="action"/> on each pool's own loop; true when it was true for every pool.</summary>
    private static async Task<bool> OnPoolLoopsAsync(ProxyHarness proxy, Func<ServerPool, bool> action)
    {
        bool all = true;
        foreach (ServerPool pool in proxy.Server.Pools.Pools.ToArray())
        {
            var done = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            pool.Loop.Post(() => done.SetResult(action(pool)));
            all &= await done.Task.WaitAsync(Patience);
        }

        return all;
    }

    /// <summary>Starts the shared server again if a failure left it stopped, so later tests find it running.</summary>
    private async Task EnsurePostgresRunningAsync()
    {
        try
        {
            await _pg.ScalarAsync<int>("SELECT 1");
        }
        catch (NpgsqlException)
        {
            try
            {
                _pg.StartAgain();
            }
            catch (InvalidOperationException)
            {
                // Crash recovery still under way: it comes back by itself.
            }

            await WaitForPostgresAsync();
        }
    }
}
