using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Threading.Tasks;
using FastPgProxy.Protocol;
using Npgsql;
using Xunit;
using Xunit.Abstractions;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>
/// Proves the TLS test pieces against a real PostgreSQL and real clients: the certificates verify,
/// the TLS server's pg_hba rules hold, and the <see cref="RecordingRelay"/> sees how connections begin.
/// </summary>
[Collection(TlsPostgresCollection.Name)]
public sealed class TlsInfrastructureTests(TlsPostgresFixture fixture, ITestOutputHelper output)
{
    private static readonly TimeSpan PsqlTimeout = TimeSpan.FromSeconds(60);

    private readonly PostgresServer _pg = fixture.Server;
    private readonly TestCertificates _certs = fixture.Certificates;

    [Theory]
    [InlineData("127.0.0.1")]
    [InlineData(TestCertificates.ServerName)]
    public async Task Npgsql_VerifyFull_trusting_the_test_CA_connects_over_TLS(string host)
    {
        var builder = new NpgsqlConnectionStringBuilder(_pg.TlsConnectionString(SslMode.VerifyFull)) { Host = host };
        await using var connection = new NpgsqlConnection(builder.ConnectionString);
        await connection.OpenAsync();

        Assert.True(await UsesTlsAsync(connection));
    }

    [Fact]
    public async Task Npgsql_VerifyFull_trusting_the_wrong_CA_is_refused()
    {
        var builder = new NpgsqlConnectionStringBuilder(_pg.TlsConnectionString(SslMode.VerifyFull)) { RootCertificate = _certs.WrongCaFile };
        await using var connection = new NpgsqlConnection(builder.ConnectionString);

        var error = await Assert.ThrowsAnyAsync<NpgsqlException>(() => connection.OpenAsync());

        Assert.IsAssignableFrom<AuthenticationException>(error.InnerException);
    }

    [Fact]
    public async Task Plain_connections_still_work_for_the_usual_roles()
    {
        var builder = new NpgsqlConnectionStringBuilder(_pg.ConnectionString(PostgresServer.ScramUser, PostgresServer.ScramPassword)) { SslMode = SslMode.Disable };
        await using var connection = new NpgsqlConnection(builder.ConnectionString);
        await connection.OpenAsync();

        Assert.False(await UsesTlsAsync(connection));
    }

    [Fact]
    public async Task SslOnly_role_is_refused_without_TLS()
    {
        var builder = new NpgsqlConnectionStringBuilder(_pg.ConnectionString(PostgresServer.SslOnlyUser, PostgresServer.SslOnlyPassword)) { SslMode = SslMode.Disable };
        await using var connection = new NpgsqlConnection(builder.ConnectionString);

        var error = await Assert.ThrowsAsync<PostgresException>(() => connection.OpenAsync());

        Assert.Equal(PostgresErrorCodes.InvalidAuthorizationSpecification, error.SqlState); // 28000, pg_hba reject
    }

    [Fact]
    public async Task SslOnly_role_logs_in_over_TLS_with_SCRAM_and_channel_binding()
    {
        var builder = new NpgsqlConnectionStringBuilder(
            _pg.TlsConnectionString(SslMode.Require, PostgresServer.SslOnlyUser, PostgresServer.SslOnlyPassword))
        {
            ChannelBinding = ChannelBinding.Require,
        };
        await using var connection = new NpgsqlConnection(builder.ConnectionString);
        await connection.OpenAsync();

        Assert.Equal(PostgresServer.SslOnlyUser, await ScalarAsync<string>(connection, "SELECT current_user"));
        Assert.True(await UsesTlsAsync(connection));
    }

