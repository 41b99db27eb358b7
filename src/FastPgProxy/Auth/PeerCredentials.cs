using System.Buffers.Binary;
using System.Globalization;
using System.Net.Sockets;

namespace FastPgProxy.Auth;

/// <summary>
/// The OS user at the other end of a Unix socket, for pg_hba's <c>peer</c> method: SO_PEERCRED gives the
/// peer's uid (read with the BCL's raw socket option, no native call), and /etc/passwd its name.
/// </summary>
internal static class PeerCredentials
{
    // Linux: SOL_SOCKET, SO_PEERCRED (asm-generic/socket.h); struct ucred { pid_t pid; uid_t uid; gid_t gid; }.
    private const int SolSocket = 1;
    private const int SoPeerCred = 17;
    private const int UcredSize = sizeof(int) /* pid */ + sizeof(uint) /* uid */ + sizeof(uint) /* gid */;

    /// <summary>The peer's uid of a connected Unix socket; null when the system cannot tell.</summary>
    public static uint? ReadUserId(Socket socket)
    {
        if (!OperatingSystem.IsLinux() || socket.AddressFamily != AddressFamily.Unix)
        {
            return null;
        }

        Span<byte> ucred = stackalloc byte[UcredSize];
        try
        {
            // The struct is in the machine's own byte order.
            return socket.GetRawSocketOption(SolSocket, SoPeerCred, ucred) == UcredSize
                ? (BitConverter.IsLittleEndian ? BinaryPrimitives.ReadUInt32LittleEndian(ucred[sizeof(int)..]) : BinaryPrimitives.ReadUInt32BigEndian(ucred[sizeof(int)..]))
                : null;
        }
        catch (SocketException)
        {
            return null;
        }
    }

    /// <summary>The name of <paramref name="uid"/> in /etc/passwd; null when it has none.</summary>
    public static string? UserName(uint uid)
    {
        try
        {
            // name:password:uid:gid:gecos:home:shell
            foreach (string line in File.ReadLines("/etc/passwd"))
            {
                string[] fields = line.Split(':');
                if (fields.Length >= 3 && uint.TryParse(fields[2], NumberStyles.None, CultureInfo.InvariantCulture, out uint id) && id == uid)
                {
                    return fields[0];
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }

        return null;
    }
}
