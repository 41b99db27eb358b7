using System.Buffers.Text;
using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Text;
using FastPgProxy.Protocol;

namespace FastPgProxy.Interception;

/// <summary>Type bytes of the backend messages the proxy writes when it answers a call itself (protocol 55.7).</summary>
internal enum ReplyMessage : byte
{
    /// <summary>ParseComplete.</summary>
    ParseComplete = (byte)'1',
    /// <summary>BindComplete.</summary>
    BindComplete = (byte)'2',
    /// <summary>CloseComplete.</summary>
    CloseComplete = (byte)'3',
    /// <summary>CommandComplete.</summary>
    CommandComplete = (byte)'C',
    /// <summary>DataRow.</summary>
    DataRow = (byte)'D',
    /// <summary>NoData.</summary>
    NoData = (byte)'n',
    /// <summary>ParameterDescription.</summary>
    ParameterDescription = (byte)'t',
    /// <summary>RowDescription.</summary>
    RowDescription = (byte)'T',
}

/// <summary>pg_type OIDs of the types the intercepted calls take and return (pg_type.dat).</summary>
internal static class TypeOids
{
    /// <summary>Not specified: a Parse parameter whose type the server infers.</summary>
    public const int Unspecified = 0;
    /// <summary>bool.</summary>
    public const int Bool = 16;
    /// <summary>name.</summary>
    public const int Name = 19;
    /// <summary>int8 (bigint).</summary>
    public const int Int8 = 20;
    /// <summary>int2 (smallint).</summary>
    public const int Int2 = 21;
    /// <summary>int4 (integer).</summary>
    public const int Int4 = 23;
    /// <summary>text.</summary>
    public const int Text = 25;
    /// <summary>unknown: the type of an untyped literal.</summary>
    public const int Unknown = 705;
    /// <summary>bpchar (character).</summary>
    public const int BpChar = 1042;
    /// <summary>varchar (character varying).</summary>
    public const int VarChar = 1043;
}

/// <summary>
/// Builds, with <see cref="PgWriter"/>, the messages PostgreSQL itself sends for <c>pg_backend_pid()</c>,
/// <c>pg_cancel_backend()</c> and <c>pg_terminate_backend()</c>, byte for byte: the result rows here, the
/// notices and errors in <c>InterceptReplies.Errors.cs</c>, the decoding of Bind parameters in
/// <c>InterceptReplies.Parameters.cs</c>. Nothing here allocates; the caller sizes the buffer
/// (<see cref="MaxRowMessageLength"/>, <see cref="InterceptErrors.MaxFixedErrorLength"/>, plus a quoted value's length).
/// </summary>
/// <remarks>
/// In what order PostgreSQL sends them, for a Simple Query: RowDescription, then any NoticeResponse the
/// function raises, then DataRow, CommandComplete <c>SELECT 1</c>; an error raised by the function comes
/// after RowDescription (the functions are volatile, so they run at execution, not at planning).
/// </remarks>
internal static partial class InterceptReplies
{
    /// <summary>Format code of text values.</summary>
    public const short TextFormat = 0;

    /// <summary>Format code of binary values.</summary>
    public const short BinaryFormat = 1;

    /// <summary>The longest message the row builders write for a column name of at most 63 bytes (RowDescription).</summary>
    public const int MaxRowMessageLength = RowDescriptionFixedLength + QueryScanner.MaxIdentifierLength + 1;

    // Room for a column name given as a string; names PostgreSQL produces are at most 63 bytes.
    private const int MaxColumnNameBytes = 256;

    // RowDescription with one field, less the field name and its terminator.
    private const int RowDescriptionFixedLength =
        sizeof(byte)     // type
        + sizeof(int)    // length
        + sizeof(short)  // field count
        + sizeof(int)    // table OID
        + sizeof(short)  // column attribute number
        + sizeof(int)    // type OID
        + sizeof(short)  // type size
        + sizeof(int)    // type modifier
        + sizeof(short); // format code

    /// <summary>The CommandComplete tag of a one-row SELECT.</summary>
    public static ReadOnlySpan<byte> SelectOneTag => "SELECT 1"u8;

    /// <summary>
    /// RowDescription of the single result column: no table (OID 0, attribute 0), the type's OID and size,
    /// no type modifier (-1), and the format code: what PostgreSQL sends for <c>SELECT pg_backend_pid()</c>.
    /// </summary>
    /// <param name="w">The writer.</param>
    /// <param name="columnName">The column name, UTF-8.</param>
    /// <param name="typeOid">int4 (<see cref="TypeOids.Int4"/>) or bool (<see cref="TypeOids.Bool"/>); int2 and int8 are accepted too.</param>
    /// <param name="formatCode">0 in a Simple Query and a statement Describe; the Bind's result format for a portal.</param>
    public static void WriteRowDescription(ref PgWriter w, scoped ReadOnlySpan<byte> columnName, int typeOid, short formatCode)
    {
        w.BeginMessage((byte)ReplyMessage.RowDescription);
        w.WriteInt16(1);                         // field count
        w.WriteCString(columnName);
        w.WriteInt32(0);                         // table OID: not a table column
        w.WriteInt16(0);                         // column attribute number
        w.WriteInt32(typeOid);
        w.WriteInt16(TypeLength(typeOid));
        w.WriteInt32(-1);                        // type modifier: none
        w.WriteInt16(formatCode);
        w.EndMessage();
    }

