using System.Buffers.Binary;
using System.Security.Authentication;
using FastPgProxy.Config;
using FastPgProxy.Protocol;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// Clients that get TLS wrong: the wrong CA, bytes where the handshake should be, a handshake that never
/// comes, direct TLS without ALPN, a second SSLRequest, plain text where TLS is required. Each is refused
/// as PostgreSQL refuses it (a FATAL where the protocol allows one, else a close), leaves nothing behind
/// (no connection counted, no session, every buffer back) and the proxy goes on serving TLS clients.
/// </summary>
[Collection(TlsPostgresCollection.Name)]
public sealed class TlsHostileTests(TlsPostgresFixture fixture)
{
    private readonly PostgresServer _pg = fixture.Server;
    private readonly TestCertificates _certs = fixture.Certificates;

    [Fact]
    public async Task A_client_trusting_the_wrong_CA_fails_its_handshake()
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        for (int i = 0; i < 5; i++)
        {
            NpgsqlException e = await Assert.ThrowsAnyAsync<NpgsqlException>(() => TlsProxies.OpenVerifyFullAsync(proxy, _certs.WrongCaFile));
            Assert.IsAssignableFrom<AuthenticationException>(e.InnerException);
        }

        using (TlsRawClient raw = await TlsRawClient.ConnectAsync(proxy.Port))
        {
            Assert.Equal('S', await raw.RequestSslAsync());
            await Assert.ThrowsAsync<AuthenticationException>(() => raw.StartTlsAsync(TlsRawClient.Trusting(_certs.WrongCa)));
        }

