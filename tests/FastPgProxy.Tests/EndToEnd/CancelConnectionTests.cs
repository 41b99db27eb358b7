using System.Diagnostics;
using System.Net.Sockets;
using FastPgProxy.Cancellation;
using FastPgProxy.Config;
using FastPgProxy.Pooling;
using FastPgProxy.Tests.Infrastructure;
using Xunit;
using Xunit.Abstractions;
using static FastPgProxy.Tests.EndToEnd.CancelRaceTests;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// Cancel connections to PostgreSQL count against the pool: cancels may go beyond pool_size by
/// max_cancel_connections, then wait; a waiting cancel holds back backend logins, is served when a slot
/// frees, and is dropped after cancel_wait_timeout. PostgreSQL's postmaster is suspended (SIGSTOP) to keep
/// cancel connections open: they wait in its listen queue while the running backends go on.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class CancelConnectionTests(PostgresFixture fixture, ITestOutputHelper output)
{
    private readonly PostgresServer _pg = fixture.Server;

    /// <summary>
    /// pool_size 2, max_cancel_connections 1: with A's backend busy, two cancel connections fill the pool's
    /// three slots. A third cancel waits, and B's query, which would otherwise open the pool's second
    /// backend, waits without a login. The waiting cancel is dropped after cancel_wait_timeout; another one
    /// waits in its place. Once PostgreSQL resumes, A is cancelled, the waiting cancel goes out (or is
    /// dropped, if A's query ended first) and B's query runs, never cancelled.
    /// </summary>
    [Fact]
    public async Task Cancels_beyond_the_bound_wait_ahead_of_logins_and_are_dropped_after_cancel_wait_timeout()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 2, o =>
        {
            o.MaxCancelConnections = 1;
            o.CancelWaitTimeout = TimeSpan.FromSeconds(2);
            o.CancelTimeout = TimeSpan.FromSeconds(60);
        });
        CancelStats stats = proxy.Server.CancelStats;
        using RawClient b = await RawClient.ConnectAsync(proxy, "cancel-slots-b");
        Assert.Null((await b.QueryAsync("SELECT 1", Patience)).SqlState);
        using RawClient a = await RawClient.ConnectAsync(proxy, "cancel-slots-a");
        ServerPool pool = Pool(proxy);
        Assert.Equal(1, pool.Total);

        await a.SendQueryAsync("SELECT pg_sleep(60) /* cancel-slots-a */");
        await WaitActiveAsync(_pg, "cancel-slots-a");
        Snapshot before = Snapshot.Of(stats);

        var cancels = new List<Socket>();
        try
        {
            _pg.FreezePostmaster();

            // One backend and two cancel connections: pool_size + max_cancel_connections.
            cancels.Add(await StartCancelAsync(proxy, a));
            cancels.Add(await StartCancelAsync(proxy, a));
            await PollAsync(() => pool.CancelConnections == 2, "two cancel connections");
            using Socket dropped = await StartCancelAsync(proxy, a);
            await PollAsync(() => pool.CancelsWaiting == 1, "the third cancel to wait");

            // B needs a backend; the pool has room for a second one but for the cancel connections.
            await b.SendQueryAsync("SELECT 'b' /* cancel-slots-b */");
            await PollAsync(() => pool.WaitingCount == 1, "B to wait for a backend");
            Assert.Equal(0, pool.ConnectingCount);
            Assert.Equal(1, pool.Total);

            // The waiting cancel is dropped after cancel_wait_timeout, its client connection closed.
            var sw = Stopwatch.StartNew();
            await AssertClosedSilentlyAsync(dropped, "the proxy kept a cancel that waited past cancel_wait_timeout");
            output.WriteLine($"the waiting cancel was dropped {sw.ElapsedMilliseconds} ms after the check began (cancel_wait_timeout 2 s, checked every second)");
            Assert.Equal(1, (Snapshot.Of(stats) - before).WaitTimedOut);
            Assert.Equal(0, pool.CancelsWaiting);
            Assert.Equal(0, pool.ConnectingCount);

            // Another one waits in its place, and is still waiting when PostgreSQL resumes.
            cancels.Add(await StartCancelAsync(proxy, a));
            await PollAsync(() => pool.CancelsWaiting == 1, "the fourth cancel to wait");
            Assert.Equal(1, pool.WaitingCount);
            Assert.Equal(0, pool.ConnectingCount);
        }
        finally
        {
            _pg.ThawPostmaster();
        }

        Result resultA = await a.ReadResultAsync(Patience);
        Result resultB = await b.ReadResultAsync(Patience);
        foreach (Socket cancel in cancels)
        {
            await AssertClosedSilentlyAsync(cancel, "a cancel connection stayed open after PostgreSQL resumed");
            cancel.Dispose();
        }

        await PollAsync(() => pool.CancelConnections == 0 && pool.CancelsWaiting == 0 && pool.CoolingCount == 0, "every cancel to be settled");
        Snapshot delta = Snapshot.Of(stats) - before;
        output.WriteLine($"A: {resultA.SqlState}; B: {resultB.SqlState ?? "ok"} {resultB.Value}; {delta}");
        Assert.Equal(QueryCanceled, resultA.SqlState);
        Assert.Null(resultB.SqlState);
        Assert.Equal("b", resultB.Value);
        Assert.Equal(4, delta.Received);
        Assert.Equal(1, delta.WaitTimedOut);
        Assert.Equal(0, delta.Failed);
        Assert.True(delta.Forwarded >= 2, $"the two cancel connections opened while PostgreSQL was suspended were not acknowledged: {delta}");
        Assert.Equal(3, delta.Forwarded + delta.DroppedIdle);

        // A keeps its session, and both clients are served on.
        Assert.Equal("1", (await a.QueryAsync("SELECT 1", Patience)).Value);
        Assert.Equal("2", (await b.QueryAsync("SELECT 2", Patience)).Value);
    }

    /// <summary>
    /// pool_size 1, max_cancel_connections 1, PostgreSQL's postmaster suspended: one cancel for A hangs in
    /// its listen queue and a second waits for a cancel connection. A's query (pg_sleep(2)) ends on its own
    /// meanwhile: the waiting cancel is dropped at once as meant for an ended request (not after
    /// cancel_wait_timeout, 30 s here), so it does not hold the backend.
    /// </summary>
    [Fact]
    public async Task A_waiting_cancel_whose_query_ends_is_dropped_at_once()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 1, o =>
        {
            o.MaxCancelConnections = 1;
            o.CancelWaitTimeout = TimeSpan.FromSeconds(30);
            o.CancelTimeout = TimeSpan.FromSeconds(60);
        });
        CancelStats stats = proxy.Server.CancelStats;
        using RawClient a = await RawClient.ConnectAsync(proxy, "cancel-ended-a");
        ServerPool pool = Pool(proxy);
        await a.SendQueryAsync("SELECT 'slept' FROM pg_sleep(2) /* cancel-ended-a */");
        await WaitActiveAsync(_pg, "cancel-ended-a");
        Snapshot before = Snapshot.Of(stats);

        var cancels = new List<Socket>();
        Result resultA;
        var sw = Stopwatch.StartNew();
        try
        {
            _pg.FreezePostmaster();
            cancels.Add(await StartCancelAsync(proxy, a));
            await PollAsync(() => pool.CancelConnections == 1, "the first cancel connection");
            cancels.Add(await StartCancelAsync(proxy, a));
            await PollAsync(() => pool.CancelsWaiting == 1, "the second cancel to wait");

            // The query ends by itself, its cancel still in PostgreSQL's listen queue.
            resultA = await a.ReadResultAsync(Patience);
            await PollAsync(() => pool.CancelsWaiting == 0, "the waiting cancel to be dropped");
            output.WriteLine($"A ended with {resultA.SqlState ?? "success"} {resultA.Value}; the waiting cancel was dropped {sw.ElapsedMilliseconds} ms after the freeze");
            Snapshot delta = Snapshot.Of(stats) - before;
            Assert.Equal(1, delta.DroppedIdle);
            Assert.Equal(0, delta.WaitTimedOut);
            Assert.Equal(1, pool.CoolingCount);
        }
        finally
        {
            _pg.ThawPostmaster();
        }

        Assert.Null(resultA.SqlState);
        Assert.Equal("slept", resultA.Value);
        foreach (Socket cancel in cancels)
        {
            await AssertClosedSilentlyAsync(cancel, "a cancel connection stayed open after PostgreSQL resumed");
            cancel.Dispose();
        }

        await PollAsync(() => pool.CancelConnections == 0 && pool.CoolingCount == 0, "the forwarded cancel to be settled");
        Assert.Equal(1, (Snapshot.Of(stats) - before).Forwarded);
        Assert.Equal("1", (await a.QueryAsync("SELECT 1", Patience)).Value);
    }

    /// <summary>
    /// cancel_timeout 1 s while PostgreSQL's postmaster is suspended: the cancel was sent but never
    /// confirmed, so PostgreSQL may act on it later. The backend is closed when A's query ends instead of
    /// serving another client, and the next query gets a new backend once PostgreSQL resumes.
    /// </summary>
    [Fact]
    public async Task A_backend_whose_cancel_was_never_confirmed_is_closed_not_reused()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 1, o => o.CancelTimeout = TimeSpan.FromSeconds(1));
        CancelStats stats = proxy.Server.CancelStats;
        using RawClient a = await RawClient.ConnectAsync(proxy, "cancel-unconfirmed-a");
        ServerPool pool = Pool(proxy);
        await a.SendQueryAsync("SELECT 'slept' FROM pg_sleep(3) /* cancel-unconfirmed-a */");
        await WaitActiveAsync(_pg, "cancel-unconfirmed-a");
        Snapshot before = Snapshot.Of(stats);

        Result resultA;
        try
        {
            _pg.FreezePostmaster();
            await SendCancelAsync(proxy, a.ProcessId, a.SecretKey);
            Assert.Equal(1, (Snapshot.Of(stats) - before).Failed);

            // The query ends by itself; its backend is closed rather than pooled.
            resultA = await a.ReadResultAsync(Patience);
            await PollAsync(() => pool.Total == 0, "the backend to be closed");
        }
        finally
        {
            _pg.ThawPostmaster();
        }

        Assert.Null(resultA.SqlState);
        Assert.Equal("slept", resultA.Value);
        Assert.Equal("1", (await a.QueryAsync("SELECT 1", Patience)).Value);
        Assert.Equal(1, pool.Total);
    }

    /// <summary>Opens a cancel connection for <paramref name="client"/> and sends its CancelRequest, leaving the connection open.</summary>
    private static async Task<Socket> StartCancelAsync(ProxyHarness proxy, RawClient client)
    {
        Socket socket = await proxy.ConnectRawAsync();
        await socket.SendAsync(RawProtocol.CancelRequest(client.ProcessId, client.SecretKey));
        return socket;
    }
}
