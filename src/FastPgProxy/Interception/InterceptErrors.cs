using System.Buffers.Text;
using System.Diagnostics;
using System.Text;
using FastPgProxy.Protocol;

namespace FastPgProxy.Interception;

/// <summary>
/// Where a parameter error happened, as PostgreSQL's Bind reports it in the context (<c>W</c>) field of the
/// ErrorResponse (postgres.c bind_param_error_callback): <c>unnamed portal parameter $1 = '...'</c>.
/// The default value means "not while binding a parameter": no context field.
/// </summary>
internal readonly ref struct BindParameterContext
{
    /// <summary>Describes parameter <paramref name="parameterNumber"/> (1-based) of the portal being bound.</summary>
    /// <param name="portalName">The Bind message's portal name; empty for the unnamed portal.</param>
    /// <param name="parameterNumber">The 1-based parameter number.</param>
    /// <param name="logParameterMaxLengthOnError">
    /// The server's <c>log_parameter_max_length_on_error</c>: how many bytes of a text value the context
    /// quotes. PostgreSQL's default 0 shows <c>'...'</c>; -1 shows the whole value.
    /// </param>
    public BindParameterContext(ReadOnlySpan<byte> portalName, int parameterNumber, int logParameterMaxLengthOnError = 0)
    {
        PortalName = portalName;
        ParameterNumber = parameterNumber;
        LogParameterMaxLengthOnError = logParameterMaxLengthOnError;
    }

    /// <summary>The portal's name; empty for the unnamed portal.</summary>
    public ReadOnlySpan<byte> PortalName { get; }

    /// <summary>The 1-based parameter number; 0 for no context.</summary>
    public int ParameterNumber { get; }

    /// <summary>How many bytes of a text value to quote; negative for all of it.</summary>
    public int LogParameterMaxLengthOnError { get; }

    /// <summary>Whether there is a context to report.</summary>
    public bool IsPresent => ParameterNumber > 0;
}

/// <summary>
/// NoticeResponse and ErrorResponse messages with PostgreSQL's wording and SQLSTATE (PostgreSQL 16+
/// signalfuncs.c, numutils.c, postgres.c, mbutils.c). PostgreSQL also sends the F, L and R fields (its
/// source file, line and function); the proxy leaves them out rather than invent them. Every other field
/// is the same, in the same order (S, V, C, M, D, W).
/// </summary>
internal static class InterceptErrors
{
    /// <summary>
    /// Room the fixed-text notices and errors need at most (the longest is the permission error with its
    /// detail). Messages that quote a value or a portal name need that value's length more.
    /// </summary>
    public const int MaxFixedErrorLength = 320;

    private static ReadOnlySpan<byte> Warning => "WARNING"u8;

    private static ReadOnlySpan<byte> Error => "ERROR"u8;

    private static ReadOnlySpan<byte> Fatal => "FATAL"u8;

    /// <summary>
    /// NoticeResponse WARNING 01000 <c>PID 12345 is not a PostgreSQL backend process</c>: the pid is no
    /// session; the function then returns false.
    /// </summary>
    public static void WriteNotBackendProcessWarning(ref PgWriter w, int pid)
    {
        BeginFields(ref w, BackendMessage.NoticeResponse, Warning, "01000"u8);
        w.WriteByte((byte)'M');
        w.WriteBytes("PID "u8);
        WriteDecimal(ref w, pid);
        w.WriteCString(" is not a PostgreSQL backend process"u8);
        EndFields(ref w);
    }

    /// <summary>
    /// NoticeResponse WARNING 01000 <c>could not send signal to process N</c>, as PostgreSQL's signal
    /// functions say when kill() fails: here, the instance that owns the session could not be asked (the
    /// DETAIL says which and where to look). The call then returns false.
    /// </summary>
    public static void WriteSignalNotSentWarning(ref PgWriter w, int pid, int peerId)
    {
        BeginFields(ref w, BackendMessage.NoticeResponse, Warning, "01000"u8);
        w.WriteByte((byte)'M');
        w.WriteBytes("could not send signal to process "u8);
        WriteDecimal(ref w, pid);
        w.WriteByte(0);
        w.WriteByte((byte)'D');
        w.WriteBytes("The session belongs to peer "u8);
        WriteDecimal(ref w, peerId);
        w.WriteCString(", which could not be asked; SHOW PEERS has its state, and the proxy's log says why."u8);
        EndFields(ref w);
    }

