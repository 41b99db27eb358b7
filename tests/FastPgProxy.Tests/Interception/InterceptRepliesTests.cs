using System.Buffers.Binary;
using System.Text;
using FastPgProxy.Interception;
using FastPgProxy.Protocol;
using Xunit;

namespace FastPgProxy.Tests.Interception;

/// <summary>
/// The reply builders against the bytes PostgreSQL sends (captured from PostgreSQL 15 over a raw socket,
/// F/L/R fields removed; the permission errors follow PostgreSQL 16+'s signalfuncs.c).
/// </summary>
public class InterceptRepliesTests
{
    internal delegate void WriteReply(ref PgWriter w);

    [Fact]
    public void Row_description_of_pg_backend_pid_in_text_and_binary()
    {
        Assert.Equal(
            Message('T', "0001" + Hex("pg_backend_pid") + "00" + "00000000" + "0000" + "00000017" + "0004" + "ffffffff" + "0000"),
            Build((ref PgWriter w) => InterceptReplies.WriteRowDescription(ref w, "pg_backend_pid", TypeOids.Int4, 0)));
        Assert.Equal(
            Message('T', "000170675f6261636b656e645f70696400000000000000000000170004ffffffff0001"),
            Build((ref PgWriter w) => InterceptReplies.WriteRowDescription(ref w, "pg_backend_pid"u8, TypeOids.Int4, 1)));
    }

    [Fact]
    public void Row_description_of_a_bool_column_with_an_alias()
    {
        Assert.Equal(
            Message('T', "000170675f63616e63656c5f6261636b656e6400000000000000000000100001ffffffff0000"),
            Build((ref PgWriter w) => InterceptReplies.WriteRowDescription(ref w, "pg_cancel_backend", TypeOids.Bool, 0)));
        Assert.Equal(
            Message('T', "0001" + Hex("Who") + "00" + "00000000" + "0000" + "00000010" + "0001" + "ffffffff" + "0001"),
            Build((ref PgWriter w) => InterceptReplies.WriteRowDescription(ref w, "Who", TypeOids.Bool, 1)));
        Assert.Equal(
            Message('T', "0001" + Hex("Ä\"b") + "00" + "00000000" + "0000" + "00000010" + "0001" + "ffffffff" + "0000"),
            Build((ref PgWriter w) => InterceptReplies.WriteRowDescription(ref w, "Ä\"b", TypeOids.Bool, 0)));
    }

    [Fact]
    public void Row_description_rejects_types_it_does_not_know()
    {
        byte[] buffer = new byte[256];
        Assert.Throws<ArgumentOutOfRangeException>(() =>
        {
            var w = new PgWriter(buffer);
            InterceptReplies.WriteRowDescription(ref w, "x"u8, TypeOids.Text, 0);
        });
    }

    [Theory]
    [InlineData(26206, "0001000000053236323036")]
    [InlineData(0, "00010000000130")]
    [InlineData(-1, "0001000000022d31")]
    [InlineData(int.MaxValue, "00010000000a32313437343833363437")]
    [InlineData(int.MinValue, "00010000000b2d32313437343833363438")]
    public void Data_row_int4_text(int value, string bodyHex)
        => Assert.Equal(Message('D', bodyHex), Build((ref PgWriter w) => InterceptReplies.WriteDataRowInt4(ref w, value, 0)));

    [Theory]
    [InlineData(26664, "00010000000400006828")]
    [InlineData(-2, "000100000004fffffffe")]
    public void Data_row_int4_binary(int value, string bodyHex)
        => Assert.Equal(Message('D', bodyHex), Build((ref PgWriter w) => InterceptReplies.WriteDataRowInt4(ref w, value, 1)));

