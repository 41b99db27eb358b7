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

    /// <summary>A CancelRequest carrying <paramref name="key"/> whole, whatever its length (protocol 3.2 keys are 4 to 256 bytes).</summary>
    public static byte[] CancelRequest(int pid, ReadOnlySpan<byte> key)
    {
        var rest = new byte[sizeof(int) + key.Length];
        BinaryPrimitives.WriteInt32BigEndian(rest, pid);
        key.CopyTo(rest.AsSpan(sizeof(int)));
        return Packet(8 + rest.Length, 80877102, rest);
    }

    /// <summary>
    /// Sends a CancelRequest for <paramref name="pid"/> with <paramref name="key"/> (4 to 256 bytes, as the
    /// BackendKeyData gave it) to <paramref name="host"/>:<paramref name="port"/> on a new TCP connection, as
    /// libpq and Npgsql do, and reads until the other side closes it or <paramref name="timeout"/> passes.
    /// Returns what arrived (a proxy or PostgreSQL writes nothing) and whether it closed in time.
    /// </summary>
    public static async Task<(byte[] Data, bool Closed)> SendCancelAsync(string host, int port, int pid, byte[] key, TimeSpan timeout)
    {
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        using (var connect = new CancellationTokenSource(timeout))
        {
            await socket.ConnectAsync(host, port, connect.Token);
        }

        await socket.SendAsync(CancelRequest(pid, key));
        return await ReadUntilCloseAsync(socket, timeout);
    }

    /// <summary>
    /// <see cref="SendCancelAsync(string, int, int, byte[], TimeSpan)"/> with a protocol 3.0 key: the int32
    /// secret of BackendKeyData (Npgsql does not expose it; hand-made sessions know it).
    /// </summary>
    public static Task<(byte[] Data, bool Closed)> SendCancelAsync(string host, int port, int pid, int key, TimeSpan timeout)
    {
        var bytes = new byte[sizeof(int)];
        BinaryPrimitives.WriteInt32BigEndian(bytes, key);
        return SendCancelAsync(host, port, pid, bytes, timeout);
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

    /// <summary>A typed frontend message: the type byte, an int32 length that counts itself, and the body.</summary>
    public static byte[] Message(char type, ReadOnlySpan<byte> body)
    {
        var m = new byte[1 + sizeof(int) + body.Length];
        m[0] = (byte)type;
        BinaryPrimitives.WriteInt32BigEndian(m.AsSpan(1), sizeof(int) + body.Length);
        body.CopyTo(m.AsSpan(1 + sizeof(int)));
        return m;
    }

    /// <summary>A Simple Query message (55.7 Query).</summary>
    public static byte[] Query(string sql) => Message('Q', CString(sql));

    /// <summary>A Parse message: statement name, SQL text and the declared parameter type OIDs (0 leaves one to the server).</summary>
    public static byte[] Parse(string statement, string sql, params int[] parameterTypes)
    {
        var body = new List<byte>();
        body.AddRange(CString(statement));
        body.AddRange(CString(sql));
        AddInt16(body, (short)parameterTypes.Length);
        foreach (int oid in parameterTypes)
        {
            AddInt32(body, oid);
        }

        return Message('P', body.ToArray());
    }

    /// <summary>
    /// A Bind message. <paramref name="parameterFormats"/> and <paramref name="resultFormats"/> are written as
    /// given (none, one for all, or one each); a null value is SQL NULL (length -1).
    /// </summary>
    public static byte[] Bind(string portal, string statement, short[] parameterFormats, byte[]?[] values, short[] resultFormats)
    {
        var body = new List<byte>();
        body.AddRange(CString(portal));
        body.AddRange(CString(statement));
        AddInt16(body, (short)parameterFormats.Length);
        foreach (short format in parameterFormats)
        {
            AddInt16(body, format);
        }

        AddInt16(body, (short)values.Length);
        foreach (byte[]? value in values)
        {
            AddInt32(body, value?.Length ?? -1);
            if (value is not null)
            {
                body.AddRange(value);
            }
        }

        AddInt16(body, (short)resultFormats.Length);
        foreach (short format in resultFormats)
        {
            AddInt16(body, format);
        }

        return Message('B', body.ToArray());
    }

    /// <summary>A Describe message for a statement ('S') or a portal ('P').</summary>
    public static byte[] Describe(char kind, string name) => Message('D', [(byte)kind, .. CString(name)]);

    /// <summary>An Execute message; <paramref name="maxRows"/> 0 means all rows.</summary>
    public static byte[] Execute(string portal, int maxRows = 0)
    {
        var body = new List<byte>(CString(portal));
        AddInt32(body, maxRows);
        return Message('E', body.ToArray());
    }

    /// <summary>A Sync message.</summary>
    public static byte[] Sync() => Message('S', []);

    /// <summary>A NUL-terminated UTF-8 string.</summary>
    public static byte[] CString(string value) => [.. Encoding.UTF8.GetBytes(value), 0];

    /// <summary>
    /// Reads messages up to and including ReadyForQuery within <paramref name="timeout"/>; a peer that closes
    /// first fails with the messages seen so far.
    /// </summary>
    public static async Task<List<(byte Type, byte[] Body)>> ReadUntilReadyAsync(Socket socket, TimeSpan timeout)
    {
        var messages = new List<(byte Type, byte[] Body)>();
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (true)
        {
            TimeSpan left = TimeSpan.FromMilliseconds(Math.Max(1, deadline - Environment.TickCount64));
            (byte Type, byte[] Body)? message = await ReadMessageAsync(socket, left);
            if (message is null)
            {
                throw new InvalidDataException($"the peer closed before ReadyForQuery; got '{string.Concat(messages.Select(m => (char)m.Type))}'");
            }

            messages.Add(message.Value);
            if (message.Value.Type == (byte)'Z')
            {
                return messages;
            }
        }
    }

    /// <summary>The fields of an ErrorResponse or NoticeResponse body, by field code, in order.</summary>
    public static List<(char Code, string Value)> Fields(byte[] body)
    {
        var fields = new List<(char Code, string Value)>();
        int p = 0;
        while (p < body.Length && body[p] != 0)
        {
            char code = (char)body[p++];
            int stop = Array.IndexOf(body, (byte)0, p);
            fields.Add((code, Encoding.UTF8.GetString(body, p, stop - p)));
            p = stop + 1;
        }

        return fields;
    }

    private static void AddInt16(List<byte> body, short value)
    {
        Span<byte> b = stackalloc byte[sizeof(short)];
        BinaryPrimitives.WriteInt16BigEndian(b, value);
        body.AddRange(b);
    }

    private static void AddInt32(List<byte> body, int value)
    {
        Span<byte> b = stackalloc byte[sizeof(int)];
        BinaryPrimitives.WriteInt32BigEndian(b, value);
        body.AddRange(b);
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
