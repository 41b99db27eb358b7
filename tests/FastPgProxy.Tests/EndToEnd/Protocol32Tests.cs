using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using FastPgProxy.Config;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;
using FastPgProxy.Sessions;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>Raw-socket helpers shared by the protocol 3.2 tests.</summary>
internal static class Protocol32
{
    /// <summary>Protocol 3.0, 3.1, 3.2 and PostgreSQL 19's libpq's grease version 3.9999 as StartupMessage words.</summary>
    public const int V30 = 3 << 16, V31 = (3 << 16) | 1, V32 = (3 << 16) | 2, V39999 = (3 << 16) | 9999;

    /// <summary>Generous bound on every reply and close; a healthy proxy answers in milliseconds.</summary>
    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);

    /// <summary>Sends a StartupMessage for <paramref name="version"/> and reads up to ReadyForQuery; fails on an ErrorResponse.</summary>
    public static async Task<(Socket Socket, List<(byte Type, byte[] Body)> Login)> LoginAsync(ProxyHarness proxy, int version, params (string Name, string Value)[] extra)
    {
        Socket raw = await proxy.ConnectRawAsync();
        try
        {
            await raw.SendAsync(RawProtocol.StartupWithVersion(version, [("user", PostgresServer.Superuser), ("database", PostgresServer.Database), .. extra]));
            List<(byte Type, byte[] Body)> login = await RawProtocol.ReadUntilReadyAsync(raw, Patience);
            Assert.DoesNotContain(login, m => m.Type == (byte)'E');
            return (raw, login);
        }
        catch
        {
            raw.Dispose();
            throw;
        }
    }

    /// <summary>The pid and key of the one BackendKeyData of a login.</summary>
    public static (int Pid, byte[] Key) KeyData(List<(byte Type, byte[] Body)> login)
    {
        (byte _, byte[] body) = Assert.Single(login, m => m.Type == (byte)'K');
        return (BinaryPrimitives.ReadInt32BigEndian(body), body[sizeof(int)..]);
    }

    /// <summary>Sends <paramref name="packet"/> on a new connection and waits for the proxy's close; nothing may come back.</summary>
    public static async Task SendCancelAsync(ProxyHarness proxy, byte[] packet)
    {
        using Socket raw = await proxy.ConnectRawAsync();
        await raw.SendAsync(packet);
        (byte[] data, bool closed) = await RawProtocol.ReadUntilCloseAsync(raw, Patience);
        Assert.True(closed, "the proxy kept a cancel connection open");
        Assert.Empty(data);
    }

    /// <summary>The SQLSTATE of the ErrorResponse among <paramref name="messages"/>, or null.</summary>
    public static string? ErrorCode(List<(byte Type, byte[] Body)> messages) =>
        messages.Where(m => m.Type == (byte)'E').Select(m => RawProtocol.Fields(m.Body).FirstOrDefault(f => f.Code == 'C').Value).FirstOrDefault();
}

