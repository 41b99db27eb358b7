using System.Diagnostics;
using System.Net.Sockets;
using FastPgProxy.Cancellation;
using FastPgProxy.Config;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;
using Xunit.Abstractions;
using static FastPgProxy.Tests.EndToEnd.CancelRaceTests;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// What the proxy cancels on its own: the query of a client that went away (cancel_on_disconnect), a query
/// over query_timeout, a client idle in a transaction over idle_transaction_timeout; and what it refuses
/// to forward once a source has sent too many wrong keys (cancel_bad_key_limit).
/// </summary>
/// <remarks>
/// Proxy clients log in as <see cref="PostgresServer.TrustUser"/>; the test's own direct connections to
/// PostgreSQL use the superuser, so pg_stat_activity tells the proxy's backends apart.
/// </remarks>
[Collection(PostgresCollection.Name)]
public sealed class CancelTimeoutTests(PostgresFixture fixture, ITestOutputHelper output)
{
    // pg_backend_pid() alone in a statement may be answered by the proxy; "+ 0" keeps it PostgreSQL's own.
    private const string RealBackendPid = "SELECT pg_backend_pid() + 0";

    private readonly PostgresServer _pg = fixture.Server;

    /// <summary>
    /// A client goes away inside a transaction with a row inserted, either while a query runs or while idle
    /// in the transaction: the query stops on PostgreSQL, the transaction is rolled back, and the same
    /// backend serves the next client (pool size 1).
    /// </summary>
    [Theory]
    [InlineData("transaction", true)]
    [InlineData("session", true)]
    [InlineData("transaction", false)]
    [InlineData("session", false)]
    public async Task A_client_that_drops_its_socket_inside_a_transaction_has_it_rolled_back_and_the_backend_kept(string poolMode, bool queryRunning)
    {
        PoolMode mode = poolMode == "session" ? PoolMode.Session : PoolMode.Transaction;
        string table = $"cancel_disconnect_{poolMode}_{(queryRunning ? "busy" : "idle")}";
        await _pg.ExecuteNonQueryAsync($"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (v text); GRANT ALL ON {table} TO PUBLIC");
        try
        {
            await using ProxyHarness proxy = ProxyHarness.Start(_pg, mode, poolSize: 1, o => o.CancelOnDisconnect = true);
            await using var observer = new NpgsqlConnection(_pg.ConnectionString());
            await observer.OpenAsync();
            string marker = $"dropped-{Guid.NewGuid():N}";
            int backendPid;
            using (RawClient client = await RawClient.ConnectAsync(proxy))
            {
                // An open transaction with a row in it, and a long query running or none.
                if (queryRunning)
                {
                    await client.SendQueryAsync($"BEGIN; INSERT INTO {table} VALUES ('{marker}'); SELECT pg_sleep(60) /* {marker} */");
                    await WaitActiveAsync(observer, marker);
                }
                else
                {
                    Assert.Null((await client.QueryAsync($"BEGIN; INSERT INTO {table} VALUES ('{marker}') /* {marker} */", Patience)).SqlState);
                }

                await using var pidOf = new NpgsqlCommand("SELECT pid FROM pg_stat_activity WHERE state <> 'idle' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()", observer);
                pidOf.Parameters.AddWithValue(marker);
                backendPid = (int)(await pidOf.ExecuteScalarAsync())!;
            }

            var sw = Stopwatch.StartNew();
            await using (var running = new NpgsqlCommand("SELECT count(*) FROM pg_stat_activity WHERE state <> 'idle' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()", observer))
            {
                running.Parameters.AddWithValue(marker);
                while ((long)(await running.ExecuteScalarAsync())! > 0)
                {
                    Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), "PostgreSQL still runs the dropped client's query or transaction 10 s after it went away");
                    await Task.Delay(20);
                }
            }

            TimeSpan gone = sw.Elapsed;
            output.WriteLine($"{mode} mode, {(queryRunning ? "query running" : "idle in transaction")}: gone from pg_stat_activity {gone.TotalMilliseconds:0} ms after the client");

