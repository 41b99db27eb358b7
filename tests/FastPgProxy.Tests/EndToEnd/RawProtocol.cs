using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>Hand-made start-up packets and a reader of what comes back, for hostile-input tests.</summary>
internal static class RawProtocol
{
    public static byte[] Packet(int length, int code, byte[]? rest = null)
    {
        rest ??= [];
        var p = new byte[8 + rest.Length];
        BinaryPrimitives.WriteInt32BigEndian(p, length);
        BinaryPrimitives.WriteInt32BigEndian(p.AsSpan(4), code);
        rest.CopyTo(p, 8);
        return p;
    }

    public static byte[] CancelRequest(int pid, int key)
    {
        var rest = new byte[8];
        BinaryPrimitives.WriteInt32BigEndian(rest, pid);
        BinaryPrimitives.WriteInt32BigEndian(rest.AsSpan(4), key);
        return Packet(16, 80877102, rest);
    }

    public static byte[] Startup(params (string Name, string Value)[] parameters) => StartupWithVersion(3 << 16, parameters);

    /// <summary>An SSLRequest: length 8 and code 1234.5679.</summary>
    public static byte[] SslRequest() => Packet(8, 80877103);

    /// <summary>A StartupMessage announcing protocol <paramref name="version"/> (major in the high 16 bits).</summary>
    public static byte[] StartupWithVersion(int version, params (string Name, string Value)[] parameters)
    {
        var body = new List<byte>();
        foreach ((string name, string value) in parameters)
        {
            body.AddRange(Encoding.UTF8.GetBytes(name));
            body.Add(0);
            body.AddRange(Encoding.UTF8.GetBytes(value));
            body.Add(0);
        }

        body.Add(0);
        return Packet(8 + body.Count, version, body.ToArray());
    }

    /// <summary>
    /// Reads one typed message (type byte, int32 length, body) within <paramref name="timeout"/>; null when the
    /// peer closes first. A timeout throws, so a proxy that goes silent fails the test instead of hanging it.
    /// </summary>
    public static async Task<(byte Type, byte[] Body)?> ReadMessageAsync(Socket socket, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        var header = new byte[5];
        if (!await ReadExactlyAsync(socket, header, cts.Token))
        {
            return null;
        }

        int length = BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(1));
        if (length < 4 || length > 1 << 20)
        {
            throw new InvalidDataException($"message '{(char)header[0]}' has an invalid length {length}");
        }

        var body = new byte[length - 4];
        if (!await ReadExactlyAsync(socket, body, cts.Token))
        {
            return null;
        }

        return (header[0], body);
    }

    /// <summary>Fills <paramref name="buffer"/>; false when the peer closes (or resets) first.</summary>
    public static async Task<bool> ReadExactlyAsync(Socket socket, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        int read = 0;
        while (read < buffer.Length)
        {
            int n;
            try
            {
                n = await socket.ReceiveAsync(buffer[read..], SocketFlags.None, cancellationToken);
            }
            catch (SocketException)
            {
                return false;
            }

            if (n == 0)
            {
                return false;
            }

            read += n;
        }

        return true;
    }

    /// <summary>Reads until the peer closes or <paramref name="timeout"/> passes; returns the bytes and whether it closed.</summary>
    public static async Task<(byte[] Data, bool Closed)> ReadUntilCloseAsync(Socket socket, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        var data = new List<byte>();
        var buffer = new byte[8192];
        try
        {
            while (true)
            {
                int n = await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
                if (n == 0)
                {
                    return (data.ToArray(), true);
                }

                data.AddRange(buffer.AsSpan(0, n).ToArray());
            }
        }
        catch (OperationCanceledException)
        {
            return (data.ToArray(), false);
        }
        catch (SocketException)
        {
            return (data.ToArray(), true);
        }
    }

    /// <summary>The SQLSTATE (C field) of the first ErrorResponse in <paramref name="data"/>, or null.</summary>
    public static string? ErrorCode(byte[] data) => ErrorField(data, (byte)'C');

    public static string? ErrorField(byte[] data, byte field)
    {
        int pos = 0;
        while (pos + 5 <= data.Length)
        {
            byte type = data[pos];
            int length = BinaryPrimitives.ReadInt32BigEndian(data.AsSpan(pos + 1));
            if (type == (byte)'E')
            {
                int p = pos + 5;
                int end = pos + 1 + length;
                while (p < end && data[p] != 0)
                {
                    byte code = data[p++];
                    int stop = Array.IndexOf(data, (byte)0, p);
                    string value = Encoding.UTF8.GetString(data, p, stop - p);
                    p = stop + 1;
                    if (code == field)
                    {
                        return value;
                    }
                }
            }

            pos += 1 + length;
        }

        return null;
    }
}