    /// <summary>RowDescription of the single result column, its name given as a string (allocation-free).</summary>
    public static void WriteRowDescription(ref PgWriter w, string columnName, int typeOid, short formatCode)
    {
        ArgumentNullException.ThrowIfNull(columnName);
        Span<byte> name = stackalloc byte[MaxColumnNameBytes];
        if (!Encoding.UTF8.TryGetBytes(columnName, name, out int written))
        {
            ThrowNameTooLong();
        }

        WriteRowDescription(ref w, name.Slice(0, written), typeOid, formatCode);
    }

    /// <summary>
    /// DataRow with one int4 value: ASCII decimal in text format, 4 bytes big-endian in binary
    /// (int4out and int4send).
    /// </summary>
    public static void WriteDataRowInt4(ref PgWriter w, int value, short formatCode)
    {
        w.BeginMessage((byte)ReplyMessage.DataRow);
        w.WriteInt16(1);                         // column count
        if (formatCode == TextFormat)
        {
            Span<byte> digits = stackalloc byte[11]; // "-2147483648"
            bool formatted = Utf8Formatter.TryFormat(value, digits, out int length);
            Debug.Assert(formatted, "an int32 fits in 11 bytes");
            w.WriteInt32(length);
            w.WriteBytes(digits.Slice(0, length));
        }
        else
        {
            w.WriteInt32(sizeof(int));
            w.WriteInt32(value);
        }

        w.EndMessage();
    }

    /// <summary>DataRow with one bool value: <c>t</c> or <c>f</c> in text format, one byte 1 or 0 in binary (boolout and boolsend).</summary>
    public static void WriteDataRowBool(ref PgWriter w, bool value, short formatCode)
    {
        w.BeginMessage((byte)ReplyMessage.DataRow);
        w.WriteInt16(1);                         // column count
        w.WriteInt32(sizeof(byte));              // value length, the same in both formats
        if (formatCode == TextFormat)
        {
            w.WriteByte(value ? (byte)'t' : (byte)'f');
        }
        else
        {
            w.WriteByte(value ? (byte)1 : (byte)0);
        }

        w.EndMessage();
    }

    /// <summary>DataRow with one NULL value (length -1): the result of a strict function called with NULL.</summary>
    public static void WriteDataRowNull(ref PgWriter w)
    {
        w.BeginMessage((byte)ReplyMessage.DataRow);
        w.WriteInt16(1);                         // column count
        w.WriteInt32(-1);                        // NULL
        w.EndMessage();
    }

    /// <summary>CommandComplete with <paramref name="tag"/>, <see cref="SelectOneTag"/> for these calls.</summary>
    public static void WriteCommandComplete(ref PgWriter w, scoped ReadOnlySpan<byte> tag)
    {
        w.BeginMessage((byte)ReplyMessage.CommandComplete);
        w.WriteCString(tag);
        w.EndMessage();
    }

    /// <summary>ParameterDescription: the type OID of each parameter of a prepared statement.</summary>
    public static void WriteParameterDescription(ref PgWriter w, scoped ReadOnlySpan<int> typeOids)
    {
        w.BeginMessage((byte)ReplyMessage.ParameterDescription);
        w.WriteInt16((short)typeOids.Length);
        foreach (int oid in typeOids)
        {
            w.WriteInt32(oid);
        }

        w.EndMessage();
    }

    /// <summary>ParseComplete.</summary>
    public static void WriteParseComplete(ref PgWriter w) => WriteEmpty(ref w, ReplyMessage.ParseComplete);

    /// <summary>BindComplete.</summary>
    public static void WriteBindComplete(ref PgWriter w) => WriteEmpty(ref w, ReplyMessage.BindComplete);

    /// <summary>CloseComplete.</summary>
    public static void WriteCloseComplete(ref PgWriter w) => WriteEmpty(ref w, ReplyMessage.CloseComplete);

    /// <summary>NoData: the answer to Describe of a statement or portal that returns no rows.</summary>
    public static void WriteNoData(ref PgWriter w) => WriteEmpty(ref w, ReplyMessage.NoData);

    private static void WriteEmpty(ref PgWriter w, ReplyMessage type)
    {
        w.BeginMessage((byte)type);
        w.EndMessage();
    }

    /// <summary>pg_type.typlen of the types a result column can have here.</summary>
    private static short TypeLength(int typeOid)
    {
        switch (typeOid)
        {
            case TypeOids.Bool:
                return sizeof(bool);
            case TypeOids.Int2:
                return sizeof(short);
            case TypeOids.Int4:
                return sizeof(int);
            case TypeOids.Int8:
                return sizeof(long);
            default:
                ThrowUnsupportedType(typeOid);
                return 0;
        }
    }

    [DoesNotReturn]
    private static void ThrowUnsupportedType(int typeOid)
        => throw new ArgumentOutOfRangeException(nameof(typeOid), typeOid, "only bool, int2, int4 and int8 result columns are written");

    [DoesNotReturn]
    private static void ThrowNameTooLong()
        => throw new ArgumentException($"a column name is at most {MaxColumnNameBytes} bytes; PostgreSQL keeps {QueryScanner.MaxIdentifierLength}", "columnName");
}
