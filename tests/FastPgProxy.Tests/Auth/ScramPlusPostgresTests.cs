using System;
using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.IO;
using System.Linq;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using FastPgProxy.Auth;
using FastPgProxy.Protocol;
using FastPgProxy.Tests.EndToEnd;
using FastPgProxy.Tests.Infrastructure;
using Xunit;

namespace FastPgProxy.Tests.Auth;

/// <summary>
/// <see cref="ScramClient"/> against a real PostgreSQL over TLS: SSLRequest, an SslStream, and the SCRAM
/// exchange written by hand around it. PostgreSQL accepting SCRAM-SHA-256-PLUS with the tls-server-end-point
/// data of <c>SslStream.RemoteCertificate</c> proves the bytes; the same exchanges run against
/// <see cref="ScramServer"/> show the proxy's own server refuses and accepts what PostgreSQL does.
/// </summary>
public sealed class ScramPlusPostgresTests(TlsPostgresFixture fixture) : IClassFixture<TlsPostgresFixture>
{
    private const string Plus = "SCRAM-SHA-256-PLUS";
    private const string Plain = "SCRAM-SHA-256";
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    /// <summary>How an exchange ended: a null SQLSTATE means logged in (PostgreSQL: up to ReadyForQuery).</summary>
    private readonly record struct Outcome(string? SqlState, string? Message, string? Detail);

    [Theory]
    [InlineData(TlsPostgresFixture.RsaSha256)]
    [InlineData(TlsPostgresFixture.RsaSha512)]
    [InlineData(TlsPostgresFixture.EcdsaSha384)]
    [InlineData(TlsPostgresFixture.RsaPssSha384)]
    public async Task Postgres_accepts_scram_sha_256_plus_with_the_certificate_hash(string certificateKind)
    {
        fixture.UseCertificate(certificateKind);
        using var cts = new CancellationTokenSource(Timeout);
        await using var connection = await PostgresTlsConnection.OpenAsync(fixture.Server.Port, cts.Token);

        byte[] mechanisms = await connection.StartAsync(PostgresServer.ScramUser, cts.Token);
        Assert.Equal(Plus + "\0" + Plain + "\0\0", Encoding.ASCII.GetString(mechanisms));

        byte[] binding = ChannelBinding.ComputeTlsServerEndPoint(connection.RemoteCertificate);
        Assert.Equal(fixture.ExpectedBinding, binding);
        Assert.True(ScramClient.TrySelectMechanism(mechanisms, channelBindingAvailable: true, out Gs2CbindFlag flag));
        Assert.Equal(Gs2CbindFlag.TlsServerEndPoint, flag);

        var client = new ScramClient(PostgresServer.ScramPassword, flag, binding);
        Outcome outcome = await connection.AuthenticateAsync(client.Mechanism.ToArray(), client, cts.Token);

        Assert.Equal(new Outcome(null, null, null), outcome);
    }

    [Fact]
    public async Task Postgres_refuses_the_hash_of_another_certificate()
    {
        fixture.UseCertificate(TlsPostgresFixture.RsaSha256);
        using var cts = new CancellationTokenSource(Timeout);
        await using var connection = await PostgresTlsConnection.OpenAsync(fixture.Server.Port, cts.Token);
        await connection.StartAsync(PostgresServer.ScramUser, cts.Token);

        byte[] wrong = ChannelBinding.ComputeTlsServerEndPoint(connection.RemoteCertificate);
        wrong[0] ^= 0x01;
        var client = new ScramClient(PostgresServer.ScramPassword, Gs2CbindFlag.TlsServerEndPoint, wrong);
        Outcome outcome = await connection.AuthenticateAsync(client.Mechanism.ToArray(), client, cts.Token);

        Assert.Equal("28000", outcome.SqlState);
        Assert.Equal("SCRAM channel binding check failed", outcome.Message);
    }

