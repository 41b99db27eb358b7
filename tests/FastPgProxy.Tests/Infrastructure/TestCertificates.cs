using System;
using System.Collections.Generic;
using System.IO;
using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>
/// Certificates for TLS tests, made at test time with the BCL only and written as PEM files into a
/// temp folder of their own: a test CA, a server certificate it signed for <c>localhost</c> and
/// <c>127.0.0.1</c>, client certificates it signs on demand (<see cref="ClientCertificate"/>), and
/// an unrelated "wrong" CA with a server certificate of its own, for tests that must see
/// verification fail. <see cref="Dispose"/> deletes the folder.
/// </summary>
/// <remarks>
/// <para>
/// Keys are ECDSA P-256, signatures ECDSA with SHA-256 (so <c>tls-server-end-point</c> channel
/// binding hashes with SHA-256). Private keys are unencrypted PKCS#8 PEM files
/// (<c>BEGIN PRIVATE KEY</c>) with mode 0600, as libpq and PostgreSQL demand of key files.
/// </para>
/// <para>
/// The <see cref="X509Certificate2"/> objects carry their private keys and work as they are for
/// <see cref="System.Net.Security.SslStream"/> on Linux, as server and as client certificate
/// (OpenSSL takes ephemeral keys; Windows would need a PFX round trip first). Files are owned by the
/// user the tests run as; <see cref="PostgresServer"/> copies what the server reads into its data
/// directory and hands the copies to the server's OS user.
/// </para>
/// </remarks>
public sealed class TestCertificates : IDisposable
{
    /// <summary>Common name of <see cref="Ca"/>.</summary>
    public const string CaName = "FastPgProxy Test CA";

    /// <summary>Common name of <see cref="WrongCa"/>.</summary>
    public const string WrongCaName = "FastPgProxy Wrong CA";

    /// <summary>Common name, and DNS name in the subject alternative names, of both server certificates.</summary>
    public const string ServerName = "localhost";

    /// <summary>Server authentication (TLS web server) extended key usage.</summary>
    private const string ServerAuthOid = "1.3.6.1.5.5.7.3.1";

    /// <summary>Client authentication (TLS web client) extended key usage.</summary>
    private const string ClientAuthOid = "1.3.6.1.5.5.7.3.2";

    /// <summary>Random serial numbers of this many bytes, as CAs issue them.</summary>
    private const int SerialLength = 16;

    /// <summary>Valid from a day back, so a clock a little behind in a container does not matter.</summary>
    private static readonly TimeSpan Backdate = TimeSpan.FromDays(1);

    /// <summary>Long enough for any test run.</summary>
    private static readonly TimeSpan Lifetime = TimeSpan.FromDays(30);

    private static readonly UnixFileMode KeyFileMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    private readonly Dictionary<string, TestClientCertificate> _clients = new(StringComparer.Ordinal);
    private readonly Lock _clientsLock = new();
    private bool _disposed;

    private TestCertificates(string directory)
    {
        Directory = directory;

        Ca = CreateCa(CaName);
        CaFile = WriteCertificate(Ca, "ca.crt");

        ServerCertificate = CreateServer(Ca);
        ServerCertFile = WriteCertificate(ServerCertificate, "server.crt");
        ServerKeyFile = WriteKey(ServerCertificate, "server.key");

        WrongCa = CreateCa(WrongCaName);
        WrongCaFile = WriteCertificate(WrongCa, "wrong-ca.crt");

        WrongServerCertificate = CreateServer(WrongCa);
        WrongServerCertFile = WriteCertificate(WrongServerCertificate, "wrong-server.crt");
        WrongServerKeyFile = WriteKey(WrongServerCertificate, "wrong-server.key");
    }

    /// <summary>The temp folder holding the PEM files (mode 0700); deleted on dispose.</summary>
    public string Directory { get; }

    /// <summary>The test CA, self-signed, with its private key.</summary>
    public X509Certificate2 Ca { get; }

    /// <summary>PEM file of <see cref="Ca"/>: the root to trust (libpq <c>sslrootcert</c>, Npgsql <c>Root Certificate</c>, PostgreSQL <c>ssl_ca_file</c>).</summary>
    public string CaFile { get; }

    /// <summary>
    /// Server certificate signed by <see cref="Ca"/>, with its private key: CN=localhost, subject
    /// alternative names DNS:localhost and IP:127.0.0.1, extended key usage serverAuth.
    /// </summary>
    public X509Certificate2 ServerCertificate { get; }

    /// <summary>PEM file of <see cref="ServerCertificate"/>.</summary>
    public string ServerCertFile { get; }

    /// <summary>PKCS#8 PEM file (mode 0600) of the private key of <see cref="ServerCertificate"/>.</summary>
    public string ServerKeyFile { get; }

    /// <summary>A second self-signed CA, unrelated to <see cref="Ca"/>, with its private key.</summary>
    public X509Certificate2 WrongCa { get; }

    /// <summary>PEM file of <see cref="WrongCa"/>.</summary>
    public string WrongCaFile { get; }

    /// <summary>
    /// Server certificate like <see cref="ServerCertificate"/> (same names and usage) but signed by
    /// <see cref="WrongCa"/>: a client that trusts only <see cref="Ca"/> must refuse it.
    /// </summary>
    public X509Certificate2 WrongServerCertificate { get; }

    /// <summary>PEM file of <see cref="WrongServerCertificate"/>.</summary>
    public string WrongServerCertFile { get; }

    /// <summary>PKCS#8 PEM file (mode 0600) of the private key of <see cref="WrongServerCertificate"/>.</summary>
    public string WrongServerKeyFile { get; }

