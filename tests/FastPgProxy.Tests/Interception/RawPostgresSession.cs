using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using FastPgProxy.Tests.EndToEnd;
using FastPgProxy.Tests.Infrastructure;

namespace FastPgProxy.Tests.Interception;

/// <summary>
/// A protocol 3.0 session with PostgreSQL over a raw socket, logged in as the trusted superuser, that
/// sends hand-built frontend messages and returns the backend's messages as they are on the wire.
/// </summary>
internal sealed class RawPostgresSession : IDisposable
{
    /// <summary>Generous bound on every reply; PostgreSQL answers in milliseconds.</summary>
    public static readonly TimeSpan ReplyTimeout = TimeSpan.FromSeconds(15);

    private readonly Socket _socket;

    private RawPostgresSession(Socket socket, int processId, int serverMajorVersion)
    {
        _socket = socket;
        ProcessId = processId;
        ServerMajorVersion = serverMajorVersion;
    }

    /// <summary>The backend's pid from BackendKeyData.</summary>
    public int ProcessId { get; }

    /// <summary>The server's major version (15, 16, ...), from the server_version ParameterStatus.</summary>
    public int ServerMajorVersion { get; }

    public static async Task<RawPostgresSession> ConnectAsync(PostgresServer server)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(server.Host, server.Port);
            await socket.SendAsync(RawProtocol.Startup(("user", PostgresServer.Superuser), ("database", PostgresServer.Database)));
            int processId = 0;
            int majorVersion = 0;
            foreach ((byte type, byte[] body) in await ReadUntilReadyAsync(socket))
            {
                if (type == (byte)'S' && Encoding.UTF8.GetString(body).StartsWith("server_version\0", StringComparison.Ordinal))
                {
                    string version = Encoding.UTF8.GetString(body, 15, body.Length - 16);
                    majorVersion = int.Parse(version.Split('.', ' ')[0], System.Globalization.CultureInfo.InvariantCulture);
                }

                if (type == (byte)'E')
                {
                    throw new InvalidOperationException("login failed: " + Encoding.UTF8.GetString(body));
                }

                if (type == (byte)'K')
                {
                    processId = BinaryPrimitives.ReadInt32BigEndian(body);
                }
            }

            return new RawPostgresSession(socket, processId, majorVersion);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Sends a Simple Query and returns every message up to and including ReadyForQuery, as whole messages.</summary>
    public async Task<List<byte[]>> QueryAsync(string sql)
    {
        await SendAsync(Frontend('Q', CString(sql)));
        return await ReadMessagesUntilReadyAsync();
    }

    /// <summary>Sends the given frontend messages in one write.</summary>
    public async Task SendAsync(params byte[][] messages)
    {
        byte[] all = messages.SelectMany(m => m).ToArray();
        await _socket.SendAsync(all);
    }

    /// <summary>Reads whole messages (type, length, body) up to and including ReadyForQuery.</summary>
    public async Task<List<byte[]>> ReadMessagesUntilReadyAsync()
        => (await ReadUntilReadyAsync(_socket)).Select(m => Whole(m.Type, m.Body)).ToList();

    /// <summary>Reads one whole message, or null when the server closes first.</summary>
    public async Task<byte[]?> ReadMessageAsync()
    {
        (byte Type, byte[] Body)? message = await RawProtocol.ReadMessageAsync(_socket, ReplyTimeout);
        return message is { } m ? Whole(m.Type, m.Body) : null;
    }

    public void Dispose() => _socket.Dispose();

    /// <summary>A frontend message: type byte, length word, body.</summary>
    public static byte[] Frontend(char type, params byte[][] parts)
    {
        byte[] body = parts.SelectMany(p => p).ToArray();
        return Whole((byte)type, body);
    }

    public static byte[] CString(string text) => [.. Encoding.UTF8.GetBytes(text), 0];

    public static byte[] Int16(short value)
    {
        byte[] bytes = new byte[2];
        BinaryPrimitives.WriteInt16BigEndian(bytes, value);
        return bytes;
    }

    public static byte[] Int32(int value)
    {
        byte[] bytes = new byte[4];
        BinaryPrimitives.WriteInt32BigEndian(bytes, value);
        return bytes;
    }

    /// <summary>Parse of the unnamed statement with the given parameter type OIDs.</summary>
    public static byte[] Parse(string sql, params int[] parameterTypes)
        => Frontend('P', CString(""), CString(sql), Int16((short)parameterTypes.Length), [.. parameterTypes.SelectMany(Int32)]);

    /// <summary>Bind of the unnamed statement to a portal, with one parameter format and one result format for all.</summary>
    public static byte[] Bind(string portal, short parameterFormat, byte[]?[] values, short resultFormat)
    {
        var parts = new List<byte[]> { CString(portal), CString(""), Int16(1), Int16(parameterFormat), Int16((short)values.Length) };
        foreach (byte[]? value in values)
        {
            parts.Add(Int32(value is null ? -1 : value.Length));
            parts.Add(value ?? []);
        }

        parts.Add(Int16(1));
        parts.Add(Int16(resultFormat));
        return Frontend('B', [.. parts]);
    }

    public static byte[] Describe(char kind, string name) => Frontend('D', [(byte)kind], CString(name));

    public static byte[] Execute(string portal) => Frontend('E', CString(portal), Int32(0));

    public static byte[] Sync() => Frontend('S');

    /// <summary>
    /// A NoticeResponse or ErrorResponse without PostgreSQL's source-location fields (F file, L line, R
    /// routine), which the proxy does not send; every other byte is kept.
    /// </summary>
    public static byte[] WithoutSourceLocation(byte[] message)
    {
        var body = new List<byte>();
        int p = 5;
        while (message[p] != 0)
        {
            int end = Array.IndexOf(message, (byte)0, p + 1);
            if (message[p] is not ((byte)'F' or (byte)'L' or (byte)'R'))
            {
                body.AddRange(message.AsSpan(p, end + 1 - p).ToArray());
            }

            p = end + 1;
        }

        body.Add(0);
        return Whole(message[0], [.. body]);
    }

    private static byte[] Whole(byte type, byte[] body)
    {
        byte[] message = new byte[1 + 4 + body.Length];
        message[0] = type;
        BinaryPrimitives.WriteInt32BigEndian(message.AsSpan(1), 4 + body.Length);
        body.CopyTo(message, 5);
        return message;
    }

    private static async Task<List<(byte Type, byte[] Body)>> ReadUntilReadyAsync(Socket socket)
    {
        var messages = new List<(byte Type, byte[] Body)>();
        while (true)
        {
            (byte Type, byte[] Body)? message = await RawProtocol.ReadMessageAsync(socket, ReplyTimeout)
                ?? throw new InvalidOperationException("PostgreSQL closed the connection");
            messages.Add(message.Value);
            if (message.Value.Type == (byte)'Z')
            {
                return messages;
            }
        }
    }
}
