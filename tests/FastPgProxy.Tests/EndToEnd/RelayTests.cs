using System.Text;
using FastPgProxy.Sessions;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>Everything a client does against PostgreSQL directly works the same through the proxy.</summary>
[Collection(PostgresCollection.Name)]
public sealed class RelayTests(PostgresFixture fixture) : IAsyncLifetime
{
    private readonly PostgresServer _pg = fixture.Server;
    private ProxyHarness _proxy = null!;

    public Task InitializeAsync()
    {
        _proxy = ProxyHarness.Start(_pg);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _proxy.DisposeAsync();

    [Fact]
    public async Task Simple_and_extended_queries_with_parameters_and_prepared_statements()
    {
        await using NpgsqlConnection c = await _proxy.OpenAsync();
        await using (var simple = new NpgsqlCommand("SELECT 40 + 2", c))
        {
            Assert.Equal(42, await simple.ExecuteScalarAsync());
        }

        await using var cmd = new NpgsqlCommand("SELECT $1::int * 2, $2::text || '!'", c);
        cmd.Parameters.AddWithValue(21);
        cmd.Parameters.AddWithValue("hi");
        await cmd.PrepareAsync();
        for (int i = 0; i < 3; i++)
        {
            await using NpgsqlDataReader r = await cmd.ExecuteReaderAsync();
            Assert.True(await r.ReadAsync());
            Assert.Equal(42, r.GetInt32(0));
            Assert.Equal("hi!", r.GetString(1));
        }

        Assert.True(cmd.IsPrepared);
    }

    [Fact]
    public async Task Pipelined_batch_returns_every_result_in_order()
    {
        await using NpgsqlConnection c = await _proxy.OpenAsync();
        await using var batch = new NpgsqlBatch(c);
        for (int i = 0; i < 50; i++)
        {
            batch.BatchCommands.Add(new NpgsqlBatchCommand($"SELECT {i}"));
        }

        await using NpgsqlDataReader r = await batch.ExecuteReaderAsync();
        for (int i = 0; i < 50; i++)
        {
            Assert.True(await r.ReadAsync());
            Assert.Equal(i, r.GetInt32(0));
            Assert.Equal(i < 49, await r.NextResultAsync());
        }
    }

    [Fact]
    public async Task Transaction_commits_and_rolls_back()
    {
        await using NpgsqlConnection c = await _proxy.OpenAsync();
        await using (var create = new NpgsqlCommand("CREATE TEMP TABLE t (v int)", c))
        {
            await create.ExecuteNonQueryAsync();
        }

        await using (NpgsqlTransaction tx = await c.BeginTransactionAsync())
        {
            await using var insert = new NpgsqlCommand("INSERT INTO t VALUES (1)", c, tx);
            await insert.ExecuteNonQueryAsync();
            await tx.CommitAsync();
        }

        await using (NpgsqlTransaction tx = await c.BeginTransactionAsync())
        {
            await using var insert = new NpgsqlCommand("INSERT INTO t VALUES (2)", c, tx);
            await insert.ExecuteNonQueryAsync();
            await tx.RollbackAsync();
        }

        await using var sum = new NpgsqlCommand("SELECT coalesce(sum(v), 0)::int FROM t", c);
        Assert.Equal(1, await sum.ExecuteScalarAsync());
    }

    [Fact]
    public async Task Copy_in_and_out_round_trip()
    {
        await using NpgsqlConnection c = await _proxy.OpenAsync();
        await using (var create = new NpgsqlCommand("CREATE TEMP TABLE c (id int, name text)", c))
        {
            await create.ExecuteNonQueryAsync();
        }

        const int rows = 20_000;
        await using (NpgsqlBinaryImporter importer = await c.BeginBinaryImportAsync("COPY c (id, name) FROM STDIN (FORMAT BINARY)"))
        {
            for (int i = 0; i < rows; i++)
            {
                await importer.StartRowAsync();
                await importer.WriteAsync(i);
                await importer.WriteAsync($"name-{i}");
            }

            Assert.Equal((ulong)rows, await importer.CompleteAsync());
        }

        using (TextWriter writer = await c.BeginTextImportAsync("COPY c (id, name) FROM STDIN"))
        {
            await writer.WriteAsync("-1\ttext-row\n");
        }

        int count = 0;
        long sum = 0;
        using (TextReader reader = await c.BeginTextExportAsync("COPY (SELECT id, name FROM c ORDER BY id) TO STDOUT"))
        {
            string? line;
            while ((line = await reader.ReadLineAsync()) is not null)
            {
                string[] parts = line.Split('\t');
                Assert.Equal(parts[0] == "-1" ? "text-row" : $"name-{parts[0]}", parts[1]);
                sum += int.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture);
                count++;
            }
        }

        Assert.Equal(rows + 1, count);
        Assert.Equal(((long)rows * (rows - 1) / 2) - 1, sum);
    }

