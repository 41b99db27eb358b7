using System.Diagnostics;
using System.Security.Cryptography.X509Certificates;
using FastPgProxy.Config;
using FastPgProxy.Pooling;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// What the TLS end-to-end tests share: proxies that speak TLS to their clients with the test server
/// certificate, Npgsql connection strings that trust the test CA, the admin console over TLS, and the
/// check that a proxy holds nothing once its clients are gone.
/// </summary>
internal static class TlsProxies
{
    /// <summary>The admin user every TLS test proxy has.</summary>
    public const string AdminUser = "fpp_admin";

    /// <summary>Waits of the tests: long enough for a slow machine, short enough that a hang fails.</summary>
    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    /// <summary>client_tls_* of mode <paramref name="mode"/> with the test server certificate (signed by the test CA).</summary>
    public static TlsSettings ClientTls(TestCertificates certificates, TlsMode mode = TlsMode.Require, string? caFile = null) => new()
    {
        Mode = mode,
        CertFile = certificates.ServerCertFile,
        KeyFile = certificates.ServerKeyFile,
        CaFile = caFile,
    };

    /// <summary>
    /// Starts a proxy in front of <paramref name="pg"/> with client TLS (<paramref name="mode"/>, the test
    /// server certificate) and <see cref="AdminUser"/>, then as <paramref name="configure"/> changes it.
    /// </summary>
    public static ProxyHarness Start(
        PostgresServer pg,
        TlsMode mode = TlsMode.Require,
        Action<ProxyOptions>? configure = null,
        IReadOnlyList<(string User, string Secret)>? users = null) =>
        ProxyHarness.Start(
            pg,
            o =>
            {
                o.ClientTls = ClientTls(pg.Certificates!, mode);
                o.AdminUsers.Add(AdminUser);
                configure?.Invoke(o);
            },
            users);

    /// <summary>An Npgsql connection string to the proxy (or to <paramref name="port"/>) with VerifyFull against <paramref name="rootCertificate"/>.</summary>
    public static string VerifyFull(ProxyHarness proxy, string rootCertificate, string user = PostgresServer.TrustUser, string? password = null, int? port = null) =>
        new NpgsqlConnectionStringBuilder(proxy.ConnectionString(user, password))
        {
            Port = port ?? proxy.Port,
            SslMode = SslMode.VerifyFull,
            RootCertificate = rootCertificate,
        }.ConnectionString;

