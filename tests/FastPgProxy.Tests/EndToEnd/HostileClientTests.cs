using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Text;
using FastPgProxy.Config;
using FastPgProxy.Net;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;
using RawClient = FastPgProxy.Tests.EndToEnd.CancelRaceTests.RawClient;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// A client that sends what PostgreSQL would refuse, or stops halfway, or piles up statements, hurts only
/// itself: it gets PostgreSQL's error (or is closed), while clients looping queries on the same small pool
/// see no error, and buffers and statement memory return to where they were.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class HostileClientTests(PostgresFixture fixture)
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    // What PostgreSQL takes from a client after login; every other type byte is refused with 08P01.
    private static readonly byte[] s_frontendTypes = "QPBEDCHSFdcfX"u8.ToArray();

    private readonly PostgresServer _pg = fixture.Server;

    [Fact]
    public async Task A_foreign_message_type_is_refused_to_its_sender_and_never_reaches_a_pooled_backend()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 3);
        await using Bystanders bystanders = await Bystanders.StartAsync(proxy, clients: 4);
        foreach (char type in "o!p")
        {
            for (int i = 0; i < 34; i++)
            {
                using RawClient client = await RawClient.ConnectAsync(proxy, "foreign");
                await client.SendAsync(RawClient.Message(type, []));
                (string? sqlState, string? message) = await ReadFatalAsync(client);
                Assert.Equal("08P01", sqlState);
                Assert.Equal($"invalid frontend message type {(int)type}", message);
            }
        }

        // A foreign message behind a query in the same packet: the query may run, the sender still gets the FATAL.
        using (RawClient client = await RawClient.ConnectAsync(proxy, "foreign"))
        {
            await client.SendAsync([.. RawProtocol.Query("select 1"), .. RawClient.Message('o', [])]);
            (string? sqlState, _) = await ReadFatalAsync(client);
            Assert.Equal("08P01", sqlState);
        }

        await bystanders.StopAndAssertNoErrorsAsync();
        await AssertEveryBackendWorksAsync(proxy, poolSize: 3);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Every_message_type_after_login_is_relayed_or_refused_without_touching_other_clients(bool transactionMode)
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, transactionMode ? PoolMode.Transaction : PoolMode.Session, poolSize: 3);
        await using Bystanders bystanders = await Bystanders.StartAsync(proxy, clients: 2);
        for (int type = 0; type < 256; type++)
        {
            using RawClient client = await RawClient.ConnectAsync(proxy, "types");
            // The message, then Sync (ends an extended batch that failed) and a query that shows the session is alive.
            byte[] message = new byte[5];
            message[0] = (byte)type;
            BinaryPrimitives.WriteInt32BigEndian(message.AsSpan(1), 4);
            await client.SendAsync([.. message, .. RawProtocol.Sync(), .. RawProtocol.Query("select 7")]);
            (List<(byte Type, byte[] Body)> replies, bool closed) = await ReadToAnswerOrCloseAsync(client);
            string? firstError = replies.Where(r => r.Type == 'E').Select(r => Field(r.Body, 'C')).FirstOrDefault();
            if (Array.IndexOf(s_frontendTypes, (byte)type) < 0)
            {
                Assert.True(closed, $"type {type}: the session was not closed");
                Assert.Equal("08P01", firstError);
            }
            else if (type == 'X')
            {
                Assert.True(closed, "Terminate did not end the session");
            }
            else
            {
                // PostgreSQL's own answer: ignored (COPY messages outside COPY, Flush, Sync) or an error about
                // the empty body; either way a closed session must have been told why.
                Assert.True(!closed || firstError is not null, $"type {type}: closed without an error");
            }
        }

        await AssertOthersUnharmedAsync(proxy, bystanders, poolSize: 3);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task An_intercepted_call_in_a_malformed_message_gets_PostgreSQLs_error_not_an_answer(bool simple)
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 3);
        using RawClient client = await RawClient.ConnectAsync(proxy, "malformed");
        byte[] message = simple
            ? RawClient.Message('Q', [.. Encoding.ASCII.GetBytes("select pg_backend_pid()"), 0, .. "junk"u8, 0])
            : [.. RawClient.Message('P', [0, .. Encoding.ASCII.GetBytes("select pg_backend_pid()"), 0, 0, 1]),
               .. RawProtocol.Bind("", "", [], [], []), .. RawProtocol.Execute(""), .. RawProtocol.Sync()];
        await client.SendAsync(message);
        CancelRaceTests.Result result = await client.ReadResultAsync(Patience);
        Assert.Equal("08P01", result.SqlState);
        Assert.Equal("7", (await client.QueryAsync("select 7", Patience)).Value);
    }

    [Fact]
    public async Task Random_bytes_after_login_hurt_only_their_sender()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 3);
        await using Bystanders bystanders = await Bystanders.StartAsync(proxy, clients: 2);
        var random = new Random(20261129);
        for (int i = 0; i < 200; i++)
        {
            using RawClient client = await RawClient.ConnectAsync(proxy, "random");
            byte[] junk = new byte[random.Next(1, 600)];
            random.NextBytes(junk);
            await client.SendAsync(junk);
            if (i % 2 == 0)
            {
                // Half of them go away at once; the others leave the proxy to decide (it may wait for the rest of a message).
                continue;
            }

            await client.ReadUntilCloseAsync(TimeSpan.FromMilliseconds(200));
        }

        await AssertOthersUnharmedAsync(proxy, bystanders, poolSize: 3);
    }

    [Fact]
    public async Task Two_thousand_garbage_start_up_packets_are_refused_without_touching_other_clients()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 3);
        await using Bystanders bystanders = await Bystanders.StartAsync(proxy, clients: 2);
        var random = new Random(2000);
        for (int batch = 0; batch < 40; batch++)
        {
            var packets = new List<byte[]>();
            for (int i = 0; i < 50; i++)
            {
                packets.Add(GarbageStartup(random));
            }

            await Task.WhenAll(packets.Select(async packet =>
            {
                using Socket socket = await proxy.ConnectRawAsync();
                try
                {
                    await socket.SendAsync(packet);
                }
                catch (SocketException)
                {
                    // Refused while still sending: as good as a close.
                    return;
                }

                // Each is answered (an error, N to an SSLRequest, an authentication request) or closed; none hangs the proxy.
                await RawProtocol.ReadUntilCloseAsync(socket, TimeSpan.FromMilliseconds(100));
            }));
        }

        await AssertOthersUnharmedAsync(proxy, bystanders, poolSize: 3);
    }

    /// <summary>A start-up packet that is wrong in one of many ways: length, code, parameters, or all random.</summary>
    private static byte[] GarbageStartup(Random random)
    {
        int kind = random.Next(6);
        byte[] body = new byte[random.Next(0, kind == 5 ? 12_000 : 300)];
        random.NextBytes(body);
        int code = kind switch
        {
            0 => 3 << 16,                       // a StartupMessage with random parameters
            1 => 80877102,                      // a CancelRequest of the wrong length or random key
            2 => 80877103,                      // an SSLRequest with a body
            3 => random.Next(),                 // an unknown code
            _ => (random.Next(1, 4) << 16) | random.Next(0, 3),
        };
        int length = kind == 4 ? random.Next(-10, 20_000) : 8 + body.Length;
        byte[] packet = new byte[8 + body.Length];
        BinaryPrimitives.WriteInt32BigEndian(packet, length);
        BinaryPrimitives.WriteInt32BigEndian(packet.AsSpan(4), code);
        body.CopyTo(packet, 8);
        return packet;
    }

    [Fact]
    public async Task Clients_that_stop_halfway_through_a_message_take_no_backend_and_no_buffer()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 3, o =>
        {
            o.QueryWaitTimeout = TimeSpan.FromSeconds(20);
            o.MaxClientConnections = 1000;
        });
        var stalled = new List<RawClient>();
        try
        {
            // Seven clients each send the start of a Query and stop: more than the pool has backends.
            for (int i = 0; i < 7; i++)
            {
                RawClient client = await RawClient.ConnectAsync(proxy, "stalled");
                stalled.Add(client);
                byte[] query = RawProtocol.Query("select 'never finished'");
                await client.SendAsync(query.AsSpan(0, i % 2 == 0 ? 1 : query.Length - 3).ToArray());
            }

            await using (NpgsqlConnection connection = await proxy.OpenAsync(PostgresServer.TrustUser))
            {
                await using var command = new NpgsqlCommand("select 42", connection);
                Assert.Equal(42, await command.ExecuteScalarAsync());
            }

            // Two hundred more: what they sent is kept aside in a few bytes each, not in a 32 KiB buffer.
            for (int i = 0; i < 200; i++)
            {
                RawClient client = await RawClient.ConnectAsync(proxy, "stalled");
                stalled.Add(client);
                await client.SendAsync([(byte)'Q', 0, 0]);
            }

            // (An idle backend may hold one whose zero-byte receive was woken without data: at most 3 here.)
            await WaitUntilAsync(() => BuffersInUse(proxy) <= 8, "stalled clients still hold buffers");
        }
        finally
        {
            stalled.ForEach(c => c.Dispose());
        }

        Assert.Equal(0, await BufferReturnTests.BuffersInUseOnceIdleAsync(proxy));
    }

    [Fact]
    public async Task A_client_that_stops_inside_a_message_longer_than_a_buffer_is_closed_after_client_message_timeout()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 1, o =>
        {
            o.ClientMessageTimeout = TimeSpan.FromSeconds(2);
            o.QueryWaitTimeout = TimeSpan.FromSeconds(60);
        });
        using RawClient client = await RawClient.ConnectAsync(proxy, "stalled");
        // A Query of 100 kB streams to the backend as it comes, so the client holds the only backend.
        byte[] query = RawProtocol.Query("select '" + new string('x', 100_000) + "'");
        await client.SendAsync(query.AsSpan(0, 40_000).ToArray());
        (string? sqlState, _) = await ReadFatalAsync(client);
        Assert.Equal("08P01", sqlState);

        // The backend held half a message and was closed, not handed on: the next client gets a fresh one.
        await using NpgsqlConnection connection = await proxy.OpenAsync(PostgresServer.TrustUser);
        await using var command = new NpgsqlCommand("select 42", connection);
        Assert.Equal(42, await command.ExecuteScalarAsync());
    }

    [Fact]
    public async Task A_client_that_streams_a_long_message_slowly_but_steadily_is_not_cut()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 1, o => o.ClientMessageTimeout = TimeSpan.FromSeconds(2));
        using RawClient client = await RawClient.ConnectAsync(proxy, "slow");
        byte[] query = RawProtocol.Query("select length('" + new string('y', 60_000) + "')");
        for (int at = 0; at < query.Length; at += 10_000)
        {
            await client.SendAsync(query.AsSpan(at, Math.Min(10_000, query.Length - at)).ToArray());
            await Task.Delay(700);
        }

        CancelRaceTests.Result result = await client.ReadResultAsync(Patience);
        Assert.Null(result.SqlState);
        Assert.Equal("60000", result.Value);
    }

    [Fact]
    public async Task Prepared_statements_a_client_keeps_in_the_proxy_are_bounded_and_freed_when_it_goes()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 2, o =>
        {
            o.MaxClientPreparedStatements = 50;
            o.MaxClientPreparedBytes = 1024 * 1024;
        });
        long before = proxy.Server.Stats.ClientStatementBytes;
        using (RawClient client = await RawClient.ConnectAsync(proxy, "prepare"))
        {
            // Count: the 51st statement is refused with 54000, and the session goes on.
            for (int i = 0; i < 50; i++)
            {
                Assert.Null(await PrepareAsync(client, $"s{i}", $"select {i}"));
            }

            Assert.Equal("54000", await PrepareAsync(client, "s50", "select 50"));
            Assert.Equal("7", (await client.QueryAsync("select 7", Patience)).Value);
            Assert.True(proxy.Server.Stats.ClientStatementBytes > before);
        }

        using (RawClient client = await RawClient.ConnectAsync(proxy, "prepare"))
        {
            // Bytes: statements of 30 kB each pass 1 MiB within 35.
            string text = "select '" + new string('z', 30_000) + "'";
            string? refused = null;
            int kept = 0;
            for (; kept < 40 && refused is null; kept++)
            {
                refused = await PrepareAsync(client, $"big{kept}", text);
            }

            Assert.Equal("53200", refused);
            Assert.InRange(kept, 30, 35);
            Assert.Equal("7", (await client.QueryAsync("select 7", Patience)).Value);
        }

        // Everything the two clients kept is gone with them.
        await WaitUntilAsync(() => proxy.Server.Stats.ClientStatementBytes == before, "statement memory was not freed");
    }

    /// <summary>Parse and Sync of a named statement, answered by the proxy; the SQLSTATE of a refusal, null for ParseComplete.</summary>
    private static async Task<string?> PrepareAsync(RawClient client, string name, string sql)
    {
        await client.SendAsync([.. RawProtocol.Parse(name, sql), .. RawProtocol.Sync()]);
        string? sqlState = null;
        while (true)
        {
            (byte type, byte[] body) = await client.ReadMessageAsync(Patience);
            if (type == 'E')
            {
                sqlState = Field(body, 'C');
            }
            else if (type == 'Z')
            {
                return sqlState;
            }
        }
    }

    /// <summary>Reads until the proxy closes; the SQLSTATE and message of the FATAL it sent first.</summary>
    private static async Task<(string? SqlState, string? Message)> ReadFatalAsync(RawClient client)
    {
        (byte[] data, bool closed) = await client.ReadUntilCloseAsync(Patience);
        Assert.True(closed, "the proxy did not close the session");
        int at = 0;
        while (at + 5 <= data.Length)
        {
            int length = BinaryPrimitives.ReadInt32BigEndian(data.AsSpan(at + 1));
            byte[] body = data.AsSpan(at + 5, Math.Min(length - 4, data.Length - at - 5)).ToArray();
            if (data[at] == 'E' && Field(body, 'V') == "FATAL")
            {
                return (Field(body, 'C'), Field(body, 'M'));
            }

            at += 1 + length;
        }

        return (null, null);
    }

    private static string? Field(byte[] errorBody, char code) =>
        RawProtocol.Fields(errorBody).Where(f => f.Code == code).Select(f => f.Value).FirstOrDefault();

    /// <summary>Reads messages until the answer to the trailing "select 7" (its ReadyForQuery) or a close.</summary>
    private static async Task<(List<(byte Type, byte[] Body)> Replies, bool Closed)> ReadToAnswerOrCloseAsync(RawClient client)
    {
        var replies = new List<(byte Type, byte[] Body)>();
        bool sawSeven = false;
        while (true)
        {
            (byte Type, byte[] Body) message;
            try
            {
                message = await client.ReadMessageAsync(Patience);
            }
            catch (InvalidOperationException)
            {
                return (replies, true);
            }

            replies.Add(message);
            if (message.Type == 'D' && Encoding.ASCII.GetString(message.Body).EndsWith('7'))
            {
                sawSeven = true;
            }
            else if (message.Type == 'Z' && sawSeven)
            {
                return (replies, false);
            }
        }
    }

    /// <summary>The bystanders saw no error, every pooled backend still works, and every buffer is back.</summary>
    private static async Task AssertOthersUnharmedAsync(ProxyHarness proxy, Bystanders bystanders, int poolSize)
    {
        await bystanders.StopAndAssertNoErrorsAsync();
        await AssertEveryBackendWorksAsync(proxy, poolSize);
        Assert.Equal(0, await BufferReturnTests.BuffersInUseOnceIdleAsync(proxy));
    }

    /// <summary>Runs a query that lasts a moment on as many connections at once as the pool has backends, so every backend serves one.</summary>
    private static async Task AssertEveryBackendWorksAsync(ProxyHarness proxy, int poolSize)
    {
        var connections = new List<NpgsqlConnection>();
        try
        {
            for (int i = 0; i < poolSize; i++)
            {
                connections.Add(await proxy.OpenAsync(PostgresServer.TrustUser));
            }

            object?[] results = await Task.WhenAll(connections.Select(async connection =>
            {
                await using var command = new NpgsqlCommand("select 1 from pg_sleep(0.3)", connection);
                return await command.ExecuteScalarAsync();
            }));
            Assert.All(results, r => Assert.Equal(1, r));
        }
        finally
        {
            foreach (NpgsqlConnection connection in connections)
            {
                await connection.DisposeAsync();
            }
        }
    }

    private static long BuffersInUse(ProxyHarness proxy) => proxy.Server.Loops.Loops.Sum(l => l.Buffers.InUse);

    private static async Task WaitUntilAsync(Func<bool> condition, string failure)
    {
        DateTime deadline = DateTime.UtcNow + Patience;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, failure);
            await Task.Delay(50);
        }
    }

    /// <summary>Clients looping a query through the proxy while a test attacks it; each error is kept.</summary>
    private sealed class Bystanders : IAsyncDisposable
    {
        private readonly CancellationTokenSource _stop = new();
        private readonly ConcurrentQueue<Exception> _errors = new();
        private readonly Task[] _loops;
        private long _queries;

        private Bystanders(ProxyHarness proxy, int clients) =>
            _loops = Enumerable.Range(0, clients).Select(_ => Task.Run(() => LoopAsync(proxy))).ToArray();

        /// <summary>Starts the loops and waits until they have run some queries.</summary>
        public static async Task<Bystanders> StartAsync(ProxyHarness proxy, int clients)
        {
            var bystanders = new Bystanders(proxy, clients);
            await WaitUntilAsync(() => Interlocked.Read(ref bystanders._queries) >= 10 * clients || !bystanders._errors.IsEmpty, "the bystanders ran no query");
            return bystanders;
        }

        private async Task LoopAsync(ProxyHarness proxy)
        {
            try
            {
                await using NpgsqlConnection connection = await proxy.OpenAsync(PostgresServer.TrustUser);
                while (!_stop.IsCancellationRequested)
                {
                    await using var command = new NpgsqlCommand("select 42", connection);
                    if (!Equals(await command.ExecuteScalarAsync(), 42))
                    {
                        throw new InvalidOperationException("select 42 did not return 42");
                    }

                    Interlocked.Increment(ref _queries);
                }
            }
            catch (Exception e)
            {
                _errors.Enqueue(e);
            }
        }

        public async Task StopAndAssertNoErrorsAsync()
        {
            await _stop.CancelAsync();
            await Task.WhenAll(_loops).WaitAsync(Patience);
            Assert.True(_errors.IsEmpty, $"bystanders saw {_errors.Count} errors after {Interlocked.Read(ref _queries)} queries: {string.Join("; ", _errors.Select(e => e.Message))}");
            Assert.True(Interlocked.Read(ref _queries) > 0, "the bystanders ran no query");
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            await Task.WhenAll(_loops).WaitAsync(Patience).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            _stop.Dispose();
        }
    }
}