    /// <summary>
    /// Each exchange runs against PostgreSQL over TLS and against a <see cref="ScramServer"/> holding the same
    /// verifier and the same certificate's binding data; the two must end alike (SQLSTATE, and for 28000 the
    /// message and detail too).
    /// </summary>
    [Theory]
    [InlineData(Plus, nameof(Gs2CbindFlag.TlsServerEndPoint), false, null)]
    [InlineData(Plus, nameof(Gs2CbindFlag.TlsServerEndPoint), true, "28000")] // a man in the middle
    [InlineData(Plain, nameof(Gs2CbindFlag.BindingNotOffered), false, "28000")] // a downgrade
    [InlineData(Plain, nameof(Gs2CbindFlag.NoBinding), false, null)]
    [InlineData(Plain, nameof(Gs2CbindFlag.TlsServerEndPoint), false, "08P01")] // p= with the plain mechanism
    [InlineData(Plus, nameof(Gs2CbindFlag.NoBinding), false, "08P01")] // PLUS without binding data
    public async Task Proxy_server_ends_each_exchange_as_postgres_does(string mechanism, string flagName, bool wrongBinding, string? sqlState)
    {
        fixture.UseCertificate(TlsPostgresFixture.EcdsaSha384);
        var flag = Enum.Parse<Gs2CbindFlag>(flagName);
        byte[] binding = fixture.ExpectedBinding.ToArray();
        if (wrongBinding)
        {
            binding[^1] ^= 0x80;
        }

        using var cts = new CancellationTokenSource(Timeout);
        await using var connection = await PostgresTlsConnection.OpenAsync(fixture.Server.Port, cts.Token);
        await connection.StartAsync(PostgresServer.ScramUser, cts.Token);
        Outcome postgres = await connection.AuthenticateAsync(
            Encoding.ASCII.GetBytes(mechanism), new ScramClient(PostgresServer.ScramPassword, flag, binding), cts.Token);

        string? rolpassword = await fixture.Server.ScalarAsync<string>(
            $"SELECT rolpassword FROM pg_authid WHERE rolname = '{PostgresServer.ScramUser}'");
        Assert.True(ScramVerifier.TryParse(rolpassword!, out ScramVerifier? verifier));
        Outcome proxy = RunAgainst(
            new ScramServer(verifier, fixture.ExpectedBinding), Encoding.ASCII.GetBytes(mechanism), new ScramClient(PostgresServer.ScramPassword, flag, binding));

        Assert.Equal(sqlState, postgres.SqlState);
        Assert.Equal(sqlState, proxy.SqlState);
        if (sqlState == "28000")
        {
            Assert.Equal(postgres, proxy);
        }
    }

    /// <summary>The exchange against the proxy's server, its failure mapped to a SQLSTATE as the login maps it.</summary>
    private static Outcome RunAgainst(ScramServer server, byte[] mechanism, ScramClient client)
    {
        if (server.TryHandleClientFirst(mechanism, client.CreateClientFirst(), out byte[] serverFirst, out string? error))
        {
            Assert.True(client.TryHandleServerFirst(serverFirst, out byte[] clientFinal, out string? clientError), clientError);
            if (server.TryHandleClientFinal(clientFinal, out byte[] serverFinal, out error))
            {
                Assert.True(client.TryVerifyServerFinal(serverFinal, out clientError), clientError);
                return new Outcome(null, null, null);
            }
        }

        string sqlState = server.State switch
        {
            ScramServerState.ProofRejected => "28P01",
            ScramServerState.ChannelBindingRejected => "28000",
            _ => "08P01",
        };
        return new Outcome(sqlState, error, server.ErrorDetail);
    }

    /// <summary>One client connection to PostgreSQL: SSLRequest, TLS, then the login messages inside TLS.</summary>
    private sealed class PostgresTlsConnection : IAsyncDisposable
    {
        private readonly TcpClient _tcp;
        private readonly SslStream _ssl;

        private PostgresTlsConnection(TcpClient tcp, SslStream ssl)
        {
            _tcp = tcp;
            _ssl = ssl;
        }

        /// <summary>The certificate PostgreSQL presented.</summary>
        public X509Certificate RemoteCertificate => _ssl.RemoteCertificate ?? throw new InvalidOperationException("no server certificate");