/// <summary>
/// Protocol 3.2 (PostgreSQL 18) towards clients, through raw sockets in front of the real PostgreSQL 15: the
/// version is taken as PostgreSQL 18 takes it, a 3.2 client's BackendKeyData carries 32 random bytes, a 3.0
/// client's 4, and a cancel must present exactly the key it was given.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class Protocol32Tests(PostgresFixture fixture) : IAsyncLifetime
{
    private readonly PostgresServer _pg = fixture.Server;
    private ProxyHarness _proxy = null!;

    public Task InitializeAsync()
    {
        // SHOW CANCELS needs a console user.
        _proxy = ProxyHarness.Start(_pg, o => o.StatsUsers.Add(PostgresServer.Superuser));
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _proxy.DisposeAsync();

    [Theory]
    [InlineData(Protocol32.V32, 32)]
    [InlineData(Protocol32.V30, 4)]
    [InlineData(Protocol32.V31, 4)] // PostgreSQL 18: 3.1 is below LATEST, so no NegotiateProtocolVersion, and below 3.2, so a 4-byte key
    public async Task StartupMessage_gets_no_NegotiateProtocolVersion_and_a_key_of_the_length_PostgreSQL_18_gives(int version, int keyLength)
    {
        (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(_proxy, version);
        using (raw)
        {
            Assert.DoesNotContain(login, m => m.Type == (byte)'v');
            Assert.Equal((byte)'R', login[0].Type);
            (int pid, byte[] key) = Protocol32.KeyData(login);
            Assert.Equal(keyLength, key.Length);
            Assert.True(_proxy.Server.Sessions.TryGet(pid, out ClientSession? session));
            Assert.True(session.MatchesSecret(key));
            Assert.Equal(key, session.Secret);

            // The session works, and pg_backend_pid() is still the BackendKeyData's pid.
            await raw.SendAsync(RawProtocol.Query("SELECT pg_backend_pid()"));
            List<(byte Type, byte[] Body)> reply = await RawProtocol.ReadUntilReadyAsync(raw, Protocol32.Patience);
            (byte _, byte[] row) = Assert.Single(reply, m => m.Type == (byte)'D');
            Assert.Equal(pid.ToString(System.Globalization.CultureInfo.InvariantCulture), Encoding.ASCII.GetString(row, 6, row.Length - 6));
        }
    }

    [Theory]
    [InlineData(Protocol32.V32, 32)]
    [InlineData(Protocol32.V30, 4)]
    public async Task The_admin_console_gives_a_key_of_the_same_length(int version, int keyLength)
    {
        using Socket raw = await _proxy.ConnectRawAsync();
        await raw.SendAsync(RawProtocol.StartupWithVersion(version, ("user", PostgresServer.Superuser), ("database", "fastpgproxy")));
        List<(byte Type, byte[] Body)> login = await RawProtocol.ReadUntilReadyAsync(raw, Protocol32.Patience);
        Assert.DoesNotContain(login, m => m.Type is (byte)'v' or (byte)'E');
        (int pid, byte[] key) = Protocol32.KeyData(login);
        Assert.Equal(keyLength, key.Length);
        Assert.True(_proxy.Server.Sessions.TryGet(pid, out ClientSession? session));
        Assert.True(session.MatchesSecret(key));
    }

    [Fact]
    public async Task Two_3_2_clients_get_different_random_keys()
    {
        (Socket a, List<(byte Type, byte[] Body)> loginA) = await Protocol32.LoginAsync(_proxy, Protocol32.V32);
        (Socket b, List<(byte Type, byte[] Body)> loginB) = await Protocol32.LoginAsync(_proxy, Protocol32.V32);
        using (a)
        using (b)
        {
            Assert.NotEqual(Protocol32.KeyData(loginA).Key, Protocol32.KeyData(loginB).Key);
        }
    }

    [Fact]
    public async Task A_3_9999_request_gets_NegotiateProtocolVersion_naming_3_2_and_the_login_completes()
    {
        // PostgreSQL 19's libpq sends 3.9999 to check that servers negotiate; PostgreSQL 18 answers 3.2.
        (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(_proxy, Protocol32.V39999);
        using (raw)
        {
            (byte type, byte[] body) = login[0];
            Assert.Equal((byte)'v', type);
            Assert.Equal(8, body.Length);
            Assert.Equal(196610, BinaryPrimitives.ReadInt32BigEndian(body));
            Assert.Equal(0, BinaryPrimitives.ReadInt32BigEndian(body.AsSpan(sizeof(int))));
            Assert.Equal((byte)'R', login[1].Type);
            Assert.Equal((byte)'Z', login[^1].Type);
            Assert.Equal(32, Protocol32.KeyData(login).Key.Length);
        }
    }

    [Fact]
    public async Task A_3_9999_request_with_pq_options_gets_3_2_and_the_options_named()
    {
        (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(_proxy, Protocol32.V39999, ("_pq_.a", "1"), ("_pq_.b", "2"));
        using (raw)
        {
            (byte type, byte[] body) = login[0];
            Assert.Equal((byte)'v', type);
            Assert.Equal(196610, BinaryPrimitives.ReadInt32BigEndian(body));
            Assert.Equal(2, BinaryPrimitives.ReadInt32BigEndian(body.AsSpan(sizeof(int))));
            Assert.Equal("_pq_.a\0_pq_.b\0", Encoding.UTF8.GetString(body.AsSpan(2 * sizeof(int))));
        }
    }

    [Theory]
    [InlineData(2 << 16, "unsupported frontend protocol 2.0: server supports 3.0 to 3.2")]
    [InlineData(4 << 16, "unsupported frontend protocol 4.0: server supports 3.0 to 3.2")]
    public async Task An_unsupported_major_version_is_refused_with_PostgreSQL_18s_words(int version, string message)
    {
        using Socket raw = await _proxy.ConnectRawAsync();
        await raw.SendAsync(RawProtocol.StartupWithVersion(version, ("user", PostgresServer.Superuser)));
        (byte[] data, bool closed) = await RawProtocol.ReadUntilCloseAsync(raw, Protocol32.Patience);
        Assert.True(closed);
        Assert.Equal("0A000", RawProtocol.ErrorCode(data));
        Assert.Equal(message, RawProtocol.ErrorField(data, (byte)'M'));
    }

    [Fact]
    public async Task The_32_byte_key_cancels_a_running_query()
    {
        (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(_proxy, Protocol32.V32);
        using (raw)
        {
            (int pid, byte[] key) = Protocol32.KeyData(login);
            Assert.Equal(32, key.Length);
            long forwardedBefore = _proxy.Server.CancelStats.Forwarded;
            await raw.SendAsync(RawProtocol.Query("SELECT pg_sleep(60) /* p32-cancel */"));
            await WaitRunningAsync("p32-cancel");

            await Protocol32.SendCancelAsync(_proxy, RawProtocol.CancelRequest(pid, key));
            List<(byte Type, byte[] Body)> reply = await RawProtocol.ReadUntilReadyAsync(raw, Protocol32.Patience);
            Assert.Equal("57014", Protocol32.ErrorCode(reply));

            var counted = Stopwatch.StartNew();
            while (_proxy.Server.CancelStats.Forwarded <= forwardedBefore)
            {
                Assert.True(counted.Elapsed < Protocol32.Patience, "the cancel was never counted as forwarded");
                await Task.Delay(10);
            }
        }
    }

    [Fact]
    public async Task The_32_byte_key_with_one_bit_flipped_does_not_cancel_and_counts_as_a_wrong_key()
    {
        (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(_proxy, Protocol32.V32);
        using (raw)
        {
            (int pid, byte[] key) = Protocol32.KeyData(login);
            byte[] flipped = [.. key];
            flipped[17] ^= 0x08;
            await AssertNotCancelledAsync(raw, pid, flipped, "p32-flipped");
        }
    }

    [Theory]
    [InlineData(4)]
    [InlineData(31)]
    [InlineData(33)]
    [InlineData(256)]
    public async Task A_key_of_a_valid_length_other_than_the_32_bytes_issued_does_not_cancel_and_counts_as_a_wrong_key(int length)
    {
        (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(_proxy, Protocol32.V32);
        using (raw)
        {
            (int pid, byte[] key) = Protocol32.KeyData(login);

            // The issued key's own bytes, cut or padded: only the length is wrong.
            byte[] other = new byte[length];
            key.AsSpan(0, Math.Min(length, key.Length)).CopyTo(other);
            await AssertNotCancelledAsync(raw, pid, other, $"p32-length-{length}");
        }
    }

    [Fact]
    public async Task A_32_byte_key_does_not_cancel_a_3_0_session()
    {
        (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(_proxy, Protocol32.V30);
        using (raw)
        {
            (int pid, byte[] key) = Protocol32.KeyData(login);
            byte[] longer = new byte[32];
            key.CopyTo(longer, 0);
            await AssertNotCancelledAsync(raw, pid, longer, "p32-on-30");
        }
    }

    [Fact]
    public async Task A_257_byte_key_is_malformed_and_closed_and_the_proxy_still_serves()
    {
        (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(_proxy, Protocol32.V32);
        using (raw)
        {
            (int pid, byte[] key) = Protocol32.KeyData(login);
            byte[] tooLong = new byte[257];
            key.CopyTo(tooLong, 0);
            long malformed = _proxy.Server.CancelStats.Malformed;
            long wrong = _proxy.Server.CancelStats.WrongKey;
            await Protocol32.SendCancelAsync(_proxy, RawProtocol.CancelRequest(pid, tooLong));
            Assert.Equal(malformed + 1, _proxy.Server.CancelStats.Malformed);
            Assert.Equal(wrong, _proxy.Server.CancelStats.WrongKey);

            // Both the session and new clients are served.
            await raw.SendAsync(RawProtocol.Query("SELECT 1"));
            Assert.Null(Protocol32.ErrorCode(await RawProtocol.ReadUntilReadyAsync(raw, Protocol32.Patience)));
        }

        await using NpgsqlConnection c = await _proxy.OpenAsync();
        await using var cmd = new NpgsqlCommand("SELECT 'still serving'", c);
        Assert.Equal("still serving", await cmd.ExecuteScalarAsync());
    }

    [Fact]
    public async Task SHOW_CANCELS_counts_a_wrong_long_key()
    {
        (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(_proxy, Protocol32.V32);
        using (raw)
        {
            (int pid, byte[] key) = Protocol32.KeyData(login);
            byte[] flipped = [.. key];
            flipped[0] ^= 0x01;
            long before = await WrongKeysShownAsync();
            await Protocol32.SendCancelAsync(_proxy, RawProtocol.CancelRequest(pid, flipped));
            Assert.Equal(before + 1, await WrongKeysShownAsync());
        }
    }

    [Fact]
    public async Task Backend_logins_ask_PostgreSQL_15_for_3_2_and_go_on_in_the_3_0_it_negotiates()
    {
        await using NpgsqlConnection c = await _proxy.OpenAsync();
        await using (var cmd = new NpgsqlCommand("SELECT 1", c))
        {
            Assert.Equal(1, await cmd.ExecuteScalarAsync());
        }

        List<int> versions = [];
        foreach (ServerPool pool in _proxy.Server.Pools.Pools.ToArray())
        {
            var done = new TaskCompletionSource<int[]>(TaskCreationOptions.RunContinuationsAsynchronously);
            pool.Loop.Post(() => done.SetResult(pool.Servers.Select(s => s.ProtocolVersion).ToArray()));
            versions.AddRange(await done.Task.WaitAsync(Protocol32.Patience));
        }

        Assert.NotEmpty(versions);
        Assert.All(versions, v => Assert.Equal(StartupCodes.Protocol30, v));
    }

    /// <summary>Runs a short sleep, sends a cancel with <paramref name="key"/>, and checks that the query completes and a wrong key was counted.</summary>
    private async Task AssertNotCancelledAsync(Socket raw, int pid, byte[] key, string marker)
    {
        long wrong = _proxy.Server.CancelStats.WrongKey;
        long forwarded = _proxy.Server.CancelStats.Forwarded;
        await raw.SendAsync(RawProtocol.Query($"SELECT pg_sleep(1.5), 'finished' /* {marker} */"));
        await WaitRunningAsync(marker);
        await Protocol32.SendCancelAsync(_proxy, RawProtocol.CancelRequest(pid, key));
        Assert.Equal(wrong + 1, _proxy.Server.CancelStats.WrongKey);

        List<(byte Type, byte[] Body)> reply = await RawProtocol.ReadUntilReadyAsync(raw, Protocol32.Patience);
        Assert.Null(Protocol32.ErrorCode(reply));
        (byte _, byte[] row) = Assert.Single(reply, m => m.Type == (byte)'D');
        Assert.EndsWith("finished", Encoding.UTF8.GetString(row), StringComparison.Ordinal);
        Assert.Equal(forwarded, _proxy.Server.CancelStats.Forwarded);
    }

    /// <summary>The wrong_key row of the admin console's SHOW CANCELS.</summary>
    private async Task<long> WrongKeysShownAsync()
    {
        // No catalog queries at open: the console has no pg_type.
        await using var console = new NpgsqlConnection(_proxy.ConnectionString(database: "fastpgproxy") + ";Server Compatibility Mode=NoTypeLoading");
        await console.OpenAsync();
        await using var cmd = new NpgsqlCommand("SHOW CANCELS", console);
        await using NpgsqlDataReader reader = await cmd.ExecuteReaderAsync();
        while (await reader.ReadAsync())
        {
            if (reader.GetString(0) == "wrong_key")
            {
                return Convert.ToInt64(reader.GetValue(1), System.Globalization.CultureInfo.InvariantCulture);
            }
        }

        throw new InvalidOperationException("SHOW CANCELS has no wrong_key row");
    }

    /// <summary>Waits until PostgreSQL runs a query containing <paramref name="marker"/>.</summary>
    private Task WaitRunningAsync(string marker) => _pg.WaitUntilRunningAsync(marker, Protocol32.Patience);
}

/// <summary>
/// Protocol 3.2 towards PostgreSQL, against <see cref="FakePostmaster"/> (a PostgreSQL 18 stand-in): the proxy
/// asks for 3.2, keeps the backend's 32-byte key whole and cancels with it; a server's NegotiateProtocolVersion
/// is taken down to 3.0 and anything else it may say there fails the login with a clear reason.
/// </summary>
public sealed class Protocol32BackendTests
{
    private static ProxyHarness StartProxy(FakePostmaster fake)
    {
        ProxyOptions options = ProxyHarness.Options();
        options.Databases.Clear();
        options.Databases.Add(new DatabaseOptions { Name = "*", Host = "127.0.0.1", Port = fake.Port });
        return ProxyHarness.Start(options);
    }

    private static async Task<int[]> BackendVersionsAsync(ProxyHarness proxy)
    {
        List<int> versions = [];
        foreach (ServerPool pool in proxy.Server.Pools.Pools.ToArray())
        {
            var done = new TaskCompletionSource<int[]>(TaskCreationOptions.RunContinuationsAsynchronously);
            pool.Loop.Post(() => done.SetResult(pool.Servers.Select(s => s.ProtocolVersion).ToArray()));
            versions.AddRange(await done.Task.WaitAsync(Protocol32.Patience));
        }

        return [.. versions];
    }

    [Fact]
    public async Task The_proxy_asks_for_3_2_and_a_cancel_reaches_the_server_with_its_whole_32_byte_key()
    {
        await using FakePostmaster fake = FakePostmaster.Start();
        await using ProxyHarness proxy = StartProxy(fake);
        (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(proxy, Protocol32.V32);
        using (raw)
        {
            Assert.Equal(196610, Assert.Single(fake.StartupVersions));
            int[] versions = await BackendVersionsAsync(proxy);
            Assert.Equal(196610, Assert.Single(versions));
            (int pid, byte[] key) = Protocol32.KeyData(login);
            Assert.Equal(32, key.Length);

            await raw.SendAsync(RawProtocol.Query("SELECT 1"));
            Assert.Contains(await RawProtocol.ReadUntilReadyAsync(raw, Protocol32.Patience), m => m.Type == (byte)'D');

            await raw.SendAsync(RawProtocol.Query("SELECT pg_sleep(60) /* fake-cancel */"));
            FakePostmaster.Backend backend = await fake.WaitForHeldQueryAsync("fake-cancel", Protocol32.Patience);
            Assert.Equal(32, backend.Key.Length);
            Assert.NotEqual(key, backend.Key);

            await Protocol32.SendCancelAsync(proxy, RawProtocol.CancelRequest(pid, key));
            List<(byte Type, byte[] Body)> reply = await RawProtocol.ReadUntilReadyAsync(raw, Protocol32.Patience);
            Assert.Equal("57014", Protocol32.ErrorCode(reply));

            // The server saw the backend's own pid and its whole key, never the client's.
            (int cancelPid, byte[] cancelKey) = Assert.Single(fake.Cancels);
            Assert.Equal(backend.Pid, cancelPid);
            Assert.Equal(backend.Key, cancelKey);
        }
    }

    [Fact]
    public async Task A_3_0_client_in_front_of_a_3_2_server_gets_4_bytes_and_its_cancel_carries_the_servers_32()
    {
        await using FakePostmaster fake = FakePostmaster.Start();
        await using ProxyHarness proxy = StartProxy(fake);
        (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(proxy, Protocol32.V30);
        using (raw)
        {
            (int pid, byte[] key) = Protocol32.KeyData(login);
            Assert.Equal(4, key.Length);
            await raw.SendAsync(RawProtocol.Query("SELECT pg_sleep(60) /* fake-30 */"));
            FakePostmaster.Backend backend = await fake.WaitForHeldQueryAsync("fake-30", Protocol32.Patience);
            await Protocol32.SendCancelAsync(proxy, RawProtocol.CancelRequest(pid, key));
            Assert.Equal("57014", Protocol32.ErrorCode(await RawProtocol.ReadUntilReadyAsync(raw, Protocol32.Patience)));
            (int cancelPid, byte[] cancelKey) = Assert.Single(fake.Cancels);
            Assert.Equal(backend.Pid, cancelPid);
            Assert.Equal(backend.Key, cancelKey);
        }
    }

    [Fact]
    public async Task A_server_that_negotiates_3_0_is_logged_in_in_3_0()
    {
        // What PostgreSQL 15 answers a 3.2 request with, from the fake so that it is asserted exactly.
        await using FakePostmaster fake = FakePostmaster.Start();
        fake.Negotiate = FakePostmaster.NegotiateBody(StartupCodes.Protocol30);
        fake.KeyLength = 4;
        await using ProxyHarness proxy = StartProxy(fake);
        (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(proxy, Protocol32.V32);
        using (raw)
        {
            Assert.DoesNotContain(login, m => m.Type == (byte)'v');
            Assert.Equal(32, Protocol32.KeyData(login).Key.Length);
            int[] versions = await BackendVersionsAsync(proxy);
            Assert.Equal(StartupCodes.Protocol30, Assert.Single(versions));
            await raw.SendAsync(RawProtocol.Query("SELECT 1"));
            Assert.Null(Protocol32.ErrorCode(await RawProtocol.ReadUntilReadyAsync(raw, Protocol32.Patience)));
        }
    }

    public static TheoryData<byte[], string> BadNegotiations => new()
    {
        { FakePostmaster.NegotiateBody(2 << 16), "downgrade to pre-3.0 protocol version" },
        { FakePostmaster.NegotiateBody((3 << 16) | 1), "non-existent 3.1 protocol version" },
        { FakePostmaster.NegotiateBody((3 << 16) | 3), "downgrade to a higher-numbered version" },
        { FakePostmaster.NegotiateBody(4 << 16), "downgrade to a higher-numbered version" },
        { FakePostmaster.NegotiateBody(StartupCodes.Protocol32), "negotiated but asks for no changes" },
        { FakePostmaster.NegotiateBody(StartupCodes.Protocol30, "_pq_.x"), "unsupported parameter that was not requested (\"_pq_.x\")" },
        { FakePostmaster.NegotiateBody(StartupCodes.Protocol30)[..6], "malformed NegotiateProtocolVersion" },
        { [.. FakePostmaster.NegotiateBody(StartupCodes.Protocol30), 0x41], "malformed NegotiateProtocolVersion" },
        { [0, 3, 0, 0, 0, 0, 0, 1, 0x5F, 0x70], "malformed NegotiateProtocolVersion" },
    };

    [Theory]
    [MemberData(nameof(BadNegotiations))]
    public Task A_bad_NegotiateProtocolVersion_fails_the_backend_login_with_a_clear_reason(byte[] body, string reason) =>
        AssertBackendLoginFailsAsync(body, late: false, reason);

    [Fact]
    public Task A_NegotiateProtocolVersion_after_authentication_fails_the_backend_login() =>
        AssertBackendLoginFailsAsync(FakePostmaster.NegotiateBody(StartupCodes.Protocol30), late: true, "unexpected NegotiateProtocolVersion");

    private static async Task AssertBackendLoginFailsAsync(byte[] body, bool late, string reason)
    {
        await using FakePostmaster fake = FakePostmaster.Start();
        fake.Negotiate = body;
        fake.NegotiateLate = late;
        await using ProxyHarness proxy = StartProxy(fake);
        using Socket raw = await proxy.ConnectRawAsync();
        await raw.SendAsync(RawProtocol.StartupWithVersion(Protocol32.V32, ("user", PostgresServer.Superuser), ("database", PostgresServer.Database)));
        (byte[] data, bool closed) = await RawProtocol.ReadUntilCloseAsync(raw, Protocol32.Patience);
        Assert.True(closed, "the client was kept waiting after its backend's login failed");
        Assert.Equal("08006", RawProtocol.ErrorCode(data));
        Assert.Contains(reason, RawProtocol.ErrorField(data, (byte)'M'), StringComparison.Ordinal);
    }
}