    [Fact]
    public void Data_row_bool_and_null()
    {
        Assert.Equal(Message('D', "00010000000166"), Build((ref PgWriter w) => InterceptReplies.WriteDataRowBool(ref w, false, 0)));
        Assert.Equal(Message('D', "00010000000174"), Build((ref PgWriter w) => InterceptReplies.WriteDataRowBool(ref w, true, 0)));
        Assert.Equal(Message('D', "00010000000100"), Build((ref PgWriter w) => InterceptReplies.WriteDataRowBool(ref w, false, 1)));
        Assert.Equal(Message('D', "00010000000101"), Build((ref PgWriter w) => InterceptReplies.WriteDataRowBool(ref w, true, 1)));
        Assert.Equal(Message('D', "0001ffffffff"), Build((ref PgWriter w) => InterceptReplies.WriteDataRowNull(ref w)));
    }

    [Fact]
    public void Command_complete_and_the_extended_protocol_acknowledgements()
    {
        Assert.Equal(Message('C', "53454c454354203100"), Build((ref PgWriter w) => InterceptReplies.WriteCommandComplete(ref w, InterceptReplies.SelectOneTag)));
        Assert.Equal(Message('t', "00020000001700000014"), Build((ref PgWriter w) => InterceptReplies.WriteParameterDescription(ref w, [TypeOids.Int4, TypeOids.Int8])));
        Assert.Equal(Message('t', "0000"), Build((ref PgWriter w) => InterceptReplies.WriteParameterDescription(ref w, [])));
        Assert.Equal(Message('1', ""), Build((ref PgWriter w) => InterceptReplies.WriteParseComplete(ref w)));
        Assert.Equal(Message('2', ""), Build((ref PgWriter w) => InterceptReplies.WriteBindComplete(ref w)));
        Assert.Equal(Message('3', ""), Build((ref PgWriter w) => InterceptReplies.WriteCloseComplete(ref w)));
        Assert.Equal(Message('n', ""), Build((ref PgWriter w) => InterceptReplies.WriteNoData(ref w)));
    }

    [Fact]
    public void Not_a_backend_warning()
    {
        Assert.Equal(
            Message('N', "535741524e494e4700565741524e494e4700433031303030004d504944203132333435206973206e6f74206120506f737467726553514c206261636b656e642070726f636573730000"),
            Build((ref PgWriter w) => InterceptErrors.WriteNotBackendProcessWarning(ref w, 12345)));
        Assert.Equal(
            Notice('N', "WARNING", "01000", "PID -1 is not a PostgreSQL backend process"),
            Build((ref PgWriter w) => InterceptErrors.WriteNotBackendProcessWarning(ref w, -1)));
    }

    [Fact]
    public void Permission_errors_carry_postgres_16_wording_and_detail()
    {
        Assert.Equal(
            Notice('E', "ERROR", "42501", "permission denied to cancel query",
                ('D', "Only roles with privileges of the role whose query is being canceled or with privileges of the \"pg_signal_backend\" role may cancel this query.")),
            Build((ref PgWriter w) => InterceptErrors.WriteCancelPermissionDenied(ref w)));
        Assert.Equal(
            Notice('E', "ERROR", "42501", "permission denied to terminate process",
                ('D', "Only roles with privileges of the role whose process is being terminated or with privileges of the \"pg_signal_backend\" role may terminate this process.")),
            Build((ref PgWriter w) => InterceptErrors.WriteTerminatePermissionDenied(ref w)));
    }

    [Fact]
    public void Terminate_errors_and_warnings()
    {
        Assert.Equal(
            Message('E', "534552524f5200564552524f5200433232303033004d2274696d656f757422206d757374206e6f74206265206e656761746976650000"),
            Build((ref PgWriter w) => InterceptErrors.WriteNegativeTimeout(ref w)));
        Assert.Equal(
            Notice('N', "WARNING", "01000", "backend with PID 12345 did not terminate within 500 milliseconds"),
            Build((ref PgWriter w) => InterceptErrors.WriteTerminateTimeoutWarning(ref w, 12345, 500)));
        Assert.Equal(
            Notice('N', "WARNING", "01000", "backend with PID 7 did not terminate within 1 millisecond"),
            Build((ref PgWriter w) => InterceptErrors.WriteTerminateTimeoutWarning(ref w, 7, 1)));
        Assert.Equal(
            Notice('E', "FATAL", "57P01", "terminating connection due to administrator command"),
            Build((ref PgWriter w) => InterceptErrors.WriteTerminatedByAdministrator(ref w)));
        Assert.Equal(
            Notice('E', "ERROR", "25P02", "current transaction is aborted, commands ignored until end of transaction block"),
            Build((ref PgWriter w) => InterceptErrors.WriteTransactionAborted(ref w)));
        Assert.Equal(
            Notice('E', "ERROR", "22003", "integer out of range"),
            Build((ref PgWriter w) => InterceptErrors.WriteIntegerOutOfRange(ref w)));
    }