        [SuppressMessage("Security", "CA5359:Do Not Disable Certificate Validation", Justification = "The test's own self-signed certificate; the binding is what is checked.")]
        public static async Task<PostgresTlsConnection> OpenAsync(int port, CancellationToken ct)
        {
            var tcp = new TcpClient();
            try
            {
                await tcp.ConnectAsync("127.0.0.1", port, ct);
                NetworkStream stream = tcp.GetStream();
                await stream.WriteAsync(RawProtocol.SslRequest(), ct);
                var answer = new byte[1];
                await stream.ReadExactlyAsync(answer, ct);
                Assert.Equal((byte)'S', answer[0]);

                var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
                await ssl.AuthenticateAsClientAsync(
                    new SslClientAuthenticationOptions
                    {
                        TargetHost = "localhost",
                        RemoteCertificateValidationCallback = (_, _, _, _) => true,
                    },
                    ct);
                return new PostgresTlsConnection(tcp, ssl);
            }
            catch
            {
                tcp.Dispose();
                throw;
            }
        }

        /// <summary>Sends StartupMessage and returns the mechanism list of the AuthenticationSASL that must answer it.</summary>
        public async Task<byte[]> StartAsync(string user, CancellationToken ct)
        {
            await _ssl.WriteAsync(RawProtocol.Startup(("user", user), ("database", PostgresServer.Database)), ct);
            (byte type, byte[] body) = await ReadAsync(ct);
            Assert.Equal((byte)'R', type);
            Assert.Equal((int)AuthRequest.Sasl, BinaryPrimitives.ReadInt32BigEndian(body));
            return body[sizeof(int)..];
        }

        /// <summary>Runs the SCRAM exchange naming <paramref name="mechanism"/>, then reads up to ReadyForQuery.</summary>
        public async Task<Outcome> AuthenticateAsync(byte[] mechanism, ScramClient client, CancellationToken ct)
        {
            var buffer = new byte[1024];
            int length = WriteInitialResponse(buffer, mechanism, client.CreateClientFirst());
            await _ssl.WriteAsync(buffer.AsMemory(0, length), ct);

            (byte type, byte[] body) = await ReadAsync(ct);
            if (type == (byte)'E')
            {
                return Error(body);
            }

            Assert.Equal((int)AuthRequest.SaslContinue, BinaryPrimitives.ReadInt32BigEndian(body));
            Assert.True(client.TryHandleServerFirst(body.AsSpan(sizeof(int)), out byte[] clientFinal, out string? error), error);
            length = WriteResponse(buffer, clientFinal);
            await _ssl.WriteAsync(buffer.AsMemory(0, length), ct);

            (type, body) = await ReadAsync(ct);
            if (type == (byte)'E')
            {
                return Error(body);
            }

            Assert.Equal((int)AuthRequest.SaslFinal, BinaryPrimitives.ReadInt32BigEndian(body));
            Assert.True(client.TryVerifyServerFinal(body.AsSpan(sizeof(int)), out error), error);
            (type, body) = await ReadAsync(ct);
            Assert.Equal((byte)'R', type);
            Assert.Equal((int)AuthRequest.Ok, BinaryPrimitives.ReadInt32BigEndian(body));
            while (type != (byte)'Z')
            {
                (type, body) = await ReadAsync(ct);
                if (type == (byte)'E')
                {
                    return Error(body);
                }
            }

            return new Outcome(null, null, null);
        }

        public async ValueTask DisposeAsync()
        {
            await _ssl.DisposeAsync();
            _tcp.Dispose();
        }

        private static int WriteInitialResponse(byte[] buffer, byte[] mechanism, byte[] clientFirst)
        {
            var writer = new PgWriter(buffer);
            writer.WriteSaslInitialResponse(mechanism, clientFirst);
            return writer.Position;
        }

        private static int WriteResponse(byte[] buffer, byte[] clientFinal)
        {
            var writer = new PgWriter(buffer);
            writer.WriteSaslResponse(clientFinal);
            return writer.Position;
        }

        private static Outcome Error(byte[] body)
        {
            var fields = RawProtocol.Fields(body);
            string? Field(char code) => fields.Where(f => f.Code == code).Select(f => f.Value).FirstOrDefault();
            return new Outcome(Field('C'), Field('M'), Field('D'));
        }

        private async Task<(byte Type, byte[] Body)> ReadAsync(CancellationToken ct)
        {
            var header = new byte[1 + sizeof(int)];
            await _ssl.ReadExactlyAsync(header, ct);
            var body = new byte[BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(1)) - sizeof(int)];
            await _ssl.ReadExactlyAsync(body, ct);
            return (header[0], body);
        }
    }
}

