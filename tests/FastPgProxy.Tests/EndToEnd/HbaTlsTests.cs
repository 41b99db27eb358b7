using FastPgProxy.Config;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>auth_type hba with TLS clients: hostssl lines match them, hostnossl lines plain ones, and refusals say which.</summary>
[Collection(TlsPostgresCollection.Name)]
public sealed class HbaTlsTests(TlsPostgresFixture fixture) : IDisposable
{
    private const string InvalidAuthorization = "28000";

    private readonly PostgresServer _pg = fixture.Server;
    private readonly TestCertificates _certs = fixture.Certificates;
    private readonly string _dir = Directory.CreateTempSubdirectory("fpp-hba-tls-").FullName;

    /// <inheritdoc/>
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public async Task Hostssl_lines_match_TLS_clients_and_hostnossl_lines_plain_ones()
    {
        string path = Path.Combine(_dir, "hba.conf");
        File.WriteAllText(path, $"""
            hostssl   all {PostgresServer.TrustUser} 127.0.0.1/32 trust
            hostnossl all {PostgresServer.TrustUser} 127.0.0.1/32 reject
            hostssl   all {PostgresServer.OtherUser} 127.0.0.1/32 reject
            """);
        await using ProxyHarness proxy = TlsProxies.Start(_pg, TlsMode.Prefer, o =>
        {
            o.AuthType = AuthType.Hba;
            o.AuthHbaFile = path;
        });

        await using (NpgsqlConnection tls = await TlsProxies.OpenVerifyFullAsync(proxy, _certs.CaFile))
        {
            Assert.Equal(PostgresServer.TrustUser, await TlsProxies.ScalarAsync<string>(tls, "SELECT current_user"));
        }

        var plain = new NpgsqlConnectionStringBuilder(proxy.ConnectionString(PostgresServer.TrustUser)) { SslMode = SslMode.Disable };
        await using (var connection = new NpgsqlConnection(plain.ConnectionString))
        {
            PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => connection.OpenAsync());
            Assert.Equal(InvalidAuthorization, e.SqlState);
            Assert.Equal($"pg_hba.conf rejects connection for host \"127.0.0.1\", user \"{PostgresServer.TrustUser}\", database \"{PostgresServer.Database}\", no encryption", e.MessageText);
        }

        await using (var other = new NpgsqlConnection(TlsProxies.VerifyFull(proxy, _certs.CaFile, PostgresServer.OtherUser)))
        {
            PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => other.OpenAsync());
            Assert.Equal(InvalidAuthorization, e.SqlState);
            Assert.Equal($"pg_hba.conf rejects connection for host \"127.0.0.1\", user \"{PostgresServer.OtherUser}\", database \"{PostgresServer.Database}\", SSL encryption", e.MessageText);
        }
    }
}
