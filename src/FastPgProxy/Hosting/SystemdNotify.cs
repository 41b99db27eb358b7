using System.Net.Sockets;
using System.Text;

namespace FastPgProxy.Hosting;

/// <summary>
/// systemd's readiness protocol (sd_notify(3)) without libsystemd: when <c>NOTIFY_SOCKET</c> names a Unix
/// datagram socket, state lines such as <c>READY=1</c> are sent to it, so a <c>Type=notify</c> unit is
/// started once the proxy listens, and knows when it reloads and stops. Without the variable, nothing.
/// </summary>
internal static class SystemdNotify
{
    /// <summary>Sends <paramref name="state"/> (newline-separated <c>KEY=value</c> lines); a failure is logged, never thrown.</summary>
    public static void Send(string state)
    {
        string? target = Environment.GetEnvironmentVariable("NOTIFY_SOCKET");
        if (string.IsNullOrEmpty(target))
        {
            return;
        }

        // A name starting with @ is in the abstract namespace, whose first byte is NUL (unix(7)).
        var endPoint = new UnixDomainSocketEndPoint(target[0] == '@' ? "\0" + target[1..] : target);
        try
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            socket.SendTo(Encoding.UTF8.GetBytes(state), endPoint);
        }
        catch (SocketException e)
        {
            Log.Warning($"NOTIFY_SOCKET {target}: cannot tell systemd '{state.Replace('\n', ' ')}': {e.Message}");
        }
    }
}