/// <summary>
/// A scratch PostgreSQL of its own with <c>ssl = on</c> and a self-signed server certificate made at test time,
/// which <see cref="UseCertificate"/> swaps with a restart. The cluster is <see cref="PostgresServer"/>'s; this
/// only adds server.crt and server.key (mode 0600, owned by the postgres OS user when the tests run as root)
/// to its data directory.
/// </summary>
public sealed class TlsPostgresFixture : IDisposable
{
    /// <summary>RSA 2048, sha256WithRSAEncryption.</summary>
    public const string RsaSha256 = "rsa-sha256";

    /// <summary>RSA 2048, sha512WithRSAEncryption.</summary>
    public const string RsaSha512 = "rsa-sha512";

    /// <summary>ECDSA P-384, ecdsa-with-SHA384.</summary>
    public const string EcdsaSha384 = "ecdsa-sha384";

    /// <summary>RSA 2048, RSASSA-PSS with SHA-384.</summary>
    public const string RsaPssSha384 = "rsa-pss-sha384";

    private string? _kind;

    /// <summary>Starts the cluster with an RSA-SHA256 certificate.</summary>
    public TlsPostgresFixture()
    {
        Server = PostgresServer.Start();
        try
        {
            File.AppendAllText(Path.Combine(Server.DataDir, "postgresql.conf"), "\n# TlsPostgresFixture\nssl = on\n");
            UseCertificate(RsaSha256);
        }
        catch
        {
            Server.Dispose();
            throw;
        }
    }

    /// <summary>The running server.</summary>
    public PostgresServer Server { get; }

    /// <summary>The tls-server-end-point data of the current certificate, computed directly from its DER.</summary>
    public byte[] ExpectedBinding { get; private set; } = [];

    /// <summary>Makes a certificate of <paramref name="kind"/> the server's and restarts it, unless it already is.</summary>
    public void UseCertificate(string kind)
    {
        if (kind == _kind)
        {
            return;
        }

        (X509Certificate2 certificate, string keyPem) = Create(kind);
        using (certificate)
        {
            string certificatePath = Path.Combine(Server.DataDir, "server.crt");
            string keyPath = Path.Combine(Server.DataDir, "server.key");
            File.WriteAllText(certificatePath, certificate.ExportCertificatePem());
            File.WriteAllText(keyPath, keyPem);

            // PostgreSQL refuses a key file others can read, or one owned by another user than itself.
            if (!OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(keyPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            }

            if (Environment.IsPrivilegedProcess)
            {
                var (exitCode, _, stderr) = ProcessRunner.Run("chown", ["postgres:postgres", certificatePath, keyPath], TimeSpan.FromSeconds(20));
                Assert.True(exitCode == 0, $"chown failed: {stderr}");
            }

            Server.Restart();
            ExpectedBinding = kind switch
            {
                RsaSha512 => SHA512.HashData(certificate.RawData),
                EcdsaSha384 or RsaPssSha384 => SHA384.HashData(certificate.RawData),
                _ => SHA256.HashData(certificate.RawData),
            };
            _kind = kind;
        }
    }

    /// <summary>Stops the server and deletes its files.</summary>
    public void Dispose() => Server.Dispose();

    private static (X509Certificate2 Certificate, string KeyPem) Create(string kind)
    {
        var subject = new X500DistinguishedName("CN=localhost");
        DateTimeOffset from = DateTimeOffset.UtcNow.AddDays(-1), to = DateTimeOffset.UtcNow.AddDays(1);
        if (kind == EcdsaSha384)
        {
            using var ec = ECDsa.Create(ECCurve.NamedCurves.nistP384);
            return (new CertificateRequest(subject, ec, HashAlgorithmName.SHA384).CreateSelfSigned(from, to), ec.ExportPkcs8PrivateKeyPem());
        }

        (HashAlgorithmName hash, RSASignaturePadding padding) = kind switch
        {
            RsaSha256 => (HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1),
            RsaSha512 => (HashAlgorithmName.SHA512, RSASignaturePadding.Pkcs1),
            RsaPssSha384 => (HashAlgorithmName.SHA384, RSASignaturePadding.Pss),
            _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
        };
        using var rsa = RSA.Create(2048);
        return (new CertificateRequest(subject, rsa, hash, padding).CreateSelfSigned(from, to), rsa.ExportPkcs8PrivateKeyPem());
    }
}