    [Fact]
    public async Task Cert_role_logs_in_with_a_client_certificate_from_PEM_files()
    {
        TestClientCertificate client = _certs.ClientCertificate(PostgresServer.CertUser);
        var builder = new NpgsqlConnectionStringBuilder(_pg.TlsConnectionString(SslMode.VerifyFull, PostgresServer.CertUser))
        {
            SslCertificate = client.CertFile,
            SslKey = client.KeyFile,
        };
        await using var connection = new NpgsqlConnection(builder.ConnectionString);
        await connection.OpenAsync();

        Assert.Equal(PostgresServer.CertUser, await ScalarAsync<string>(connection, "SELECT current_user"));
        Assert.Equal($"/CN={PostgresServer.CertUser}", await ScalarAsync<string>(connection, "SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"));
    }

    [Fact]
    public async Task Cert_role_logs_in_with_the_in_process_client_certificate()
    {
        X509Certificate2 certificate = _certs.ClientCertificate(PostgresServer.CertUser).Certificate;
        var sourceBuilder = new NpgsqlDataSourceBuilder(_pg.TlsConnectionString(SslMode.VerifyFull, PostgresServer.CertUser));
        sourceBuilder.UseSslClientAuthenticationOptionsCallback(options => options.ClientCertificates = [certificate]);
        await using NpgsqlDataSource source = sourceBuilder.Build();
        await using NpgsqlConnection connection = await source.OpenConnectionAsync();

        Assert.Equal(PostgresServer.CertUser, await ScalarAsync<string>(connection, "SELECT current_user"));
    }

    [Fact]
    public async Task Cert_role_is_refused_without_a_client_certificate()
    {
        await using var connection = new NpgsqlConnection(_pg.TlsConnectionString(SslMode.VerifyFull, PostgresServer.CertUser));

        var error = await Assert.ThrowsAsync<PostgresException>(() => connection.OpenAsync());

        Assert.Equal(PostgresErrorCodes.InvalidAuthorizationSpecification, error.SqlState); // 28000
    }

    [Fact]
    public async Task Cert_role_is_refused_with_a_certificate_for_another_name()
    {
        TestClientCertificate other = _certs.ClientCertificate("someone_else");
        var builder = new NpgsqlConnectionStringBuilder(_pg.TlsConnectionString(SslMode.VerifyFull, PostgresServer.CertUser))
        {
            SslCertificate = other.CertFile,
            SslKey = other.KeyFile,
        };
        await using var connection = new NpgsqlConnection(builder.ConnectionString);

        var error = await Assert.ThrowsAsync<PostgresException>(() => connection.OpenAsync());

        Assert.Equal(PostgresErrorCodes.InvalidAuthorizationSpecification, error.SqlState); // 28000
    }

    [Fact]
    public async Task Psql_verify_full_with_channel_binding_prints_1()
    {
        var (exitCode, stdout, stderr) = await RunPsqlAsync(
            $"sslmode=verify-full sslrootcert={_certs.CaFile} channel_binding=require", PostgresServer.SslOnlyUser, PostgresServer.SslOnlyPassword);

        Assert.True(exitCode == 0, $"psql exited with {exitCode}: {stderr}");
        Assert.Equal("1", stdout.Trim());
    }