    [Fact]
    public async Task Listen_notify_delivers_between_sessions()
    {
        await using NpgsqlConnection listener = await _proxy.OpenAsync();
        await using NpgsqlConnection notifier = await _proxy.OpenAsync();
        var received = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        listener.Notification += (_, e) => received.TrySetResult($"{e.Channel}:{e.Payload}");
        await using (var listen = new NpgsqlCommand("LISTEN fpp_channel", listener))
        {
            await listen.ExecuteNonQueryAsync();
        }

        await using (var notify = new NpgsqlCommand("NOTIFY fpp_channel, 'hello'", notifier))
        {
            await notify.ExecuteNonQueryAsync();
        }

        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        Task wait = listener.WaitAsync(cts.Token);
        Assert.Equal("fpp_channel:hello", await received.Task.WaitAsync(TimeSpan.FromSeconds(20)));
    }

    [Fact]
    public async Task Ten_megabyte_value_and_many_rows_arrive_intact()
    {
        await using NpgsqlConnection c = await _proxy.OpenAsync();
        await using (var big = new NpgsqlCommand("SELECT repeat('abcdefghij', 1024 * 1024)", c))
        {
            var value = (string)(await big.ExecuteScalarAsync())!;
            Assert.Equal(10 * 1024 * 1024, value.Length);
            Assert.Equal(new StringBuilder().Insert(0, "abcdefghij", 1000).ToString(), value[..10_000]);
        }

        await using var rows = new NpgsqlCommand("SELECT g, md5(g::text) FROM generate_series(1, 200000) g", c);
        await using NpgsqlDataReader r = await rows.ExecuteReaderAsync();
        long n = 0;
        while (await r.ReadAsync())
        {
            n++;
            Assert.Equal(n, r.GetInt32(0));
        }

        Assert.Equal(200_000, n);
    }

    [Fact]
    public async Task A_client_that_reads_slowly_gets_every_byte_of_a_large_result()
    {
        // About 11 MB of rows while the client stops reading now and then: the proxy's sends to it meet a
        // full socket buffer, write part of a run and finish it when there is room again.
        await using NpgsqlConnection c = await _proxy.OpenAsync();
        await using var cmd = new NpgsqlCommand("SELECT g, repeat(lpad(g::text, 10, '0'), 28) FROM generate_series(1, 40000) g", c);
        await using NpgsqlDataReader r = await cmd.ExecuteReaderAsync();
        int n = 0;
        while (await r.ReadAsync())
        {
            n++;
            if (n % 10_000 == 1)
            {
                await Task.Delay(300);
            }

            Assert.Equal(n, r.GetInt32(0));
            Assert.Equal(string.Concat(Enumerable.Repeat(n.ToString("D10", System.Globalization.CultureInfo.InvariantCulture), 28)), r.GetString(1));
        }

        Assert.Equal(40_000, n);
    }

