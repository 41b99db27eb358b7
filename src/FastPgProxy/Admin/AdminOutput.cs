using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using FastPgProxy.Interception;
using FastPgProxy.Protocol;

namespace FastPgProxy.Admin;

/// <summary>
/// The console's replies, built with <see cref="PgWriter"/> into one growable array that is sent with one
/// send (a listing of thousands of clients does not fit a pooled buffer). Owned by one console session on
/// its loop; reused once the send of its contents has completed.
/// </summary>
internal sealed class AdminOutput
{
    /// <summary>The largest reply the console builds before it sends what it has (pipelined commands).</summary>
    public const int FlushThreshold = 1 << 20;

    // A reply that would grow past this is refused: a bound on memory per console session.
    private const int MaxLength = 256 << 20;

    // PostgreSQL's epoch for timestamps: 2000-01-01 00:00:00 UTC.
    private static readonly DateTime s_postgresEpoch = new(2000, 1, 1, 0, 0, 0, DateTimeKind.Utc);

    private byte[] _buffer = new byte[4096];

    /// <summary>Bytes written and not yet sent.</summary>
    public int Length { get; private set; }

    /// <summary>The array holding the reply; valid until the next write.</summary>
    public byte[] Buffer => _buffer;

    /// <summary>Forgets what was written (after it was sent).</summary>
    public void Clear() => Length = 0;

    /// <summary>pg_type OID of a column type.</summary>
    public static int TypeOid(AdminType type) => type switch
    {
        AdminType.Int4 => TypeOids.Int4,
        AdminType.Int8 => TypeOids.Int8,
        AdminType.Bool => TypeOids.Bool,
        AdminType.TimestampTz => 1184,
        _ => TypeOids.Text,
    };

    private static short TypeSize(AdminType type) => type switch
    {
        AdminType.Int4 => sizeof(int),
        AdminType.Int8 or AdminType.TimestampTz => sizeof(long),
        AdminType.Bool => sizeof(bool),
        _ => -1,
    };

    /// <summary>
    /// RowDescription (55.7): per column its name, no table (OID 0, attribute 0), type OID and size, no
    /// modifier, and the format code (<paramref name="formats"/>; null means text for all).
    /// </summary>
    public void WriteRowDescription(AdminColumn[] columns, short[]? formats)
    {
        int size = MessageFramer.HeaderLength + sizeof(short);
        foreach (AdminColumn column in columns)
        {
            size += Encoding.UTF8.GetByteCount(column.Name) + 1
                + sizeof(int) + sizeof(short) + sizeof(int) + sizeof(short) + sizeof(int) + sizeof(short);
        }

        var w = new PgWriter(GetSpan(size));
        w.BeginMessage((byte)ReplyMessage.RowDescription);
        w.WriteInt16((short)columns.Length);
        for (int i = 0; i < columns.Length; i++)
        {
            w.WriteCString(columns[i].Name);
            w.WriteInt32(0);                              // table OID: not a table column
            w.WriteInt16(0);                              // column attribute number
            w.WriteInt32(TypeOid(columns[i].Type));
            w.WriteInt16(TypeSize(columns[i].Type));
            w.WriteInt32(-1);                             // type modifier: none
            w.WriteInt16(formats?[i] ?? InterceptReplies.TextFormat);
        }

        w.EndMessage();
        Length += w.Position;
    }

    /// <summary>
    /// DataRow (55.7): each value in its column's format, text as PostgreSQL's output functions write it
    /// (DateStyle ISO, TimeZone UTC), binary as its send functions do.
    /// </summary>
    public void WriteDataRow(AdminColumn[] columns, object?[] row, short[]? formats)
    {
        var values = new byte[]?[columns.Length];
        int size = MessageFramer.HeaderLength + sizeof(short);
        for (int i = 0; i < columns.Length; i++)
        {
            values[i] = Encode(columns[i].Type, row[i], formats?[i] ?? InterceptReplies.TextFormat);
            size += sizeof(int) + (values[i]?.Length ?? 0);
        }

        var w = new PgWriter(GetSpan(size));
        w.BeginMessage((byte)ReplyMessage.DataRow);
        w.WriteInt16((short)columns.Length);
        foreach (byte[]? value in values)
        {
            if (value is null)
            {
                w.WriteInt32(-1);                         // NULL
                continue;
            }

            w.WriteInt32(value.Length);
            w.WriteBytes(value);
        }

        w.EndMessage();
        Length += w.Position;
    }

    /// <summary>One value in text (format 0) or binary (format 1); null for SQL NULL.</summary>
    public static byte[]? Encode(AdminType type, object? value, short format)
    {
        if (value is null)
        {
            return null;
        }

        bool binary = format == InterceptReplies.BinaryFormat;
        switch (type)
        {
            case AdminType.Int4:
                int i4 = Convert.ToInt32(value, CultureInfo.InvariantCulture);
                if (binary)
                {
                    byte[] b4 = new byte[sizeof(int)];
                    BinaryPrimitives.WriteInt32BigEndian(b4, i4);
                    return b4;
                }

                return Encoding.ASCII.GetBytes(i4.ToString(CultureInfo.InvariantCulture));
            case AdminType.Int8:
                long i8 = Convert.ToInt64(value, CultureInfo.InvariantCulture);
                if (binary)
                {
                    byte[] b8 = new byte[sizeof(long)];
                    BinaryPrimitives.WriteInt64BigEndian(b8, i8);
                    return b8;
                }

                return Encoding.ASCII.GetBytes(i8.ToString(CultureInfo.InvariantCulture));
            case AdminType.Bool:
                bool flag = (bool)value;
                return binary ? [flag ? (byte)1 : (byte)0] : [flag ? (byte)'t' : (byte)'f'];
            case AdminType.TimestampTz:
                DateTime time = ((DateTime)value).ToUniversalTime();
                if (binary)
                {
                    byte[] bt = new byte[sizeof(long)];
                    BinaryPrimitives.WriteInt64BigEndian(bt, (time - s_postgresEpoch).Ticks / TimeSpan.TicksPerMicrosecond);
                    return bt;
                }

                return Encoding.ASCII.GetBytes(FormatTimestamp(time));
            default:
                return Encoding.UTF8.GetBytes(Convert.ToString(value, CultureInfo.InvariantCulture) ?? "");
        }
    }

