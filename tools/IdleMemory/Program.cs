using System.Buffers.Binary;
using System.Globalization;
using System.Net.Sockets;
using System.Text;

namespace FastPgProxy.Tools.IdleMemory;

/// <summary>
/// Measures what an idle, logged-in client costs a proxy in memory: the proxy's resident set
/// (<c>/proc/PID/status</c> VmRSS) is read, <c>--clients</c> connections log in (StartupMessage with
/// trust, read to ReadyForQuery) and stay idle, the resident set is read again after they settle, and
/// the difference is divided by the number of clients.
/// </summary>
/// <remarks>
/// Usage: <c>IdleMemory --pid PID --port PORT [--host 127.0.0.1] [--user U] [--database D] [--clients 10000] [--settle-seconds 3]</c>.
/// Prints <c>clients=N rss_before_kib=A rss_after_kib=B per_client_bytes=X</c> and exits 0; exits 1 when a
/// login fails, 2 on bad arguments. Needs about as many open files as clients (raise <c>ulimit -n</c>).
/// </remarks>
internal static class Program
{
    private static async Task<int> Main(string[] args)
    {
        Dictionary<string, string> options;
        try
        {
            options = ParseArgs(args);
        }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            Console.Error.WriteLine("usage: IdleMemory --pid PID --port PORT [--host 127.0.0.1] [--user postgres] [--database postgres] [--clients 10000] [--settle-seconds 3]");
            return 2;
        }

        int pid = int.Parse(options["pid"], CultureInfo.InvariantCulture);
        int port = int.Parse(options["port"], CultureInfo.InvariantCulture);
        string host = options.GetValueOrDefault("host", "127.0.0.1");
        string user = options.GetValueOrDefault("user", "postgres");
        string database = options.GetValueOrDefault("database", "postgres");
        int clients = int.Parse(options.GetValueOrDefault("clients", "10000"), CultureInfo.InvariantCulture);
        int settle = int.Parse(options.GetValueOrDefault("settle-seconds", "3"), CultureInfo.InvariantCulture);

        byte[] startup = Startup(user, database);
        await Task.Delay(TimeSpan.FromSeconds(settle));
        long before = ResidentKib(pid);
        var sockets = new List<Socket>(clients);
        try
        {
            // A few at a time, as applications connect; each one is idle once it has its ReadyForQuery.
            const int batch = 64;
            for (int i = 0; i < clients; i += batch)
            {
                var logins = new List<Task<Socket>>();
                for (int j = i; j < Math.Min(clients, i + batch); j++)
                {
                    logins.Add(LogInAsync(host, port, startup));
                }

                sockets.AddRange(await Task.WhenAll(logins));
            }

            await Task.Delay(TimeSpan.FromSeconds(settle));
            long after = ResidentKib(pid);
            long perClient = (after - before) * 1024 / clients;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"clients={clients} rss_before_kib={before} rss_after_kib={after} per_client_bytes={perClient}"));
            return 0;
        }
        catch (Exception e) when (e is SocketException or IOException)
        {
            Console.Error.WriteLine($"error: login {sockets.Count + 1} failed: {e.Message}");
            return 1;
        }
        finally
        {
            foreach (Socket socket in sockets)
            {
                socket.Dispose();
            }
        }
    }

    /// <summary>Connects, sends the StartupMessage and reads until ReadyForQuery; the socket then stays idle.</summary>
    private static async Task<Socket> LogInAsync(string host, int port, byte[] startup)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(host, port);
        await socket.SendAsync(startup);
        byte[] header = new byte[5];
        while (true)
        {
            await ReadExactlyAsync(socket, header);
            int length = BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(1));
            byte[] body = new byte[length - 4];
            await ReadExactlyAsync(socket, body);
            if (header[0] == (byte)'E')
            {
                throw new IOException($"the server refused the login: {Encoding.UTF8.GetString(body)}");
            }

            if (header[0] == (byte)'Z')
            {
                return socket;
            }
        }
    }

    private static async Task ReadExactlyAsync(Socket socket, byte[] buffer)
    {
        int read = 0;
        while (read < buffer.Length)
        {
            int n = await socket.ReceiveAsync(buffer.AsMemory(read));
            if (n == 0)
            {
                throw new IOException("the server closed the connection");
            }

            read += n;
        }
    }

    /// <summary>A protocol 3.0 StartupMessage for <paramref name="user"/> and <paramref name="database"/>.</summary>
    private static byte[] Startup(string user, string database)
    {
        var body = new List<byte>();
        body.AddRange([0, 3, 0, 0]);
        foreach (string text in new[] { "user", user, "database", database })
        {
            body.AddRange(Encoding.UTF8.GetBytes(text));
            body.Add(0);
        }

        body.Add(0);
        byte[] packet = new byte[body.Count + 4];
        BinaryPrimitives.WriteInt32BigEndian(packet, packet.Length);
        body.CopyTo(packet, 4);
        return packet;
    }

    /// <summary>VmRSS of <paramref name="pid"/> in KiB.</summary>
    private static long ResidentKib(int pid)
    {
        foreach (string line in File.ReadLines($"/proc/{pid}/status"))
        {
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
            {
                return long.Parse(line.AsSpan(6).Trim().TrimEnd("kB").Trim(), CultureInfo.InvariantCulture);
            }
        }

        throw new IOException($"no VmRSS in /proc/{pid}/status");
    }

    private static Dictionary<string, string> ParseArgs(string[] args)
    {
        var options = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i < args.Length; i += 2)
        {
            if (!args[i].StartsWith("--", StringComparison.Ordinal) || i + 1 >= args.Length)
            {
                throw new ArgumentException($"unexpected argument '{args[i]}'");
            }

            options[args[i][2..]] = args[i + 1];
        }

        foreach (string required in new[] { "pid", "port" })
        {
            if (!options.TryGetValue(required, out string? value) || !int.TryParse(value, CultureInfo.InvariantCulture, out _))
            {
                throw new ArgumentException($"--{required} needs an integer");
            }
        }

        return options;
    }
}