            // The next client is served, by the same backend, and the dropped client's transaction is rolled back.
            await using NpgsqlConnection next = await OpenAsync(proxy);
            int nextPid = await ScalarAsync<int>(next, RealBackendPid).WaitAsync(Patience);
            Assert.True(
                nextPid == backendPid,
                $"the dropped client's backend (pid {backendPid}) was made clean after {gone.TotalMilliseconds:0} ms; the next client got pid {nextPid}");
            Assert.Equal(0L, await ScalarAsync<long>(next, $"SELECT count(*) FROM {table}"));
            Assert.Equal(1, Pool(proxy).Total);
        }
        finally
        {
            await _pg.ExecuteNonQueryAsync($"DROP TABLE IF EXISTS {table}");
        }
    }

    /// <summary>
    /// query_timeout 3 s: pg_sleep(30) is cancelled on PostgreSQL (57014, long before it would end), the
    /// session goes on, and queries of 0.3 s run back to back for longer than the timeout are left alone
    /// (the timer is per request, not per session). The margins are wide so a loaded machine cannot
    /// turn a 0.3 s query into a timeout.
    /// </summary>
    [Fact]
    public async Task Query_timeout_cancels_the_long_query_and_the_session_goes_on()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 1, o => o.QueryTimeout = TimeSpan.FromSeconds(3));
        CancelStats stats = proxy.Server.CancelStats;
        await using NpgsqlConnection c = await OpenAsync(proxy);
        Snapshot before = Snapshot.Of(stats);

        var sw = Stopwatch.StartNew();
        PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => ScalarAsync<object>(c, "SELECT pg_sleep(30)").WaitAsync(Patience));
        TimeSpan took = sw.Elapsed;
        output.WriteLine($"pg_sleep(30) ended after {took.TotalMilliseconds:0} ms with {e.SqlState} {e.MessageText}");
        Assert.Equal(QueryCanceled, e.SqlState);
        Assert.True(took >= TimeSpan.FromSeconds(2.9), $"cancelled after {took}, before query_timeout");

        Assert.Equal(1, await ScalarAsync<int>(c, "SELECT 1"));
        Snapshot delta = Snapshot.Of(stats) - before;
        Assert.Equal(1, delta.TimedOut);
        Assert.Equal(1, delta.Forwarded);

        sw.Restart();
        for (int i = 0; i < 12; i++)
        {
            await ScalarAsync<object>(c, "SELECT pg_sleep(0.3)");
        }

        Assert.True(sw.Elapsed > TimeSpan.FromSeconds(3.5));
        Assert.Equal(1, (Snapshot.Of(stats) - before).TimedOut);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Client_idle_timeout_closes_a_silent_client_but_not_one_that_keeps_asking_or_sits_in_a_transaction(bool transactionMode)
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, transactionMode ? PoolMode.Transaction : PoolMode.Session, poolSize: 4, o => o.ClientIdleTimeout = TimeSpan.FromSeconds(2));
        using RawClient silent = await RawClient.ConnectAsync(proxy);
        using RawClient busy = await RawClient.ConnectAsync(proxy);
        using RawClient inTransaction = await RawClient.ConnectAsync(proxy);
        Assert.Null((await inTransaction.QueryAsync("BEGIN; SELECT 1", Patience)).SqlState);

        // The busy client asks every 300 ms for 6 s, three timeouts long: it stays. (A 2 s timeout leaves a
        // loaded machine 1.7 s of slack between two of its queries; with 1 s the full suite's load closed it.)
        for (int i = 0; i < 20; i++)
        {
            Assert.Null((await busy.QueryAsync("SELECT 1", Patience)).SqlState);
            await Task.Delay(300);
        }

        (byte[] data, bool closed) = await silent.ReadUntilCloseAsync(Patience);
        Assert.True(closed, "the silent client was not closed");
        Assert.Equal("08P01", RawProtocol.ErrorCode(data));
        Assert.Equal("client_idle_timeout", RawProtocol.ErrorField(data, (byte)'M'));

        Assert.Null((await busy.QueryAsync("SELECT 1", Patience)).SqlState);
        Assert.Null((await inTransaction.QueryAsync("SELECT 2; COMMIT", Patience)).SqlState);
    }

    [Fact]
    public async Task Idle_transaction_timeout_closes_the_client_and_rolls_its_backend_back()
    {
        await _pg.ExecuteNonQueryAsync("DROP TABLE IF EXISTS cancel_idle_tx; CREATE TABLE cancel_idle_tx (v text); GRANT ALL ON cancel_idle_tx TO PUBLIC");
        try
        {
            await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 1, o => o.IdleTransactionTimeout = TimeSpan.FromSeconds(1));
            await using NpgsqlConnection bystander = await OpenAsync(proxy);
            Assert.Equal(1, await ScalarAsync<int>(bystander, "SELECT 1"));

            int backendPid;
            var sw = Stopwatch.StartNew();
            byte[] data;
            bool closed;
            using (RawClient idle = await RawClient.ConnectAsync(proxy))
            {
                Result begun = await idle.QueryAsync($"BEGIN; INSERT INTO cancel_idle_tx VALUES ('idle'); {RealBackendPid}", Patience);
                Assert.Null(begun.SqlState);
                backendPid = int.Parse(begun.Value!, System.Globalization.CultureInfo.InvariantCulture);
                sw.Restart();
                (data, closed) = await idle.ReadUntilCloseAsync(TimeSpan.FromSeconds(10));
            }

            TimeSpan after = sw.Elapsed;
            string? sqlState = RawProtocol.ErrorCode(data);
            output.WriteLine($"idle client closed after {after.TotalMilliseconds:0} ms with {sqlState} {RawProtocol.ErrorField(data, (byte)'M')}");
            Assert.True(closed, "the client idle in a transaction was not closed within 10 s");
            Assert.NotNull(sqlState);
            Assert.True(after > TimeSpan.FromSeconds(0.8), $"closed after {after}, before idle_transaction_timeout");

            // The backend is rolled back and kept: no transaction left open on PostgreSQL, the row is gone.
            await using var observer = new NpgsqlConnection(_pg.ConnectionString());
            await observer.OpenAsync();
            await using var open = new NpgsqlCommand("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()", observer);
            sw.Restart();
            while ((long)(await open.ExecuteScalarAsync())! > 0)
            {
                Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), "a backend is still idle in transaction 10 s after its client was closed");
                await Task.Delay(20);
            }

            TimeSpan rolledBack = sw.Elapsed;
            output.WriteLine($"no backend idle in transaction {rolledBack.TotalMilliseconds:0} ms after the close");
            Assert.Equal(0L, await _pg.ScalarAsync<long>("SELECT count(*) FROM cancel_idle_tx"));

            // The bystander, idle outside a transaction all this while, is untouched, and a transaction
            // busy in a query longer than the timeout is not idle.
            await using (NpgsqlTransaction tx = await bystander.BeginTransactionAsync())
            {
                await using var busy = new NpgsqlCommand("SELECT pg_sleep(1.5)", bystander, tx);
                await busy.ExecuteNonQueryAsync();
                await tx.CommitAsync();
            }

            int nextPid = await ScalarAsync<int>(bystander, RealBackendPid);
            Assert.True(
                nextPid == backendPid,
                $"the closed client's backend (pid {backendPid}) was made clean {rolledBack.TotalMilliseconds:0} ms after the close; the next query ran on pid {nextPid}");
        }
        finally
        {
            await _pg.ExecuteNonQueryAsync("DROP TABLE IF EXISTS cancel_idle_tx");
        }
    }

    /// <summary>
    /// 150 wrong keys from 127.0.0.1 (where every test client is) go over cancel_bad_key_limit at its default
    /// of 100 a minute and block the source; a correct key from the same address still cancels the running
    /// query (57014), since keys are unguessable and one behind the same address must keep its Ctrl-C. Wrong
    /// keys from the blocked source, before and after it, are dropped and counted as rate-limited.
    /// </summary>
    [Fact]
    public async Task A_correct_cancel_is_honoured_from_a_source_blocked_for_wrong_keys()
    {
        const int wrongKeys = 150;
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 1);
        Assert.Equal(100, proxy.Server.Options.CancelBadKeyLimit);
        CancelStats stats = proxy.Server.CancelStats;
        using RawClient a = await RawClient.ConnectAsync(proxy);
        Snapshot before = Snapshot.Of(stats);

        await a.SendQueryAsync("SELECT 'finished' FROM pg_sleep(30) /* blocked-source */");
        await WaitActiveAsync(_pg, "blocked-source");
        for (int i = 1; i <= wrongKeys; i++)
        {
            await SendCancelAsync(proxy, a.ProcessId, a.SecretKey ^ i);
        }

        Snapshot wrong = Snapshot.Of(stats) - before;
        await SendCancelAsync(proxy, a.ProcessId, a.SecretKey);
        Result result = await a.ReadResultAsync(TimeSpan.FromSeconds(60));
        await SendCancelAsync(proxy, a.ProcessId, ~a.SecretKey);
        Snapshot delta = Snapshot.Of(stats) - before;
        output.WriteLine($"after {wrongKeys} wrong keys: {wrong}; the correct cancel: query ended with {result.SqlState ?? "success"} {result.Value}; {delta}");

        Assert.Equal(QueryCanceled, result.SqlState);
        Assert.Equal(101, wrong.WrongKey);
        Assert.Equal(wrongKeys - 101, wrong.RateLimited);
        Assert.Equal(1, delta.Forwarded);
        Assert.Equal(wrongKeys - 101 + 1, delta.RateLimited);
        Assert.Equal(wrongKeys + 2, delta.Received);
    }

    private static async Task<NpgsqlConnection> OpenAsync(ProxyHarness proxy)
    {
        var connection = new NpgsqlConnection(proxy.ConnectionString(User));
        await connection.OpenAsync();
        return connection;
    }

    private static async Task<T> ScalarAsync<T>(NpgsqlConnection c, string sql)
    {
        await using var cmd = new NpgsqlCommand(sql, c);
        return (T)(await cmd.ExecuteScalarAsync())!;
    }
}