    /// <summary>timestamptz as timestamptz_out writes it with DateStyle ISO and TimeZone UTC: <c>2024-05-01 12:34:56.789+00</c>.</summary>
    public static string FormatTimestamp(DateTime utc)
    {
        string text = utc.ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture);
        long micros = utc.Ticks % TimeSpan.TicksPerSecond / TimeSpan.TicksPerMicrosecond;
        if (micros != 0)
        {
            text += "." + micros.ToString("D6", CultureInfo.InvariantCulture).TrimEnd('0');
        }

        return text + "+00";
    }

    /// <summary>CommandComplete with <paramref name="tag"/>.</summary>
    public void WriteCommandComplete(string tag)
    {
        var w = new PgWriter(GetSpan(MessageFramer.HeaderLength + Encoding.UTF8.GetByteCount(tag) + 1));
        w.BeginMessage((byte)ReplyMessage.CommandComplete);
        w.WriteCString(tag);
        w.EndMessage();
        Length += w.Position;
    }

    /// <summary>ErrorResponse (severity ERROR) or NoticeResponse (severity NOTICE) with SQLSTATE, message, detail and hint.</summary>
    public void WriteMessage(BackendMessage type, AdminMessage message)
    {
        string severity = type == BackendMessage.ErrorResponse ? "ERROR" : "NOTICE";
        int size = MessageFramer.HeaderLength + 1
            + (4 * (1 + Encoding.UTF8.GetByteCount(severity) + 1))
            + Encoding.UTF8.GetByteCount(message.SqlState) + Encoding.UTF8.GetByteCount(message.Text)
            + (message.Detail is null ? 0 : 2 + Encoding.UTF8.GetByteCount(message.Detail))
            + (message.Hint is null ? 0 : 2 + Encoding.UTF8.GetByteCount(message.Hint));
        var w = new PgWriter(GetSpan(size));
        w.WriteError(type, severity, message.SqlState, message.Text, message.Detail, message.Hint);
        Length += w.Position;
    }

    /// <summary>ParameterStatus: a run-time parameter the client should know (55.2.2).</summary>
    public void WriteParameterStatus(string name, string value)
    {
        var w = new PgWriter(GetSpan(MessageFramer.HeaderLength + Encoding.UTF8.GetByteCount(name) + Encoding.UTF8.GetByteCount(value) + 2));
        w.BeginMessage((byte)BackendMessage.ParameterStatus);
        w.WriteCString(name);
        w.WriteCString(value);
        w.EndMessage();
        Length += w.Position;
    }

    /// <summary>AuthenticationOk.</summary>
    public void WriteAuthenticationOk()
    {
        var w = new PgWriter(GetSpan(MessageFramer.HeaderLength + sizeof(int)));
        w.WriteAuthentication(AuthRequest.Ok);
        Length += w.Position;
    }

    /// <summary>BackendKeyData with the session id and its cancel key.</summary>
    public void WriteBackendKeyData(int processId, ReadOnlySpan<byte> secret)
    {
        var w = new PgWriter(GetSpan(MessageFramer.HeaderLength + sizeof(int) /* pid */ + secret.Length));
        w.WriteBackendKeyData(processId, secret);
        Length += w.Position;
    }

    /// <summary>ReadyForQuery 'I': the console has no transactions.</summary>
    public void WriteReadyForQuery()
    {
        var w = new PgWriter(GetSpan(MessageFramer.HeaderLength + sizeof(byte)));
        w.WriteReadyForQuery(TransactionStatus.Idle);
        Length += w.Position;
    }

    /// <summary>ParameterDescription listing <paramref name="typeOids"/>.</summary>
    public void WriteParameterDescription(int[] typeOids)
    {
        var w = new PgWriter(GetSpan(MessageFramer.HeaderLength + sizeof(short) + (typeOids.Length * sizeof(int))));
        InterceptReplies.WriteParameterDescription(ref w, typeOids);
        Length += w.Position;
    }

    /// <summary>A message with no body: ParseComplete '1', BindComplete '2', CloseComplete '3', NoData 'n', EmptyQueryResponse 'I', PortalSuspended 's'.</summary>
    public void WriteEmpty(byte type)
    {
        var w = new PgWriter(GetSpan(MessageFramer.HeaderLength));
        w.BeginMessage(type);
        w.EndMessage();
        Length += w.Position;
    }

    /// <summary>Room for at least <paramref name="size"/> more bytes, growing by doubling within the bound.</summary>
    private Span<byte> GetSpan(int size)
    {
        int needed = Length + size;
        if (needed > _buffer.Length)
        {
            if (needed > MaxLength)
            {
                throw new InvalidOperationException($"admin console reply longer than {MaxLength} bytes");
            }

            int capacity = _buffer.Length;
            while (capacity < needed)
            {
                capacity *= 2;
            }

            Array.Resize(ref _buffer, Math.Min(capacity, MaxLength));
        }

        return _buffer.AsSpan(Length, size);
    }
}