    [Fact]
    public void Postgres_truncates_the_timeout_to_32_bits()
    {
        Assert.Equal(500, InterceptErrors.PostgresTimeout(500));
        Assert.Equal(0, InterceptErrors.PostgresTimeout(-4294967296));
        Assert.Equal(-1, InterceptErrors.PostgresTimeout(4294967295));
    }

    [Fact]
    public void Bind_parameter_errors_match_postgres_with_their_context()
    {
        // Captured: Parse "select pg_cancel_backend($1)", Bind 'abc' in text to the unnamed portal.
        Assert.Equal(
            Message('E', "534552524f5200564552524f5200433232503032004d696e76616c696420696e7075742073796e74617820666f72207479706520696e74656765723a2022616263220057756e6e616d656420706f7274616c20706172616d65746572202431203d20272e2e2e270000"),
            Build((ref PgWriter w) => InterceptErrors.WriteInvalidIntegerSyntax(ref w, TypeOids.Int4, "abc"u8, new BindParameterContext(default, 1))));
        Assert.Equal(
            Notice('E', "ERROR", "22003", "value \"99999999999\" is out of range for type integer", ('W', "unnamed portal parameter $1 = '...'")),
            Build((ref PgWriter w) => InterceptErrors.WriteValueOutOfRange(ref w, TypeOids.Int4, "99999999999"u8, new BindParameterContext(default, 1))));
        Assert.Equal(
            Notice('E', "ERROR", "22P02", "invalid input syntax for type bigint: \"x\"", ('W', "unnamed portal parameter $2 = '...'")),
            Build((ref PgWriter w) => InterceptErrors.WriteInvalidIntegerSyntax(ref w, TypeOids.Int8, "x"u8, new BindParameterContext(default, 2))));
        Assert.Equal(
            Notice('E', "ERROR", "22P02", "invalid input syntax for type integer: \"\"", ('W', "unnamed portal parameter $1 = ''")),
            Build((ref PgWriter w) => InterceptErrors.WriteInvalidIntegerSyntax(ref w, TypeOids.Int4, ""u8, new BindParameterContext(default, 1))));
        Assert.Equal(
            Notice('E', "ERROR", "22P03", "incorrect binary data format in bind parameter 1", ('W', "unnamed portal parameter $1")),
            Build((ref PgWriter w) => InterceptErrors.WriteIncorrectBinaryFormat(ref w, new BindParameterContext(default, 1))));
        Assert.Equal(
            Notice('E', "ERROR", "08P01", "insufficient data left in message", ('W', "unnamed portal parameter $1")),
            Build((ref PgWriter w) => InterceptErrors.WriteInsufficientData(ref w, new BindParameterContext(default, 1))));
    }

