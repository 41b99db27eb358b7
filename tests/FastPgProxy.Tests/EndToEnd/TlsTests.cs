using System.Globalization;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using FastPgProxy.Config;
using FastPgProxy.Protocol;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;
using Xunit.Abstractions;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// TLS through the proxy against a real PostgreSQL 15 with <c>ssl = on</c>: Npgsql, psql and hand-driven
/// clients log in over TLS (after SSLRequest and directly), cancels travel over TLS on both sides, the
/// proxy reaches TLS-only roles, checks PostgreSQL's certificate, authenticates clients by theirs, and
/// RELOAD rotates its own.
/// </summary>
[Collection(TlsPostgresCollection.Name)]
public sealed class TlsTests(TlsPostgresFixture fixture, ITestOutputHelper output)
{
    private readonly PostgresServer _pg = fixture.Server;
    private readonly TestCertificates _certs = fixture.Certificates;

    [Fact]
    public async Task Npgsql_verify_full_runs_a_query_and_SHOW_CLIENTS_shows_its_TLS()
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        await using NpgsqlConnection client = await TlsProxies.OpenVerifyFullAsync(proxy, _certs.CaFile);
        Assert.Equal(42, await TlsProxies.ScalarAsync<int>(client, "SELECT 42"));

        // server_tls_sslmode prefer (the default): the proxy's own connection to PostgreSQL is TLS as well.
        Assert.True(await TlsProxies.ScalarAsync<bool>(client, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"));

        foreach (string database in new[] { "pgbouncer", "fastpgproxy" })
        {
            await using NpgsqlConnection console = await TlsProxies.OpenConsoleAsync(proxy, database: database);
            List<Dictionary<string, object?>> clients = await TlsProxies.QueryAsync(console, "SHOW CLIENTS");
            Dictionary<string, object?> row = Assert.Single(clients, c => (string?)c["database"] == PostgresServer.Database);
            Assert.Equal(PostgresServer.TrustUser, row["user"]);
            Assert.Equal(true, row["tls"]);
            Assert.Equal("TLSv1.3", row["tls_version"]);
            string cipher = Assert.IsType<string>(row["tls_cipher"]);
            Assert.StartsWith("TLS_", cipher, StringComparison.Ordinal);

            // The console's own session is TLS too.
            Dictionary<string, object?> self = Assert.Single(clients, c => (string?)c["database"] == database);
            Assert.Equal(true, self["tls"]);
        }
    }

    [Fact]
    public async Task Many_TLS_clients_share_a_small_transaction_pool()
    {
        // Transaction pooling moves each session to its pool's loop and back to sharing backends: the TLS
        // channel's completions must follow the session wherever it runs.
        await using ProxyHarness proxy = TlsProxies.Start(_pg, configure: o =>
        {
            o.PoolMode = PoolMode.Transaction;
            o.DefaultPoolSize = 3;
        });
        await Task.WhenAll(Enumerable.Range(0, 20).Select(async i =>
        {
            await using NpgsqlConnection client = await TlsProxies.OpenVerifyFullAsync(proxy, _certs.CaFile);
            for (int q = 0; q < 30; q++)
            {
                int expected = (i * 1000) + q;
                Assert.Equal(expected, await TlsProxies.ScalarAsync<int>(client, $"SELECT {expected.ToString(CultureInfo.InvariantCulture)}"));
            }

            await using NpgsqlTransaction transaction = await client.BeginTransactionAsync();
            Assert.Equal(i, await TlsProxies.ScalarAsync<int>(client, $"SELECT {i.ToString(CultureInfo.InvariantCulture)} FROM pg_sleep(0.01)"));
            await transaction.CommitAsync();
        }));

        await TlsProxies.AssertNothingLeakedAsync(proxy, _certs);
    }

    [Fact]
    public async Task Messages_many_TLS_records_long_cross_the_proxy_both_ways()
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        await using NpgsqlConnection client = await TlsProxies.OpenVerifyFullAsync(proxy, _certs.CaFile);
        string big = string.Create(3_000_000, 0, static (span, _) =>
        {
            for (int i = 0; i < span.Length; i++)
            {
                span[i] = (char)('a' + (i % 26));
            }
        });
        await using var command = new NpgsqlCommand("SELECT length($1), repeat($1, 2)", client) { Parameters = { new() { Value = big } } };
        await using NpgsqlDataReader reader = await command.ExecuteReaderAsync();
        Assert.True(await reader.ReadAsync());

        Assert.Equal(big.Length, reader.GetInt32(0));
        Assert.Equal(big + big, reader.GetString(1));
    }