        await AssertUnharmedAsync(proxy);
    }

    [Fact]
    public async Task Bytes_sent_along_with_SSLRequest_get_FATAL_08P01_in_plain_text()
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        using (TlsRawClient raw = await TlsRawClient.ConnectAsync(proxy.Port))
        {
            // One send: the StartupMessage cannot have been written after reading the answer.
            await raw.SendAsync([.. RawProtocol.SslRequest(), .. RawProtocol.Startup(("user", PostgresServer.TrustUser))]);

            (string? sqlState, string? message) = await raw.ReadErrorAndCloseAsync();
            Assert.Equal("08P01", sqlState);
            Assert.Equal("received unencrypted data after SSL request", message);
        }

        await AssertUnharmedAsync(proxy);
    }

    [Theory]
    [InlineData("garbage")]
    [InlineData("startup")]
    [InlineData("truncated-hello")]
    public async Task Anything_but_a_TLS_handshake_after_S_is_closed(string what)
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        for (int i = 0; i < 10; i++)
        {
            using TlsRawClient raw = await TlsRawClient.ConnectAsync(proxy.Port);
            Assert.Equal('S', await raw.RequestSslAsync());
            byte[] bytes = what switch
            {
                "garbage" => "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"u8.ToArray(),
                "startup" => RawProtocol.Startup(("user", PostgresServer.TrustUser), ("database", PostgresServer.Database)),

                // A TLS handshake record header announcing 200 bytes, and the connection's end after 3 of them.
                _ => [0x16, 0x03, 0x01, 0x00, 0xC8, 0x01, 0x00, 0x00],
            };
            await raw.SendAsync(bytes);
            if (what == "truncated-hello")
            {
                raw.ShutdownSend();
            }

            (byte[] data, bool closed) = await raw.ReadUntilCloseAsync();
            Assert.True(closed, "the proxy did not close the connection");

            // Never a PostgreSQL message in plain text: whatever comes is TLS (an alert) or nothing.
            Assert.True(data.Length == 0 || data[0] == 0x15, $"the proxy answered {Convert.ToHexString(data)}");
        }

        await AssertUnharmedAsync(proxy);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_stalled_handshake_is_closed_by_client_login_timeout(bool partOfAHello)
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg, configure: o => o.ClientLoginTimeout = TimeSpan.FromSeconds(1));
        var stalled = new List<TlsRawClient>();
        try
        {
            for (int i = 0; i < 5; i++)
            {
                TlsRawClient raw = await TlsRawClient.ConnectAsync(proxy.Port);
                stalled.Add(raw);
                Assert.Equal('S', await raw.RequestSslAsync());
                if (partOfAHello)
                {
                    await raw.SendAsync([0x16, 0x03, 0x01, 0x00, 0xC8, 0x01]);
                }
            }

            foreach (TlsRawClient raw in stalled)
            {
                (byte[] data, bool closed) = await raw.ReadUntilCloseAsync();
                Assert.True(closed, "the stalled handshake was not closed");
                Assert.True(data.Length == 0 || data[0] == 0x15, $"the proxy answered {Convert.ToHexString(data)}");
            }
        }
        finally
        {
            stalled.ForEach(r => r.Dispose());
        }

        await AssertUnharmedAsync(proxy);
    }

    [Fact]
    public async Task Direct_TLS_without_ALPN_gets_FATAL_08P01_over_TLS()
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        using (TlsRawClient raw = await TlsRawClient.ConnectAsync(proxy.Port))
        {
            await raw.StartTlsAsync(TlsRawClient.Trusting(_certs.Ca, alpn: false));

            (string? sqlState, string? message) = await raw.ReadErrorAndCloseAsync();
            Assert.Equal("08P01", sqlState);
            Assert.Equal("received direct SSL connection request without ALPN protocol negotiation extension", message);
        }

        await AssertUnharmedAsync(proxy);
    }

    [Fact]
    public async Task A_second_SSLRequest_inside_TLS_gets_FATAL()
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        using (TlsRawClient raw = await TlsRawClient.ConnectAsync(proxy.Port))
        {
            await raw.NegotiateTlsAsync(_certs.Ca);
            await raw.SendAsync(RawProtocol.SslRequest());

            // As PostgreSQL: SSL is done, so the code reads as protocol 1234.5679, which nobody supports.
            (string? sqlState, string? message) = await raw.ReadErrorAndCloseAsync();
            Assert.Equal("0A000", sqlState);
            Assert.Contains("1234.5679", message, StringComparison.Ordinal);
        }

        await AssertUnharmedAsync(proxy);
    }

    [Fact]
    public async Task Require_refuses_a_plain_StartupMessage_with_28000_SSL_required()
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        using (TlsRawClient raw = await TlsRawClient.ConnectAsync(proxy.Port))
        {
            await raw.SendAsync(RawProtocol.Startup(("user", PostgresServer.TrustUser), ("database", PostgresServer.Database)));

            (string? sqlState, string? message) = await raw.ReadErrorAndCloseAsync();
            Assert.Equal("28000", sqlState);
            Assert.Equal("SSL required", message);
        }

        var plain = new NpgsqlConnectionStringBuilder(proxy.ConnectionString(PostgresServer.TrustUser)) { SslMode = SslMode.Disable };
        await using (var client = new NpgsqlConnection(plain.ConnectionString))
        {
            PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => client.OpenAsync());
            Assert.Equal(PostgresErrorCodes.InvalidAuthorizationSpecification, e.SqlState);
        }

        await AssertUnharmedAsync(proxy);
    }

    [Fact]
    public async Task Require_still_accepts_a_plain_CancelRequest_as_psql_15_sends_it()
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        using (TlsRawClient session = await TlsRawClient.ConnectAsync(proxy.Port))
        {
            await session.NegotiateTlsAsync(_certs.Ca);
            (int pid, int key) = await session.LoginAsync();
            await session.SendQueryAsync("SELECT pg_sleep(60) /* tls-plain-cancel */");
            await TlsProxies.WaitRunningAsync(_pg, "tls-plain-cancel");

            using (TlsRawClient cancel = await TlsRawClient.ConnectAsync(proxy.Port))
            {
                await cancel.SendAsync(RawProtocol.CancelRequest(pid, key));
                (byte[] data, bool closed) = await cancel.ReadUntilCloseAsync();
                Assert.True(closed);
                Assert.Empty(data);
            }

            Assert.Equal(PostgresErrorCodes.QueryCanceled, await session.ReadResultAsync());
        }

        await AssertUnharmedAsync(proxy);
    }

    [Theory]
    [InlineData("disable")]
    [InlineData("require")]
    public async Task GSSENCRequest_always_gets_N_and_SSLRequest_gets_N_only_when_disabled(string sslmode)
    {
        TlsMode mode = TlsSettings.ParseMode(sslmode)!.Value;
        await using ProxyHarness proxy = TlsProxies.Start(_pg, mode);
        using (TlsRawClient raw = await TlsRawClient.ConnectAsync(proxy.Port))
        {
            // libpq's order: GSS encryption first, then SSL, then the StartupMessage on whatever was agreed.
            await raw.SendAsync(RawProtocol.Packet(8, StartupCodes.GssEncRequestCode));
            Assert.Equal('N', await raw.ReadByteAsync());
            if (mode == TlsMode.Disable)
            {
                Assert.Equal('N', await raw.RequestSslAsync());
            }
            else
            {
                await raw.NegotiateTlsAsync(_certs.Ca);
            }

            await raw.LoginAsync();
            await raw.SendQueryAsync("SELECT 1");
            Assert.Null(await raw.ReadResultAsync());
        }

        if (mode == TlsMode.Disable)
        {
            var builder = new NpgsqlConnectionStringBuilder(proxy.ConnectionString(PostgresServer.TrustUser)) { SslMode = SslMode.Require };
            await using var client = new NpgsqlConnection(builder.ConnectionString);
            await Assert.ThrowsAnyAsync<NpgsqlException>(() => client.OpenAsync());
        }

        await AssertUnharmedAsync(proxy);
    }

    [Fact]
    public async Task A_bad_SSLRequest_length_gets_FATAL_08P01()
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        using (TlsRawClient raw = await TlsRawClient.ConnectAsync(proxy.Port))
        {
            byte[] packet = RawProtocol.Packet(12, StartupCodes.SslRequestCode, [0, 0, 0, 0]);
            BinaryPrimitives.WriteInt32BigEndian(packet, packet.Length);
            await raw.SendAsync(packet);

            (string? sqlState, _) = await raw.ReadErrorAndCloseAsync();
            Assert.Equal("08P01", sqlState);
        }

        await AssertUnharmedAsync(proxy);
    }

    /// <summary>A TLS client still gets served, and nothing the hostile ones did is left behind.</summary>
    private async Task AssertUnharmedAsync(ProxyHarness proxy)
    {
        if (proxy.Server.Options.ClientTls.Mode == TlsMode.Disable)
        {
            await using NpgsqlConnection client = await proxy.OpenAsync(PostgresServer.TrustUser);
            Assert.Equal(42, await TlsProxies.ScalarAsync<int>(client, "SELECT 42"));
        }
        else
        {
            await TlsProxies.AssertServesTlsAsync(proxy, _certs);
        }

        await TlsProxies.AssertNothingLeakedAsync(proxy, _certs);
    }
}