    /// <summary>
    /// ErrorResponse 42501 <c>permission denied to cancel query</c> with PostgreSQL's detail: the caller
    /// lacks the privileges of the target's role and of pg_signal_backend.
    /// </summary>
    public static void WriteCancelPermissionDenied(ref PgWriter w)
    {
        BeginFields(ref w, BackendMessage.ErrorResponse, Error, "42501"u8);
        Field(ref w, (byte)'M', "permission denied to cancel query"u8);
        Field(ref w, (byte)'D', "Only roles with privileges of the role whose query is being canceled or with privileges of the \"pg_signal_backend\" role may cancel this query."u8);
        EndFields(ref w);
    }

    /// <summary>ErrorResponse 42501 <c>permission denied to terminate process</c> with PostgreSQL's detail.</summary>
    public static void WriteTerminatePermissionDenied(ref PgWriter w)
    {
        BeginFields(ref w, BackendMessage.ErrorResponse, Error, "42501"u8);
        Field(ref w, (byte)'M', "permission denied to terminate process"u8);
        Field(ref w, (byte)'D', "Only roles with privileges of the role whose process is being terminated or with privileges of the \"pg_signal_backend\" role may terminate this process."u8);
        EndFields(ref w);
    }

    /// <summary>
    /// ErrorResponse 22003 (numeric_value_out_of_range, as signalfuncs.c raises it) <c>"timeout" must not be
    /// negative</c>. PostgreSQL checks the timeout truncated to int32 (see <see cref="PostgresTimeout"/>).
    /// </summary>
    public static void WriteNegativeTimeout(ref PgWriter w)
    {
        BeginFields(ref w, BackendMessage.ErrorResponse, Error, "22003"u8);
        Field(ref w, (byte)'M', "\"timeout\" must not be negative"u8);
        EndFields(ref w);
    }

    /// <summary>
    /// NoticeResponse WARNING 01000 <c>backend with PID 12345 did not terminate within 500 milliseconds</c>
    /// (singular for 1, as errmsg_plural): the wait of <c>pg_terminate_backend(pid, timeout)</c> ran out;
    /// the function then returns false.
    /// </summary>
    public static void WriteTerminateTimeoutWarning(ref PgWriter w, int pid, long timeoutMilliseconds)
    {
        BeginFields(ref w, BackendMessage.NoticeResponse, Warning, "01000"u8);
        w.WriteByte((byte)'M');
        w.WriteBytes("backend with PID "u8);
        WriteDecimal(ref w, pid);
        w.WriteBytes(" did not terminate within "u8);
        WriteDecimal(ref w, timeoutMilliseconds);
        w.WriteCString(timeoutMilliseconds == 1 ? " millisecond"u8 : " milliseconds"u8);
        EndFields(ref w);
    }

    /// <summary>
    /// ErrorResponse FATAL 57P01 <c>terminating connection due to administrator command</c>: what the
    /// target of <c>pg_terminate_backend</c> receives before its connection closes.
    /// </summary>
    public static void WriteTerminatedByAdministrator(ref PgWriter w)
    {
        BeginFields(ref w, BackendMessage.ErrorResponse, Fatal, "57P01"u8);
        Field(ref w, (byte)'M', "terminating connection due to administrator command"u8);
        EndFields(ref w);
    }

    /// <summary>
    /// ErrorResponse 25P02 <c>current transaction is aborted, commands ignored until end of transaction
    /// block</c>: any statement but ROLLBACK in a failed transaction (ReadyForQuery status E).
    /// </summary>
    public static void WriteTransactionAborted(ref PgWriter w)
    {
        BeginFields(ref w, BackendMessage.ErrorResponse, Error, "25P02"u8);
        Field(ref w, (byte)'M', "current transaction is aborted, commands ignored until end of transaction block"u8);
        EndFields(ref w);
    }

