using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using FastPgProxy.Cancellation;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Pooling;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;
using Xunit.Abstractions;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// Cancels racing the pool in transaction mode: a cancel for one client must never reach the query of the
/// client that gets the backend next, a client waiting in the queue is answered 57014 without PostgreSQL,
/// and a storm of wrong keys cancels nothing and disturbs no one.
/// </summary>
/// <remarks>
/// Clients whose keys the test needs log in on raw sockets (<see cref="RawClient"/>): Npgsql keeps the
/// secret of its BackendKeyData to itself. Proxy clients log in as <see cref="PostgresServer.TrustUser"/>;
/// the test's own direct connections to PostgreSQL use the superuser.
/// </remarks>
[Collection(PostgresCollection.Name)]
public sealed class CancelRaceTests(PostgresFixture fixture, ITestOutputHelper output)
{
    internal const string User = PostgresServer.TrustUser;
    internal const string QueryCanceled = "57014";
    internal static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);

    private readonly PostgresServer _pg = fixture.Server;

    /// <summary>
    /// Pool size 1: A runs a long query, B waits for the backend, and 100 cancels for A arrive at once, then
    /// 100 more once A has its 57014. Thirty times over, A is cancelled and B's query never is.
    /// </summary>
    [Fact]
    public async Task Hundred_cancels_for_the_running_client_never_reach_the_queued_clients_query()
    {
        const int repetitions = 30;
        const int cancels = 100;

        // Up to twice 100 cancel connections at once, each counting as logging in until its packet is read.
        await using ProxyHarness proxy = StartProxy(poolSize: 1, o => o.MaxLoginClients = 2 * cancels);
        CancelStats stats = proxy.Server.CancelStats;
        using RawClient a = await RawClient.ConnectAsync(proxy);
        await using NpgsqlConnection b = await OpenAsync(proxy);
        Assert.Equal(1, await ScalarAsync<int>(b, "SELECT 1"));
        ServerPool pool = Pool(proxy);
        await using var observer = new NpgsqlConnection(_pg.ConnectionString());
        await observer.OpenAsync();

        var wrong = new List<string>();
        long forwarded = 0, droppedIdle = 0;
        var total = Stopwatch.StartNew();
        for (int rep = 0; rep < repetitions; rep++)
        {
            string marker = $"race-a-{rep:D2}";
            await a.SendQueryAsync($"SELECT pg_sleep(3) /* {marker} */");
            await WaitActiveAsync(observer, marker);

            await using var cmdB = new NpgsqlCommand($"SELECT 'b' /* race-b-{rep:D2} */ FROM pg_sleep(0.5)", b);
            Task<object?> runB = cmdB.ExecuteScalarAsync();
            await PollAsync(() => pool.WaitingCount >= 1 || runB.IsCompleted, "B to wait for the only backend");
            Assert.False(runB.IsCompleted, $"rep {rep}: B finished while A held the only backend: {runB.Exception?.GetBaseException().Message}");

            Snapshot before = Snapshot.Of(stats);
            var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Task[] senders = Enumerable.Range(0, cancels)
                .Select(_ => Task.Run(async () =>
                {
                    await gate.Task;
                    await SendCancelAsync(proxy, a.ProcessId, a.SecretKey);
                }))
                .ToArray();
            gate.SetResult();

            Result resultA = await a.ReadResultAsync(Patience);
            if (resultA.SqlState != QueryCanceled)
            {
                wrong.Add($"rep {rep}: A ended with {resultA.SqlState ?? "success"} instead of 57014");
            }

            // A has its answer: a second wave, arriving while the backend cools or already runs B's query, must not reach B.
            Task[] late = Enumerable.Range(0, cancels).Select(_ => Task.Run(() => SendCancelAsync(proxy, a.ProcessId, a.SecretKey))).ToArray();

            try
            {
                object? valueB = await runB.WaitAsync(Patience);
                if (!Equals(valueB, "b"))
                {
                    wrong.Add($"rep {rep}: B returned {valueB}");
                }
            }
            catch (Exception e) when (e is NpgsqlException or OperationCanceledException or TimeoutException)
            {
                wrong.Add($"rep {rep}: B failed: {Describe(e)}");
            }

            await Task.WhenAll(senders.Concat(late)).WaitAsync(Patience);
            Snapshot delta = Snapshot.Of(stats) - before;
            forwarded += delta.Forwarded;
            droppedIdle += delta.DroppedIdle;
            Assert.True(delta.Received == 2 * cancels, $"rep {rep}: {delta}");
            Assert.True(delta.Failed == 0 && delta.WrongKey == 0 && delta.UnknownSession == 0 && delta.Malformed == 0, $"rep {rep}: {delta}");
            if (delta.Forwarded == 0)
            {
                wrong.Add($"rep {rep}: nothing forwarded: {delta}");
            }

            // Each cancel was forwarded (A's query still running as far as A's loop knew, which can include
            // the moment its last reply is on the way to A) or dropped; none failed or went astray.
            if (delta.Forwarded + delta.DroppedIdle != 2 * cancels)
            {
                wrong.Add($"rep {rep}: not every cancel was forwarded or dropped: {delta}");
            }

            // Every cancel has been decided (the proxy closed each cancel socket): A's next query is its own.
            Result next = await a.QueryAsync("SELECT 1", Patience);
            if (next.SqlState is not null)
            {
                wrong.Add($"rep {rep}: A's next query failed with {next.SqlState}");
            }

            if (wrong.Count > 5)
            {
                break;
            }
        }

        output.WriteLine($"{repetitions} repetitions of 2 x {cancels} cancels in {total.Elapsed.TotalSeconds:0.0} s: {forwarded} forwarded, {droppedIdle} dropped as idle");
        Assert.True(wrong.Count == 0, string.Join("\n", wrong));
        Assert.True(droppedIdle > 0, "no cancel ever arrived after A's query had ended: the late waves tested nothing");
    }

    /// <summary>
    /// Pool size 1: A runs SELECT 1 in a tight loop while cancels for it fire without pause, and B runs short
    /// queries on the same backend for five seconds. A may be cancelled; B never is.
    /// </summary>
    [Fact]
    public async Task Late_cancels_for_a_busy_client_never_cancel_the_other_clients_queries()
    {
        TimeSpan runFor = TimeSpan.FromSeconds(5);
        await using ProxyHarness proxy = StartProxy(poolSize: 1);
        CancelStats stats = proxy.Server.CancelStats;
        using RawClient a = await RawClient.ConnectAsync(proxy);
        await using NpgsqlConnection b = await OpenAsync(proxy);
        Assert.Equal(1, await ScalarAsync<int>(b, "SELECT 1"));
        Snapshot before = Snapshot.Of(stats);

        using var stop = new CancellationTokenSource();
        int queriesA = 0, cancelledA = 0, queriesB = 0;
        long cancelsSent = 0;
        var errorsA = new ConcurrentQueue<string>();
        var errorsB = new ConcurrentQueue<string>();

        Task loopA = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                Result r = await a.QueryAsync("SELECT 1 /* late-a */", Patience);
                queriesA++;
                if (r.SqlState == QueryCanceled)
                {
                    cancelledA++;
                }
                else if (r.SqlState is not null)
                {
                    errorsA.Enqueue(r.SqlState);
                }
            }
        });

        Task[] cancellers = Enumerable.Range(0, 4).Select(_ => Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                await SendCancelAsync(proxy, a.ProcessId, a.SecretKey);
                Interlocked.Increment(ref cancelsSent);
            }
        })).ToArray();

        Task loopB = Task.Run(async () =>
        {
            var sw = Stopwatch.StartNew();
            while (sw.Elapsed < runFor)
            {
                try
                {
                    await using var cmd = new NpgsqlCommand("SELECT pg_sleep(0.01) /* late-b */", b);
                    await cmd.ExecuteNonQueryAsync();
                    queriesB++;
                }
                catch (NpgsqlException e)
                {
                    errorsB.Enqueue(Describe(e));
                    if (errorsB.Count > 20 || b.State != System.Data.ConnectionState.Open)
                    {
                        return;
                    }
                }
            }
        });

        try
        {
            await loopB.WaitAsync(runFor + Patience);
        }
        finally
        {
            await stop.CancelAsync();
            await Task.WhenAll(cancellers.Append(loopA)).WaitAsync(Patience);
        }

        Snapshot delta = Snapshot.Of(stats) - before;
        output.WriteLine($"A: {queriesA} queries, {cancelledA} cancelled; B: {queriesB} queries, {errorsB.Count} errors; {cancelsSent} cancels sent: {delta}");
        Assert.True(errorsB.IsEmpty, $"B saw {errorsB.Count} errors in {queriesB + errorsB.Count} queries (first: {errorsB.FirstOrDefault()}); cancels: {delta}");
        Assert.True(errorsA.IsEmpty, $"A saw errors other than 57014: {string.Join(", ", errorsA)}");
        Assert.True(queriesB > 20, $"B ran only {queriesB} queries in {runFor}");
        Assert.Equal(cancelsSent, delta.Received);
        Assert.Equal(0, delta.Failed);
    }

    /// <summary>
    /// Pool size 1, A holds the backend in a transaction; B's queries wait in the queue and B cancels each:
    /// B gets 57014 at once from the proxy, PostgreSQL never sees the queries, and B carries on once A commits.
    /// </summary>
    [Fact]
    public async Task A_queued_client_cancelled_is_answered_57014_without_PostgreSQL_and_keeps_its_session()
    {
        await _pg.ExecuteNonQueryAsync("DROP TABLE IF EXISTS cancel_queued_trace; CREATE TABLE cancel_queued_trace (v text); GRANT ALL ON cancel_queued_trace TO PUBLIC");
        try
        {
            await using ProxyHarness proxy = StartProxy(poolSize: 1);
            CancelStats stats = proxy.Server.CancelStats;

            // Declared before A, so disposed after it: should an assertion fail while B waits, A's end frees the backend.
            await using NpgsqlConnection b = await OpenAsync(proxy);
            Assert.Equal(1, await ScalarAsync<int>(b, "SELECT 1"));
            await using NpgsqlConnection a = await OpenAsync(proxy);
            ServerPool pool = Pool(proxy);

            await using NpgsqlTransaction tx = await a.BeginTransactionAsync();
            Assert.Equal(1, await ScalarAsync<int>(a, "SELECT 1", tx));

            // PostgreSQL is watched all along for any sign of B's queries.
            using var stopWatching = new CancellationTokenSource();
            int sightings = 0;
            int looks = 0;
            await using var observer = new NpgsqlConnection(_pg.ConnectionString());
            await observer.OpenAsync();
            Task watcher = Task.Run(async () =>
            {
                await using var look = new NpgsqlCommand("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%queued' || '-b%' AND pid <> pg_backend_pid()", observer);
                while (!stopWatching.IsCancellationRequested)
                {
                    if ((long)(await look.ExecuteScalarAsync())! > 0)
                    {
                        Interlocked.Increment(ref sightings);
                    }

                    looks++;
                }
            });

            try
            {
                Snapshot before = Snapshot.Of(stats);
                var times = new List<TimeSpan>
                {
                    await CancelQueuedAsync(b, pool, "SELECT 1 /* queued-b select */"),
                    await CancelQueuedAsync(b, pool, "INSERT INTO cancel_queued_trace VALUES ('queued-b insert')"),
                };
                for (int i = 0; i < 8; i++)
                {
                    times.Add(await CancelQueuedAsync(b, pool, "SELECT 7 /* queued-b more */"));
                }

                Snapshot delta = Snapshot.Of(stats) - before;
                output.WriteLine($"queued cancels answered in {string.Join(", ", times.Select(t => $"{t.TotalMilliseconds:0}"))} ms: {delta}");
                Assert.True(times[0] < TimeSpan.FromSeconds(5), $"the queued SELECT was answered after {times[0]}");
                Assert.All(times, t => Assert.True(t < TimeSpan.FromSeconds(5), $"a queued query was answered after {t}"));
                Assert.Equal(times.Count, delta.Queued);
                Assert.Equal(0, delta.Forwarded);

                // A never noticed, and once it commits B has the backend for its next query.
                Assert.Equal(2, await ScalarAsync<int>(a, "SELECT 2", tx));
                await tx.CommitAsync();
                Assert.Equal(3, await ScalarAsync<int>(b, "SELECT 3").WaitAsync(Patience));
                Assert.Equal(4, await ScalarAsync<int>(b, "SELECT 4").WaitAsync(Patience));
            }
            finally
            {
                await stopWatching.CancelAsync();
                await watcher.WaitAsync(Patience);
            }

            Assert.True(sightings == 0, $"pg_stat_activity showed B's query {sightings} times in {looks} looks");
            Assert.True(looks > 0);
            Assert.Equal(0L, await _pg.ScalarAsync<long>("SELECT count(*) FROM cancel_queued_trace"));
        }
        finally
        {
            await _pg.ExecuteNonQueryAsync("DROP TABLE IF EXISTS cancel_queued_trace");
        }
    }

    /// <summary>
    /// B's query is larger than the proxy's receive buffer (the SQL text, or a parameter in Bind), so only
    /// its first part has been read when B, waiting in the queue, cancels it. The answer 57014 stands for
    /// the whole query: the rest of it must never reach PostgreSQL, and B's next query gets its own result.
    /// </summary>
    [Theory]
    [InlineData("text")]
    [InlineData("parameter")]
    public async Task A_queued_client_cancelled_while_its_large_query_is_half_read_never_runs_it(string big)
    {
        await _pg.ExecuteNonQueryAsync("DROP TABLE IF EXISTS cancel_big_trace; CREATE TABLE cancel_big_trace (v text); GRANT ALL ON cancel_big_trace TO PUBLIC");
        try
        {
            await using ProxyHarness proxy = StartProxy(poolSize: 1);
            await using NpgsqlConnection b = await OpenAsync(proxy);
            Assert.Equal(1, await ScalarAsync<int>(b, "SELECT 1"));
            await using NpgsqlConnection a = await OpenAsync(proxy);
            ServerPool pool = Pool(proxy);
            await using NpgsqlTransaction tx = await a.BeginTransactionAsync();
            Assert.Equal(1, await ScalarAsync<int>(a, "SELECT 1", tx));

            string payload = new('x', 4 * ProxyServer.BufferSize);
            await using var cmd = big == "text"
                ? new NpgsqlCommand($"INSERT INTO cancel_big_trace VALUES ('{payload}')", b)
                : new NpgsqlCommand("INSERT INTO cancel_big_trace VALUES ($1)", b) { Parameters = { new NpgsqlParameter { Value = payload } } };
            Task<int> running = cmd.ExecuteNonQueryAsync();
            await PollAsync(() => pool.WaitingCount == 1 || running.IsCompleted, "B to wait for the backend");
            await Task.Run(cmd.Cancel);
            Exception e = await Assert.ThrowsAnyAsync<Exception>(() => running.WaitAsync(Patience));
            output.WriteLine($"B's {big} INSERT: {Describe(e)}");
            Assert.Equal(QueryCanceled, Assert.IsType<PostgresException>(e is OperationCanceledException ? e.InnerException : e).SqlState);

            await tx.CommitAsync();
            string? next;
            try
            {
                next = Convert.ToString(await ScalarAsync<object>(b, "SELECT 'next'").WaitAsync(Patience), CultureInfo.InvariantCulture);
            }
            catch (Exception n) when (n is NpgsqlException or InvalidOperationException or InvalidCastException or TimeoutException)
            {
                next = Describe(n);
            }

            long rows = await _pg.ScalarAsync<long>("SELECT count(*) FROM cancel_big_trace");
            output.WriteLine($"B's next query: {next}; rows inserted: {rows}");
            Assert.Equal("next", next);
            Assert.Equal(0L, rows);
        }
        finally
        {
            await _pg.ExecuteNonQueryAsync("DROP TABLE IF EXISTS cancel_big_trace");
        }
    }

    /// <summary>
    /// A and B take turns on one backend with different parameters, so A's turn starts with the proxy
    /// setting A's client_encoding (LATIN1; the backend speaks B's UTF8). A superuser holds pg_conversion
    /// locked, so that SET waits on the lock, and A's cancel arrives while it waits. The cancel is A's, for
    /// the query A sent: A gets 57014, and its query never runs with B's client_encoding.
    /// </summary>
    [Fact]
    public async Task A_cancel_that_arrives_while_the_proxy_sets_the_clients_parameters_cancels_the_clients_query()
    {
        await using ProxyHarness proxy = StartProxy(poolSize: 1);
        CancelStats stats = proxy.Server.CancelStats;
        await using NpgsqlConnection b = await OpenAsync(proxy);
        Assert.Equal("UTF8", await ScalarAsync<string>(b, "SELECT current_setting('client_encoding')"));
        using RawClient a = await RawClient.ConnectAsync(proxy, "raw-a", ("client_encoding", "LATIN1"));

        // A's login applied LATIN1 to the backend (to learn how PostgreSQL reports it); B's turn sets it back.
        Assert.Equal("UTF8", await ScalarAsync<string>(b, "SELECT current_setting('client_encoding')"));

        // That SET left the LATIN1 conversion in the backend's catalog cache, and a cached lookup takes no
        // lock: an update of the conversion's row (its owner, and back) evicts it, so A's SET reads
        // pg_conversion again.
        await _pg.ExecuteNonQueryAsync(
            $"""
            DO $$ DECLARE c text; BEGIN
              SELECT conname INTO c FROM pg_conversion WHERE condefault
                AND conforencoding = pg_char_to_encoding('LATIN1') AND contoencoding = pg_char_to_encoding('UTF8');
              EXECUTE format('ALTER CONVERSION pg_catalog.%I OWNER TO {PostgresServer.OtherUser}', c);
              EXECUTE format('ALTER CONVERSION pg_catalog.%I OWNER TO {PostgresServer.Superuser}', c);
            END $$
            """);

        await using var locker = new NpgsqlConnection(_pg.ConnectionString());
        await locker.OpenAsync();
        await using NpgsqlTransaction lockTx = await locker.BeginTransactionAsync();
        await using (var lockCmd = new NpgsqlCommand("LOCK TABLE pg_catalog.pg_conversion IN ACCESS EXCLUSIVE MODE", locker, lockTx))
        {
            await lockCmd.ExecuteNonQueryAsync();
        }

        Result result;
        Snapshot before = Snapshot.Of(stats);
        try
        {
            await a.SendQueryAsync("SELECT current_setting('client_encoding') /* sync-a */");
            await using var observer = new NpgsqlConnection(_pg.ConnectionString());
            await observer.OpenAsync();
            await using var waiting = new NpgsqlCommand("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SET client_encoding%' AND wait_event_type = 'Lock'", observer);
            var sw = Stopwatch.StartNew();
            while ((long)(await waiting.ExecuteScalarAsync())! == 0)
            {
                Assert.True(sw.Elapsed < Patience, "the proxy's SET client_encoding never waited on the lock");
                await Task.Delay(10);
            }

            await SendCancelAsync(proxy, a.ProcessId, a.SecretKey);
        }
        finally
        {
            await lockTx.RollbackAsync();
        }

        result = await a.ReadResultAsync(Patience);
        Snapshot delta = Snapshot.Of(stats) - before;
        Result next = await a.QueryAsync("SELECT current_setting('client_encoding')", Patience);
        output.WriteLine($"A's query: {result.SqlState ?? "ran"} {result.Value}; A's next query: {next.SqlState} {next.Value}; {delta}");
        Assert.Equal(1, delta.Forwarded + delta.Queued);
        Assert.True(result.SqlState == QueryCanceled, $"A's cancelled query ran and saw client_encoding {result.Value}");
        Assert.Equal("LATIN1", next.Value);
    }

    /// <summary>
    /// With the bad-key limit off every packet goes through the session lookup and the key check; with the
    /// default limit (100 a minute) the source is blocked after the first hundred and the rest are dropped
    /// as rate-limited once their key has been found wrong.
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(100)]
    public async Task A_storm_of_wrong_keys_cancels_nothing_and_disturbs_no_query(int badKeyLimit)
    {
        const int storm = 20_000;
        const int senders = 8;
        await using ProxyHarness proxy = StartProxy(poolSize: 4, o => o.CancelBadKeyLimit = badKeyLimit);
        CancelStats stats = proxy.Server.CancelStats;
        var clients = new List<NpgsqlConnection>();
        using RawClient victim = await RawClient.ConnectAsync(proxy);
        try
        {
            for (int i = 0; i < 4; i++)
            {
                clients.Add(await OpenAsync(proxy));
            }

            // Ids nobody has: session ids are random, so these are checked to be free.
            int unknownBase = 1_500_000_000;
            for (int i = 0; i < storm; i++)
            {
                Assert.False(proxy.Server.Sessions.TryGet(unknownBase + i, out _));
            }

            Snapshot before = Snapshot.Of(stats);
            using var stop = new CancellationTokenSource();
            var queryErrors = new ConcurrentQueue<string>();
            long[] queries = new long[clients.Count + 1];

            Task[] loops = clients.Select((c, index) => Task.Run(async () =>
            {
                while (!stop.IsCancellationRequested)
                {
                    try
                    {
                        await using var cmd = new NpgsqlCommand("SELECT count(*) FROM generate_series(1, 100)", c);
                        Assert.Equal(100L, await cmd.ExecuteScalarAsync());
                        queries[index]++;
                    }
                    catch (NpgsqlException e)
                    {
                        queryErrors.Enqueue($"client {index}: {Describe(e)}");
                        if (c.State != System.Data.ConnectionState.Open)
                        {
                            return;
                        }
                    }
                }
            })).Append(Task.Run(async () =>
            {
                while (!stop.IsCancellationRequested)
                {
                    Result r = await victim.QueryAsync("SELECT pg_sleep(0.002)", Patience);
                    queries[^1]++;
                    if (r.SqlState is not null)
                    {
                        queryErrors.Enqueue($"raw victim: {r.SqlState}");
                    }
                }
            })).ToArray();

            int next = -1;
            var sw = Stopwatch.StartNew();
            Task[] storming = Enumerable.Range(0, senders).Select(_ => Task.Run(async () =>
            {
                int i;
                while ((i = Interlocked.Increment(ref next)) < storm)
                {
                    // Even packets: the victim's id with a key that is not its own; odd: an id nobody has.
                    if ((i & 1) == 0)
                    {
                        await SendCancelAsync(proxy, victim.ProcessId, victim.SecretKey ^ (i | 1));
                    }
                    else
                    {
                        await SendCancelAsync(proxy, unknownBase + i, i);
                    }
                }
            })).ToArray();

            try
            {
                await Task.WhenAll(storming).WaitAsync(TimeSpan.FromSeconds(60));
            }
            finally
            {
                sw.Stop();
                await stop.CancelAsync();
                await Task.WhenAll(loops).WaitAsync(Patience);
            }

            Snapshot delta = Snapshot.Of(stats) - before;
            long rateLimited = delta.RateLimited;
            output.WriteLine($"{storm} wrong cancels in {sw.Elapsed.TotalSeconds:0.0} s ({storm / sw.Elapsed.TotalSeconds:0}/s); queries per client: {string.Join(", ", queries)}; {delta}");
            Assert.True(queryErrors.IsEmpty, $"{queryErrors.Count} query errors, first: {queryErrors.FirstOrDefault()}");
            Assert.All(queries, q => Assert.True(q > 0, $"a client ran no query during the storm: {string.Join(", ", queries)}"));
            Assert.Equal(0, delta.Forwarded);
            Assert.Equal(0, delta.DroppedIdle);
            Assert.Equal(0, delta.Queued);
            Assert.Equal(0, delta.Malformed);
            Assert.Equal(storm, delta.Received);
            if (badKeyLimit == 0)
            {
                Assert.Equal(0, rateLimited);
                Assert.Equal(storm / 2, delta.WrongKey);
                Assert.Equal(storm / 2, delta.UnknownSession);
            }
            else
            {
                // Packets already past the block check when the limit trips are still counted as bad keys.
                Assert.Equal(storm, delta.WrongKey + delta.UnknownSession + rateLimited);
                Assert.InRange(delta.WrongKey + delta.UnknownSession, badKeyLimit + 1, badKeyLimit + senders);
            }
        }
        finally
        {
            foreach (NpgsqlConnection c in clients)
            {
                await c.DisposeAsync();
            }
        }
    }

    /// <summary>B sends <paramref name="sql"/> while the only backend is taken, waits in the queue, and cancels it.</summary>
    private static async Task<TimeSpan> CancelQueuedAsync(NpgsqlConnection b, ServerPool pool, string sql)
    {
        await using var cmd = new NpgsqlCommand(sql, b);
        Task<object?> running = cmd.ExecuteScalarAsync();
        await PollAsync(() => pool.WaitingCount == 1 || running.IsCompleted, "B to wait for the backend");
        Assert.False(running.IsCompleted, "B's query finished while the backend was taken");
        var sw = Stopwatch.StartNew();
        await Task.Run(cmd.Cancel);
        Exception e = await Assert.ThrowsAnyAsync<Exception>(() => running.WaitAsync(Patience));
        TimeSpan elapsed = sw.Elapsed;
        PostgresException pg = Assert.IsType<PostgresException>(e is OperationCanceledException ? e.InnerException : e);
        Assert.Equal(QueryCanceled, pg.SqlState);
        Assert.Equal(0, pool.WaitingCount);
        return elapsed;
    }

    private ProxyHarness StartProxy(int poolSize, Action<ProxyOptions>? configure = null) =>
        ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize, o =>
        {
            o.MaxClientConnections = 1000;
            configure?.Invoke(o);
        });

    private static async Task<NpgsqlConnection> OpenAsync(ProxyHarness proxy)
    {
        var connection = new NpgsqlConnection(proxy.ConnectionString(User));
        await connection.OpenAsync();
        return connection;
    }

    private static async Task<T> ScalarAsync<T>(NpgsqlConnection c, string sql, NpgsqlTransaction? tx = null)
    {
        await using var cmd = new NpgsqlCommand(sql, c, tx);
        return (T)(await cmd.ExecuteScalarAsync())!;
    }

    /// <summary>The pool of the (fpp, fpp_trust) pair, the one every test here uses.</summary>
    /// <summary>The pool of the test user in the test database.</summary>
    internal static ServerPool Pool(ProxyHarness proxy) =>
        proxy.Server.Pools.Pools.Single(p => p.Database == PostgresServer.Database && p.User == User);

    /// <summary>
    /// Sends one CancelRequest on its own connection, as libpq does, and waits for the proxy to close it:
    /// the proxy writes nothing, and closes once the cancel has been decided (and forwarded, if it was).
    /// </summary>
    internal static async Task SendCancelAsync(ProxyHarness proxy, int pid, int key)
    {
        using Socket socket = await proxy.ConnectRawAsync();
        await socket.SendAsync(RawProtocol.CancelRequest(pid, key));
        await AssertClosedSilentlyAsync(socket, $"the proxy kept a cancel connection for session {pid} open for {Patience}");
    }

    /// <summary>Waits for the proxy to close a cancel connection, which it does without writing anything on it.</summary>
    internal static async Task AssertClosedSilentlyAsync(Socket socket, string failure)
    {
        (byte[] data, bool closed) = await RawProtocol.ReadUntilCloseAsync(socket, Patience);
        Assert.True(closed, failure);
        Assert.Empty(data);
    }

    /// <summary>Waits until PostgreSQL runs a query containing <paramref name="marker"/>, watching from a connection of its own.</summary>
    internal static async Task WaitActiveAsync(PostgresServer pg, string marker)
    {
        await using var observer = new NpgsqlConnection(pg.ConnectionString());
        await observer.OpenAsync();
        await WaitActiveAsync(observer, marker);
    }

    /// <summary>Waits until PostgreSQL runs a query containing <paramref name="marker"/>.</summary>
    internal static async Task WaitActiveAsync(NpgsqlConnection observer, string marker)
    {
        await using var cmd = new NpgsqlCommand("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()", observer);
        cmd.Parameters.AddWithValue(marker);
        var sw = Stopwatch.StartNew();
        while ((long)(await cmd.ExecuteScalarAsync())! == 0)
        {
            Assert.True(sw.Elapsed < Patience, $"query '{marker}' did not start on PostgreSQL");
            await Task.Delay(5);
        }
    }

    internal static async Task PollAsync(Func<bool> condition, string what)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(sw.Elapsed < Patience, $"timed out waiting for {what}");
            await Task.Delay(5);
        }
    }

    internal static string Describe(Exception e) =>
        (e is OperationCanceledException && e.InnerException is not null ? e.InnerException : e) switch
        {
            PostgresException pg => $"{pg.SqlState} {pg.MessageText}",
            Exception other => $"{other.GetType().Name}: {other.Message}",
        };

    /// <summary>The CancelStats counters at one moment; subtracting two gives what happened in between.</summary>
    internal readonly record struct Snapshot(
        long Received, long Forwarded, long NoBackend, long WrongKey, long UnknownSession, long Malformed, long Failed, long DroppedIdle, long Queued, long TimedOut, long RateLimited, long WaitTimedOut)
    {
        public static Snapshot Of(CancelStats s) =>
            new(s.Received, s.Forwarded, s.NoBackend, s.WrongKey, s.UnknownSession, s.Malformed, s.Failed, s.DroppedIdle, s.Queued, s.TimedOut, s.RateLimited, s.WaitTimedOut);

        public static Snapshot operator -(Snapshot x, Snapshot y) =>
            new(x.Received - y.Received, x.Forwarded - y.Forwarded, x.NoBackend - y.NoBackend, x.WrongKey - y.WrongKey, x.UnknownSession - y.UnknownSession,
                x.Malformed - y.Malformed, x.Failed - y.Failed, x.DroppedIdle - y.DroppedIdle, x.Queued - y.Queued, x.TimedOut - y.TimedOut, x.RateLimited - y.RateLimited,
                x.WaitTimedOut - y.WaitTimedOut);
    }

    /// <summary>The outcome of one simple query: the SQLSTATE of its error (null when it succeeded) and the first column of its first row.</summary>
    internal readonly record struct Result(string? SqlState, string? Value);

    /// <summary>
    /// A client that logs in on a raw socket (trust, protocol 3.0), so the test holds the pid and secret
    /// of its BackendKeyData, and speaks the simple query protocol (protocol 55.2.2).
    /// </summary>
    internal sealed class RawClient : IDisposable
    {
        private readonly Socket _socket;

        private RawClient(Socket socket, int processId, int secretKey)
        {
            _socket = socket;
            ProcessId = processId;
            SecretKey = secretKey;
        }

        /// <summary>The proxy session id the client got in BackendKeyData.</summary>
        public int ProcessId { get; }

        /// <summary>The secret key the client got in BackendKeyData.</summary>
        public int SecretKey { get; }

        public static async Task<RawClient> ConnectAsync(ProxyHarness proxy, string applicationName = "raw", params (string Name, string Value)[] parameters)
        {
            Socket socket = await proxy.ConnectRawAsync();
            socket.NoDelay = true;
            await socket.SendAsync(RawProtocol.Startup([("user", User), ("database", PostgresServer.Database), ("application_name", applicationName), .. parameters]));
            int? pid = null;
            int key = 0;
            while (true)
            {
                (byte type, byte[] body) = await RawProtocol.ReadMessageAsync(socket, Patience)
                    ?? throw new InvalidOperationException("the proxy closed the connection during login");
                switch ((char)type)
                {
                    case 'K':
                        Assert.Equal(2 * sizeof(int), body.Length);
                        pid = BinaryPrimitives.ReadInt32BigEndian(body);
                        key = BinaryPrimitives.ReadInt32BigEndian(body.AsSpan(sizeof(int)));
                        break;
                    case 'E':
                        socket.Dispose();
                        throw new InvalidOperationException($"login failed: {ErrorField(body, 'C')} {ErrorField(body, 'M')}");
                    case 'Z':
                        Assert.True(pid.HasValue, "no BackendKeyData before ReadyForQuery");
                        return new RawClient(socket, pid.Value, key);
                }
            }
        }

        /// <summary>Sends a Query message.</summary>
        public Task SendQueryAsync(string sql) => SendAsync(Message('Q', [.. Encoding.UTF8.GetBytes(sql), 0]));

        /// <summary>Sends bytes as they are (hand-made messages).</summary>
        public async Task SendAsync(byte[] bytes) => await _socket.SendAsync(bytes);

        /// <summary>Reads one message within <paramref name="timeout"/>; throws when the proxy closes.</summary>
        public async Task<(byte Type, byte[] Body)> ReadMessageAsync(TimeSpan timeout) =>
            await RawProtocol.ReadMessageAsync(_socket, timeout) ?? throw new InvalidOperationException("the proxy closed the connection");

        /// <summary>A typed frontend message: type byte, int32 length counting itself, body.</summary>
        public static byte[] Message(char type, byte[] body)
        {
            var message = new byte[1 + sizeof(int) + body.Length];
            message[0] = (byte)type;
            BinaryPrimitives.WriteInt32BigEndian(message.AsSpan(1), sizeof(int) + body.Length);
            body.CopyTo(message, 1 + sizeof(int));
            return message;
        }

        /// <summary>Reads up to ReadyForQuery; the SQLSTATE of the first error, if any.</summary>
        public async Task<Result> ReadResultAsync(TimeSpan timeout)
        {
            string? sqlState = null;
            string? value = null;
            bool row = false;
            while (true)
            {
                (byte type, byte[] body) = await RawProtocol.ReadMessageAsync(_socket, timeout)
                    ?? throw new InvalidOperationException("the proxy closed the connection");
                switch ((char)type)
                {
                    case 'E':
                        sqlState ??= ErrorField(body, 'C') ?? "?";
                        break;
                    case 'D' when !row:
                        // DataRow: int16 column count, then int32 length and bytes per column (-1 is NULL).
                        row = true;
                        int length = BinaryPrimitives.ReadInt32BigEndian(body.AsSpan(sizeof(short)));
                        value = length < 0 ? null : Encoding.UTF8.GetString(body, sizeof(short) + sizeof(int), length);
                        break;
                    case 'Z':
                        return new Result(sqlState, value);
                }
            }
        }

        public async Task<Result> QueryAsync(string sql, TimeSpan timeout)
        {
            await SendQueryAsync(sql);
            return await ReadResultAsync(timeout);
        }

        /// <summary>Reads until the proxy closes the connection or <paramref name="timeout"/> passes.</summary>
        public Task<(byte[] Data, bool Closed)> ReadUntilCloseAsync(TimeSpan timeout) => RawProtocol.ReadUntilCloseAsync(_socket, timeout);

        public void Dispose() => _socket.Dispose();

        /// <summary>One field of an ErrorResponse body: code byte, then a C string, up to a zero byte.</summary>
        private static string? ErrorField(byte[] body, char code)
        {
            int p = 0;
            while (p < body.Length && body[p] != 0)
            {
                byte field = body[p++];
                int end = Array.IndexOf(body, (byte)0, p);
                if (end < 0)
                {
                    return null;
                }

                if (field == (byte)code)
                {
                    return Encoding.UTF8.GetString(body, p, end - p);
                }

                p = end + 1;
            }

            return null;
        }
    }
}