    [Fact]
    public void Bind_context_names_the_portal_and_quotes_as_much_of_the_value_as_configured()
    {
        Assert.Equal(
            Notice('E', "ERROR", "22P02", "invalid input syntax for type smallint: \"a'b\"", ('W', "portal \"p1\" parameter $3 = '...'")),
            Build((ref PgWriter w) => InterceptErrors.WriteInvalidIntegerSyntax(ref w, TypeOids.Int2, "a'b"u8, new BindParameterContext("p1"u8, 3))));
        Assert.Equal(
            Notice('E', "ERROR", "22P02", "invalid input syntax for type integer: \"a'b\"", ('W', "unnamed portal parameter $1 = 'a''b'")),
            Build((ref PgWriter w) => InterceptErrors.WriteInvalidIntegerSyntax(ref w, TypeOids.Int4, "a'b"u8, new BindParameterContext(default, 1, -1))));
        Assert.Equal(
            Notice('E', "ERROR", "22P02", "invalid input syntax for type integer: \"a'bc\"", ('W', "unnamed portal parameter $1 = 'a''...'")),
            Build((ref PgWriter w) => InterceptErrors.WriteInvalidIntegerSyntax(ref w, TypeOids.Int4, "a'bc"u8, new BindParameterContext(default, 1, 2))));

        // Cut at a character boundary: "éé" is 4 bytes, 3 allowed keep one character.
        Assert.Equal(
            Notice('E', "ERROR", "22P02", "invalid input syntax for type integer: \"éé\"", ('W', "unnamed portal parameter $1 = 'é...'")),
            Build((ref PgWriter w) => InterceptErrors.WriteInvalidIntegerSyntax(ref w, TypeOids.Int4, "éé"u8, new BindParameterContext(default, 1, 3))));

        // Without a context (the value came from elsewhere) there is no W field.
        Assert.Equal(
            Notice('E', "ERROR", "22P02", "invalid input syntax for type integer: \"z\""),
            Build((ref PgWriter w) => InterceptErrors.WriteInvalidIntegerSyntax(ref w, TypeOids.Int4, "z"u8, default)));
    }

    [Fact]
    public void Invalid_byte_sequences_name_the_first_bad_character()
    {
        Assert.Equal(
            Notice('E', "ERROR", "22021", "invalid byte sequence for encoding \"UTF8\": 0x00", ('W', "unnamed portal parameter $1")),
            Build((ref PgWriter w) => InterceptErrors.WriteInvalidByteSequence(ref w, "1\u00002"u8, new BindParameterContext(default, 1))));
        Assert.Equal(
            Notice('E', "ERROR", "22021", "invalid byte sequence for encoding \"UTF8\": 0xc3 0x28", ('W', "unnamed portal parameter $1")),
            Build((ref PgWriter w) => InterceptErrors.WriteInvalidByteSequence(ref w, [(byte)'1', 0xC3, 0x28], new BindParameterContext(default, 1))));
        Assert.Equal(
            Notice('E', "ERROR", "22021", "invalid byte sequence for encoding \"UTF8\": 0xe2 0x82", ('W', "unnamed portal parameter $1")),
            Build((ref PgWriter w) => InterceptErrors.WriteInvalidByteSequence(ref w, [0xE2, 0x82], new BindParameterContext(default, 1))));
        Assert.Equal(
            Notice('E', "ERROR", "22021", "invalid byte sequence for encoding \"UTF8\": 0xff", ('W', "unnamed portal parameter $1")),
            Build((ref PgWriter w) => InterceptErrors.WriteInvalidByteSequence(ref w, [(byte)'5', 0xFF, (byte)'5'], new BindParameterContext(default, 1))));
        Assert.Equal(
            Notice('E', "ERROR", "22021", "invalid byte sequence for encoding \"UTF8\": 0xed 0xa0 0x80", ('W', "unnamed portal parameter $1")),
            Build((ref PgWriter w) => InterceptErrors.WriteInvalidByteSequence(ref w, [0xED, 0xA0, 0x80], new BindParameterContext(default, 1))));
    }

    [Fact]
    public void Parameter_error_dispatches_on_the_decode_result()
    {
        byte[] buffer = new byte[512];
        foreach (ParamDecodeResult result in Enum.GetValues<ParamDecodeResult>())
        {
            var w = new PgWriter(buffer);
            bool written = InterceptErrors.WriteParameterError(ref w, result, TypeOids.Int4, "abc"u8, new BindParameterContext(default, 1));
            bool isError = result is not (ParamDecodeResult.Ok or ParamDecodeResult.Null or ParamDecodeResult.UnsupportedType);
            Assert.Equal(isError, written);
            Assert.Equal(isError, w.Position > 0);
        }
    }

