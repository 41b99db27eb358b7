using FastPgProxy.Server;

namespace FastPgProxy.Admin;

/// <summary>The admin console: a virtual database on the proxy's own listener (<c>fastpgproxy</c>, alias <c>pgbouncer</c>).</summary>
internal sealed class AdminConsole
{
    /// <summary>Creates the console of <paramref name="proxy"/>.</summary>
    public AdminConsole(ProxyServer proxy) => Proxy = proxy;

    /// <summary>The proxy it reports on and controls.</summary>
    public ProxyServer Proxy { get; }

    /// <summary>Whether a client database name means the console.</summary>
    public static bool IsConsoleDatabase(string database) => database is "fastpgproxy" or "pgbouncer";
}
