using System.Net.Sockets;

namespace FastPgProxy.Net;

/// <summary>
/// PgBouncer's TCP keepalive settings, for client and backend sockets alike: <c>tcp_keepalive</c> (on by
/// default, as in PgBouncer), <c>tcp_keepidle</c>, <c>tcp_keepintvl</c> and <c>tcp_keepcnt</c>, and
/// <c>tcp_user_timeout</c>. A zero leaves the operating system's value.
/// </summary>
internal sealed class TcpKeepalive
{
    // Linux's IPPROTO_TCP level and TCP_USER_TIMEOUT option (tcp(7)); SocketOptionName has no name for it.
    private const int TcpLevel = 6;
    private const int TcpUserTimeoutOption = 18;

    /// <summary><c>tcp_keepalive</c>: whether SO_KEEPALIVE is set. Default on.</summary>
    public bool Enabled { get; set; } = true;

    /// <summary><c>tcp_keepidle</c>: seconds idle before the first probe; 0 = the system's.</summary>
    public int IdleSeconds { get; set; }

    /// <summary><c>tcp_keepintvl</c>: seconds between probes; 0 = the system's.</summary>
    public int IntervalSeconds { get; set; }

    /// <summary><c>tcp_keepcnt</c>: unanswered probes before the connection is dropped; 0 = the system's.</summary>
    public int Count { get; set; }

    /// <summary><c>tcp_user_timeout</c>: milliseconds sent data may stay unacknowledged before the connection is dropped; 0 = the system's.</summary>
    public int UserTimeoutMilliseconds { get; set; }

    /// <summary>Sets the options on a TCP <paramref name="socket"/>; a Unix-domain socket is left alone.</summary>
    public void Apply(Socket socket)
    {
        if (socket.AddressFamily is not (System.Net.Sockets.AddressFamily.InterNetwork or System.Net.Sockets.AddressFamily.InterNetworkV6))
        {
            return;
        }

        if (Enabled)
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
            SetIfSet(socket, SocketOptionName.TcpKeepAliveTime, IdleSeconds);
            SetIfSet(socket, SocketOptionName.TcpKeepAliveInterval, IntervalSeconds);
            SetIfSet(socket, SocketOptionName.TcpKeepAliveRetryCount, Count);
        }

        if (UserTimeoutMilliseconds > 0)
        {
            Span<byte> value = stackalloc byte[sizeof(int)];
            BitConverter.TryWriteBytes(value, UserTimeoutMilliseconds);
            socket.SetRawSocketOption(TcpLevel, TcpUserTimeoutOption, value);
        }
    }

    private static void SetIfSet(Socket socket, SocketOptionName name, int value)
    {
        if (value > 0)
        {
            socket.SetSocketOption(SocketOptionLevel.Tcp, name, value);
        }
    }
}