    [Fact]
    public async Task Psql_verify_full_trusting_the_wrong_CA_fails()
    {
        var (exitCode, _, stderr) = await RunPsqlAsync(
            $"sslmode=verify-full sslrootcert={_certs.WrongCaFile}", PostgresServer.SslOnlyUser, PostgresServer.SslOnlyPassword);

        Assert.NotEqual(0, exitCode);
        Assert.Contains("certificate verify failed", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Psql_logs_in_with_a_client_certificate()
    {
        TestClientCertificate client = _certs.ClientCertificate(PostgresServer.CertUser);
        var (exitCode, stdout, stderr) = await RunPsqlAsync(
            $"sslmode=verify-full sslrootcert={_certs.CaFile} sslcert={client.CertFile} sslkey={client.KeyFile}", PostgresServer.CertUser, password: null);

        Assert.True(exitCode == 0, $"psql exited with {exitCode}: {stderr}");
        Assert.Equal("1", stdout.Trim());
    }

    [Fact]
    public async Task Relay_records_an_SSLRequest_for_an_Npgsql_TLS_connection()
    {
        await using var relay = RecordingRelay.Start(_pg.Host, _pg.Port);
        await using (var connection = new NpgsqlConnection(_pg.TlsConnectionString(SslMode.Require, port: relay.Port)))
        {
            await connection.OpenAsync();
            Assert.True(await UsesTlsAsync(connection));
        }

        IReadOnlyList<RelayedConnection> seen = await relay.WaitForConnectionsAsync(1);
        output.WriteLine($"relay saw: {string.Join(", ", seen)}");

        RelayedConnection first = Assert.Single(seen);
        Assert.Equal(StartupCodes.SslRequestCode, first.RequestCode);
        Assert.False(first.StartsWithTlsHandshake);
    }

    [Fact]
    public async Task Relay_records_a_CancelRequest_for_NpgsqlCommand_Cancel_on_a_plain_connection()
    {
        await using var relay = RecordingRelay.Start(_pg.Host, _pg.Port);
        var builder = new NpgsqlConnectionStringBuilder(_pg.ConnectionString(port: relay.Port)) { SslMode = SslMode.Disable };
        await using var connection = new NpgsqlConnection(builder.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand("SELECT pg_sleep(60)", connection);
        Task<object?> running = command.ExecuteScalarAsync();
        await WaitUntilActiveAsync(connection.ProcessID);

        command.Cancel();

        Exception error = await Assert.ThrowsAnyAsync<Exception>(() => running.WaitAsync(TimeSpan.FromSeconds(30)));
        PostgresException pg = Assert.IsType<PostgresException>(error is OperationCanceledException ? error.InnerException : error);
        Assert.Equal(PostgresErrorCodes.QueryCanceled, pg.SqlState); // 57014
        IReadOnlyList<RelayedConnection> seen = await relay.WaitForConnectionsAsync(2);
        output.WriteLine($"relay saw: {string.Join(", ", seen)}");
        Assert.Equal(2, seen.Count);
        Assert.True(seen[0].IsStartupMessage, $"first connection: {seen[0]}");
        Assert.Equal(StartupCodes.CancelRequestCode, seen[1].RequestCode);
    }

    [Fact]
    public async Task Relay_records_an_SSLRequest_ahead_of_the_cancel_of_a_TLS_connection()
    {
        await using var relay = RecordingRelay.Start(_pg.Host, _pg.Port);
        await using var connection = new NpgsqlConnection(_pg.TlsConnectionString(SslMode.VerifyFull, port: relay.Port));
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand("SELECT pg_sleep(60)", connection);
        Task<object?> running = command.ExecuteScalarAsync();
        await WaitUntilActiveAsync(connection.ProcessID);

        command.Cancel();

        Exception error = await Assert.ThrowsAnyAsync<Exception>(() => running.WaitAsync(TimeSpan.FromSeconds(30)));
        PostgresException pg = Assert.IsType<PostgresException>(error is OperationCanceledException ? error.InnerException : error);
        Assert.Equal(PostgresErrorCodes.QueryCanceled, pg.SqlState);
        IReadOnlyList<RelayedConnection> seen = await relay.WaitForConnectionsAsync(2);
        output.WriteLine($"relay saw: {string.Join(", ", seen)}");
        Assert.Equal([StartupCodes.SslRequestCode, StartupCodes.SslRequestCode], [seen[0].RequestCode, seen[1].RequestCode]);
    }

    [Fact]
    public async Task Relay_records_a_direct_TLS_ClientHello_and_short_connections()
    {
        await using var relay = RecordingRelay.Start(_pg.Host, _pg.Port);

        // PostgreSQL 15 knows no direct TLS: it reads the ClientHello as a bad start-up packet and
        // closes, which fails the handshake. The relay still saw how the connection began.
        using (var tcp = new TcpClient())
        {
            await tcp.ConnectAsync(relay.Host, relay.Port);
            await using var tls = new SslStream(tcp.GetStream());
            await Assert.ThrowsAnyAsync<Exception>(() => tls.AuthenticateAsClientAsync(TestCertificates.ServerName).WaitAsync(TimeSpan.FromSeconds(30)));
        }

        using (var tcp = new TcpClient())
        {
            await tcp.ConnectAsync(relay.Host, relay.Port);
            NetworkStream stream = tcp.GetStream();
            await stream.WriteAsync(new byte[] { 0, 0, 0 });
            tcp.Client.Shutdown(SocketShutdown.Send);

            // The relay passes the half close on; PostgreSQL gives up on the packet and closes.
            Assert.Equal(0, await stream.ReadAsync(new byte[16]).AsTask().WaitAsync(TimeSpan.FromSeconds(30)));
        }

        IReadOnlyList<RelayedConnection> seen = await relay.WaitForConnectionsAsync(2);
        output.WriteLine($"relay saw: {string.Join(", ", seen)}");

        Assert.True(seen[0].StartsWithTlsHandshake, seen[0].ToString());
        Assert.Null(seen[0].RequestCode);
        Assert.Equal(3, seen[1].FirstBytes.Length);
        Assert.Null(seen[1].RequestCode);
    }

    [Fact]
    public async Task Server_files_are_private_copies_owned_by_the_server()
    {
        Assert.True(_pg.TlsEnabled);
        Assert.Same(_certs, _pg.Certificates);
        Assert.Equal("on", await _pg.ScalarAsync<string>("SHOW ssl"));
        string keyFile = await _pg.ScalarAsync<string>("SHOW ssl_key_file") ?? string.Empty;

        Assert.StartsWith(_pg.DataDir, keyFile, StringComparison.Ordinal);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, ModeOf(keyFile));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, ModeOf(_certs.ServerKeyFile));
    }

    private static UnixFileMode ModeOf(string path)
    {
        if (OperatingSystem.IsWindows())
        {
            throw new PlatformNotSupportedException("File modes are a Unix notion.");
        }

        return File.GetUnixFileMode(path);
    }

    private static async Task<bool> UsesTlsAsync(NpgsqlConnection connection) =>
        await ScalarAsync<bool>(connection, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");

    private static async Task<T?> ScalarAsync<T>(NpgsqlConnection connection, string sql)
    {
        await using var command = new NpgsqlCommand(sql, connection);
        return (T?)await command.ExecuteScalarAsync();
    }

    /// <summary>Waits until backend <paramref name="pid"/> runs a query (state active), for up to 30 s.</summary>
    private async Task WaitUntilActiveAsync(int pid)
    {
        var deadline = Stopwatch.StartNew();
        while (await _pg.ScalarAsync<long>(
            $"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid.ToString(CultureInfo.InvariantCulture)} AND state = 'active'") == 0)
        {
            Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(30), $"backend {pid} never became active");
            await Task.Delay(20);
        }
    }

    private async Task<(int ExitCode, string StdOut, string StdErr)> RunPsqlAsync(string tlsOptions, string user, string? password)
    {
        string psql = ProcessRunner.FindOnPath("psql") ?? _pg.ToolPath("psql");
        var env = new Dictionary<string, string>
        {
            ["PGPASSWORD"] = password ?? string.Empty,
            ["PGCONNECT_TIMEOUT"] = "10",
            // Keep libpq from picking up a client certificate or settings of the user running the tests.
            ["PGSSLCERT"] = string.Empty,
            ["PGSSLKEY"] = string.Empty,
            ["PGSSLROOTCERT"] = string.Empty,
            ["PGSERVICE"] = string.Empty,
        };
        string conninfo = $"host={_pg.Host} port={_pg.Port.ToString(CultureInfo.InvariantCulture)} dbname={PostgresServer.Database} user={user} {tlsOptions}";
        return await ProcessRunner.RunAsync(psql, ["-X", "-d", conninfo, "-Atc", "SELECT 1"], PsqlTimeout, env);
    }
}
