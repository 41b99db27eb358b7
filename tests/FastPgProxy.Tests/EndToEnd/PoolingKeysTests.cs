using System.Diagnostics;
using FastPgProxy.Config;
using FastPgProxy.Pooling;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// PgBouncer's pooling keys end to end: max_user_connections and the [users] section, the reserve pool,
/// server_check_query, connect_query, server_reset_query_always, server_round_robin and
/// application_name_add_host.
/// </summary>
/// <remarks>
/// Proxy clients log in as <see cref="PostgresServer.TrustUser"/> and the test's own direct connections as
/// the superuser, so pg_stat_activity tells the proxy's backends apart; backends an earlier test's proxy
/// left behind are excluded by their start time.
/// </remarks>
[Collection(PostgresCollection.Name)]
public sealed class PoolingKeysTests(PostgresFixture fixture)
{
    private const string User = PostgresServer.TrustUser;

    // pg_backend_pid() alone in a statement may be answered by the proxy; "+ 0" keeps it PostgreSQL's own.
    private const string RealBackendPid = "SELECT pg_backend_pid() + 0";

    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    private readonly PostgresServer _pg = fixture.Server;

    [Fact]
    public async Task Max_user_connections_holds_a_users_backends_across_databases_and_a_waiter_gets_an_idle_one_of_another_database()
    {
        DateTime since = await ServerNowAsync();
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 5, o => o.MaxUserConnections = 1);

        // The first login of a pool needs a backend: the second database's client waits for the first's
        // idle backend to be closed for it.
        await using NpgsqlConnection other = await OpenAsync(proxy, database: "postgres");
        await using NpgsqlConnection holder = await OpenAsync(proxy).WaitAsync(Patience);
        Assert.Equal(1L, await UserBackendsAsync(since));

        NpgsqlTransaction tx = await holder.BeginTransactionAsync();
        Assert.Equal(1, await ScalarAsync<int>(holder, "SELECT 1", tx));

        // Another database, same user: its pool has room, the user has none.
        Task<int> waiting = ScalarAsync<int>(other, "SELECT 2");
        await PollAsync(() => WaitingIn(proxy, "postgres") == 1, "the second database's client to wait");
        Assert.False(waiting.IsCompleted);
        Assert.Equal(1L, await UserBackendsAsync(since));
        Assert.Equal(1, proxy.Server.Pools.UserConnections(User));