    /// <summary>Opens a VerifyFull connection trusting <paramref name="rootCertificate"/>.</summary>
    public static async Task<NpgsqlConnection> OpenVerifyFullAsync(ProxyHarness proxy, string rootCertificate, string user = PostgresServer.TrustUser)
    {
        var connection = new NpgsqlConnection(VerifyFull(proxy, rootCertificate, user));
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

    /// <summary>Runs <paramref name="sql"/> and returns the first column of the first row.</summary>
    public static async Task<T?> ScalarAsync<T>(NpgsqlConnection connection, string sql)
    {
        await using var command = new NpgsqlCommand(sql, connection);
        return (T?)await command.ExecuteScalarAsync();
    }

    /// <summary>A new VerifyFull client trusting the test CA runs a query: the proxy still serves TLS clients.</summary>
    public static async Task AssertServesTlsAsync(ProxyHarness proxy, TestCertificates certificates)
    {
        await using NpgsqlConnection connection = await OpenVerifyFullAsync(proxy, certificates.CaFile);
        Assert.Equal(42, await ScalarAsync<int>(connection, "SELECT 42"));
    }

    /// <summary>
    /// The admin console over TLS (encrypted; the proxy's certificate is not checked, the console is not what
    /// is tested). When the proxy checks client certificates, one with CN <see cref="AdminUser"/> from
    /// <paramref name="certificates"/> is presented.
    /// </summary>
    public static async Task<NpgsqlConnection> OpenConsoleAsync(ProxyHarness proxy, TestCertificates? certificates = null, string database = "pgbouncer")
    {
        TlsMode mode = proxy.Server.Options.ClientTls.Mode;
        var builder = new NpgsqlDataSourceBuilder(proxy.ConnectionString(AdminUser, database: database) + ";Server Compatibility Mode=NoTypeLoading;Include Error Detail=true");
        builder.ConnectionStringBuilder.SslMode = mode == TlsMode.Disable ? SslMode.Disable : SslMode.Require;
        if (mode >= TlsMode.VerifyCa && certificates is not null)
        {
            X509Certificate2 certificate = certificates.ClientCertificate(AdminUser).Certificate;
            builder.UseSslClientAuthenticationOptionsCallback(options => options.ClientCertificates = [certificate]);
        }

        // The data source only makes the connection; it owns nothing the connection needs afterwards.
        await using NpgsqlDataSource source = builder.Build();
        return await source.OpenConnectionAsync();
    }

    /// <summary>Runs a console command and returns its rows by column name.</summary>
    public static async Task<List<Dictionary<string, object?>>> QueryAsync(NpgsqlConnection connection, string sql)
    {
        await using var command = new NpgsqlCommand(sql, connection);
        await using NpgsqlDataReader reader = await command.ExecuteReaderAsync();
        var rows = new List<Dictionary<string, object?>>();
        while (await reader.ReadAsync())
        {
            var row = new Dictionary<string, object?>(StringComparer.Ordinal);
            for (int i = 0; i < reader.FieldCount; i++)
            {
                row[reader.GetName(i)] = reader.IsDBNull(i) ? null : reader.GetValue(i);
            }

            rows.Add(row);
        }

        return rows;
    }

    /// <summary>
    /// Nothing leaked: no client connection is counted (open or logging in), no session is registered, SHOW
    /// CLIENTS lists only the console asking, and once the pools are idle every buffer is back.
    /// </summary>
    public static async Task AssertNothingLeakedAsync(ProxyHarness proxy, TestCertificates certificates)
    {
        await WaitUntilAsync(
            () => proxy.Server.Admission.Connections == 0 && proxy.Server.Admission.LoggingIn == 0 && proxy.Server.Sessions.Count == 0,
            () => $"client connections still counted: {proxy.Server.Admission.Connections} open, {proxy.Server.Admission.LoggingIn} logging in, {proxy.Server.Sessions.Count} sessions");

        await using (NpgsqlConnection console = await OpenConsoleAsync(proxy, certificates))
        {
            List<Dictionary<string, object?>> clients = await QueryAsync(console, "SHOW CLIENTS");
            Assert.DoesNotContain(clients, c => (string?)c["user"] != AdminUser);
        }

        Assert.Equal(0, await BufferReturnTests.BuffersInUseOnceIdleAsync(proxy));
    }

    /// <summary>Backend connections of every pool, read on the pools' own loops.</summary>
    public static async Task<int> BackendCountAsync(ProxyHarness proxy)
    {
        int total = 0;
        foreach (ServerPool pool in proxy.Server.Pools.Pools.ToArray())
        {
            var done = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
            pool.Loop.Post(() => done.SetResult(pool.Total));
            total += await done.Task.WaitAsync(Patience);
        }

        return total;
    }

    /// <summary>Waits until PostgreSQL runs a query containing <paramref name="marker"/>.</summary>
    public static Task WaitRunningAsync(PostgresServer pg, string marker) => pg.WaitUntilRunningAsync(marker, Patience);

    /// <summary>Polls <paramref name="condition"/> until it holds, failing with <paramref name="failure"/> after <see cref="Patience"/>.</summary>
    public static async Task WaitUntilAsync(Func<bool> condition, Func<string> failure)
    {
        var deadline = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(deadline.Elapsed < Patience, failure());
            await Task.Delay(20);
        }
    }

    /// <summary>Polls <paramref name="condition"/> until it holds, failing with <paramref name="failure"/> after <see cref="Patience"/>.</summary>
    public static async Task WaitUntilAsync(Func<Task<bool>> condition, Func<string> failure)
    {
        var deadline = Stopwatch.StartNew();
        while (!await condition())
        {
            Assert.True(deadline.Elapsed < Patience, failure());
            await Task.Delay(20);
        }
    }

    /// <summary>Npgsql reports a cancelled command as OperationCanceledException around PostgreSQL's 57014; anything else fails.</summary>
    public static async Task AssertCancelledAsync(Task running)
    {
        Exception e = await Assert.ThrowsAnyAsync<Exception>(() => running.WaitAsync(Patience));
        PostgresException pg = Assert.IsType<PostgresException>(e is OperationCanceledException ? e.InnerException : e);
        Assert.Equal(PostgresErrorCodes.QueryCanceled, pg.SqlState);
    }
}
