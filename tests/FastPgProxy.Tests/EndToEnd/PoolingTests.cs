using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using FastPgProxy.Config;
using FastPgProxy.Pooling;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// Backend pools end to end: transaction mode shares few backends among many clients without letting
/// one client's state reach another, session mode reuses a backend after server_reset_query, dead
/// backends are dropped, waiting clients are served in order and time out, and min_pool_size holds.
/// </summary>
/// <remarks>
/// Proxy clients log in as <see cref="PostgresServer.TrustUser"/>, and the test's own direct connections
/// as the superuser, so PostgreSQL's pg_stat_activity tells the proxy's backends apart. Backends a proxy
/// of an earlier test left behind are excluded by their start time.
/// </remarks>
[Collection(PostgresCollection.Name)]
public sealed class PoolingTests(PostgresFixture fixture)
{
    private const string User = PostgresServer.TrustUser;

    // pg_backend_pid() alone in a statement may be answered by the proxy; "+ 0" keeps it PostgreSQL's own.
    private const string RealBackendPid = "SELECT pg_backend_pid() + 0";

    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    private readonly PostgresServer _pg = fixture.Server;

    [Fact]
    public async Task Transaction_mode_shares_two_backends_among_fifty_clients_without_cross_talk()
    {
        const int clients = 50;
        const int transactions = 20;
        await _pg.ExecuteNonQueryAsync("DROP TABLE IF EXISTS pool_tx_rows; CREATE TABLE pool_tx_rows (client int, i int, v text); GRANT ALL ON pool_tx_rows TO PUBLIC");
        try
        {
            DateTime since = await ServerNowAsync();
            await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 2);

            using var done = new CancellationTokenSource();
            long mostBackends = 0;
            Task monitor = Task.Run(async () =>
            {
                while (!done.IsCancellationRequested)
                {
                    long now = await ProxyBackendsAsync(since);
                    InterlockedMax(ref mostBackends, now);
                    try
                    {
                        await Task.Delay(50, done.Token);
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }
                }
            });

            var workers = new List<Task>();
            for (int c = 0; c < clients; c++)
            {
                int client = c;
                workers.Add(Task.Run(async () =>
                {
                    await using NpgsqlConnection conn = await OpenAsync(proxy);
                    for (int i = 0; i < transactions; i++)
                    {
                        string value = $"{client}-{i}";
                        await using NpgsqlTransaction tx = await conn.BeginTransactionAsync();
                        await ExecuteAsync(conn, $"SET LOCAL fpp.v = '{value}'", tx);
                        Assert.Equal(value, await ScalarAsync<string>(conn, "SELECT current_setting('fpp.v')", tx));
                        await using (var insert = new NpgsqlCommand("INSERT INTO pool_tx_rows VALUES ($1, $2, current_setting('fpp.v'))", conn, tx))
                        {
                            insert.Parameters.AddWithValue(client);
                            insert.Parameters.AddWithValue(i);
                            Assert.Equal(1, await insert.ExecuteNonQueryAsync());
                        }

                        await tx.CommitAsync();
                    }
                }));
            }

            try
            {
                await Task.WhenAll(workers).WaitAsync(TimeSpan.FromSeconds(60));
            }
            finally
            {
                await done.CancelAsync();
                await monitor;
            }

            Assert.Equal((long)clients * transactions, await _pg.ScalarAsync<long>("SELECT count(*) FROM pool_tx_rows"));
            Assert.Equal(0L, await _pg.ScalarAsync<long>("SELECT count(*) FROM pool_tx_rows WHERE v IS DISTINCT FROM client || '-' || i"));
            Assert.Equal((long)clients * transactions, await _pg.ScalarAsync<long>("SELECT count(DISTINCT (client, i)) FROM pool_tx_rows"));
            long atEnd = await ProxyBackendsAsync(since);
            Assert.True(mostBackends is > 0 and <= 2, $"PostgreSQL showed up to {mostBackends} backends of the proxy during the run");
            Assert.True(atEnd is > 0 and <= 2, $"PostgreSQL shows {atEnd} backends of the proxy after the run");
        }
        finally
        {
            await _pg.ExecuteNonQueryAsync("DROP TABLE IF EXISTS pool_tx_rows");
        }
    }

    [Fact]
    public async Task Session_mode_reuses_the_backend_after_DISCARD_ALL()
    {
        await _pg.ExecuteNonQueryAsync("CREATE SCHEMA IF NOT EXISTS x");
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Session, poolSize: 1);
        string defaultTimeZone = (await _pg.ScalarAsync<string>("SHOW TimeZone"))!;
        Assert.NotEqual("Asia/Tokyo", defaultTimeZone);

        int pidA;
        await using (NpgsqlConnection a = await OpenAsync(proxy))
        {
            await ExecuteAsync(a, "SET application_name = 'a'");
            await ExecuteAsync(a, "SET search_path = x");
            await ExecuteAsync(a, "SET TimeZone = 'Asia/Tokyo'");
            Assert.Equal("x", await ScalarAsync<string>(a, "SHOW search_path"));
            pidA = await ScalarAsync<int>(a, RealBackendPid);
        }

        await using NpgsqlConnection b = await OpenAsync(proxy);
        Assert.Equal("\"$user\", public", await ScalarAsync<string>(b, "SHOW search_path"));
        Assert.Equal(defaultTimeZone, await ScalarAsync<string>(b, "SHOW TimeZone"));
        Assert.NotEqual("a", await ScalarAsync<string>(b, "SHOW application_name"));
        Assert.Equal(pidA, await ScalarAsync<int>(b, RealBackendPid));
        Assert.NotEqual("Asia/Tokyo", b.Timezone);
    }

    [Fact]
    public async Task Transaction_mode_keeps_each_clients_TimeZone_and_application_name_on_a_shared_backend()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 1);
        await using NpgsqlConnection a = await OpenAsync(proxy, applicationName: "client-a");
        await using NpgsqlConnection b = await OpenAsync(proxy, applicationName: "client-b");

        // Outside a transaction, so PostgreSQL reports it with ParameterStatus and the proxy keeps it for A.
        await ExecuteAsync(a, "SET TimeZone = 'Asia/Tokyo'");
        Assert.Equal("Asia/Tokyo", a.PostgresParameters["TimeZone"]);

        // Taking turns: every statement of A runs on the backend B used last, and the other way round.
        for (int i = 0; i < 10; i++)
        {
            Assert.NotEqual("Asia/Tokyo", await ScalarAsync<string>(b, "SHOW TimeZone"));
            Assert.Equal("client-b", await ScalarAsync<string>(b, "SHOW application_name"));
            Assert.Equal("Asia/Tokyo", await ScalarAsync<string>(a, "SHOW TimeZone"));
            Assert.Equal("client-b", await ScalarAsync<string>(b, "SHOW application_name"));
            Assert.Equal("client-a", await ScalarAsync<string>(a, "SHOW application_name"));
        }

        Assert.Equal(await ScalarAsync<int>(a, RealBackendPid), await ScalarAsync<int>(b, RealBackendPid));

        // At the same time, inside and outside transactions.
        async Task Run(NpgsqlConnection conn, bool isA)
        {
            for (int i = 0; i < 30; i++)
            {
                NpgsqlTransaction? tx = i % 3 == 0 ? await conn.BeginTransactionAsync() : null;
                string zone = (await ScalarAsync<string>(conn, "SHOW TimeZone", tx))!;
                string name = (await ScalarAsync<string>(conn, "SHOW application_name", tx))!;
                if (tx is not null)
                {
                    await tx.CommitAsync();
                    await tx.DisposeAsync();
                }

                if (isA)
                {
                    Assert.Equal("Asia/Tokyo", zone);
                    Assert.Equal("client-a", name);
                }
                else
                {
                    Assert.NotEqual("Asia/Tokyo", zone);
                    Assert.Equal("client-b", name);
                }
            }
        }

        await Task.WhenAll(Task.Run(() => Run(a, isA: true)), Task.Run(() => Run(b, isA: false))).WaitAsync(Patience);
    }

    [Fact]
    public async Task Backend_terminated_mid_transaction_fails_the_client_and_is_dropped_from_the_pool()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 1);
        int deadPid;
        await using (NpgsqlConnection victim = await OpenAsync(proxy))
        {
            await using NpgsqlTransaction tx = await victim.BeginTransactionAsync();
            deadPid = await ScalarAsync<int>(victim, RealBackendPid, tx);

            // With a timeout, pg_terminate_backend returns once the backend has exited.
            Assert.True(await _pg.ScalarAsync<bool>($"SELECT pg_terminate_backend({deadPid}, 10000)"));

            Exception e = await Assert.ThrowsAnyAsync<NpgsqlException>(() => ScalarAsync<int>(victim, "SELECT 1", tx).WaitAsync(Patience));
            if (e is PostgresException pg)
            {
                Assert.Equal("57P01", pg.SqlState);
            }
        }

        // Pool of one: the next client can only be served once the dead backend is gone.
        await using NpgsqlConnection next = await OpenAsync(proxy);
        int pid = await ScalarAsync<int>(next, RealBackendPid).WaitAsync(Patience);
        Assert.NotEqual(deadPid, pid);
        Assert.Equal(1, await ScalarAsync<int>(next, "SELECT 1").WaitAsync(Patience));
        Assert.Equal(1, Pool(proxy).Total);
    }

    [Fact]
    public async Task Idle_clients_run_their_next_transaction_at_once_after_a_PostgreSQL_restart()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 2);
        var clients = new List<NpgsqlConnection>();
        try
        {
            for (int i = 0; i < 4; i++)
            {
                NpgsqlConnection c = await OpenAsync(proxy);
                clients.Add(c);
                await RunTransactionAsync(c, i);
            }

            var pidsBefore = new HashSet<int>();
            foreach (NpgsqlConnection c in clients)
            {
                pidsBefore.Add(await ScalarAsync<int>(c, RealBackendPid));
            }

            try
            {
                _pg.Stop();
                _pg.StartAgain();
            }
            finally
            {
                await EnsurePostgresRunningAsync();
            }

            // No retry: the proxy must have dropped the backends PostgreSQL closed while they were idle.
            for (int i = 0; i < clients.Count; i++)
            {
                await RunTransactionAsync(clients[i], 100 + i).WaitAsync(Patience);
                Assert.DoesNotContain(await ScalarAsync<int>(clients[i], RealBackendPid), pidsBefore);
            }

            await using NpgsqlConnection fresh = await OpenAsync(proxy);
            await RunTransactionAsync(fresh, 200).WaitAsync(Patience);
            Assert.True(Pool(proxy).Total <= 2, $"the pool has {Pool(proxy).Total} backends");
        }
        finally
        {
            foreach (NpgsqlConnection c in clients)
            {
                await c.DisposeAsync();
            }

            await EnsurePostgresRunningAsync();
        }

        static async Task RunTransactionAsync(NpgsqlConnection c, int n)
        {
            await using NpgsqlTransaction tx = await c.BeginTransactionAsync();
            Assert.Equal(n, await ScalarAsync<int>(c, $"SELECT {n}", tx));
            await tx.CommitAsync();
        }
    }

    [Fact]
    public async Task Client_waiting_longer_than_query_wait_timeout_gets_an_error()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 1, o => o.QueryWaitTimeout = TimeSpan.FromSeconds(2));
        await using NpgsqlConnection holder = await OpenAsync(proxy);
        await using NpgsqlTransaction tx = await holder.BeginTransactionAsync();
        Assert.Equal(1, await ScalarAsync<int>(holder, "SELECT 1", tx));

        await using NpgsqlConnection waiter = await OpenAsync(proxy);
        var sw = Stopwatch.StartNew();
        NpgsqlException e = await Assert.ThrowsAnyAsync<NpgsqlException>(() => ScalarAsync<int>(waiter, "SELECT 2").WaitAsync(Patience));
        sw.Stop();
        Assert.Contains("query_wait_timeout", e.Message, StringComparison.Ordinal);
        Assert.True(sw.Elapsed >= TimeSpan.FromSeconds(1.5) && sw.Elapsed < TimeSpan.FromSeconds(10), $"the waiting client got its error after {sw.Elapsed}");

        Assert.Equal(3, await ScalarAsync<int>(holder, "SELECT 3", tx));
        await tx.CommitAsync();
        await using NpgsqlConnection next = await OpenAsync(proxy);
        Assert.Equal(4, await ScalarAsync<int>(next, "SELECT 4").WaitAsync(Patience));
    }

    [Fact]
    public async Task Waiting_clients_get_the_backend_in_arrival_order_without_spinning()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 1);
        await using NpgsqlConnection holder = await OpenAsync(proxy);
        await using NpgsqlTransaction tx = await holder.BeginTransactionAsync();
        Assert.Equal(1, await ScalarAsync<int>(holder, "SELECT 1", tx));
        ServerPool pool = Pool(proxy);

        string[] names = ["B", "C", "D"];
        var connections = new List<NpgsqlConnection>();
        var completed = new ConcurrentQueue<string>();
        var runs = new List<Task<DateTime>>();
        try
        {
            foreach (string name in names)
            {
                connections.Add(await OpenAsync(proxy));
            }

            for (int i = 0; i < names.Length; i++)
            {
                NpgsqlConnection c = connections[i];
                string name = names[i];
                runs.Add(Task.Run(async () =>
                {
                    // The server's clock says when PostgreSQL ran it; the sleep keeps the completions apart.
                    DateTime ranAt = await ScalarAsync<DateTime>(c, "SELECT clock_timestamp() FROM pg_sleep(0.1)");
                    completed.Enqueue(name);
                    return ranAt;
                }));
                await PollAsync(() => pool.WaitingCount == i + 1, $"{name} to queue for the backend (waiting: {pool.WaitingCount})");
            }

            // The holder keeps its transaction open for a second while three clients wait; nothing of the
            // proxy should run meanwhile.
            TimeSpan cpuBefore = ProxyThreadsCpu(out int loopThreads);
            var hold = Stopwatch.StartNew();
            await Task.Delay(TimeSpan.FromSeconds(1));
            TimeSpan cpu = ProxyThreadsCpu(out _) - cpuBefore;
            hold.Stop();
            Assert.True(loopThreads > 0, "no fpp-loop thread found in /proc/self/task");
            Assert.True(cpu < hold.Elapsed * 0.3, $"the proxy's threads used {cpu.TotalMilliseconds} ms of CPU in {hold.Elapsed.TotalMilliseconds} ms while clients waited");
            Assert.All(runs, r => Assert.False(r.IsCompleted, "a client ran while the backend was held"));
            Assert.Equal(3, pool.WaitingCount);

            await tx.CommitAsync();
            DateTime[] ranAt = await Task.WhenAll(runs).WaitAsync(Patience);
            Assert.Equal(names, completed.ToArray());
            Assert.True(ranAt[0] < ranAt[1] && ranAt[1] < ranAt[2], $"PostgreSQL ran them at {string.Join(", ", ranAt.Select(t => t.ToString("O", CultureInfo.InvariantCulture)))}");
        }
        finally
        {
            // The holder first: until its transaction ends, the queued clients cannot finish and close.
            await tx.DisposeAsync();
            await holder.DisposeAsync();
            foreach (NpgsqlConnection c in connections)
            {
                await c.DisposeAsync();
            }
        }
    }

    /// <remarks>
    /// With -M prepared, pgbench (15 and 16) prepares a client's statements with the blocking PQprepare
    /// when that client starts its first transaction, while other clients of the same thread may already
    /// hold every backend inside their transactions. With two threads (ten clients each, four backends)
    /// the run only finishes when the proxy answers that Parse/Sync without a backend; with one thread
    /// per client it does not depend on that.
    /// </remarks>
    [Theory]
    [InlineData("simple", 2)]
    [InlineData("extended", 2)]
    [InlineData("prepared", 20)]
    [InlineData("prepared", 2)]
    public async Task Pgbench_through_transaction_mode_has_no_failed_transactions(string protocol, int threads)
    {
        const string database = "fpp_bench";
        string pgbench = _pg.ToolPath("pgbench");
        await _pg.ExecuteNonQueryAsync($"DROP DATABASE IF EXISTS {database} WITH (FORCE)");
        await _pg.ExecuteNonQueryAsync($"CREATE DATABASE {database}");
        try
        {
            var (initExit, initOut, initErr) = await ProcessRunner.RunAsync(pgbench, PgbenchArgs(_pg.Port, database, "-i", "-s", "1", "-q"), TimeSpan.FromSeconds(60), PgEnvironment());
            Assert.True(initExit == 0, $"pgbench -i exited with {initExit}: {initErr}{initOut}");

            await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 4);
            var (exit, stdout, stderr) = await ProcessRunner.RunAsync(
                pgbench,
                PgbenchArgs(proxy.Port, database, "-c", "20", "-j", threads.ToString(CultureInfo.InvariantCulture), "-T", "5", "-n", "-M", protocol),
                TimeSpan.FromSeconds(40),
                PgEnvironment());
            Assert.True(exit == 0, $"pgbench -M {protocol} exited with {exit}: {stderr}{stdout}");
            Assert.Contains("number of failed transactions: 0 ", stdout, StringComparison.Ordinal);
            Assert.Contains("number of clients: 20", stdout, StringComparison.Ordinal);
        }
        finally
        {
            await _pg.ExecuteNonQueryAsync($"DROP DATABASE IF EXISTS {database} WITH (FORCE)");
        }
    }

    [Fact]
    public async Task Npgsql_auto_prepare_works_in_transaction_mode()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 2);
        var builder = new NpgsqlConnectionStringBuilder(proxy.ConnectionString(User)) { MaxAutoPrepare = 10, AutoPrepareMinUsages = 2 };
        var clients = Enumerable.Range(0, 10).Select(client => Task.Run(async () =>
        {
            await using var conn = new NpgsqlConnection(builder.ConnectionString);
            await conn.OpenAsync();
            for (int i = 0; i < 20; i++)
            {
                await using var cmd = new NpgsqlCommand("SELECT $1::int * 2 + $2::int", conn);
                cmd.Parameters.AddWithValue(i);
                cmd.Parameters.AddWithValue(client);
                Assert.Equal((i * 2) + client, await cmd.ExecuteScalarAsync());
            }
        }));

        await Task.WhenAll(clients).WaitAsync(Patience);
    }

    /// <summary>
    /// Prepared statements bound with parameters larger than a buffer (so the Bind streams through the
    /// proxy and only its head is renamed): ten clients on two backends, each statement prepared once and
    /// run on whichever backend the transaction lands on, re-prepared there when missing. Every result
    /// matches the client's own value.
    /// </summary>
    [Theory]
    [InlineData(32_600)]
    [InlineData(40_000)]
    [InlineData(1_000_000)]
    public async Task Prepared_statements_with_parameters_larger_than_a_buffer_work_in_transaction_mode(int size)
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 2);
        var clients = Enumerable.Range(0, 10).Select(client => Task.Run(async () =>
        {
            await using var conn = new NpgsqlConnection(proxy.ConnectionString(User));
            await conn.OpenAsync();
            await using var cmd = new NpgsqlCommand("SELECT length($1::text) || ':' || encode(sha256(convert_to($1::text, 'UTF8')), 'hex') || ':' || $2::int", conn);
            cmd.Parameters.Add(new NpgsqlParameter { NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Text });
            cmd.Parameters.Add(new NpgsqlParameter { NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Integer });
            await cmd.PrepareAsync();
            for (int i = 0; i < 4; i++)
            {
                string value = new((char)('a' + ((client + i) % 26)), size - i);
                cmd.Parameters[0].Value = value;
                cmd.Parameters[1].Value = client;
                string expected = $"{value.Length}:{Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(value)))}:{client}";
                Assert.Equal(expected, await cmd.ExecuteScalarAsync());
            }
        }));

        await Task.WhenAll(clients).WaitAsync(Patience);
    }

    /// <summary>
    /// Long statement text in transaction mode. Unnamed, it runs at any length (as a Query too). Prepared
    /// under a name, 20 KB is kept and prepared again on each backend that lacks it (two clients, one
    /// backend each turn); 40 KB is more than the proxy can keep, so the session is closed with 54000
    /// before the Parse reaches PostgreSQL, no statement is left on the backend, and the proxy serves on.
    /// </summary>
    [Theory]
    [InlineData(20_000)]
    [InlineData(40_000)]
    public async Task Long_statement_text_runs_unnamed_and_prepared_up_to_what_the_proxy_can_keep(int size)
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 1);
        string literal = new('x', size);
        string sql = $"SELECT length('{literal}') + $1::int";

        await using (var conn = new NpgsqlConnection(proxy.ConnectionString(User)))
        {
            await conn.OpenAsync();
            await using var cmd = new NpgsqlCommand(sql, conn);
            cmd.Parameters.AddWithValue(2);
            Assert.Equal(size + 2, await cmd.ExecuteScalarAsync());
            await using var query = new NpgsqlCommand($"SELECT length('{literal}')", conn);
            Assert.Equal(size, await query.ExecuteScalarAsync());
        }

        await using (var first = new NpgsqlConnection(proxy.ConnectionString(User)))
        await using (var second = new NpgsqlConnection(proxy.ConnectionString(User)))
        {
            await first.OpenAsync();
            await second.OpenAsync();
            await using var cmd = new NpgsqlCommand(sql, first);
            cmd.Parameters.AddWithValue(2);
            if (size < 30_000)
            {
                await cmd.PrepareAsync();
                await using var other = new NpgsqlCommand(sql, second);
                other.Parameters.AddWithValue(3);
                await other.PrepareAsync();
                for (int i = 0; i < 3; i++)
                {
                    Assert.Equal(size + 2, await cmd.ExecuteScalarAsync());
                    Assert.Equal(size + 3, await other.ExecuteScalarAsync());
                }
            }
            else
            {
                // The proxy sends FATAL 54000 and closes while the client may still be writing the
                // statement: the client then sees either the error or the connection reset.
                NpgsqlException e = await Assert.ThrowsAnyAsync<NpgsqlException>(() => cmd.PrepareAsync());
                if (e is PostgresException pg)
                {
                    Assert.Equal("54000", pg.SqlState);
                }
            }
        }

        await using var next = new NpgsqlConnection(proxy.ConnectionString(User));
        await next.OpenAsync();
        await using var check = new NpgsqlCommand("SELECT count(*) FROM pg_prepared_statements WHERE name NOT LIKE 'fpp%'", next);
        Assert.Equal(0L, await check.ExecuteScalarAsync());
    }

    /// <summary>
    /// Pool size 1: A sends a 40 KB simple Query (raw protocol: Npgsql always uses the extended one) that
    /// sleeps a second, B a small one. B must wait for A's query to end and get its own answer: a long
    /// Query keeps the backend until its ReadyForQuery.
    /// </summary>
    [Fact]
    public async Task A_query_longer_than_a_buffer_keeps_its_backend_until_it_ends()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 1);
        await using NpgsqlConnection b = await OpenAsync(proxy);
        await using (var warm = new NpgsqlCommand("SELECT 1", b))
        {
            await warm.ExecuteScalarAsync();
        }

        using CancelRaceTests.RawClient a = await CancelRaceTests.RawClient.ConnectAsync(proxy);
        string literal = new('y', 40_000);
        await a.SendQueryAsync($"SELECT length('{literal}') FROM pg_sleep(1)");
        await Task.Delay(200);
        await using var small = new NpgsqlCommand("SELECT 'b'", b);
        Assert.Equal("b", await small.ExecuteScalarAsync().WaitAsync(Patience));
        CancelRaceTests.Result resultA = await a.ReadResultAsync(Patience);
        Assert.Null(resultA.SqlState);
        Assert.Equal("40000", resultA.Value);
    }

    [Fact]
    public async Task Min_pool_size_backends_are_opened_and_kept_while_idle()
    {
        DateTime since = await ServerNowAsync();
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 4, o => o.MinPoolSize = 2);
        await using NpgsqlConnection c = await OpenAsync(proxy);
        var sw = Stopwatch.StartNew();
        ServerPool pool = Pool(proxy);
        long backends = 0;

        // PostgreSQL lists a backend from the moment it forks, so the pool's own count says when the
        // login is done too.
        while (sw.Elapsed < TimeSpan.FromSeconds(10) && ((backends = await ProxyBackendsAsync(since)) < 2 || pool.IdleCount < 2))
        {
            await Task.Delay(100);
        }

        Assert.True(backends == 2, $"{backends} backends of the proxy in pg_stat_activity {sw.Elapsed.TotalSeconds:0.0} s after the first login; min_pool_size is 2");
        Assert.Equal(2, pool.IdleCount);
        Assert.Equal(2, pool.Total);
        Assert.Equal(1, await ScalarAsync<int>(c, "SELECT 1"));
        Assert.Equal(2L, await ProxyBackendsAsync(since));
    }

    [Fact]
    public async Task Idle_backends_past_server_idle_timeout_close_down_to_min_pool_size_and_old_ones_are_replaced()
    {
        DateTime since = await ServerNowAsync();
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 3, o =>
        {
            o.MinPoolSize = 1;
            o.ServerIdleTimeout = TimeSpan.FromSeconds(1);
        });
        var clients = new List<NpgsqlConnection>();
        try
        {
            // Three queries at once open three backends.
            for (int i = 0; i < 3; i++)
            {
                clients.Add(await OpenAsync(proxy));
            }

            await Task.WhenAll(clients.Select(c => ScalarAsync<int>(c, "SELECT 1 FROM pg_sleep(0.3)")));
            Assert.Equal(3L, await ProxyBackendsAsync(since));

            // Idle for over a second: the tick closes two, the most recently used one stays.
            var sw = Stopwatch.StartNew();
            while (sw.Elapsed < Patience && await ProxyBackendsAsync(since) > 1)
            {
                await Task.Delay(100);
            }

            Assert.Equal(1L, await ProxyBackendsAsync(since));
            Assert.Equal(1, await ScalarAsync<int>(clients[0], "SELECT 1"));
        }
        finally
        {
            foreach (NpgsqlConnection c in clients)
            {
                await c.DisposeAsync();
            }
        }
    }

    [Fact]
    public async Task A_backend_past_server_lifetime_is_closed_when_idle_and_the_next_query_gets_a_new_one()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 2, o => o.ServerLifetime = TimeSpan.FromSeconds(1));
        await using NpgsqlConnection c = await OpenAsync(proxy);
        int first = await ScalarAsync<int>(c, RealBackendPid);
        await Task.Delay(TimeSpan.FromSeconds(2.5));
        Assert.NotEqual(first, await ScalarAsync<int>(c, RealBackendPid));
    }

    [Fact]
    public async Task Backend_login_failure_reaches_the_client_with_PostgreSQLs_error()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Session, poolSize: 1, o =>
        {
            o.Databases.Clear();
            o.Databases.Add(ProxyHarness.Database(_pg, PostgresServer.Md5User, "wrong"));
        });

        // Every client waiting for the pool gets an answer, not only the first.
        var attempts = Enumerable.Range(0, 3).Select(_ => Task.Run(async () =>
        {
            PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => OpenAsync(proxy).WaitAsync(Patience));
            Assert.Equal(PostgresErrorCodes.InvalidPassword, e.SqlState);
            Assert.Contains(PostgresServer.Md5User, e.MessageText, StringComparison.Ordinal);
        }));
        await Task.WhenAll(attempts);
    }

    [Fact]
    public async Task Stopping_the_proxy_closes_its_pooled_backends()
    {
        DateTime since = await ServerNowAsync();
        ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 2);
        try
        {
            await using (NpgsqlConnection c = await OpenAsync(proxy))
            {
                Assert.Equal(1, await ScalarAsync<int>(c, "SELECT 1"));
            }

            Assert.Equal(1L, await ProxyBackendsAsync(since));
        }
        finally
        {
            await proxy.DisposeAsync();
        }

        long left = 0;
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < TimeSpan.FromSeconds(10) && (left = await ProxyBackendsAsync(since)) > 0)
        {
            await Task.Delay(100);
        }

        Assert.True(left == 0, $"{left} backends of the stopped proxy are still connected to PostgreSQL");
    }

    private static async Task<NpgsqlConnection> OpenAsync(ProxyHarness proxy, string? applicationName = null)
    {
        var builder = new NpgsqlConnectionStringBuilder(proxy.ConnectionString(User)) { ApplicationName = applicationName };
        var connection = new NpgsqlConnection(builder.ConnectionString);
        try
        {
            await connection.OpenAsync();
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }

        return connection;
    }

    /// <summary>The pool of the (fpp, fpp_trust) pair, the one every test here uses.</summary>
    private static ServerPool Pool(ProxyHarness proxy) =>
        proxy.Server.Pools.Pools.Single(p => p.Database == PostgresServer.Database && p.User == User);

    private static async Task ExecuteAsync(NpgsqlConnection c, string sql, NpgsqlTransaction? tx = null)
    {
        await using var cmd = new NpgsqlCommand(sql, c, tx);
        await cmd.ExecuteNonQueryAsync();
    }

    private static async Task<T> ScalarAsync<T>(NpgsqlConnection c, string sql, NpgsqlTransaction? tx = null)
    {
        await using var cmd = new NpgsqlCommand(sql, c, tx);
        return (T)(await cmd.ExecuteScalarAsync())!;
    }

    private async Task<DateTime> ServerNowAsync() => await _pg.ScalarAsync<DateTime>("SELECT now()");

    /// <summary>Client backends of the proxy's user in database fpp that started at or after <paramref name="since"/>.</summary>
    private async Task<long> ProxyBackendsAsync(DateTime since)
    {
        await using var c = new NpgsqlConnection(_pg.ConnectionString());
        await c.OpenAsync();
        await using var cmd = new NpgsqlCommand(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = $2 AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND backend_start >= $3",
            c);
        cmd.Parameters.AddWithValue(PostgresServer.Database);
        cmd.Parameters.AddWithValue(User);
        cmd.Parameters.AddWithValue(since);
        return (long)(await cmd.ExecuteScalarAsync())!;
    }

    /// <summary>Starts the shared server again if a test left it stopped, so later tests find it running.</summary>
    private async Task EnsurePostgresRunningAsync()
    {
        try
        {
            await _pg.ScalarAsync<int>("SELECT 1");
        }
        catch (NpgsqlException)
        {
            _pg.StartAgain();
        }
    }

    private static async Task PollAsync(Func<bool> condition, string what)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(sw.Elapsed < Patience, $"timed out waiting for {what}");
            await Task.Delay(10);
        }
    }

    private static void InterlockedMax(ref long target, long value)
    {
        long current;
        while (value > (current = Volatile.Read(ref target)) && Interlocked.CompareExchange(ref target, value, current) != current)
        {
        }
    }

    /// <summary>
    /// CPU time used so far by the proxy's loop threads and the runtime's socket threads, from
    /// /proc/self/task/*/stat (utime and stime, in USER_HZ = 100 ticks a second).
    /// </summary>
    private static TimeSpan ProxyThreadsCpu(out int loopThreads)
    {
        long ticks = 0;
        loopThreads = 0;
        foreach (string task in Directory.GetDirectories("/proc/self/task"))
        {
            string comm, stat;
            try
            {
                comm = File.ReadAllText(Path.Combine(task, "comm")).Trim();
                stat = File.ReadAllText(Path.Combine(task, "stat"));
            }
            catch (IOException)
            {
                continue; // the thread exited
            }

            bool loop = comm.StartsWith("fpp-loop", StringComparison.Ordinal);
            if (!loop && !comm.StartsWith(".NET Sock", StringComparison.Ordinal))
            {
                continue;
            }

            loopThreads += loop ? 1 : 0;

            // Fields after "(comm) ": state is field 3, utime field 14, stime field 15.
            string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            ticks += long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
        }

        return TimeSpan.FromSeconds(ticks / 100.0);
    }

    private string[] PgbenchArgs(int port, string database, params string[] args) =>
        ["-h", _pg.Host, "-p", port.ToString(CultureInfo.InvariantCulture), "-U", PostgresServer.Superuser, .. args, database];

    private static Dictionary<string, string> PgEnvironment() => new() { ["PGPASSWORD"] = string.Empty, ["PGCONNECT_TIMEOUT"] = "10" };
}