    [Fact]
    public async Task Stopping_the_proxy_sends_TLS_clients_FATAL_57P01_inside_TLS()
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        using TlsRawClient client = await TlsRawClient.ConnectAsync(proxy.Port);
        await client.NegotiateTlsAsync(_certs.Ca);
        await client.LoginAsync();

        await proxy.Server.StopAsync(TimeSpan.FromSeconds(5));

        (string? sqlState, _) = await client.ReadErrorAndCloseAsync();
        Assert.Equal(PostgresErrorCodes.AdminShutdown, sqlState);
    }

    [Fact]
    public async Task Client_tls_protocols_and_ciphers_are_what_clients_get()
    {
        const string cipher = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256";
        await using ProxyHarness proxy = TlsProxies.Start(_pg, configure: o =>
        {
            o.ClientTls.Protocols = "tlsv1.2";
            o.ClientTls.Ciphers = cipher;
        });
        await using NpgsqlConnection client = await TlsProxies.OpenVerifyFullAsync(proxy, _certs.CaFile);
        await using NpgsqlConnection console = await TlsProxies.OpenConsoleAsync(proxy);
        Dictionary<string, object?> row = Assert.Single(await TlsProxies.QueryAsync(console, "SHOW CLIENTS"), c => (string?)c["database"] == PostgresServer.Database);

        Assert.Equal("TLSv1.2", row["tls_version"]);
        Assert.Equal(cipher, row["tls_cipher"]);

        // A client that speaks TLS 1.3 only finds no protocol in common.
        using TlsRawClient modern = await TlsRawClient.ConnectAsync(proxy.Port);
        Assert.Equal('S', await modern.RequestSslAsync());
        SslClientAuthenticationOptions options = TlsRawClient.Trusting(_certs.Ca);
        options.EnabledSslProtocols = SslProtocols.Tls13;
        await Assert.ThrowsAnyAsync<Exception>(() => modern.StartTlsAsync(options));
    }

    [Fact]
    public async Task A_StartupMessage_and_a_Query_in_one_TLS_write_are_both_served()
    {
        // Two loops: some sessions log in on a loop other than their pool's and move with the Query unread.
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        for (int i = 0; i < 8; i++)
        {
            using TlsRawClient client = await TlsRawClient.ConnectAsync(proxy.Port);
            await client.NegotiateTlsAsync(_certs.Ca);
            await client.SendAsync([
                .. RawProtocol.Startup(("user", PostgresServer.TrustUser), ("database", PostgresServer.Database)),
                .. RawProtocol.Query($"SELECT {i.ToString(CultureInfo.InvariantCulture)}")]);

            List<(byte Type, byte[] Body)> login = await client.ReadUntilReadyAsync();
            Assert.DoesNotContain(login, m => m.Type == (byte)'E');
            List<(byte Type, byte[] Body)> answer = await client.ReadUntilReadyAsync();
            (byte _, byte[] dataRow) = Assert.Single(answer, m => m.Type == (byte)'D');
            Assert.Equal(i.ToString(CultureInfo.InvariantCulture), System.Text.Encoding.ASCII.GetString(dataRow, sizeof(short) + sizeof(int), dataRow.Length - sizeof(short) - sizeof(int)));
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task KILL_of_a_TLS_client_sends_FATAL_57P01_inside_TLS(bool busy)
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        using (TlsRawClient client = await TlsRawClient.ConnectAsync(proxy.Port))
        {
            await client.NegotiateTlsAsync(_certs.Ca);
            (int id, _) = await client.LoginAsync();
            if (busy)
            {
                await client.SendQueryAsync("SELECT pg_sleep(60) /* tls-kill */");
                await TlsProxies.WaitRunningAsync(_pg, "tls-kill");
            }

            await using (NpgsqlConnection console = await TlsProxies.OpenConsoleAsync(proxy))
            {
                await TlsProxies.QueryAsync(console, $"KILL PGSQL CONNECTION {id.ToString(CultureInfo.InvariantCulture)}");
            }

            (byte[] data, bool closed) = await client.ReadUntilCloseAsync();
            Assert.True(closed, "the killed client was not closed");

            // A busy client may first see its query cancelled (57014); the last word is the FATAL.
            Assert.Equal(PostgresErrorCodes.AdminShutdown, LastErrorCode(data));
        }

        await TlsProxies.AssertNothingLeakedAsync(proxy, _certs);
    }

    [Fact]
    public async Task Psql_verify_full_logs_in_with_SCRAM_to_a_hostssl_only_role()
    {
        await using ProxyHarness proxy = StartScram();
        (int exitCode, string stdout, string stderr) = await RunPsqlAsync(proxy, $"sslmode=verify-full sslrootcert={_certs.CaFile}");

        Assert.True(exitCode == 0, $"psql exited with {exitCode}: {stderr}");
        Assert.Equal($"{PostgresServer.SslOnlyUser}|t", stdout.Trim());
    }

    [Fact]
    public async Task Psql_verify_full_with_channel_binding_require_logs_in_with_SCRAM_PLUS()
    {
        await using ProxyHarness proxy = StartScram();
        (int exitCode, string stdout, string stderr) = await RunPsqlAsync(proxy, $"sslmode=verify-full sslrootcert={_certs.CaFile} channel_binding=require");

        Assert.True(exitCode == 0, $"psql exited with {exitCode}: {stderr}");
        Assert.Equal($"{PostgresServer.SslOnlyUser}|t", stdout.Trim());
    }

    [Fact]
    public async Task Npgsql_Cancel_of_a_TLS_session_cancels_and_travels_over_TLS()
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        await using var relay = RecordingRelay.Start("127.0.0.1", proxy.Port);
        await using var client = new NpgsqlConnection(TlsProxies.VerifyFull(proxy, _certs.CaFile, port: relay.Port));
        await client.OpenAsync();
        await using var command = new NpgsqlCommand("SELECT pg_sleep(60) /* tls-npgsql-cancel */", client);
        Task<object?> running = command.ExecuteScalarAsync();
        await TlsProxies.WaitRunningAsync(_pg, "tls-npgsql-cancel");

        command.Cancel();

        await TlsProxies.AssertCancelledAsync(running);
        IReadOnlyList<RelayedConnection> seen = await relay.WaitForConnectionsAsync(2);
        output.WriteLine($"relay saw: {string.Join(", ", seen)}");
        Assert.Equal(2, seen.Count);
        Assert.All(seen, c => Assert.Equal(StartupCodes.SslRequestCode, c.RequestCode));
        Assert.DoesNotContain(seen, c => c.RequestCode == StartupCodes.CancelRequestCode);
        Assert.Equal(1, await TlsProxies.ScalarAsync<int>(client, "SELECT 1"));
    }

    [Theory]
    [InlineData("require")]
    [InlineData("disable")]
    public async Task Forwarded_cancels_use_TLS_exactly_when_the_backend_connection_does(string sslmode)
    {
        TlsMode serverTls = TlsSettings.ParseMode(sslmode)!.Value;
        await using var relay = RecordingRelay.Start(_pg.Host, _pg.Port);
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o =>
        {
            o.ServerTls = new TlsSettings { Mode = serverTls };
            o.Databases.Clear();
            o.Databases.Add(new DatabaseOptions { Name = "*", Host = relay.Host, Port = relay.Port });
        });
        long forwarded = proxy.Server.CancelStats.Forwarded;
        await using NpgsqlConnection client = await proxy.OpenAsync(PostgresServer.TrustUser);
        await using var command = new NpgsqlCommand("SELECT pg_sleep(60) /* tls-forwarded-cancel */", client);
        Task<object?> running = command.ExecuteScalarAsync();
        await TlsProxies.WaitRunningAsync(_pg, "tls-forwarded-cancel");

        command.Cancel();

        await TlsProxies.AssertCancelledAsync(running);
        await TlsProxies.WaitUntilAsync(() => proxy.Server.CancelStats.Forwarded > forwarded, () => "the cancel was never counted as forwarded");
        int backends = await TlsProxies.BackendCountAsync(proxy);
        IReadOnlyList<RelayedConnection> seen = await relay.WaitForConnectionsAsync(backends + 1);
        output.WriteLine($"{backends} backends; relay saw: {string.Join(", ", seen)}");
        Assert.Equal(backends + 1, seen.Count);
        if (serverTls == TlsMode.Require)
        {
            // Backends and the cancel connection alike open with SSLRequest.
            Assert.All(seen, c => Assert.Equal(StartupCodes.SslRequestCode, c.RequestCode));
        }
        else
        {
            Assert.Equal(backends, seen.Count(c => c.IsStartupMessage));
            Assert.Single(seen, c => c.RequestCode == StartupCodes.CancelRequestCode);
        }

        Assert.Equal(1, await TlsProxies.ScalarAsync<int>(client, "SELECT 1"));
    }

    [Fact]
    public async Task Raw_SSLRequest_login_then_a_CancelRequest_inside_TLS_cancels_the_query()
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        using TlsRawClient session = await TlsRawClient.ConnectAsync(proxy.Port);
        await session.NegotiateTlsAsync(_certs.Ca);
        (int pid, int key) = await session.LoginAsync();
        await session.SendQueryAsync("SELECT pg_sleep(60) /* tls-raw-cancel */");
        await TlsProxies.WaitRunningAsync(_pg, "tls-raw-cancel");

        using (TlsRawClient cancel = await TlsRawClient.ConnectAsync(proxy.Port))
        {
            await cancel.NegotiateTlsAsync(_certs.Ca);
            await cancel.SendAsync(RawProtocol.CancelRequest(pid, key));

            // Nothing is answered to a CancelRequest: the connection just ends.
            (byte[] data, bool closed) = await cancel.ReadUntilCloseAsync();
            Assert.True(closed, "the cancel connection was not closed");
            Assert.Empty(data);
        }

        Assert.Equal(PostgresErrorCodes.QueryCanceled, await session.ReadResultAsync());
        await session.SendQueryAsync("SELECT 1");
        Assert.Null(await session.ReadResultAsync());
    }

    [Fact]
    public async Task Raw_direct_TLS_with_ALPN_postgresql_logs_in()
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        using TlsRawClient client = await TlsRawClient.ConnectAsync(proxy.Port);
        await client.StartTlsAsync(TlsRawClient.Trusting(_certs.Ca, alpn: true));
        Assert.Equal(TlsRawClient.PostgresAlpn, client.Ssl!.NegotiatedApplicationProtocol);

        await client.LoginAsync();
        await client.SendQueryAsync("SELECT 1");
        Assert.Null(await client.ReadResultAsync());
    }

    [Fact]
    public async Task Npgsql_direct_TLS_negotiation_logs_in_and_cancels()
    {
        await using ProxyHarness proxy = TlsProxies.Start(_pg);
        await using var relay = RecordingRelay.Start("127.0.0.1", proxy.Port);
        var builder = new NpgsqlConnectionStringBuilder(TlsProxies.VerifyFull(proxy, _certs.CaFile, port: relay.Port)) { SslNegotiation = SslNegotiation.Direct };
        await using var client = new NpgsqlConnection(builder.ConnectionString);
        await client.OpenAsync();
        Assert.Equal(7, await TlsProxies.ScalarAsync<int>(client, "SELECT 7"));

        await using var command = new NpgsqlCommand("SELECT pg_sleep(60) /* tls-direct-cancel */", client);
        Task<object?> running = command.ExecuteScalarAsync();
        await TlsProxies.WaitRunningAsync(_pg, "tls-direct-cancel");
        command.Cancel();
        await TlsProxies.AssertCancelledAsync(running);

        // Both the session and its cancel began with a ClientHello, not a PostgreSQL packet.
        IReadOnlyList<RelayedConnection> seen = await relay.WaitForConnectionsAsync(2);
        output.WriteLine($"relay saw: {string.Join(", ", seen)}");
        Assert.Equal(2, seen.Count);
        Assert.All(seen, c => Assert.True(c.StartsWithTlsHandshake, c.ToString()));
    }

    [Theory]
    [InlineData("require", false)]
    [InlineData("verify-ca", true)]
    [InlineData("verify-full", true)]
    public async Task Server_TLS_logs_clients_in_as_a_hostssl_only_role(string sslmode, bool withCa)
    {
        TlsMode serverTls = TlsSettings.ParseMode(sslmode)!.Value;
        await using ProxyHarness proxy = StartSslOnly(new TlsSettings { Mode = serverTls, CaFile = withCa ? _certs.CaFile : null });
        await using NpgsqlConnection client = await proxy.OpenAsync(PostgresServer.SslOnlyUser, PostgresServer.SslOnlyPassword);

        Assert.Equal(PostgresServer.SslOnlyUser, await TlsProxies.ScalarAsync<string>(client, "SELECT current_user"));
        Assert.True(await TlsProxies.ScalarAsync<bool>(client, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"));
    }

    [Fact]
    public async Task Without_server_TLS_a_hostssl_only_role_gets_PostgreSQLs_28000()
    {
        await using ProxyHarness proxy = StartSslOnly(new TlsSettings { Mode = TlsMode.Disable });

        PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => proxy.OpenAsync(PostgresServer.SslOnlyUser, PostgresServer.SslOnlyPassword));

        Assert.Equal(PostgresErrorCodes.InvalidAuthorizationSpecification, e.SqlState);
        Assert.Contains("no encryption", e.MessageText, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("verify-ca")]
    [InlineData("verify-full")]
    public async Task Server_TLS_checking_against_the_wrong_CA_fails_the_login_with_a_clear_error(string sslmode)
    {
        TlsMode serverTls = TlsSettings.ParseMode(sslmode)!.Value;
        await using ProxyHarness proxy = StartSslOnly(new TlsSettings { Mode = serverTls, CaFile = _certs.WrongCaFile });

        PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => proxy.OpenAsync(PostgresServer.SslOnlyUser, PostgresServer.SslOnlyPassword).WaitAsync(TlsProxies.Patience));

        output.WriteLine(e.MessageText);
        Assert.Equal(PostgresErrorCodes.ConnectionFailure, e.SqlState);
        Assert.Contains("TLS handshake with server", e.MessageText, StringComparison.Ordinal);
        Assert.Contains("not signed by a CA of server_tls_ca_file", e.MessageText, StringComparison.Ordinal);
        Assert.Contains($"server_tls_sslmode {sslmode}", e.MessageText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Cert_auth_logs_in_the_user_its_certificate_names()
    {
        await using ProxyHarness proxy = StartCert();
        TestClientCertificate certificate = _certs.ClientCertificate(PostgresServer.TrustUser);
        var builder = new NpgsqlConnectionStringBuilder(TlsProxies.VerifyFull(proxy, _certs.CaFile))
        {
            SslCertificate = certificate.CertFile,
            SslKey = certificate.KeyFile,
        };
        await using var client = new NpgsqlConnection(builder.ConnectionString);
        await client.OpenAsync();

        Assert.Equal(PostgresServer.TrustUser, await TlsProxies.ScalarAsync<string>(client, "SELECT current_user"));
    }

    [Fact]
    public async Task Cert_auth_through_to_a_cert_only_role_with_the_proxys_own_client_certificate()
    {
        // The client proves fpp_cert to the proxy; the proxy proves fpp_cert to PostgreSQL (hostssl cert).
        TestClientCertificate proxyCertificate = _certs.ClientCertificate(PostgresServer.CertUser);
        await using ProxyHarness proxy = StartCert(o => o.ServerTls = new TlsSettings
        {
            Mode = TlsMode.VerifyFull,
            CaFile = _certs.CaFile,
            CertFile = proxyCertificate.CertFile,
            KeyFile = proxyCertificate.KeyFile,
        });
        X509Certificate2 certificate = _certs.ClientCertificate(PostgresServer.CertUser).Certificate;
        var sourceBuilder = new NpgsqlDataSourceBuilder(TlsProxies.VerifyFull(proxy, _certs.CaFile, PostgresServer.CertUser));
        sourceBuilder.UseSslClientAuthenticationOptionsCallback(options => options.ClientCertificates = [certificate]);
        await using NpgsqlDataSource source = sourceBuilder.Build();
        await using NpgsqlConnection client = await source.OpenConnectionAsync();

        Assert.Equal(PostgresServer.CertUser, await TlsProxies.ScalarAsync<string>(client, "SELECT current_user"));
        Assert.Equal($"/CN={PostgresServer.CertUser}", await TlsProxies.ScalarAsync<string>(client, "SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"));
    }

    [Fact]
    public async Task Cert_auth_refuses_a_certificate_naming_another_user_with_28000()
    {
        await using ProxyHarness proxy = StartCert();
        TestClientCertificate other = _certs.ClientCertificate("someone_else");
        var builder = new NpgsqlConnectionStringBuilder(TlsProxies.VerifyFull(proxy, _certs.CaFile))
        {
            SslCertificate = other.CertFile,
            SslKey = other.KeyFile,
        };
        await using var client = new NpgsqlConnection(builder.ConnectionString);

        PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => client.OpenAsync());

        Assert.Equal(PostgresErrorCodes.InvalidAuthorizationSpecification, e.SqlState);
        Assert.Equal("FATAL", e.Severity);
        await TlsProxies.AssertNothingLeakedAsync(proxy, _certs);
    }

    [Fact]
    public async Task Cert_auth_refuses_the_handshake_of_a_client_without_a_certificate()
    {
        await using ProxyHarness proxy = StartCert();
        await using var client = new NpgsqlConnection(TlsProxies.VerifyFull(proxy, _certs.CaFile));

        Exception e = await Assert.ThrowsAnyAsync<Exception>(() => client.OpenAsync().WaitAsync(TlsProxies.Patience));

        output.WriteLine(e.ToString());
        Assert.IsNotType<TimeoutException>(e);
        Assert.IsNotType<PostgresException>(e);

        // Raw: the handshake, then nothing but the end of the connection.
        using TlsRawClient raw = await TlsRawClient.ConnectAsync(proxy.Port);
        Assert.Equal('S', await raw.RequestSslAsync());
        try
        {
            await raw.StartTlsAsync(TlsRawClient.Trusting(_certs.Ca));
            await raw.SendAsync(RawProtocol.Startup(("user", PostgresServer.TrustUser), ("database", PostgresServer.Database)));
        }
        catch (Exception refused) when (refused is AuthenticationException or IOException)
        {
            // TLS 1.2 refuses in the handshake; TLS 1.3 after it, with an alert the next read sees.
        }

        (byte[] data, bool closed) = await raw.ReadUntilCloseAsync();
        Assert.True(closed, "the proxy did not close the connection");
        Assert.Empty(data);
        await TlsProxies.AssertNothingLeakedAsync(proxy, _certs);
    }

    [Fact]
    public async Task Reload_rotates_the_client_certificate_and_keeps_old_connections()
    {
        string dir = Directory.CreateTempSubdirectory("fpp-tls-reload-").FullName;
        try
        {
            string certFile = Path.Combine(dir, "proxy.crt");
            string keyFile = Path.Combine(dir, "proxy.key");
            File.Copy(_certs.ServerCertFile, certFile);
            File.Copy(_certs.ServerKeyFile, keyFile);
            string path = Path.Combine(dir, "fastpgproxy.ini");
            string Config(int poolSize) => $"""
                [databases]
                * = host={_pg.Host} port={_pg.Port}

                [fastpgproxy]
                listen_addr = 127.0.0.1
                listen_port = 0
                auth_type = trust
                loop_threads = 2
                default_pool_size = {poolSize}
                admin_users = {TlsProxies.AdminUser}
                client_tls_sslmode = require
                client_tls_cert_file = {certFile}
                client_tls_key_file = {keyFile}
                """;
            await File.WriteAllTextAsync(path, Config(100));
            ProxyOptions options = ConfigLoader.Load(path);
            Assert.NotNull(options.SourcePath);
            await using ProxyHarness proxy = ProxyHarness.Start(options);

            await using NpgsqlConnection old = await TlsProxies.OpenVerifyFullAsync(proxy, _certs.CaFile);
            await using NpgsqlConnection console = await TlsProxies.OpenConsoleAsync(proxy);

            // Rotate in place: the files now hold the certificate of the other CA.
            File.Copy(_certs.WrongServerCertFile, certFile, overwrite: true);
            File.Copy(_certs.WrongServerKeyFile, keyFile, overwrite: true);
            await TlsProxies.QueryAsync(console, "RELOAD");

            NpgsqlException refused = await Assert.ThrowsAnyAsync<NpgsqlException>(() => TlsProxies.OpenVerifyFullAsync(proxy, _certs.CaFile));
            Assert.IsAssignableFrom<AuthenticationException>(refused.InnerException);
            await using (NpgsqlConnection rotated = await TlsProxies.OpenVerifyFullAsync(proxy, _certs.WrongCaFile))
            {
                Assert.Equal(2, await TlsProxies.ScalarAsync<int>(rotated, "SELECT 2"));
            }

            Assert.Equal(1, await TlsProxies.ScalarAsync<int>(old, "SELECT 1"));

            // A certificate file that does not load fails the RELOAD, and nothing changes: not the
            // certificate, not the other settings of the same file.
            await File.WriteAllTextAsync(certFile, "not a certificate\n");
            await File.WriteAllTextAsync(path, Config(7));
            PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => TlsProxies.QueryAsync(console, "RELOAD"));
            output.WriteLine(e.MessageText);
            Assert.Equal(PostgresErrorCodes.InvalidParameterValue, e.SqlState);
            Assert.Contains("client_tls_cert_file", e.MessageText, StringComparison.Ordinal);
            Assert.Equal("100", (await TlsProxies.QueryAsync(console, "SHOW CONFIG")).Single(r => (string?)r["key"] == "default_pool_size")["value"]);
            await using (NpgsqlConnection stillRotated = await TlsProxies.OpenVerifyFullAsync(proxy, _certs.WrongCaFile))
            {
                Assert.Equal(3, await TlsProxies.ScalarAsync<int>(stillRotated, "SELECT 3"));
            }

            Assert.Equal(4, await TlsProxies.ScalarAsync<int>(old, "SELECT 4"));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>The SQLSTATE of the last ErrorResponse among the messages in <paramref name="data"/>.</summary>
    private static string? LastErrorCode(byte[] data)
    {
        string? last = null;
        for (int at = 0; at + 5 <= data.Length;)
        {
            int length = System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(data.AsSpan(at + 1));
            if (data[at] == (byte)'E' && at + 1 + length <= data.Length)
            {
                last = TlsRawClient.Field(data[(at + 5)..(at + 1 + length)], 'C');
            }

            at += 1 + length;
        }

        return last;
    }

    /// <summary>A proxy with client TLS and auth_type scram-sha-256 whose auth_file holds fpp_sslonly's password.</summary>
    private ProxyHarness StartScram() => TlsProxies.Start(
        _pg,
        configure: o => o.AuthType = AuthType.ScramSha256,
        users: [(PostgresServer.SslOnlyUser, PostgresServer.SslOnlyPassword)]);

    /// <summary>A plain-to-clients proxy (md5 against an auth_file with fpp_sslonly's password) whose server TLS is <paramref name="serverTls"/>.</summary>
    private ProxyHarness StartSslOnly(TlsSettings serverTls) => ProxyHarness.Start(
        _pg,
        o =>
        {
            o.AuthType = AuthType.Md5;
            o.ServerTls = serverTls;
        },
        [(PostgresServer.SslOnlyUser, PostgresServer.SslOnlyPassword)]);

    /// <summary>A proxy with auth_type cert: client_tls_sslmode verify-full against the test CA.</summary>
    private ProxyHarness StartCert(Action<ProxyOptions>? configure = null) => TlsProxies.Start(
        _pg,
        TlsMode.VerifyFull,
        o =>
        {
            o.ClientTls.CaFile = _certs.CaFile;
            o.AuthType = AuthType.Cert;
            configure?.Invoke(o);
        });

    /// <summary>psql through the proxy as fpp_sslonly (password from PGPASSWORD): prints the user and whether PostgreSQL sees TLS.</summary>
    private async Task<(int ExitCode, string StdOut, string StdErr)> RunPsqlAsync(ProxyHarness proxy, string tlsOptions)
    {
        string psql = ProcessRunner.FindOnPath("psql") ?? _pg.ToolPath("psql");
        var env = new Dictionary<string, string>
        {
            ["PGPASSWORD"] = PostgresServer.SslOnlyPassword,
            ["PGCONNECT_TIMEOUT"] = "10",
            ["PGPASSFILE"] = "/nonexistent",
            // Keep libpq from picking up a client certificate or settings of the user running the tests.
            ["PGSSLCERT"] = string.Empty,
            ["PGSSLKEY"] = string.Empty,
            ["PGSSLROOTCERT"] = string.Empty,
            ["PGSERVICE"] = string.Empty,
        };
        string conninfo = $"host=127.0.0.1 port={proxy.Port.ToString(CultureInfo.InvariantCulture)} dbname={PostgresServer.Database} user={PostgresServer.SslOnlyUser} {tlsOptions}";
        return await ProcessRunner.RunAsync(
            psql,
            ["-X", "-d", conninfo, "-Atc", "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
            TimeSpan.FromSeconds(60),
            env);
    }
}