    [Fact]
    public async Task Large_parameter_reaches_the_server()
    {
        await using NpgsqlConnection c = await _proxy.OpenAsync();
        string payload = new('x', 5 * 1024 * 1024);
        await using var cmd = new NpgsqlCommand("SELECT length($1)", c);
        cmd.Parameters.AddWithValue(payload);
        Assert.Equal(payload.Length, await cmd.ExecuteScalarAsync());
    }

    [Fact]
    public async Task Error_then_recovery_on_the_same_session()
    {
        await using NpgsqlConnection c = await _proxy.OpenAsync();
        await using (var bad = new NpgsqlCommand("SELECT 1/0", c))
        {
            var e = await Assert.ThrowsAsync<PostgresException>(() => bad.ExecuteScalarAsync());
            Assert.Equal("22012", e.SqlState);
        }

        await using (NpgsqlTransaction tx = await c.BeginTransactionAsync())
        {
            await using var bad = new NpgsqlCommand("SELECT * FROM no_such_table", c, tx);
            Assert.Equal("42P01", (await Assert.ThrowsAsync<PostgresException>(() => bad.ExecuteScalarAsync())).SqlState);
            await using var after = new NpgsqlCommand("SELECT 1", c, tx);
            Assert.Equal("25P02", (await Assert.ThrowsAsync<PostgresException>(() => after.ExecuteScalarAsync())).SqlState);
            await tx.RollbackAsync();
        }

        await using var ok = new NpgsqlCommand("SELECT 7", c);
        Assert.Equal(7, await ok.ExecuteScalarAsync());
    }

    [Fact]
    public async Task Notices_reach_the_client()
    {
        await using NpgsqlConnection c = await _proxy.OpenAsync();
        var notices = new List<string>();
        c.Notice += (_, e) => notices.Add(e.Notice.MessageText);
        await using var cmd = new NpgsqlCommand("DO $$ BEGIN RAISE NOTICE 'from the server'; END $$", c);
        await cmd.ExecuteNonQueryAsync();
        Assert.Contains("from the server", notices);
    }

    [Fact]
    public async Task ProcessID_is_the_proxy_session_id_not_the_backend_pid()
    {
        await using NpgsqlConnection c = await _proxy.OpenAsync();
        // "+ 0" makes it an ordinary query, answered by PostgreSQL with its own pid.
        await using var cmd = new NpgsqlCommand("SELECT pg_backend_pid() + 0", c);
        int backendPid = (int)(await cmd.ExecuteScalarAsync())!;
        await using var intercepted = new NpgsqlCommand("SELECT pg_backend_pid()", c);
        Assert.Equal(c.ProcessID, (int)(await intercepted.ExecuteScalarAsync())!);
        Assert.True(c.ProcessID > 0);
        Assert.NotEqual(backendPid, c.ProcessID);
        Assert.True(_proxy.Server.Sessions.TryGet(c.ProcessID, out ClientSession? session));
        Assert.Equal(backendPid, session.CancelTarget!.ProcessId);

        await using NpgsqlConnection other = await _proxy.OpenAsync();
        Assert.NotEqual(c.ProcessID, other.ProcessID);
    }

