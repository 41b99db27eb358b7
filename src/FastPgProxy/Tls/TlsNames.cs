using System.Security.Authentication;

namespace FastPgProxy.Tls;

/// <summary>TLS versions as OpenSSL, PostgreSQL's <c>pg_stat_ssl</c> and PgBouncer name them.</summary>
internal static class TlsNames
{
    /// <summary><c>TLSv1.2</c>, <c>TLSv1.3</c>.</summary>
    public static string Protocol(SslProtocols protocol) => protocol switch
    {
        SslProtocols.Tls13 => "TLSv1.3",
        SslProtocols.Tls12 => "TLSv1.2",
        _ => protocol.ToString(),
    };
}