    [Fact]
    public void Fixed_replies_fit_their_documented_bounds()
    {
        WriteReply[] fixedErrors =
        [
            (ref PgWriter w) => InterceptErrors.WriteCancelPermissionDenied(ref w),
            (ref PgWriter w) => InterceptErrors.WriteTerminatePermissionDenied(ref w),
            (ref PgWriter w) => InterceptErrors.WriteNegativeTimeout(ref w),
            (ref PgWriter w) => InterceptErrors.WriteTerminatedByAdministrator(ref w),
            (ref PgWriter w) => InterceptErrors.WriteTransactionAborted(ref w),
            (ref PgWriter w) => InterceptErrors.WriteNotBackendProcessWarning(ref w, int.MinValue),
            (ref PgWriter w) => InterceptErrors.WriteTerminateTimeoutWarning(ref w, int.MinValue, long.MaxValue),
        ];
        foreach (WriteReply write in fixedErrors)
        {
            Assert.InRange(Build(write).Length, 1, InterceptErrors.MaxFixedErrorLength);
        }

        string longest = new('x', QueryScanner.MaxIdentifierLength);
        Assert.Equal(InterceptReplies.MaxRowMessageLength, Build((ref PgWriter w) => InterceptReplies.WriteRowDescription(ref w, longest, TypeOids.Int4, 0)).Length);
    }

    [Fact]
    public void Writing_replies_allocates_nothing()
    {
        byte[] buffer = new byte[4096];
        WriteAll(buffer);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int round = 0; round < 100; round++)
        {
            WriteAll(buffer);
        }

        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);

        static void WriteAll(byte[] buffer)
        {
            var w = new PgWriter(buffer);
            InterceptReplies.WriteRowDescription(ref w, "pg_backend_pid"u8, TypeOids.Int4, 0);
            InterceptReplies.WriteRowDescription(ref w, "pg_backend_pid", TypeOids.Int4, 0);
            InterceptReplies.WriteDataRowInt4(ref w, 123456, 0);
            InterceptReplies.WriteDataRowBool(ref w, true, 0);
            InterceptReplies.WriteCommandComplete(ref w, InterceptReplies.SelectOneTag);
            InterceptErrors.WriteNotBackendProcessWarning(ref w, 42);
            InterceptErrors.WriteTerminateTimeoutWarning(ref w, 42, 500);
            InterceptErrors.WriteCancelPermissionDenied(ref w);
            InterceptErrors.WriteInvalidIntegerSyntax(ref w, TypeOids.Int4, "abc"u8, new BindParameterContext("p"u8, 1, -1));
            InterceptErrors.WriteInvalidByteSequence(ref w, [0xC3, 0x28], new BindParameterContext(default, 1));
            _ = InterceptReplies.TryDecodeIntParameter(" 0x_1F "u8, false, 0, TypeOids.Int4, out _);
        }
    }

    internal static byte[] Build(WriteReply write)
    {
        byte[] buffer = new byte[4096];
        var w = new PgWriter(buffer);
        write(ref w);
        return buffer.AsSpan(0, w.Position).ToArray();
    }

    /// <summary>A typed message: the type byte, the length word and the body given in hex.</summary>
    internal static byte[] Message(char type, string bodyHex)
    {
        byte[] body = Convert.FromHexString(bodyHex);
        byte[] message = new byte[1 + 4 + body.Length];
        message[0] = (byte)type;
        BinaryPrimitives.WriteInt32BigEndian(message.AsSpan(1), 4 + body.Length);
        body.CopyTo(message, 5);
        return message;
    }

    /// <summary>NoticeResponse or ErrorResponse with S, V, C, M and then the given fields, in that order.</summary>
    internal static byte[] Notice(char type, string severity, string sqlState, string message, params (char Code, string Value)[] fields)
    {
        var body = new StringBuilder();
        body.Append(Field('S', severity)).Append(Field('V', severity)).Append(Field('C', sqlState)).Append(Field('M', message));
        foreach ((char code, string value) in fields)
        {
            body.Append(Field(code, value));
        }

        return Message(type, body.Append("00").ToString());

        static string Field(char code, string value) => Hex(code.ToString()) + Hex(value) + "00";
    }

    internal static string Hex(string text) => Convert.ToHexString(Encoding.UTF8.GetBytes(text));
}
