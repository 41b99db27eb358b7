using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using FastPgProxy.Config;

namespace FastPgProxy.Hosting;

/// <summary>One bound listening socket: a TCP address, or the Unix socket <c>.s.PGSQL.PORT</c>.</summary>
internal sealed class Listener
{
    private Listener(Socket socket, string name, string? socketPath)
    {
        Socket = socket;
        Name = name;
        SocketPath = socketPath;
    }

    /// <summary>The bound (not yet listening) socket.</summary>
    public Socket Socket { get; }

    /// <summary>What logs call it: <c>127.0.0.1:6432</c>, or the Unix socket's path.</summary>
    public string Name { get; }

    /// <summary>The Unix socket's file, removed at stop; null for TCP and for the abstract namespace.</summary>
    public string? SocketPath { get; }

    /// <summary>Whether clients arrive over a Unix socket.</summary>
    public bool IsUnix => Socket.AddressFamily == AddressFamily.Unix;

    /// <summary>
    /// Binds every listener <paramref name="options"/> asks for: each <c>listen_addr</c> entry on
    /// <c>listen_port</c>, then the Unix socket in <c>unix_socket_dir</c>. With port 0 (tests) the first
    /// TCP address picks a free port and the others, and the Unix socket, take the same one. Throws
    /// <see cref="ListenException"/> naming the address that failed; nothing stays bound then.
    /// </summary>
    public static List<Listener> BindAll(ProxyOptions options)
    {
        var listeners = new List<Listener>();
        try
        {
            int port = options.ListenPort;
            foreach (IPAddress address in ParseAddresses(options.ListenAddress))
            {
                Listener tcp = BindTcp(address, port, options.SoReusePort);
                port = ((IPEndPoint)tcp.Socket.LocalEndPoint!).Port;
                listeners.Add(tcp);
            }

            if (!string.IsNullOrEmpty(options.UnixSocketDir))
            {
                if (port == 0)
                {
                    throw new ListenException("unix_socket_dir needs listen_port, or a listen_addr to pick a free port", new SocketException((int)SocketError.InvalidArgument));
                }

                listeners.Add(BindUnix(options.UnixSocketDir, port, options));
            }
        }
        catch
        {
            foreach (Listener listener in listeners)
            {
                listener.Close();
            }

            throw;
        }

        if (listeners.Count == 0)
        {
            throw new ListenException("nothing to listen on: listen_addr and unix_socket_dir are both empty", new SocketException((int)SocketError.InvalidArgument));
        }

        return listeners;
    }

    /// <summary>The addresses of a <c>listen_addr</c> list: IP addresses, <c>localhost</c>, or <c>*</c> (every IPv4 and IPv6 address).</summary>
    public static List<IPAddress> ParseAddresses(string list)
    {
        var addresses = new List<IPAddress>();
        foreach (string item in list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            IPAddress address = item switch
            {
                "*" => IPAddress.IPv6Any,
                "localhost" => IPAddress.Loopback,
                _ => IPAddress.Parse(item),
            };
            if (!addresses.Contains(address))
            {
                addresses.Add(address);
            }
        }

        return addresses;
    }

    /// <summary>The socket file of the port in a directory, as PostgreSQL names it (protocol 55.1: <c>.s.PGSQL.5432</c>).</summary>
    public static string SocketFileName(string directory, int port) =>
        Path.Combine(directory, ".s.PGSQL." + port.ToString(CultureInfo.InvariantCulture));

    /// <summary>Closes the socket and removes the Unix socket's file.</summary>
    public void Close()
    {
        Socket.Dispose();
        if (SocketPath is null)
        {
            return;
        }

        try
        {
            File.Delete(SocketPath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Log.Warning($"unix socket {SocketPath}: cannot remove it: {e.Message}");
        }
    }

    private static Listener BindTcp(IPAddress address, int port, bool reusePort)
    {
        var endPoint = new IPEndPoint(address, port);
        var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            if (address.Equals(IPAddress.IPv6Any))
            {
                socket.DualMode = true;
            }

            SetReuseOptions(socket, reusePort);
            socket.Bind(endPoint);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new ListenException(
                e.SocketErrorCode == SocketError.AddressAlreadyInUse
                    ? $"cannot listen on {endPoint}: {e.Message} (another process listens there; only instances that all set so_reuseport = 1 may share a port)"
                    : $"cannot listen on {endPoint}: {e.Message}",
                e);
        }

        return new Listener(socket, socket.LocalEndPoint!.ToString()!, null);
    }

