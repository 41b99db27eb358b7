using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using FastPgProxy.Cancellation;
using FastPgProxy.Sessions;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// The first packet of a connection, from raw sockets: every malformed or hostile start-up gets PostgreSQL's
/// answer (an ErrorResponse, or for a CancelRequest nothing at all) and a close, and the proxy keeps serving.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class StartupTests(PostgresFixture fixture) : IAsyncLifetime
{
    /// <summary>CancelRequest code: 1234 in the high 16 bits, 5678 in the low (protocol 55.7).</summary>
    private const int CancelRequestCode = 80877102;

    /// <summary>Generous bound on every reply and close; a healthy proxy answers in milliseconds.</summary>
    private static readonly TimeSpan ReplyTimeout = TimeSpan.FromSeconds(15);

    private readonly PostgresServer _pg = fixture.Server;
    private ProxyHarness _proxy = null!;

    public Task InitializeAsync()
    {
        _proxy = ProxyHarness.Start(_pg);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _proxy.DisposeAsync();

    [Theory]
    [InlineData(4, 3 << 16, "08P01")]
    [InlineData(0, 3 << 16, "08P01")]
    [InlineData(-1, 3 << 16, "08P01")]
    [InlineData(10_001, 3 << 16, "08P01")]
    [InlineData(8, (1234 << 16) | 9999, "08P01")]
    [InlineData(8, 2 << 16, "0A000")]
    public async Task Bad_start_up_packet_gets_an_error_and_is_closed(int length, int code, string sqlState)
    {
        await AssertRejectedAsync(_proxy, RawProtocol.Packet(length, code), sqlState);
        await AssertServesAsync(_proxy);
    }

    [Fact]
    public async Task Start_up_parameters_without_the_final_terminator_get_08P01()
    {
        byte[] body = Encoding.UTF8.GetBytes("user\0postgres\0");
        await AssertRejectedAsync(_proxy, RawProtocol.Packet(8 + body.Length, 3 << 16, body), "08P01");
        await AssertServesAsync(_proxy);
    }

    [Fact]
    public async Task Truncated_packet_then_half_close_is_closed()
    {
        await AssertTruncatedPacketClosedAsync(_proxy);
        await AssertServesAsync(_proxy);
    }

    [Fact]
    public async Task Cancel_request_without_a_key_is_dropped_silently_and_counted_as_malformed()
    {
        await AssertCancelDroppedAsync(_proxy, ShortCancel(), stats => stats.Malformed);
        await AssertServesAsync(_proxy);
    }

    [Fact]
    public async Task Cancel_request_with_a_300_byte_key_is_dropped_silently_and_counted_as_malformed()
    {
        await AssertCancelDroppedAsync(_proxy, LongKeyCancel(), stats => stats.Malformed);
        await AssertServesAsync(_proxy);
    }

    [Fact]
    public async Task Cancel_request_for_an_unknown_session_is_dropped_silently_and_counted()
    {
        await AssertCancelDroppedAsync(_proxy, UnknownSessionCancel(_proxy), stats => stats.UnknownSession);
        await AssertServesAsync(_proxy);
    }

    [Fact]
    public async Task Cancel_request_with_a_wrong_key_is_dropped_silently_and_counted()
    {
        await AssertWrongKeyCancelDroppedAsync(_proxy);
        await AssertServesAsync(_proxy);
    }

    [Fact]
    public async Task SslRequest_gets_N_and_then_a_trust_login_completes_by_hand()
    {
        await AssertSslThenLoginAsync(_proxy);
        await AssertServesAsync(_proxy);
    }

    [Fact]
    public async Task SslRequest_followed_by_more_bytes_in_the_same_send_gets_08P01()
    {
        await AssertSslWithTrailingBytesRejectedAsync(_proxy);
        await AssertServesAsync(_proxy);
    }

    [Fact]
    public async Task Second_SslRequest_after_N_gets_an_error_and_is_closed_like_PostgreSQL()
    {
        // PostgreSQL answers an SSLRequest only once; a second one is an unsupported protocol (FATAL 0A000,
        // "unsupported frontend protocol 1234.5679"), so a client cannot loop on it until the login timeout.
        using Socket raw = await _proxy.ConnectRawAsync();
        await raw.SendAsync(RawProtocol.SslRequest());
        var answer = new byte[1];
        using (var cts = new CancellationTokenSource(ReplyTimeout))
        {
            Assert.True(await RawProtocol.ReadExactlyAsync(raw, answer, cts.Token));
        }

        Assert.Equal((byte)'N', answer[0]);
        await raw.SendAsync(RawProtocol.SslRequest());
        (byte[] data, bool closed) = await RawProtocol.ReadUntilCloseAsync(raw, ReplyTimeout);
        Assert.True(closed, $"a second SSLRequest was answered with {Convert.ToHexString(data)} and the connection kept open");
        string? sqlState = RawProtocol.ErrorCode(data);
        Assert.True(sqlState is "0A000" or "08P01", $"second SSLRequest got SQLSTATE {sqlState ?? "(none)"}");
        await AssertServesAsync(_proxy);
    }

    [Fact]
    public async Task GssEncRequest_gets_N_and_then_a_login_completes()
    {
        using Socket raw = await _proxy.ConnectRawAsync();
        await raw.SendAsync(RawProtocol.Packet(8, 80877104));
        var answer = new byte[1];
        using (var cts = new CancellationTokenSource(ReplyTimeout))
        {
            Assert.True(await RawProtocol.ReadExactlyAsync(raw, answer, cts.Token));
        }

        Assert.Equal((byte)'N', answer[0]);
        await raw.SendAsync(RawProtocol.Startup(("user", PostgresServer.Superuser), ("database", PostgresServer.Database)));
        AssertLoginCompleted(_proxy, await ReadUntilReadyAsync(raw), 0);
    }

    [Fact]
    public async Task Start_up_packet_sent_one_byte_at_a_time_logs_in()
    {
        using Socket raw = await _proxy.ConnectRawAsync();
        raw.NoDelay = true;
        foreach (byte b in RawProtocol.Startup(("user", PostgresServer.Superuser), ("database", PostgresServer.Database)))
        {
            await raw.SendAsync(new[] { b });
        }

        AssertLoginCompleted(_proxy, await ReadUntilReadyAsync(raw), 0);
    }

    [Fact]
    public async Task Query_sent_behind_the_start_up_packet_in_the_same_send_is_answered()
    {
        byte[] startup = RawProtocol.Startup(("user", PostgresServer.Superuser), ("database", PostgresServer.Database));
        byte[] sql = Encoding.UTF8.GetBytes("SELECT 'pipelined'\0");
        var query = new byte[1 + sizeof(int) + sql.Length];
        query[0] = (byte)'Q';
        BinaryPrimitives.WriteInt32BigEndian(query.AsSpan(1), sizeof(int) + sql.Length);
        sql.CopyTo(query, 1 + sizeof(int));

        using Socket raw = await _proxy.ConnectRawAsync();
        await raw.SendAsync((byte[])[.. startup, .. query]);
        AssertLoginCompleted(_proxy, await ReadUntilReadyAsync(raw), 0);
        List<(byte Type, byte[] Body)> result = await ReadUntilReadyAsync(raw);
        Assert.Equal("TDCZ", string.Concat(result.Select(m => (char)m.Type)));
        Assert.EndsWith("pipelined", Encoding.UTF8.GetString(result[1].Body), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Protocol_3_2_with_a_pq_option_gets_NegotiateProtocolVersion_before_the_login_completes()
    {
        await AssertNegotiateProtocolVersionAsync(_proxy);
        await AssertServesAsync(_proxy);
    }

    [Fact]
    public async Task Missing_or_empty_user_gets_28000()
    {
        await AssertRejectedAsync(_proxy, RawProtocol.Startup(("database", PostgresServer.Database)), "28000");
        await AssertRejectedAsync(_proxy, RawProtocol.Startup(("user", string.Empty), ("database", PostgresServer.Database)), "28000");
        await AssertServesAsync(_proxy);
    }

    [Fact]
    public async Task Silent_client_is_closed_after_client_login_timeout()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o => o.ClientLoginTimeout = TimeSpan.FromSeconds(1));
        await AssertSilentClientClosedAsync(proxy);
        await AssertServesAsync(proxy);
    }

    [Fact]
    public async Task Client_that_stops_in_the_middle_of_authentication_is_closed_after_client_login_timeout()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(
            _pg,
            o =>
            {
                o.ClientLoginTimeout = TimeSpan.FromSeconds(1);
                o.AuthType = FastPgProxy.Config.AuthType.Md5;
            },
            [(PostgresServer.Md5User, PostgresServer.Md5Password)]);
        using Socket raw = await proxy.ConnectRawAsync();
        await raw.SendAsync(RawProtocol.Startup(("user", PostgresServer.Md5User), ("database", PostgresServer.Database)));
        (byte Type, byte[] Body)? challenge = await RawProtocol.ReadMessageAsync(raw, ReplyTimeout);
        Assert.NotNull(challenge);
        Assert.Equal((byte)'R', challenge.Value.Type);
        Assert.Equal(5, BinaryPrimitives.ReadInt32BigEndian(challenge.Value.Body));

        var sw = Stopwatch.StartNew();
        (byte[] _, bool closed) = await RawProtocol.ReadUntilCloseAsync(raw, ReplyTimeout);
        Assert.True(closed, "a client silent after the md5 challenge was not closed within 15 s");
        Assert.True(sw.Elapsed < ReplyTimeout);
    }

    [Fact]
    public async Task Third_client_over_MaxClientConnections_gets_53300_and_a_freed_slot_is_reused()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o => o.MaxClientConnections = 2);
        await AssertTooManyClientsAsync(proxy);
        await AssertServesAsync(proxy);
    }

    /// <summary>
    /// Connections that have not finished logging in count against max_client_conn: with two of them open
    /// (one byte of a start-up packet each), a third client gets 53300 for its StartupMessage; once they
    /// are gone it logs in. (max_login_clients is raised so that the third is not refused at accept.)
    /// </summary>
    [Fact]
    public async Task Connections_still_logging_in_count_against_max_client_conn()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o =>
        {
            o.MaxClientConnections = 2;
            o.MaxLoginClients = 10;
        });
        List<Socket> halfOpen = await OpenHalfOpenAsync(proxy, 2);
        try
        {
            var e = await Assert.ThrowsAsync<PostgresException>(() => proxy.OpenAsync());
            Assert.Equal("53300", e.SqlState);
        }
        finally
        {
            await CloseHalfOpenAsync(halfOpen);
        }

        await AssertServesAsync(proxy);
    }

    /// <summary>
    /// At most max_login_clients connections may be logging in at once (by default max_client_conn, 100):
    /// the next one gets FATAL 53300 at once and is closed, without a byte read from it. Once those logins
    /// are gone, clients log in again.
    /// </summary>
    [Fact]
    public async Task Connections_over_max_login_clients_are_refused_at_once()
    {
        const int maxLoginClients = 100;
        await using ProxyHarness proxy = ProxyHarness.Start(_pg);
        Assert.Equal(maxLoginClients, proxy.Server.Options.EffectiveMaxLoginClients);
        List<Socket> halfOpen = await OpenHalfOpenAsync(proxy, maxLoginClients);
        try
        {
            using Socket refused = await proxy.ConnectRawAsync();
            (byte[] data, bool closed) = await RawProtocol.ReadUntilCloseAsync(refused, ReplyTimeout);
            Assert.True(closed, "a connection over max_login_clients was kept open");
            Assert.Equal("53300", RawProtocol.ErrorCode(data));
            Assert.Equal("sorry, too many clients already", RawProtocol.ErrorField(data, (byte)'M'));
            Assert.Equal(1, proxy.Server.Admission.Refused);
            Assert.Equal(maxLoginClients, proxy.Server.Admission.LoggingIn);
        }
        finally
        {
            await CloseHalfOpenAsync(halfOpen);
        }

        Assert.Equal(0, proxy.Server.Admission.Connections);
        await AssertServesAsync(proxy);
    }

    /// <summary>Opens <paramref name="count"/> connections that each send one byte of a start-up packet and wait.</summary>
    private static async Task<List<Socket>> OpenHalfOpenAsync(ProxyHarness proxy, int count)
    {
        var sockets = new List<Socket>(count);
        try
        {
            for (int i = 0; i < count; i++)
            {
                Socket socket = await proxy.ConnectRawAsync();
                sockets.Add(socket);
                await socket.SendAsync(new byte[] { 0 });
            }
        }
        catch
        {
            await CloseHalfOpenAsync(sockets);
            throw;
        }

        return sockets;
    }

    /// <summary>Ends each half-open connection and waits until the proxy has closed its side too.</summary>
    private static async Task CloseHalfOpenAsync(List<Socket> sockets)
    {
        foreach (Socket socket in sockets)
        {
            using (socket)
            {
                socket.Shutdown(SocketShutdown.Send);
                (byte[] _, bool closed) = await RawProtocol.ReadUntilCloseAsync(socket, ReplyTimeout);
                Assert.True(closed, "the proxy did not close a connection whose client had left");
            }
        }
    }

    [Fact]
    public async Task Every_hostile_start_up_in_a_row_then_an_ordinary_query_still_works()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o =>
        {
            o.ClientLoginTimeout = TimeSpan.FromSeconds(1);
            o.MaxClientConnections = 2;
        });
        await AssertRejectedAsync(proxy, RawProtocol.Packet(4, 3 << 16), "08P01");
        await AssertRejectedAsync(proxy, RawProtocol.Packet(10_001, 3 << 16), "08P01");
        await AssertRejectedAsync(proxy, RawProtocol.Packet(0, 3 << 16), "08P01");
        await AssertRejectedAsync(proxy, RawProtocol.Packet(8, (1234 << 16) | 9999), "08P01");
        await AssertRejectedAsync(proxy, RawProtocol.Packet(8, 2 << 16), "0A000");
        await AssertTruncatedPacketClosedAsync(proxy);
        await AssertCancelDroppedAsync(proxy, ShortCancel(), stats => stats.Malformed);
        await AssertCancelDroppedAsync(proxy, LongKeyCancel(), stats => stats.Malformed);
        await AssertCancelDroppedAsync(proxy, UnknownSessionCancel(proxy), stats => stats.UnknownSession);
        await AssertWrongKeyCancelDroppedAsync(proxy);
        await AssertSslThenLoginAsync(proxy);
        await AssertSslWithTrailingBytesRejectedAsync(proxy);
        await AssertNegotiateProtocolVersionAsync(proxy);
        await AssertSilentClientClosedAsync(proxy);
        await AssertRejectedAsync(proxy, RawProtocol.Startup(("database", PostgresServer.Database)), "28000");
        await WaitForNoSessionsAsync(proxy);
        await AssertTooManyClientsAsync(proxy);
        await WaitForNoSessionsAsync(proxy);

        await AssertServesAsync(proxy);
        Assert.Equal(4, proxy.Server.CancelStats.Received);
    }

    [Fact]
    public async Task Two_hundred_concurrent_garbage_connections_then_an_ordinary_query_works()
    {
        const int connections = 200;
        var random = new Random(20_240_611);
        var payloads = new byte[connections][];
        for (int i = 0; i < connections; i++)
        {
            payloads[i] = new byte[random.Next(1, 400)];
            random.NextBytes(payloads[i]);
        }

        // Half the clients half-close and wait for the proxy's close; the others vanish at once.
        Task[] clients = Enumerable.Range(0, connections).Select(i => Task.Run(async () =>
        {
            using Socket raw = await _proxy.ConnectRawAsync();
            try
            {
                await raw.SendAsync(payloads[i]);
            }
            catch (SocketException)
            {
                // The proxy may already have answered and closed (a bad length word in the first bytes).
                return;
            }

            if (i % 2 == 1)
            {
                return;
            }

            raw.Shutdown(SocketShutdown.Send);
            (byte[] data, bool closed) = await RawProtocol.ReadUntilCloseAsync(raw, ReplyTimeout);
            Assert.True(closed, $"garbage connection {i} was not closed");
            Assert.True(data.Length == 0 || data[0] == (byte)'E', $"garbage connection {i} got {Convert.ToHexString(data)}");
        })).ToArray();
        await Task.WhenAll(clients).WaitAsync(TimeSpan.FromSeconds(30));

        await AssertServesAsync(_proxy);
        await WaitForNoSessionsAsync(_proxy);
    }

    private static byte[] ShortCancel()
    {
        var pid = new byte[sizeof(int)];
        BinaryPrimitives.WriteInt32BigEndian(pid, 1);
        return RawProtocol.Packet(12, CancelRequestCode, pid);
    }

    private static byte[] LongKeyCancel()
    {
        var rest = new byte[sizeof(int) + 300];
        BinaryPrimitives.WriteInt32BigEndian(rest, 1);
        rest.AsSpan(sizeof(int)).Fill(0x5A);
        return RawProtocol.Packet(8 + rest.Length, CancelRequestCode, rest);
    }

    private static byte[] UnknownSessionCancel(ProxyHarness proxy)
    {
        const int pid = int.MaxValue - 7;
        Assert.False(proxy.Server.Sessions.TryGet(pid, out _));
        return RawProtocol.CancelRequest(pid, 0x1234);
    }

    private static async Task AssertRejectedAsync(ProxyHarness proxy, byte[] packet, string sqlState)
    {
        using Socket raw = await proxy.ConnectRawAsync();
        await raw.SendAsync(packet);
        (byte[] data, bool closed) = await RawProtocol.ReadUntilCloseAsync(raw, ReplyTimeout);
        Assert.True(closed, $"the proxy did not close after answering {Convert.ToHexString(packet.AsSpan(0, Math.Min(packet.Length, 16)))}");
        Assert.Equal(sqlState, RawProtocol.ErrorCode(data));
        Assert.Equal("FATAL", RawProtocol.ErrorField(data, (byte)'S'));
    }

    private static async Task AssertTruncatedPacketClosedAsync(ProxyHarness proxy)
    {
        using Socket raw = await proxy.ConnectRawAsync();
        byte[] packet = RawProtocol.Packet(100, 3 << 16, Encoding.ASCII.GetBytes("user\0postgre"));
        Assert.Equal(20, packet.Length);
        await raw.SendAsync(packet);
        raw.Shutdown(SocketShutdown.Send);
        (byte[] _, bool closed) = await RawProtocol.ReadUntilCloseAsync(raw, ReplyTimeout);
        Assert.True(closed, "a truncated start-up packet followed by a half-close was not closed");
    }

    private static async Task AssertCancelDroppedAsync(ProxyHarness proxy, byte[] packet, Func<CancelStats, long> counter)
    {
        long before = counter(proxy.Server.CancelStats);
        long forwardedBefore = proxy.Server.CancelStats.Forwarded;
        using Socket raw = await proxy.ConnectRawAsync();
        await raw.SendAsync(packet);
        (byte[] data, bool closed) = await RawProtocol.ReadUntilCloseAsync(raw, ReplyTimeout);
        Assert.True(closed, "the proxy kept a bad CancelRequest connection open");
        Assert.Empty(data);
        Assert.Equal(before + 1, counter(proxy.Server.CancelStats));
        Assert.Equal(forwardedBefore, proxy.Server.CancelStats.Forwarded);
    }

    private static async Task AssertWrongKeyCancelDroppedAsync(ProxyHarness proxy)
    {
        await using NpgsqlConnection victim = await proxy.OpenAsync();
        Assert.True(proxy.Server.Sessions.TryGet(victim.ProcessID, out ClientSession? session));
        int key = 0x0BAD_C0DE;
        var keyBytes = new byte[sizeof(int)];
        BinaryPrimitives.WriteInt32BigEndian(keyBytes, key);
        if (session.MatchesSecret(keyBytes))
        {
            key++;
        }

        await AssertCancelDroppedAsync(proxy, RawProtocol.CancelRequest(victim.ProcessID, key), stats => stats.WrongKey);
        await using var cmd = new NpgsqlCommand("SELECT 3", victim);
        Assert.Equal(3, await cmd.ExecuteScalarAsync());
    }

    private static async Task AssertSslThenLoginAsync(ProxyHarness proxy)
    {
        using Socket raw = await proxy.ConnectRawAsync();
        await raw.SendAsync(RawProtocol.SslRequest());
        var answer = new byte[1];
        using (var cts = new CancellationTokenSource(ReplyTimeout))
        {
            Assert.True(await RawProtocol.ReadExactlyAsync(raw, answer, cts.Token), "closed instead of answering SSLRequest");
        }

        Assert.Equal((byte)'N', answer[0]);
        await raw.SendAsync(RawProtocol.Startup(("user", PostgresServer.Superuser), ("database", PostgresServer.Database)));
        List<(byte Type, byte[] Body)> login = await ReadUntilReadyAsync(raw);
        AssertLoginCompleted(proxy, login, 0);

        // Terminate ('X', length 4) ends the session cleanly.
        await raw.SendAsync(new byte[] { (byte)'X', 0, 0, 0, 4 });
        (byte[] _, bool closed) = await RawProtocol.ReadUntilCloseAsync(raw, ReplyTimeout);
        Assert.True(closed);
    }

    private static async Task AssertSslWithTrailingBytesRejectedAsync(ProxyHarness proxy)
    {
        byte[] startup = RawProtocol.Startup(("user", PostgresServer.Superuser), ("database", PostgresServer.Database));
        byte[] both = [.. RawProtocol.SslRequest(), .. startup];
        using Socket raw = await proxy.ConnectRawAsync();
        await raw.SendAsync(both);
        (byte[] data, bool closed) = await RawProtocol.ReadUntilCloseAsync(raw, ReplyTimeout);
        Assert.True(closed);
        Assert.NotEmpty(data);
        Assert.Equal((byte)'E', data[0]);
        Assert.Equal("08P01", RawProtocol.ErrorCode(data));
    }

    private static async Task AssertNegotiateProtocolVersionAsync(ProxyHarness proxy)
    {
        using Socket raw = await proxy.ConnectRawAsync();
        await raw.SendAsync(RawProtocol.StartupWithVersion(
            (3 << 16) | 2,
            ("user", PostgresServer.Superuser),
            ("database", PostgresServer.Database),
            ("_pq_.foo", "bar")));
        List<(byte Type, byte[] Body)> login = await ReadUntilReadyAsync(raw);
        Assert.True(login.Count > 0);
        (byte type, byte[] body) = login[0];
        Assert.Equal((byte)'v', type);

        // The version the session runs (3.2, as PostgreSQL 18 writes it: the whole version word), the number
        // of options not recognized, then their names; a 3.2 client's key is 32 bytes.
        Assert.Equal((3 << 16) | 2, BinaryPrimitives.ReadInt32BigEndian(body));
        Assert.Equal(1, BinaryPrimitives.ReadInt32BigEndian(body.AsSpan(sizeof(int))));
        Assert.Equal("_pq_.foo\0", Encoding.UTF8.GetString(body.AsSpan(2 * sizeof(int))));
        AssertLoginCompleted(proxy, login, 1, keyLength: 32);
    }

    private static async Task AssertSilentClientClosedAsync(ProxyHarness proxy)
    {
        Assert.Equal(TimeSpan.FromSeconds(1), proxy.Server.Options.ClientLoginTimeout);
        using Socket raw = await proxy.ConnectRawAsync();
        var sw = Stopwatch.StartNew();
        (byte[] _, bool closed) = await RawProtocol.ReadUntilCloseAsync(raw, ReplyTimeout);
        Assert.True(closed, "a client that sent nothing was not closed within 15 s of a 1 s client_login_timeout");
        Assert.True(sw.Elapsed < ReplyTimeout, $"closed after {sw.Elapsed}");
    }

    private static async Task AssertTooManyClientsAsync(ProxyHarness proxy)
    {
        Assert.Equal(2, proxy.Server.Options.MaxClientConnections);
        NpgsqlConnection first = await proxy.OpenAsync();
        await using (NpgsqlConnection second = await proxy.OpenAsync())
        {
            var e = await Assert.ThrowsAsync<PostgresException>(() => proxy.OpenAsync());
            Assert.Equal("53300", e.SqlState);
            await using var cmd = new NpgsqlCommand("SELECT 2", second);
            Assert.Equal(2, await cmd.ExecuteScalarAsync());
        }

        // The refused client and the closed one free their slots: two clients fit again.
        await WaitForSessionCountAsync(proxy, 1);
        await using (NpgsqlConnection again = await proxy.OpenAsync())
        {
            await using var cmd = new NpgsqlCommand("SELECT 1", again);
            Assert.Equal(1, await cmd.ExecuteScalarAsync());
        }

        await first.DisposeAsync();
    }

    /// <summary>Reads messages up to ReadyForQuery; fails on an early close or an ErrorResponse.</summary>
    private static async Task<List<(byte Type, byte[] Body)>> ReadUntilReadyAsync(Socket raw)
    {
        var messages = new List<(byte Type, byte[] Body)>();
        while (true)
        {
            (byte Type, byte[] Body)? message = await RawProtocol.ReadMessageAsync(raw, ReplyTimeout);
            Assert.True(message.HasValue, $"closed during login after {string.Concat(messages.Select(m => (char)m.Type))}");
            messages.Add(message.Value);
            if (message.Value.Type == (byte)'E')
            {
                byte[] error = [(byte)'E', 0, 0, 0, 0, .. message.Value.Body];
                BinaryPrimitives.WriteInt32BigEndian(error.AsSpan(1), message.Value.Body.Length + 4);
                Assert.Fail($"login failed: {RawProtocol.ErrorCode(error)} {RawProtocol.ErrorField(error, (byte)'M')}");
            }

            if (message.Value.Type == (byte)'Z')
            {
                return messages;
            }
        }
    }

    /// <summary>
    /// AuthenticationOk, ParameterStatus messages, one BackendKeyData with a key of <paramref name="keyLength"/>
    /// bytes (4 for protocol 3.0) that belongs to a live proxy session, then ReadyForQuery (protocol 55.2.2),
    /// starting at <paramref name="start"/>.
    /// </summary>
    private static void AssertLoginCompleted(ProxyHarness proxy, List<(byte Type, byte[] Body)> login, int start, int keyLength = 4)
    {
        (byte authType, byte[] authBody) = login[start];
        Assert.Equal((byte)'R', authType);
        Assert.Equal(4, authBody.Length);
        Assert.Equal(0, BinaryPrimitives.ReadInt32BigEndian(authBody));

        List<(byte Type, byte[] Body)> rest = login.Skip(start + 1).ToList();
        Assert.Contains(rest, m => m.Type == (byte)'S');
        (byte Type, byte[] Body) key = Assert.Single(rest, m => m.Type == (byte)'K');
        Assert.Equal(sizeof(int) + keyLength, key.Body.Length);
        int pid = BinaryPrimitives.ReadInt32BigEndian(key.Body);
        Assert.True(proxy.Server.Sessions.TryGet(pid, out ClientSession? session), $"BackendKeyData names pid {pid}, which is no live session");
        Assert.True(session.MatchesSecret(key.Body.AsSpan(sizeof(int))));

        (byte Type, byte[] Body) ready = rest[^1];
        Assert.Equal((byte)'Z', ready.Type);
        Assert.Equal(new[] { (byte)'I' }, ready.Body);
        Assert.All(rest, m => Assert.Contains((char)m.Type, "SKZ"));
    }

    private static async Task AssertServesAsync(ProxyHarness proxy)
    {
        await using NpgsqlConnection c = await proxy.OpenAsync();
        await using var cmd = new NpgsqlCommand("SELECT 'still serving'", c);
        Assert.Equal("still serving", await cmd.ExecuteScalarAsync());
    }

    private static Task WaitForNoSessionsAsync(ProxyHarness proxy) => WaitForSessionCountAsync(proxy, 0);

    private static async Task WaitForSessionCountAsync(ProxyHarness proxy, int atMost)
    {
        var deadline = Stopwatch.StartNew();
        while (proxy.Server.Sessions.Count > atMost)
        {
            Assert.True(deadline.Elapsed < ReplyTimeout, $"{proxy.Server.Sessions.Count} sessions still registered, expected at most {atMost}");
            await Task.Delay(20);
        }
    }
}
