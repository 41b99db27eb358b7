using System.Diagnostics.CodeAnalysis;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using FastPgProxy.Config;

namespace FastPgProxy.Tls;

/// <summary>
/// The proxy as a TLS server to its clients, built from <c>client_tls_*</c>: its certificate (loaded once,
/// with its chain), the CA that client certificates are checked against, protocols and ciphers. Immutable:
/// RELOAD builds a new one and swaps it in, so handshakes already under way finish with the old files and
/// new ones use the new.
/// </summary>
internal sealed class ClientTls
{
    /// <summary>The ALPN protocol PostgreSQL 17 and later require for direct TLS.</summary>
    public static readonly SslApplicationProtocol PostgresAlpn = new("postgresql"u8.ToArray());

    private static readonly List<SslApplicationProtocol> s_alpn = [PostgresAlpn];

    private readonly SslStreamCertificateContext _certificate;
    private readonly X509ChainPolicy? _clientChain;
    private readonly SslProtocols _protocols;
    private readonly CipherSuitesPolicy? _ciphers;

    private ClientTls(TlsMode mode, SslStreamCertificateContext certificate, X509Certificate2 leaf, X509ChainPolicy? clientChain, SslProtocols protocols, CipherSuitesPolicy? ciphers)
    {
        Mode = mode;
        _certificate = certificate;
        Certificate = leaf;
        ChannelBinding = Auth.ChannelBinding.TryComputeTlsServerEndPoint(leaf, out byte[]? binding) ? binding : null;
        _clientChain = clientChain;
        _protocols = protocols;
        _ciphers = ciphers;
    }

    /// <summary>client_tls_sslmode.</summary>
    public TlsMode Mode { get; }

    /// <summary>The proxy's certificate.</summary>
    public X509Certificate2 Certificate { get; }

    /// <summary>
    /// The tls-server-end-point channel binding data of <see cref="Certificate"/>, computed once: SCRAM
    /// offers SCRAM-SHA-256-PLUS to TLS clients with it. Null for a certificate whose signature has no usable hash.
    /// </summary>
    public byte[]? ChannelBinding { get; }

    /// <summary>Whether a client must present a certificate signed by the CA (verify-ca, verify-full).</summary>
    public bool VerifiesClients => _clientChain is not null;

    /// <summary>Builds the context; null when client TLS is disabled. Throws <see cref="TlsConfigException"/> for unusable settings.</summary>
    public static ClientTls? Build(TlsSettings settings)
    {
        if (!settings.Enabled)
        {
            return null;
        }

        if (settings.CertFile is null || settings.KeyFile is null)
        {
            throw new TlsConfigException($"client_tls_sslmode {TlsSettings.Name(settings.Mode)} needs client_tls_cert_file and client_tls_key_file");
        }

        (X509Certificate2 leaf, X509Certificate2Collection chain) = TlsFiles.LoadCertificate(settings.CertFile, settings.KeyFile, "client_tls_cert_file");
        X509ChainPolicy? clientChain = null;
        if (settings.Mode >= TlsMode.VerifyCa)
        {
            if (settings.CaFile is null)
            {
                throw new TlsConfigException($"client_tls_sslmode {TlsSettings.Name(settings.Mode)} needs client_tls_ca_file to check client certificates");
            }

            clientChain = TlsFiles.TrustOnly(TlsFiles.LoadCa(settings.CaFile, "client_tls_ca_file"));
        }

        SslProtocols protocols = TlsFiles.ParseProtocols(settings.Protocols, "client_tls_protocols");
        CipherSuitesPolicy? ciphers = TlsFiles.ParseCiphers(settings.Ciphers, "client_tls_ciphers");
        var context = SslStreamCertificateContext.Create(leaf, chain, offline: true);
        return new ClientTls(settings.Mode, context, leaf, clientChain, protocols, ciphers);
    }

    /// <summary>
    /// The options for one handshake. ALPN offers <c>postgresql</c>: a direct TLS client must have asked for
    /// it (the session checks after the handshake); a client after SSLRequest may also offer none.
    /// </summary>
    [SuppressMessage("Security", "CA5359", Justification = "A client certificate is only checked with verify-ca and verify-full, as PgBouncer's client_tls_sslmode defines.")]
    public SslServerAuthenticationOptions Options() => new()
    {
        ServerCertificateContext = _certificate,
        EnabledSslProtocols = _protocols,
        CipherSuitesPolicy = _ciphers,
        ApplicationProtocols = s_alpn,
        ClientCertificateRequired = _clientChain is not null,
        CertificateChainPolicy = _clientChain,
        CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
        AllowRenegotiation = false,

        // verify-ca and verify-full: a certificate chaining to the CA file, nothing less. Otherwise a
        // certificate the client sends is not checked (PgBouncer's allow, prefer and require).
        RemoteCertificateValidationCallback = _clientChain is null
            ? static (_, _, _, _) => true
            : static (_, certificate, _, errors) => certificate is not null && errors == SslPolicyErrors.None,
    };
}