    /// <summary>
    /// ErrorResponse 22P02 <c>invalid input syntax for type integer: "abc"</c> (bigint, smallint by
    /// <paramref name="typeOid"/>), as int4in raises it for a text parameter, with the Bind context.
    /// </summary>
    /// <param name="w">The writer; it needs room for twice the value more than <see cref="MaxFixedErrorLength"/>.</param>
    /// <param name="typeOid">The type the text was read as: int2, int4 or int8.</param>
    /// <param name="value">The parameter's text, as bound.</param>
    /// <param name="context">The parameter being bound, or default.</param>
    public static void WriteInvalidIntegerSyntax(ref PgWriter w, int typeOid, scoped ReadOnlySpan<byte> value, scoped BindParameterContext context)
    {
        BeginFields(ref w, BackendMessage.ErrorResponse, Error, "22P02"u8);
        w.WriteByte((byte)'M');
        w.WriteBytes("invalid input syntax for type "u8);
        w.WriteBytes(IntegerTypeName(typeOid));
        w.WriteBytes(": \""u8);
        w.WriteBytes(CString(value));
        w.WriteCString("\""u8);
        WriteContext(ref w, context, value, withValue: true);
        EndFields(ref w);
    }

    /// <summary>
    /// ErrorResponse 22003 <c>value "99999999999" is out of range for type integer</c>, as int4in raises
    /// it for a text parameter, with the Bind context.
    /// </summary>
    public static void WriteValueOutOfRange(ref PgWriter w, int typeOid, scoped ReadOnlySpan<byte> value, scoped BindParameterContext context)
    {
        BeginFields(ref w, BackendMessage.ErrorResponse, Error, "22003"u8);
        w.WriteByte((byte)'M');
        w.WriteBytes("value \""u8);
        w.WriteBytes(CString(value));
        w.WriteBytes("\" is out of range for type "u8);
        w.WriteCString(IntegerTypeName(typeOid));
        WriteContext(ref w, context, value, withValue: true);
        EndFields(ref w);
    }

    /// <summary>
    /// ErrorResponse 22003 <c>integer out of range</c>: an int8 value cast to int4 (int84) does not fit,
    /// e.g. <c>pg_cancel_backend($1::int)</c> with <c>$1</c> declared int8. PostgreSQL raises it while
    /// planning the bound statement, so there is no parameter context.
    /// </summary>
    public static void WriteIntegerOutOfRange(ref PgWriter w)
    {
        BeginFields(ref w, BackendMessage.ErrorResponse, Error, "22003"u8);
        Field(ref w, (byte)'M', "integer out of range"u8);
        EndFields(ref w);
    }

    /// <summary>
    /// ErrorResponse 22021 <c>invalid byte sequence for encoding "UTF8": 0xc3 0x28</c> for a text
    /// parameter that is not valid UTF-8 or holds a NUL byte, naming the bytes of the first bad character as
    /// mbutils.c does, with the Bind context (without the value, which is not yet known to be text).
    /// </summary>
    public static void WriteInvalidByteSequence(ref PgWriter w, scoped ReadOnlySpan<byte> value, scoped BindParameterContext context)
    {
        BeginFields(ref w, BackendMessage.ErrorResponse, Error, "22021"u8);
        w.WriteByte((byte)'M');
        w.WriteBytes("invalid byte sequence for encoding \"UTF8\": "u8);
        ReadOnlySpan<byte> bad = value.Slice(FirstInvalidUtf8(value));
        int count = Math.Min(Math.Min(Utf8SequenceLength(bad.IsEmpty ? (byte)0 : bad[0]), bad.Length), 8);
        for (int k = 0; k < count; k++)
        {
            if (k > 0)
            {
                w.WriteByte((byte)' ');
            }

            w.WriteBytes("0x"u8);
            w.WriteByte(HexDigit(bad[k] >> 4));
            w.WriteByte(HexDigit(bad[k] & 0xF));
        }

        w.WriteByte(0);
        WriteContext(ref w, context, value, withValue: false);
        EndFields(ref w);
    }

