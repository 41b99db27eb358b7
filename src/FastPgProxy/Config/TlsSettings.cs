namespace FastPgProxy.Config;

/// <summary>PgBouncer's TLS modes, for <c>client_tls_sslmode</c> and <c>server_tls_sslmode</c>.</summary>
internal enum TlsMode
{
    /// <summary>Plain only: an SSLRequest gets <c>N</c>; the proxy never asks PostgreSQL for TLS.</summary>
    Disable,
    /// <summary>Clients: TLS when asked for. Servers: plain, TLS only when PostgreSQL insists (the proxy does not retry, so this is plain).</summary>
    Allow,
    /// <summary>Clients: TLS when asked for. Servers: TLS when PostgreSQL offers it, else plain.</summary>
    Prefer,
    /// <summary>TLS or nothing; certificates are not checked.</summary>
    Require,
    /// <summary>TLS with a certificate signed by the CA file (clients must present one).</summary>
    VerifyCa,
    /// <summary>As <see cref="VerifyCa"/>; towards PostgreSQL the certificate must also name the host.</summary>
    VerifyFull,
}

/// <summary>One side's TLS settings: <c>client_tls_*</c> (the proxy as a TLS server) or <c>server_tls_*</c> (as a TLS client).</summary>
internal sealed class TlsSettings
{
    /// <summary>The mode.</summary>
    public TlsMode Mode { get; set; }

    /// <summary>PEM private key for <see cref="CertFile"/>.</summary>
    public string? KeyFile { get; set; }

    /// <summary>PEM certificate (with any intermediates after it) the proxy presents.</summary>
    public string? CertFile { get; set; }

    /// <summary>PEM CA certificates the peer's certificate is checked against (verify-ca, verify-full).</summary>
    public string? CaFile { get; set; }

    /// <summary>PgBouncer's protocol list: <c>secure</c> (TLS 1.2 and 1.3), <c>all</c>, <c>legacy</c>, <c>normal</c>, or names such as <c>tlsv1.3</c>.</summary>
    public string Protocols { get; set; } = "secure";

    /// <summary>Cipher suites: <c>default</c> (and PgBouncer's other keywords) or a colon-separated list of IANA names.</summary>
    public string Ciphers { get; set; } = "default";

    /// <summary>Whether TLS may be used at all.</summary>
    public bool Enabled => Mode != TlsMode.Disable;

    /// <summary>Whether the peer must use TLS.</summary>
    public bool Required => Mode >= TlsMode.Require;

    /// <summary>The PgBouncer spelling of a mode.</summary>
    public static string Name(TlsMode mode) => mode switch
    {
        TlsMode.Disable => "disable",
        TlsMode.Allow => "allow",
        TlsMode.Prefer => "prefer",
        TlsMode.Require => "require",
        TlsMode.VerifyCa => "verify-ca",
        _ => "verify-full",
    };

    /// <summary>Reads a mode in PgBouncer's spelling; null when it is none.</summary>
    public static TlsMode? ParseMode(string value) => value.ToLowerInvariant() switch
    {
        "disable" => TlsMode.Disable,
        "allow" => TlsMode.Allow,
        "prefer" => TlsMode.Prefer,
        "require" => TlsMode.Require,
        "verify-ca" => TlsMode.VerifyCa,
        "verify-full" => TlsMode.VerifyFull,
        _ => null,
    };

    /// <summary>Whether two settings would build the same TLS context (RELOAD rebuilds only when not, or when the files changed).</summary>
    public bool SameAs(TlsSettings other) =>
        Mode == other.Mode && KeyFile == other.KeyFile && CertFile == other.CertFile && CaFile == other.CaFile
        && Protocols == other.Protocols && Ciphers == other.Ciphers;
}