        // The holder's backend goes idle in its own pool; it is closed for the waiting pool, which opens its own.
        await tx.CommitAsync();
        Assert.Equal(2, await waiting.WaitAsync(Patience));
        Assert.Equal(1L, await UserBackendsAsync(since));
        Assert.Equal(1, proxy.Server.Pools.UserConnections(User));
    }

    /// <summary>A [databases] entry's own max_db_connections wins over the global one (none here): its second client waits for the first's backend.</summary>
    [Fact]
    public async Task Max_db_connections_of_a_databases_entry_holds_its_backends()
    {
        DateTime since = await ServerNowAsync();
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 5, o =>
        {
            DatabaseOptions any = o.Databases[0];
            o.Databases[0] = new DatabaseOptions { Name = any.Name, Host = any.Host, Port = any.Port, MaxDbConnections = 1 };
        });
        await using NpgsqlConnection holder = await OpenAsync(proxy);
        await using NpgsqlConnection second = await OpenAsync(proxy);
        NpgsqlTransaction tx = await holder.BeginTransactionAsync();
        Assert.Equal(1, await ScalarAsync<int>(holder, "SELECT 1", tx));

        Task<int> waiting = ScalarAsync<int>(second, "SELECT 2");
        await PollAsync(() => WaitingIn(proxy, PostgresServer.Database) == 1, "the second client to wait");
        Assert.False(waiting.IsCompleted);
        Assert.Equal(1L, await ProxyBackendsAsync(since));

        await tx.CommitAsync();
        Assert.Equal(2, await waiting.WaitAsync(Patience));
        Assert.Equal(1L, await ProxyBackendsAsync(since));
    }

    [Fact]
    public async Task Max_user_connections_from_the_users_section_makes_the_extra_client_wait_until_query_wait_timeout()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 5, o =>
        {
            o.QueryWaitTimeout = TimeSpan.FromSeconds(2);
            o.Users.Add(User, new UserOptions { Name = User, MaxUserConnections = 1 });
        });

        await using NpgsqlConnection holder = await OpenAsync(proxy);
        await using NpgsqlTransaction tx = await holder.BeginTransactionAsync();
        Assert.Equal(1, await ScalarAsync<int>(holder, "SELECT 1", tx));

        await using NpgsqlConnection waiter = await OpenAsync(proxy);
        NpgsqlException e = await Assert.ThrowsAnyAsync<NpgsqlException>(() => ScalarAsync<int>(waiter, "SELECT 2").WaitAsync(Patience));
        Assert.Contains("query_wait_timeout", e.Message, StringComparison.Ordinal);
        Assert.Equal(1, proxy.Server.Pools.UserConnections(User));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task The_users_section_pool_mode_overrides_the_global_one(bool userTransaction)
    {
        PoolMode user = userTransaction ? PoolMode.Transaction : PoolMode.Session;
        PoolMode global = userTransaction ? PoolMode.Session : PoolMode.Transaction;
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, global, poolSize: 1, o =>
        {
            o.QueryWaitTimeout = TimeSpan.FromSeconds(2);
            o.Users.Add(User, new UserOptions { Name = User, PoolMode = user });
        });

        // With one backend, a second client runs its query only in transaction mode; in session mode the
        // first holds the backend and the second times out waiting.
        await using NpgsqlConnection first = await OpenAsync(proxy);
        Assert.Equal(1, await ScalarAsync<int>(first, "SELECT 1"));
        Assert.Equal(user, Pool(proxy).Mode);
        Task<int> second = Task.Run(async () =>
        {
            await using NpgsqlConnection c = await OpenAsync(proxy);
            return await ScalarAsync<int>(c, "SELECT 2");
        });

        if (user == PoolMode.Transaction)
        {
            Assert.Equal(2, await second.WaitAsync(Patience));
        }
        else
        {
            NpgsqlException e = await Assert.ThrowsAnyAsync<NpgsqlException>(() => second.WaitAsync(Patience));
            Assert.Contains("query_wait_timeout", e.Message, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData(1, "global")]
    [InlineData(1, "database")]
    [InlineData(1, "user")]
    [InlineData(0, "global")]
    public async Task A_client_waiting_past_reserve_pool_timeout_gets_a_reserve_backend(int reserve, string setAt)
    {
        DateTime since = await ServerNowAsync();
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 1, o =>
        {
            switch (setAt)
            {
                case "database":
                    o.Databases[0] = new DatabaseOptions { Name = "*", Host = _pg.Host, Port = _pg.Port, ReservePoolSize = reserve };
                    break;
                case "user":
                    o.Users.Add(User, new UserOptions { Name = User, ReservePoolSize = reserve });
                    break;
                default:
                    o.ReservePoolSize = reserve;
                    break;
            }

            o.ReservePoolTimeout = TimeSpan.FromMilliseconds(300);
            o.QueryWaitTimeout = TimeSpan.FromSeconds(3);
        });

        await using NpgsqlConnection holder = await OpenAsync(proxy);
        await using NpgsqlTransaction tx = await holder.BeginTransactionAsync();
        Assert.Equal(1, await ScalarAsync<int>(holder, "SELECT 1", tx));

        await using NpgsqlConnection waiter = await OpenAsync(proxy);
        if (reserve > 0)
        {
            Assert.Equal(2, await ScalarAsync<int>(waiter, "SELECT 2").WaitAsync(Patience));
            Assert.Equal(2L, await ProxyBackendsAsync(since));

            // The reserve is one backend: a third client waits for one of the two.
            await using NpgsqlConnection third = await OpenAsync(proxy);
            await using NpgsqlTransaction tx2 = await waiter.BeginTransactionAsync();
            Assert.Equal(3, await ScalarAsync<int>(waiter, "SELECT 3", tx2));
            NpgsqlException e = await Assert.ThrowsAnyAsync<NpgsqlException>(() => ScalarAsync<int>(third, "SELECT 4").WaitAsync(Patience));
            Assert.Contains("query_wait_timeout", e.Message, StringComparison.Ordinal);
            Assert.Equal(2L, await ProxyBackendsAsync(since));
        }
        else
        {
            NpgsqlException e = await Assert.ThrowsAnyAsync<NpgsqlException>(() => ScalarAsync<int>(waiter, "SELECT 2").WaitAsync(Patience));
            Assert.Contains("query_wait_timeout", e.Message, StringComparison.Ordinal);
            Assert.Equal(1L, await ProxyBackendsAsync(since));
        }
    }

    [Fact]
    public async Task A_backend_idle_past_server_check_delay_runs_server_check_query_before_a_client_gets_it()
    {
        await _pg.ExecuteNonQueryAsync("DROP TABLE IF EXISTS pool_checks; CREATE TABLE pool_checks (pid int); GRANT ALL ON pool_checks TO PUBLIC");
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 2, o =>
        {
            o.ServerCheckQuery = "INSERT INTO pool_checks VALUES (pg_backend_pid())";
            o.ServerCheckDelay = TimeSpan.Zero;
        });

        await using NpgsqlConnection c = await OpenAsync(proxy);
        int pid = await ScalarAsync<int>(c, RealBackendPid);
        long before = await _pg.ScalarAsync<long>($"SELECT count(*) FROM pool_checks WHERE pid = {pid}");

        // The backend goes idle after each transaction: the next one is checked first, on the same backend.
        Assert.Equal(pid, await ScalarAsync<int>(c, RealBackendPid));
        Assert.Equal(pid, await ScalarAsync<int>(c, RealBackendPid));
        Assert.Equal(before + 2, await _pg.ScalarAsync<long>($"SELECT count(*) FROM pool_checks WHERE pid = {pid}"));
        Assert.Equal(0L, await _pg.ScalarAsync<long>($"SELECT count(*) FROM pool_checks WHERE pid <> {pid}"));
    }

    [Fact]
    public async Task A_backend_idle_less_than_server_check_delay_is_handed_out_unchecked()
    {
        await _pg.ExecuteNonQueryAsync("DROP TABLE IF EXISTS pool_checks_fresh; CREATE TABLE pool_checks_fresh (pid int); GRANT ALL ON pool_checks_fresh TO PUBLIC");
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 2, o =>
        {
            o.ServerCheckQuery = "INSERT INTO pool_checks_fresh VALUES (pg_backend_pid())";
            o.ServerCheckDelay = TimeSpan.FromMinutes(10);
        });

        await using NpgsqlConnection c = await OpenAsync(proxy);
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(i, await ScalarAsync<int>(c, $"SELECT {i}"));
        }

        Assert.Equal(0L, await _pg.ScalarAsync<long>("SELECT count(*) FROM pool_checks_fresh"));
    }

    [Fact]
    public async Task A_backend_whose_check_fails_is_closed_and_the_client_gets_a_new_one()
    {
        DateTime since = await ServerNowAsync();
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 2, o =>
        {
            o.ServerCheckQuery = "SELECT 1/0";
            o.ServerCheckDelay = TimeSpan.Zero;
        });

        await using NpgsqlConnection c = await OpenAsync(proxy);
        int first = await ScalarAsync<int>(c, RealBackendPid);
        int second = await ScalarAsync<int>(c, RealBackendPid).WaitAsync(Patience);
        Assert.NotEqual(first, second);
        await PollAsync(() => Pool(proxy).Total == 1, "the failed backend to be forgotten");
        Assert.False(await _pg.ScalarAsync<bool>($"SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = {first})"));
        Assert.Equal(1L, await ProxyBackendsAsync(since));
    }

    [Fact]
    public async Task An_idle_backend_terminated_by_PostgreSQL_is_replaced_when_checks_run_every_time()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 2, o => o.ServerCheckDelay = TimeSpan.Zero);

        await using NpgsqlConnection c = await OpenAsync(proxy);
        int first = await ScalarAsync<int>(c, RealBackendPid);
        Assert.True(await _pg.ScalarAsync<bool>($"SELECT pg_terminate_backend({first})"));

        Assert.NotEqual(first, await ScalarAsync<int>(c, RealBackendPid).WaitAsync(Patience));
    }

    [Fact]
    public async Task Connect_query_runs_once_on_each_new_backend_before_a_client_uses_it()
    {
        await _pg.ExecuteNonQueryAsync("DROP TABLE IF EXISTS pool_connects; CREATE TABLE pool_connects (pid int); GRANT ALL ON pool_connects TO PUBLIC");
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o =>
        {
            o.PoolMode = PoolMode.Session;
            o.Databases[0] = new DatabaseOptions
            {
                Name = "*", Host = _pg.Host, Port = _pg.Port,
                ConnectQuery = "INSERT INTO pool_connects VALUES (pg_backend_pid()); SET fpp.connected = 'yes'",
            };
        });

        int pid;
        await using (NpgsqlConnection c = await OpenAsync(proxy))
        {
            Assert.Equal("yes", await ScalarAsync<string>(c, "SELECT current_setting('fpp.connected')"));
            pid = await ScalarAsync<int>(c, RealBackendPid);
        }

        await using NpgsqlConnection again = await OpenAsync(proxy);
        Assert.Equal(pid, await ScalarAsync<int>(again, RealBackendPid));
        Assert.Equal(1L, await _pg.ScalarAsync<long>($"SELECT count(*) FROM pool_connects WHERE pid = {pid}"));
    }

    [Fact]
    public async Task A_failing_connect_query_is_logged_and_the_backend_used_as_PgBouncer_does()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o =>
            o.Databases[0] = new DatabaseOptions { Name = "*", Host = _pg.Host, Port = _pg.Port, ConnectQuery = "SELECT 1/0" });

        await using NpgsqlConnection c = await OpenAsync(proxy);
        Assert.Equal(7, await ScalarAsync<int>(c, "SELECT 7").WaitAsync(Patience));
        Assert.Equal(1, Pool(proxy).Total);
    }

    [Theory]
    [InlineData(false, "leaked")]
    [InlineData(true, "")]
    public async Task Server_reset_query_always_resets_backends_in_transaction_mode(bool always, string seen)
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 1, o => o.ServerResetQueryAlways = always);

        await using NpgsqlConnection a = await OpenAsync(proxy);
        await ExecuteAsync(a, "SET fpp.leak = 'leaked'");
        int pid = await ScalarAsync<int>(a, RealBackendPid);

        await using NpgsqlConnection b = await OpenAsync(proxy);
        Assert.Equal(pid, await ScalarAsync<int>(b, RealBackendPid));
        Assert.Equal(seen, await ScalarAsync<string>(b, "SELECT coalesce(current_setting('fpp.leak', true), '')"));
    }

    [Fact]
    public async Task Server_reset_query_always_keeps_prepared_statements_working_in_transaction_mode()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 1, o => o.ServerResetQueryAlways = true);

        await using NpgsqlConnection c = await OpenAsync(proxy);
        await using var cmd = new NpgsqlCommand("SELECT $1::int + 1", c);
        cmd.Parameters.AddWithValue(1);
        await cmd.PrepareAsync();
        for (int i = 0; i < 3; i++)
        {
            cmd.Parameters[0].Value = i;
            Assert.Equal(i + 1, (int)(await cmd.ExecuteScalarAsync())!);
        }
    }

    [Theory]
    [InlineData(false, 1)]
    [InlineData(true, 2)]
    public async Task Server_round_robin_spreads_transactions_over_idle_backends(bool roundRobin, int distinct)
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 2, o => o.ServerRoundRobin = roundRobin);

        // Two transactions at once open two backends.
        await using NpgsqlConnection a = await OpenAsync(proxy);
        await using NpgsqlConnection b = await OpenAsync(proxy);
        await using (NpgsqlTransaction ta = await a.BeginTransactionAsync())
        await using (NpgsqlTransaction tb = await b.BeginTransactionAsync())
        {
            await ScalarAsync<int>(a, "SELECT 1", ta);
            await ScalarAsync<int>(b, "SELECT 1", tb);
            await ta.CommitAsync();
            await tb.CommitAsync();
        }

        Assert.Equal(2, Pool(proxy).IdleCount);
        var pids = new HashSet<int>();
        for (int i = 0; i < 4; i++)
        {
            pids.Add(await ScalarAsync<int>(a, RealBackendPid));
        }

        Assert.Equal(distinct, pids.Count);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Application_name_add_host_appends_the_client_address_and_port(bool transactionMode)
    {
        PoolMode mode = transactionMode ? PoolMode.Transaction : PoolMode.Session;
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, mode, poolSize: 2, o => o.ApplicationNameAddHost = true);

        await using NpgsqlConnection c = await OpenAsync(proxy, applicationName: "billing");
        string name = await ScalarAsync<string>(c, "SELECT current_setting('application_name')");
        Assert.Matches(@"^billing - 127\.0\.0\.1:[0-9]+$", name);
        int pid = await ScalarAsync<int>(c, RealBackendPid);
        Assert.Equal(name, await _pg.ScalarAsync<string>($"SELECT application_name FROM pg_stat_activity WHERE pid = {pid}"));

        // Only at login: a SET later is taken as it is.
        await ExecuteAsync(c, "SET application_name = 'later'");
        Assert.Equal("later", await ScalarAsync<string>(c, "SELECT current_setting('application_name')"));
    }

    [Fact]
    public async Task Application_name_add_host_names_a_client_without_one_app()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Session, poolSize: 2, o => o.ApplicationNameAddHost = true);

        await using NpgsqlConnection c = await OpenAsync(proxy);
        Assert.Matches(@"^app - 127\.0\.0\.1:[0-9]+$", await ScalarAsync<string>(c, "SELECT current_setting('application_name')"));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(60)]
    public async Task Within_server_login_retry_of_a_failed_login_clients_get_the_cached_error_without_a_new_login(int retrySeconds)
    {
        const string role = "fpp_login_retry";
        await _pg.ExecuteNonQueryAsync($"DROP ROLE IF EXISTS {role}");
        try
        {
            await using ProxyHarness proxy = ProxyHarness.Start(_pg, o =>
            {
                o.ServerLoginRetry = TimeSpan.FromSeconds(retrySeconds);
                o.Databases[0] = ProxyHarness.Database(_pg, role);
            });

            PostgresException first = await Assert.ThrowsAsync<PostgresException>(() => OpenAsync(proxy).WaitAsync(Patience));
            Assert.Equal(PostgresErrorCodes.InvalidAuthorizationSpecification, first.SqlState);

            // The login would work now; only a new attempt can find that out.
            await _pg.ExecuteNonQueryAsync($"CREATE ROLE {role} LOGIN");
            if (retrySeconds == 0)
            {
                await using NpgsqlConnection c = await OpenAsync(proxy).WaitAsync(Patience);
                Assert.Equal(1, await ScalarAsync<int>(c, "SELECT 1"));
            }
            else
            {
                PostgresException cached = await Assert.ThrowsAsync<PostgresException>(() => OpenAsync(proxy).WaitAsync(Patience));
                Assert.Equal(PostgresErrorCodes.InvalidAuthorizationSpecification, cached.SqlState);
                Assert.Contains(role, cached.MessageText, StringComparison.Ordinal);
                Assert.Equal(0, Pool(proxy, role).Total);
            }
        }
        finally
        {
            await _pg.ExecuteNonQueryAsync($"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'");
            await DropRoleAsync(role);
        }
    }

    [Fact]
    public async Task After_server_login_retry_the_pool_logs_in_again()
    {
        const string role = "fpp_login_retry";
        await _pg.ExecuteNonQueryAsync($"DROP ROLE IF EXISTS {role}");
        try
        {
            await using ProxyHarness proxy = ProxyHarness.Start(_pg, o =>
            {
                o.ServerLoginRetry = TimeSpan.FromSeconds(1);
                o.Databases[0] = ProxyHarness.Database(_pg, role);
            });

            await Assert.ThrowsAsync<PostgresException>(() => OpenAsync(proxy).WaitAsync(Patience));
            await _pg.ExecuteNonQueryAsync($"CREATE ROLE {role} LOGIN");

            // Clients fail fast until the second has passed, then the next login is tried and works.
            var sw = Stopwatch.StartNew();
            while (true)
            {
                try
                {
                    await using NpgsqlConnection c = await OpenAsync(proxy).WaitAsync(Patience);
                    Assert.Equal(1, await ScalarAsync<int>(c, "SELECT 1"));
                    break;
                }
                catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.InvalidAuthorizationSpecification && sw.Elapsed < Patience)
                {
                    await Task.Delay(100);
                }
            }
        }
        finally
        {
            await _pg.ExecuteNonQueryAsync($"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'");
            await DropRoleAsync(role);
        }
    }

    /// <summary>Drops a role of a test, waiting (bounded) for its terminated backends to be gone.</summary>
    private async Task DropRoleAsync(string role)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                await _pg.ExecuteNonQueryAsync($"DROP ROLE IF EXISTS {role}");
                return;
            }
            catch (PostgresException) when (sw.Elapsed < Patience)
            {
                await Task.Delay(100);
            }
        }
    }

    private static async Task<NpgsqlConnection> OpenAsync(ProxyHarness proxy, string? applicationName = null, string database = PostgresServer.Database)
    {
        var builder = new NpgsqlConnectionStringBuilder(proxy.ConnectionString(User, database: database)) { ApplicationName = applicationName };
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

    /// <summary>The pool of database fpp and <paramref name="user"/> (the proxy's client user by default).</summary>
    private static ServerPool Pool(ProxyHarness proxy, string user = User) =>
        proxy.Server.Pools.Pools.Single(p => p.Database == PostgresServer.Database && p.User == user);

    /// <summary>Clients waiting in the pool of <paramref name="database"/>, 0 before it exists; read off its loop, as a hint for polling.</summary>
    private static int WaitingIn(ProxyHarness proxy, string database) =>
        proxy.Server.Pools.Pools.SingleOrDefault(p => p.Database == database && p.User == User)?.WaitingCount ?? 0;

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
    private Task<long> ProxyBackendsAsync(DateTime since) => CountBackendsAsync(since, PostgresServer.Database);

    /// <summary>Client backends of the proxy's user in any database that started at or after <paramref name="since"/>.</summary>
    private Task<long> UserBackendsAsync(DateTime since) => CountBackendsAsync(since, null);

    private async Task<long> CountBackendsAsync(DateTime since, string? database)
    {
        await using var c = new NpgsqlConnection(_pg.ConnectionString());
        await c.OpenAsync();
        await using var cmd = new NpgsqlCommand(
            "SELECT count(*) FROM pg_stat_activity WHERE ($1::text IS NULL OR datname = $1) AND usename = $2 AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND backend_start >= $3",
            c);
        cmd.Parameters.AddWithValue((object?)database ?? DBNull.Value);
        cmd.Parameters.AddWithValue(User);
        cmd.Parameters.AddWithValue(since);
        return (long)(await cmd.ExecuteScalarAsync())!;
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
}
