using System.Net;
using System.Net.Sockets;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>Small networking helpers for tests.</summary>
public static class NetUtil
{
    /// <summary>
    /// Returns a TCP port on 127.0.0.1 that was free a moment ago: the kernel picks it when a
    /// listener binds port 0, and the listener is closed again before this returns.
    /// </summary>
    /// <remarks>
    /// Another process can take the port before the caller binds it; callers that start a
    /// server on it (see <see cref="PostgresServer"/>) retry with a new port when the bind fails.
    /// </remarks>
    public static int GetFreeTcpPort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        try
        {
            return ((IPEndPoint)listener.LocalEndpoint).Port;
        }
        finally
        {
            listener.Stop();
        }
    }
}