    /// <summary>Makes the CAs and server certificates and writes them into a new temp folder.</summary>
    /// <returns>The certificates; dispose them to delete the folder.</returns>
    public static TestCertificates Create()
    {
        string directory = System.IO.Directory.CreateTempSubdirectory("fpp-certs-").FullName;
        try
        {
            return new TestCertificates(directory);
        }
        catch
        {
            System.IO.Directory.Delete(directory, recursive: true);
            throw;
        }
    }

    /// <summary>
    /// A client certificate signed by <see cref="Ca"/> with common name <paramref name="cn"/> and
    /// extended key usage clientAuth, written as PEM files on first use; later calls with the same
    /// name return the same certificate. Thread-safe.
    /// </summary>
    /// <param name="cn">Common name; for PostgreSQL's <c>cert</c> method, the role to log in as.</param>
    /// <returns>The certificate with its private key and the paths of its files.</returns>
    public TestClientCertificate ClientCertificate(string cn)
    {
        ArgumentException.ThrowIfNullOrEmpty(cn);
        ObjectDisposedException.ThrowIf(_disposed, this);
        lock (_clientsLock)
        {
            if (_clients.TryGetValue(cn, out TestClientCertificate? existing))
            {
                return existing;
            }

            X509Certificate2 certificate = CreateClient(Ca, cn);

            // Numbered file names: a common name may hold characters a file name must not.
            string stem = $"client-{_clients.Count + 1}";
            var client = new TestClientCertificate(
                cn, certificate, WriteCertificate(certificate, stem + ".crt"), WriteKey(certificate, stem + ".key"));
            _clients.Add(cn, client);
            return client;
        }
    }

    /// <summary>Disposes the certificates and deletes the folder. Never throws.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        lock (_clientsLock)
        {
            foreach (TestClientCertificate client in _clients.Values)
            {
                client.Certificate.Dispose();
            }
        }

        Ca.Dispose();
        ServerCertificate.Dispose();
        WrongCa.Dispose();
        WrongServerCertificate.Dispose();
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // A leftover temp folder is not worth failing a test run for.
        }
    }

    private static X509Certificate2 CreateCa(string name)
    {
        using ECDsa key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(CommonName(name), key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(
            certificateAuthority: true, hasPathLengthConstraint: true, pathLengthConstraint: 0, critical: true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(
            X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, critical: true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, critical: false));
        DateTimeOffset now = DateTimeOffset.UtcNow;
        return request.CreateSelfSigned(now - Backdate, now + Lifetime);
    }

    private static X509Certificate2 CreateServer(X509Certificate2 issuer)
    {
        var names = new SubjectAlternativeNameBuilder();
        names.AddDnsName(ServerName);
        names.AddIpAddress(IPAddress.Loopback);
        return CreateLeaf(issuer, ServerName, ServerAuthOid, names.Build());
    }

    private static X509Certificate2 CreateClient(X509Certificate2 issuer, string cn) =>
        CreateLeaf(issuer, cn, ClientAuthOid, alternativeNames: null);

    private static X509Certificate2 CreateLeaf(
        X509Certificate2 issuer, string cn, string usageOid, X509Extension? alternativeNames)
    {
        using ECDsa key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(CommonName(cn), key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(
            certificateAuthority: false, hasPathLengthConstraint: false, pathLengthConstraint: 0, critical: true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, critical: true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid(usageOid)], critical: false));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, critical: false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(
            issuer, includeKeyIdentifier: true, includeIssuerAndSerial: false));
        if (alternativeNames is not null)
        {
            request.CertificateExtensions.Add(alternativeNames);
        }

        byte[] serial = RandomNumberGenerator.GetBytes(SerialLength);
        serial[0] &= 0x7F; // DER INTEGER: keep the serial positive.

        // The issuer's own validity: a leaf may not outlive its CA, and client certificates are
        // made on demand, after the CA.
        using X509Certificate2 signed = request.Create(issuer, issuer.NotBefore, issuer.NotAfter, serial);
        return signed.CopyWithPrivateKey(key);
    }

    private static X500DistinguishedName CommonName(string cn)
    {
        var builder = new X500DistinguishedNameBuilder();
        builder.AddCommonName(cn);
        return builder.Build();
    }

    private string WriteCertificate(X509Certificate2 certificate, string fileName)
    {
        string path = Path.Combine(Directory, fileName);
        File.WriteAllText(path, certificate.ExportCertificatePem() + "\n");
        return path;
    }

    private string WriteKey(X509Certificate2 certificate, string fileName)
    {
        string path = Path.Combine(Directory, fileName);
        using ECDsa key = certificate.GetECDsaPrivateKey()
            ?? throw new InvalidOperationException($"Certificate {certificate.Subject} has no ECDSA private key.");
        string pem = key.ExportPkcs8PrivateKeyPem() + "\n";

        // Created 0600 from the start: libpq and PostgreSQL refuse key files others can read.
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = KeyFileMode;
        }

        using (var writer = new StreamWriter(path, options))
        {
            writer.Write(pem);
        }

        return path;
    }
}

/// <summary>A client certificate made by <see cref="TestCertificates.ClientCertificate"/>.</summary>
/// <param name="CommonName">The certificate's CN.</param>
/// <param name="Certificate">The certificate with its private key, for in-process clients.</param>
/// <param name="CertFile">PEM file of the certificate (libpq <c>sslcert</c>, Npgsql <c>SSL Certificate</c>).</param>
/// <param name="KeyFile">PKCS#8 PEM file (mode 0600) of its private key (libpq <c>sslkey</c>, Npgsql <c>SSL Key</c>).</param>
public sealed record TestClientCertificate(string CommonName, X509Certificate2 Certificate, string CertFile, string KeyFile);
