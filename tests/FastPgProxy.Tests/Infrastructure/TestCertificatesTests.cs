using System;
using System.IO;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Threading.Tasks;
using Xunit;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>The certificates work in-process, with <see cref="SslStream"/> on both ends, and their files are what they claim.</summary>
public sealed class TestCertificatesTests : IDisposable
{
    private static readonly TimeSpan HandshakeTimeout = TimeSpan.FromSeconds(30);

    private readonly TestCertificates _certs = TestCertificates.Create();

    public void Dispose() => _certs.Dispose();

    [Fact]
    public async Task SslStream_handshake_with_the_server_and_a_client_certificate_verifies_both_ways()
    {
        X509Certificate2 client = _certs.ClientCertificate("alice").Certificate;

        var (serverSaw, clientSaw) = await HandshakeAsync(_certs.ServerCertificate, client);

        Assert.Equal("CN=alice", serverSaw?.Subject);
        Assert.Equal(_certs.ServerCertificate.GetCertHashString(), clientSaw?.GetCertHashString());
    }

    [Fact]
    public async Task SslStream_client_trusting_the_test_CA_refuses_the_wrong_server_certificate()
    {
        await Assert.ThrowsAnyAsync<AuthenticationException>(() => HandshakeAsync(_certs.WrongServerCertificate, clientCertificate: null));
    }

    [Fact]
    public void Pem_files_load_back_into_the_same_certificates_and_keys_are_private()
    {
        using X509Certificate2 server = X509Certificate2.CreateFromPemFile(_certs.ServerCertFile, _certs.ServerKeyFile);
        TestClientCertificate alice = _certs.ClientCertificate("alice");
        using X509Certificate2 client = X509Certificate2.CreateFromPemFile(alice.CertFile, alice.KeyFile);

        Assert.True(server.HasPrivateKey);
        Assert.Equal(_certs.ServerCertificate.Thumbprint, server.Thumbprint);
        Assert.Equal(alice.Certificate.Thumbprint, client.Thumbprint);
        Assert.Same(alice, _certs.ClientCertificate("alice"));
        using X509Certificate2 ca = X509CertificateLoader.LoadCertificateFromFile(_certs.CaFile);
        Assert.Equal(_certs.Ca.Thumbprint, ca.Thumbprint);
        Assert.False(ca.HasPrivateKey);
        foreach (string key in new[] { _certs.ServerKeyFile, _certs.WrongServerKeyFile, alice.KeyFile })
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, ModeOf(key));
        }
    }

    [Fact]
    public void Certificates_chain_to_their_own_CA_only()
    {
        Assert.True(Chains(_certs.ServerCertificate, _certs.Ca));
        Assert.True(Chains(_certs.ClientCertificate("bob").Certificate, _certs.Ca));
        Assert.True(Chains(_certs.WrongServerCertificate, _certs.WrongCa));
        Assert.False(Chains(_certs.WrongServerCertificate, _certs.Ca));
        Assert.False(Chains(_certs.ServerCertificate, _certs.WrongCa));
    }

    [Fact]
    public void Dispose_deletes_the_folder()
    {
        TestCertificates certs = TestCertificates.Create();
        string folder = certs.Directory;
        Assert.True(File.Exists(certs.CaFile));

        certs.Dispose();

        Assert.False(Directory.Exists(folder));
    }

    private static UnixFileMode ModeOf(string path)
    {
        if (OperatingSystem.IsWindows())
        {
            throw new PlatformNotSupportedException("File modes are a Unix notion.");
        }

        return File.GetUnixFileMode(path);
    }

    private static bool Chains(X509Certificate2 leaf, X509Certificate2 root)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(root);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        return chain.Build(leaf);
    }

    /// <summary>
    /// An in-process TLS handshake over loopback: the server presents <paramref name="serverCertificate"/>
    /// and asks for a client certificate; the client trusts only the test CA and expects <c>localhost</c>.
    /// </summary>
    /// <returns>The client certificate the server saw, and the server certificate the client saw.</returns>
    private async Task<(X509Certificate? ServerSaw, X509Certificate? ClientSaw)> HandshakeAsync(
        X509Certificate2 serverCertificate, X509Certificate2? clientCertificate)
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        try
        {
            int port = ((IPEndPoint)listener.LocalEndpoint).Port;
            using var clientTcp = new TcpClient();
            Task connect = clientTcp.ConnectAsync(IPAddress.Loopback, port);
            using TcpClient serverTcp = await listener.AcceptTcpClientAsync().WaitAsync(HandshakeTimeout);
            await connect;

            await using var server = new SslStream(serverTcp.GetStream());
            await using var client = new SslStream(clientTcp.GetStream());
            Task serverSide = server.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
            {
                ServerCertificate = serverCertificate,
                ClientCertificateRequired = clientCertificate is not null,
                RemoteCertificateValidationCallback = (_, certificate, chain, errors) =>
                    certificate is X509Certificate2 presented && Chains(presented, _certs.Ca),
            });
            var clientOptions = new SslClientAuthenticationOptions
            {
                TargetHost = TestCertificates.ServerName,
                CertificateChainPolicy = new X509ChainPolicy
                {
                    TrustMode = X509ChainTrustMode.CustomRootTrust,
                    RevocationMode = X509RevocationMode.NoCheck,
                    CustomTrustStore = { _certs.Ca },
                },
            };
            if (clientCertificate is not null)
            {
                clientOptions.ClientCertificates = [clientCertificate];
            }

            Task clientSide = client.AuthenticateAsClientAsync(clientOptions);
            try
            {
                await clientSide.WaitAsync(HandshakeTimeout);
                await serverSide.WaitAsync(HandshakeTimeout);
            }
            finally
            {
                // A failed client handshake leaves the server side to fail too; observe it.
                clientTcp.Close();
                await Task.WhenAny(serverSide, Task.Delay(HandshakeTimeout));
            }

            return (server.RemoteCertificate, client.RemoteCertificate);
        }
        finally
        {
            listener.Stop();
        }
    }
}