    /// <summary>
    /// ErrorResponse 22P03 <c>incorrect binary data format in bind parameter 1</c>: a binary value longer
    /// than its type, with the Bind context.
    /// </summary>
    public static void WriteIncorrectBinaryFormat(ref PgWriter w, scoped BindParameterContext context)
    {
        BeginFields(ref w, BackendMessage.ErrorResponse, Error, "22P03"u8);
        w.WriteByte((byte)'M');
        w.WriteBytes("incorrect binary data format in bind parameter "u8);
        WriteDecimal(ref w, context.ParameterNumber);
        w.WriteByte(0);
        WriteContext(ref w, context, default, withValue: false);
        EndFields(ref w);
    }

    /// <summary>
    /// ErrorResponse 08P01 <c>insufficient data left in message</c>: a binary value shorter than its type,
    /// with the Bind context. PostgreSQL reports it at ERROR level; the session goes on.
    /// </summary>
    public static void WriteInsufficientData(ref PgWriter w, scoped BindParameterContext context)
    {
        BeginFields(ref w, BackendMessage.ErrorResponse, Error, "08P01"u8);
        Field(ref w, (byte)'M', "insufficient data left in message"u8);
        WriteContext(ref w, context, default, withValue: false);
        EndFields(ref w);
    }

    /// <summary>
    /// The error PostgreSQL's Bind raises for a parameter <see cref="InterceptReplies.TryDecodeIntParameter"/> rejected.
    /// Returns false, writing nothing, for results that are not errors (Ok, Null) and for
    /// <see cref="ParamDecodeResult.UnsupportedType"/>, which the server must handle.
    /// </summary>
    public static bool WriteParameterError(ref PgWriter w, ParamDecodeResult result, int typeOid, scoped ReadOnlySpan<byte> value, scoped BindParameterContext context)
    {
        switch (result)
        {
            case ParamDecodeResult.InvalidText:
                WriteInvalidIntegerSyntax(ref w, typeOid, value, context);
                return true;
            case ParamDecodeResult.OutOfRange:
                WriteValueOutOfRange(ref w, typeOid, value, context);
                return true;
            case ParamDecodeResult.InvalidEncoding:
                WriteInvalidByteSequence(ref w, value, context);
                return true;
            case ParamDecodeResult.BinaryTooShort:
                WriteInsufficientData(ref w, context);
                return true;
            case ParamDecodeResult.BinaryTooLong:
                WriteIncorrectBinaryFormat(ref w, context);
                return true;
            default:
                return false;
        }
    }

    /// <summary>
    /// The timeout PostgreSQL actually uses: signalfuncs.c stores the int8 argument in an int, so it is
    /// truncated to 32 bits before the sign check and the wait (-4294967296 is 0, 4294967295 is -1).
    /// </summary>
    public static int PostgresTimeout(long timeoutMilliseconds) => unchecked((int)timeoutMilliseconds);

    /// <summary>The SQL name of an integer type in PostgreSQL's messages: smallint, integer or bigint.</summary>
    public static ReadOnlySpan<byte> IntegerTypeName(int typeOid) => typeOid switch
    {
        TypeOids.Int2 => "smallint"u8,
        TypeOids.Int4 => "integer"u8,
        _ => "bigint"u8,
    };

    private static void BeginFields(ref PgWriter w, BackendMessage type, ReadOnlySpan<byte> severity, ReadOnlySpan<byte> sqlState)
    {
        w.BeginMessage((byte)type);
        Field(ref w, (byte)'S', severity);
        Field(ref w, (byte)'V', severity);
        Field(ref w, (byte)'C', sqlState);
    }

    private static void EndFields(ref PgWriter w)
    {
        w.WriteByte(0);
        w.EndMessage();
    }

    private static void Field(ref PgWriter w, byte code, scoped ReadOnlySpan<byte> value)
    {
        w.WriteByte(code);
        w.WriteCString(value);
    }