    /// <summary>
    /// Session ids (the pid of BackendKeyData) are random, so the key a client gets carries the pid's 31
    /// random bits on top of the secret's 32: fifty sessions get distinct positive ids that are not a
    /// sequence with a fixed step.
    /// </summary>
    [Fact]
    public async Task Session_ids_are_random_positive_and_distinct()
    {
        // Transaction mode: the logins need no backend of their own once the pool has seen one.
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o => o.PoolMode = FastPgProxy.Config.PoolMode.Transaction);
        var clients = new List<NpgsqlConnection>();
        try
        {
            for (int i = 0; i < 50; i++)
            {
                clients.Add(await proxy.OpenAsync());
            }

            int[] ids = clients.Select(c => c.ProcessID).ToArray();
            Assert.All(ids, id => Assert.True(id > 0, $"id {id} is not positive"));
            Assert.Equal(ids.Length, ids.Distinct().Count());
            int[] steps = ids.Zip(ids.Skip(1), (a, b) => b - a).Distinct().ToArray();
            Assert.True(steps.Length > 1, $"ids {string.Join(", ", ids)} go up by a fixed step of {steps[0]}");
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
    public async Task Server_parameters_reach_the_client()
    {
        await using NpgsqlConnection c = await _proxy.OpenAsync();
        Assert.Equal("UTF8", c.PostgresParameters["server_encoding"]);
        Assert.StartsWith("15", c.PostgresParameters["server_version"], StringComparison.Ordinal);
        await using var set = new NpgsqlCommand("SET application_name = 'changed-through-proxy'", c);
        await set.ExecuteNonQueryAsync();
        Assert.Equal("changed-through-proxy", c.PostgresParameters["application_name"]);
    }

    [Fact]
    public async Task Unknown_database_gets_postgres_error()
    {
        var e = await Assert.ThrowsAsync<PostgresException>(() => _proxy.OpenAsync(database: "no_such_db"));
        Assert.Equal("3D000", e.SqlState);
        await using NpgsqlConnection c = await _proxy.OpenAsync();
        Assert.Equal(ConnectionStateOpen, c.FullState);
    }

    [Fact]
    public async Task With_no_databases_configured_the_proxy_runs_and_every_database_gets_postgres_error()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o => o.Databases.Clear());

        var e = await Assert.ThrowsAsync<PostgresException>(() => proxy.OpenAsync());
        Assert.Equal("3D000", e.SqlState);
        Assert.Equal($"database \"{PostgresServer.Database}\" does not exist", e.MessageText);
    }

    [Fact]
    public async Task Client_and_backend_sockets_carry_the_keepalive_settings()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o => o.Keepalive.IdleSeconds = 37);
        await using NpgsqlConnection c = await proxy.OpenAsync();
        await using (var query = new NpgsqlCommand("SELECT 1", c))
        {
            await query.ExecuteScalarAsync();
        }

        // /proc/net/tcp: the proxy's end of the client connection has local port = the proxy's, its backend
        // connection has remote port = PostgreSQL's. Timer 2 is keepalive; its expiry is in 1/100 s.
        // Right after traffic a socket may show its delayed-ACK or retransmit timer instead: look again for a while.
        var deadline = System.Diagnostics.Stopwatch.StartNew();
        while (!(KeepaliveTimers(localPort: proxy.Port).Any(t => t is > 20 and <= 37) && KeepaliveTimers(remotePort: _pg.Port).Any(t => t is > 20 and <= 37)))
        {
            Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(10), $"no keepalive timer of at most 37 s: client side [{string.Join(", ", KeepaliveTimers(localPort: proxy.Port))}], backend side [{string.Join(", ", KeepaliveTimers(remotePort: _pg.Port))}]");
            await Task.Delay(200);
        }

        static List<double> KeepaliveTimers(int localPort = -1, int remotePort = -1)
        {
            var seconds = new List<double>();
            foreach (string file in new[] { "/proc/net/tcp", "/proc/net/tcp6" })
            {
                foreach (string line in File.ReadLines(file).Skip(1))
                {
                    string[] f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    int local = Convert.ToInt32(f[1][(f[1].LastIndexOf(':') + 1)..], 16);
                    int remote = Convert.ToInt32(f[2][(f[2].LastIndexOf(':') + 1)..], 16);
                    string[] timer = f[5].Split(':');
                    if (f[3] == "01" && (local == localPort || remote == remotePort) && timer[0] == "02")
                    {
                        seconds.Add(Convert.ToInt64(timer[1], 16) / 100.0);
                    }
                }
            }

            return seconds;
        }
    }

    private const System.Data.ConnectionState ConnectionStateOpen = System.Data.ConnectionState.Open;
}
