using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using FastPgProxy.Config;

namespace FastPgProxy.Tls;

/// <summary>A TLS setting that cannot be used: a file that does not load, a protocol or cipher name that does not exist.</summary>
internal sealed class TlsConfigException(string message) : Exception(message);

/// <summary>What both sides read from <see cref="TlsSettings"/>: certificate and key, CA file, protocols and ciphers, as PgBouncer spells them.</summary>
internal static class TlsFiles
{
    /// <summary>
    /// The certificate of <paramref name="certFile"/> with the private key of <paramref name="keyFile"/>,
    /// and the certificates after it in the file (intermediates, sent along in the handshake).
    /// </summary>
    public static (X509Certificate2 Certificate, X509Certificate2Collection Chain) LoadCertificate(string certFile, string keyFile, string keyName)
    {
        X509Certificate2 withKey;
        var all = new X509Certificate2Collection();
        try
        {
            withKey = X509Certificate2.CreateFromPemFile(certFile, keyFile);
            all.ImportFromPemFile(certFile);
        }
        catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new TlsConfigException($"{keyName}: cannot load certificate '{certFile}' with key '{keyFile}': {e.Message}");
        }

        // OpenSSL signs with a key it holds in memory only on some platforms; a key round-tripped through
        // PKCS#12 works on every one.
        using (withKey)
        {
            X509Certificate2 usable = X509CertificateLoader.LoadPkcs12(withKey.Export(X509ContentType.Pkcs12), null);
            var chain = new X509Certificate2Collection();
            for (int i = 1; i < all.Count; i++)
            {
                chain.Add(all[i]);
            }

            return (usable, chain);
        }
    }

    /// <summary>The certificates of a PEM CA file.</summary>
    public static X509Certificate2Collection LoadCa(string caFile, string keyName)
    {
        var ca = new X509Certificate2Collection();
        try
        {
            ca.ImportFromPemFile(caFile);
        }
        catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException)
        {
            throw new TlsConfigException($"{keyName}: cannot load CA file '{caFile}': {e.Message}");
        }

        if (ca.Count == 0)
        {
            throw new TlsConfigException($"{keyName}: '{caFile}' holds no certificate");
        }

        return ca;
    }

    /// <summary>A chain policy that trusts exactly <paramref name="ca"/> (revocation is not checked, as PgBouncer's default).</summary>
    public static X509ChainPolicy TrustOnly(X509Certificate2Collection ca)
    {
        var policy = new X509ChainPolicy
        {
            TrustMode = X509ChainTrustMode.CustomRootTrust,
            RevocationMode = X509RevocationMode.NoCheck,
        };
        policy.CustomTrustStore.AddRange(ca);
        return policy;
    }

    /// <summary>
    /// PgBouncer's protocol list: names separated by commas or colons, each <c>all</c>, <c>secure</c> (or
    /// <c>default</c>), <c>tlsv1.2</c> or <c>tlsv1.3</c>, or one of them after <c>!</c> to take it away.
    /// TLS 1.0 and 1.1 are not offered (.NET deprecates them and Debian's OpenSSL refuses them), so
    /// <c>all</c> and <c>tlsv1</c> mean 1.2 and 1.3, and <c>tlsv1.0</c> or <c>tlsv1.1</c> alone is an error.
    /// </summary>
    public static SslProtocols ParseProtocols(string value, string keyName)
    {
        const SslProtocols all = SslProtocols.Tls12 | SslProtocols.Tls13;
        SslProtocols result = SslProtocols.None;
        bool any = false;
        foreach (string raw in value.Split([',', ':'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            bool negate = raw.StartsWith('!');
            string name = negate ? raw[1..] : raw;
            if (negate && !any)
            {
                result = all;
            }

            any = true;
            SslProtocols protocol = name.ToLowerInvariant() switch
            {
                "all" or "tlsv1" or "secure" or "default" => all,
                "tlsv1.0" or "tlsv1.1" => SslProtocols.None,
                "tlsv1.2" => SslProtocols.Tls12,
                "tlsv1.3" => SslProtocols.Tls13,
                _ => throw new TlsConfigException($"{keyName}: unknown protocol '{name}' (all, secure, tlsv1.2, tlsv1.3, ! to exclude)"),
            };
            result = negate ? result & ~protocol : result | protocol;
        }

        if (result == SslProtocols.None)
        {
            throw new TlsConfigException($"{keyName}: no protocol left in '{value}' (TLS 1.0 and 1.1 are not supported)");
        }

        return result;
    }

    /// <summary>
    /// Cipher suites: <c>default</c>, <c>secure</c>, <c>normal</c> and <c>fast</c> leave the choice to the
    /// system's OpenSSL policy (null), as PgBouncer 1.25 does; otherwise a colon-separated list of IANA
    /// names (<c>TLS_AES_256_GCM_SHA384:TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256</c>). OpenSSL's own cipher
    /// strings (<c>HIGH:!aNULL</c>) cannot be mapped by .NET and are refused with that reason.
    /// </summary>
    public static CipherSuitesPolicy? ParseCiphers(string value, string keyName)
    {
        if (value.ToLowerInvariant() is "" or "default" or "secure" or "normal" or "fast")
        {
            return null;
        }

        var suites = new List<TlsCipherSuite>();
        foreach (string name in value.Split(':', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!name.StartsWith("TLS_", StringComparison.OrdinalIgnoreCase) || !Enum.TryParse(name, ignoreCase: true, out TlsCipherSuite suite))
            {
                throw new TlsConfigException($"{keyName}: '{name}' is not an IANA cipher suite name (use default, or names such as TLS_AES_256_GCM_SHA384 separated by colons; OpenSSL cipher strings are not supported)");
            }

            suites.Add(suite);
        }

        if (suites.Count == 0)
        {
            throw new TlsConfigException($"{keyName}: no cipher suite in '{value}'");
        }

        if (OperatingSystem.IsWindows())
        {
            throw new TlsConfigException($"{keyName}: cipher suite lists are not supported on Windows");
        }

        return new CipherSuitesPolicy(suites);
    }
}