    /// <summary>
    /// Binds <c>DIR/.s.PGSQL.PORT</c>. A file left by a process that died is removed first; a socket some
    /// process still answers on is an error, as two proxies on one socket would take each other's clients.
    /// A directory starting with <c>@</c> names Linux's abstract namespace (no file, no mode, no group).
    /// </summary>
    private static Listener BindUnix(string directory, int port, ProxyOptions options)
    {
        bool isAbstract = directory.StartsWith('@');
        string path = SocketFileName(directory, port);
        if (!isAbstract && File.Exists(path))
        {
            if (IsAnswering(path))
            {
                throw new ListenException($"cannot listen on {path}: another process listens on this Unix socket (instances on one host need their own unix_socket_dir)", new SocketException((int)SocketError.AddressAlreadyInUse));
            }

            File.Delete(path);
        }

        // The abstract namespace is a path whose first byte is NUL (unix(7)).
        var endPoint = new UnixDomainSocketEndPoint(isAbstract ? "\0" + path[1..] : path);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Bind(endPoint);
            if (!isAbstract && !OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(path, (UnixFileMode)options.UnixSocketMode);
                if (options.UnixSocketGroup is { } group)
                {
                    SetGroup(path, group);
                }
            }
        }
        catch (Exception e) when (e is SocketException or IOException or UnauthorizedAccessException)
        {
            socket.Dispose();
            if (!isAbstract && e is not SocketException { SocketErrorCode: SocketError.AddressAlreadyInUse })
            {
                TryDelete(path);
            }

            throw new ListenException($"cannot listen on {path}: {e.Message}", e as SocketException ?? new SocketException((int)SocketError.AccessDenied));
        }

        return new Listener(socket, path, isAbstract ? null : path);
    }

    private static bool IsAnswering(string path)
    {
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }

    /// <summary>Gives the socket file to <c>unix_socket_group</c>: a group name from /etc/group, or a number.</summary>
    private static void SetGroup(string path, string group)
    {
        if (!uint.TryParse(group, NumberStyles.None, CultureInfo.InvariantCulture, out uint gid) && !TryFindGroup(group, out gid))
        {
            throw new IOException($"unix_socket_group: no group '{group}' in /etc/group");
        }

        // chown(path, -1, gid): the owner stays. The BCL has no call for a file's group.
        if (Chown(path, uint.MaxValue, gid) != 0)
        {
            throw new IOException($"unix_socket_group: cannot give the socket to group {group} (errno {Marshal.GetLastPInvokeError()})");
        }
    }

    private static bool TryFindGroup(string name, out uint gid)
    {
        gid = 0;
        if (!File.Exists("/etc/group"))
        {
            return false;
        }

        // name:password:gid:members
        foreach (string line in File.ReadLines("/etc/group"))
        {
            string[] fields = line.Split(':');
            if (fields.Length >= 3 && fields[0] == name && uint.TryParse(fields[2], NumberStyles.None, CultureInfo.InvariantCulture, out gid))
            {
                return true;
            }
        }

        return false;
    }

    // Linux values of SOL_SOCKET, SO_REUSEADDR and SO_REUSEPORT (asm-generic/socket.h).
    private const int SolSocket = 1;
    private const int SoReuseAddr = 2;
    private const int SoReusePort = 15;

    /// <summary>
    /// SO_REUSEADDR, so a restart binds while the old process's connections linger in TIME_WAIT; SO_REUSEPORT
    /// only when asked. (On Linux, SocketOptionName.ReuseAddress sets SO_REUSEPORT too, which let a second
    /// instance bind a port in use and take half the new connections without a word.)
    /// </summary>
    private static void SetReuseOptions(Socket listener, bool reusePort)
    {
        if (!OperatingSystem.IsLinux())
        {
            if (reusePort)
            {
                listener.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            }

            return;
        }

        Span<byte> on = stackalloc byte[sizeof(int)];
        MemoryMarshal.Write(on, 1);
        listener.SetRawSocketOption(SolSocket, SoReuseAddr, on);
        if (reusePort)
        {
            listener.SetRawSocketOption(SolSocket, SoReusePort, on);
        }
    }

    // DllImport rather than LibraryImport: the signature is blittable, and the project has no unsafe code.
    [DllImport("libc", EntryPoint = "chown", SetLastError = true, CharSet = CharSet.Ansi, BestFitMapping = false, ThrowOnUnmappableChar = true)]
    [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
#pragma warning disable SYSLIB1054
    private static extern int Chown([MarshalAs(UnmanagedType.LPUTF8Str)] string path, uint owner, uint group);
#pragma warning restore SYSLIB1054
}
