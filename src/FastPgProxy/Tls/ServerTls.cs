using System.Diagnostics.CodeAnalysis;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using FastPgProxy.Config;

namespace FastPgProxy.Tls;

/// <summary>
/// The proxy as a TLS client to PostgreSQL, built from <c>server_tls_*</c>: whether to ask for TLS, how to
/// check PostgreSQL's certificate, and the client certificate to present. Immutable; RELOAD swaps in a new
/// one for new backend and cancel connections.
/// </summary>
internal sealed class ServerTls
{
    private readonly X509ChainPolicy? _chain;
    private readonly X509Certificate2Collection? _clientCertificate;
    private readonly SslProtocols _protocols;
    private readonly CipherSuitesPolicy? _ciphers;

    private ServerTls(TlsMode mode, X509ChainPolicy? chain, X509Certificate2Collection? clientCertificate, SslProtocols protocols, CipherSuitesPolicy? ciphers)
    {
        Mode = mode;
        _chain = chain;
        _clientCertificate = clientCertificate;
        _protocols = protocols;
        _ciphers = ciphers;
    }

    /// <summary>server_tls_sslmode.</summary>
    public TlsMode Mode { get; }

    /// <summary>
    /// Whether a backend connection sends SSLRequest. <c>allow</c> does not: it would only use TLS after a
    /// plain attempt that PostgreSQL refused, and the proxy does not retry a refused login.
    /// </summary>
    public bool AsksForTls => Mode >= TlsMode.Prefer;

    /// <summary>Whether PostgreSQL's <c>N</c> ends the login (require and stronger).</summary>
    public bool Required => Mode >= TlsMode.Require;

    /// <summary>Builds the context; null when server TLS is disabled. Throws <see cref="TlsConfigException"/> for unusable settings.</summary>
    public static ServerTls? Build(TlsSettings settings)
    {
        if (!settings.Enabled)
        {
            return null;
        }

        X509ChainPolicy? chain = null;
        if (settings.Mode >= TlsMode.VerifyCa && settings.CaFile is not null)
        {
            chain = TlsFiles.TrustOnly(TlsFiles.LoadCa(settings.CaFile, "server_tls_ca_file"));
        }

        X509Certificate2Collection? clientCertificate = null;
        if (settings.CertFile is not null || settings.KeyFile is not null)
        {
            if (settings.CertFile is null || settings.KeyFile is null)
            {
                throw new TlsConfigException("server_tls_cert_file and server_tls_key_file go together");
            }

            (X509Certificate2 leaf, X509Certificate2Collection rest) = TlsFiles.LoadCertificate(settings.CertFile, settings.KeyFile, "server_tls_cert_file");
            clientCertificate = [leaf, .. rest];
        }

        return new ServerTls(
            settings.Mode,
            chain,
            clientCertificate,
            TlsFiles.ParseProtocols(settings.Protocols, "server_tls_protocols"),
            TlsFiles.ParseCiphers(settings.Ciphers, "server_tls_ciphers"));
    }

    /// <summary>The options for one handshake with the server at <paramref name="host"/> (its name is checked with verify-full).</summary>
    [SuppressMessage("Security", "CA5359", Justification = "prefer and require do not check PostgreSQL's certificate, as libpq's and PgBouncer's sslmode; verify-ca and verify-full refuse by throwing, with the reason.")]
    public SslClientAuthenticationOptions Options(string host)
    {
        TlsMode mode = Mode;
        return new SslClientAuthenticationOptions
        {
            TargetHost = host,
            EnabledSslProtocols = _protocols,
            CipherSuitesPolicy = _ciphers,
            ClientCertificates = _clientCertificate,
            CertificateChainPolicy = _chain,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            AllowRenegotiation = false,
            RemoteCertificateValidationCallback = (_, certificate, _, errors) =>
            {
                // prefer and require: encrypted, PostgreSQL's certificate not checked (as libpq's sslmode).
                SslPolicyErrors checkedErrors = mode switch
                {
                    < TlsMode.VerifyCa => SslPolicyErrors.None,
                    TlsMode.VerifyCa => errors & ~SslPolicyErrors.RemoteCertificateNameMismatch,
                    _ => errors,
                };
                if (checkedErrors == SslPolicyErrors.None)
                {
                    return true;
                }

                // Thrown rather than returned, so that the login's error says what was wrong with the certificate.
                throw new AuthenticationException(Describe(checkedErrors, host, mode));
            },
        };
    }

    private static string Describe(SslPolicyErrors errors, string host, TlsMode mode)
    {
        string why = (errors & SslPolicyErrors.RemoteCertificateNotAvailable) != 0
            ? "the server sent no certificate"
            : (errors & SslPolicyErrors.RemoteCertificateChainErrors) != 0
                ? "the server's certificate is not signed by a CA of server_tls_ca_file (or the system's, without one), or is expired"
                : $"the server's certificate does not name the host \"{host}\"";
        return $"{why} (server_tls_sslmode {TlsSettings.Name(mode)})";
    }
}