    /// <summary>
    /// The W field of a Bind parameter error: <c>unnamed portal parameter $n</c> or
    /// <c>portal "name" parameter $n</c>, followed for a text value by <c> = 'quoted value'</c>.
    /// </summary>
    private static void WriteContext(ref PgWriter w, scoped BindParameterContext context, scoped ReadOnlySpan<byte> value, bool withValue)
    {
        if (!context.IsPresent)
        {
            return;
        }

        w.WriteByte((byte)'W');
        if (context.PortalName.IsEmpty)
        {
            w.WriteBytes("unnamed portal parameter $"u8);
        }
        else
        {
            w.WriteBytes("portal \""u8);
            w.WriteBytes(CString(context.PortalName));
            w.WriteBytes("\" parameter $"u8);
        }

        WriteDecimal(ref w, context.ParameterNumber);
        if (withValue)
        {
            w.WriteBytes(" = "u8);
            WriteQuoted(ref w, CString(value), context.LogParameterMaxLengthOnError);
        }

        w.WriteByte(0);
    }

    /// <summary>
    /// A value in single quotes with quotes doubled, cut to at most <paramref name="maxLength"/> bytes at a
    /// character boundary and then marked with an ellipsis inside the closing quote
    /// (stringinfo.c appendStringInfoStringQuoted): <c>'...'</c> for the default of 0.
    /// </summary>
    private static void WriteQuoted(ref PgWriter w, scoped ReadOnlySpan<byte> value, int maxLength)
    {
        bool ellipsis = false;
        if (maxLength >= 0 && maxLength < value.Length)
        {
            value = value.Slice(0, ClipToCharacter(value, maxLength));
            ellipsis = true;
        }

        w.WriteByte((byte)'\'');
        while (true)
        {
            int quote = value.IndexOf((byte)'\'');
            if (quote < 0)
            {
                break;
            }

            w.WriteBytes(value.Slice(0, quote + 1));
            w.WriteByte((byte)'\'');
            value = value.Slice(quote + 1);
        }

        w.WriteBytes(value);
        w.WriteBytes(ellipsis ? "...'"u8 : "'"u8);
    }

    /// <summary>The longest prefix of whole UTF-8 characters that fits in <paramref name="limit"/> bytes (pg_mbcliplen).</summary>
    private static int ClipToCharacter(ReadOnlySpan<byte> value, int limit)
    {
        int length = 0;
        while (length < value.Length)
        {
            int next = length + Utf8SequenceLength(value[length]);
            if (next > limit)
            {
                break;
            }

            length = next;
        }

        return Math.Min(length, value.Length);
    }

    /// <summary>The length UTF-8 announces with a lead byte, 1 for bytes that cannot lead (pg_utf_mblen).</summary>
    private static int Utf8SequenceLength(byte lead)
    {
        if (lead < 0x80)
        {
            return 1;
        }

        if ((lead & 0xE0) == 0xC0)
        {
            return 2;
        }

        if ((lead & 0xF0) == 0xE0)
        {
            return 3;
        }

        return (lead & 0xF8) == 0xF0 ? 4 : 1;
    }

    /// <summary>The offset of the first character PostgreSQL's UTF-8 check rejects: a NUL byte or an ill-formed sequence.</summary>
    private static int FirstInvalidUtf8(ReadOnlySpan<byte> value)
    {
        int offset = 0;
        while (offset < value.Length)
        {
            if (value[offset] == 0
                || Rune.DecodeFromUtf8(value.Slice(offset), out _, out int consumed) != System.Buffers.OperationStatus.Done)
            {
                return offset;
            }

            offset += consumed;
        }

        return offset;
    }

    /// <summary>The part of a value a C string holds: up to its first NUL byte.</summary>
    private static ReadOnlySpan<byte> CString(ReadOnlySpan<byte> value)
    {
        int nul = value.IndexOf((byte)0);
        return nul < 0 ? value : value.Slice(0, nul);
    }

    private static void WriteDecimal(ref PgWriter w, long value)
    {
        Span<byte> digits = stackalloc byte[20]; // "-9223372036854775808"
        bool formatted = Utf8Formatter.TryFormat(value, digits, out int length);
        Debug.Assert(formatted, "an int64 fits in 20 bytes");
        w.WriteBytes(digits.Slice(0, length));
    }

    private static byte HexDigit(int nibble) => (byte)(nibble < 10 ? '0' + nibble : 'a' + nibble - 10);
}
