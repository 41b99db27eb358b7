using System.Buffers.Binary;
using System.Text;
using FastPgProxy.Interception;
using FastPgProxy.Protocol;
using FastPgProxy.Tests.Infrastructure;
using Xunit;
using static FastPgProxy.Tests.Interception.InterceptRepliesTests;
using static FastPgProxy.Tests.Interception.RawPostgresSession;

namespace FastPgProxy.Tests.Interception;

/// <summary>
/// The reply builders and the scanner's column names against what the PostgreSQL the fixture starts
/// really sends over a raw socket. NoticeResponse and ErrorResponse are compared without PostgreSQL's
/// F/L/R (source location) fields, which the proxy does not send.
/// </summary>
/// <remarks>
/// Only pids that cannot belong to a server process are signalled (negative, zero, above Linux's
/// largest pid_max), so the shared server is never disturbed, except in the test that terminates its
/// own second session.
/// </remarks>
[Collection(PostgresCollection.Name)]
public sealed class PostgresReplyTests(PostgresFixture fixture)
{
    private const int LargestLinuxPid = 4_194_304;

    private readonly PostgresServer _pg = fixture.Server;

    [Fact]
    public async Task Simple_query_pg_backend_pid_matches_byte_for_byte()
    {
        using RawPostgresSession session = await ConnectAsync(_pg);
        List<byte[]> reply = await session.QueryAsync("SELECT pg_backend_pid()");

        Assert.Equal(4, reply.Count);
        Assert.Equal(Build((ref PgWriter w) => InterceptReplies.WriteRowDescription(ref w, "pg_backend_pid", TypeOids.Int4, 0)), reply[0]);
        int pid = session.ProcessId;
        Assert.Equal(Build((ref PgWriter w) => InterceptReplies.WriteDataRowInt4(ref w, pid, 0)), reply[1]);
        Assert.Equal(Build((ref PgWriter w) => InterceptReplies.WriteCommandComplete(ref w, InterceptReplies.SelectOneTag)), reply[2]);
    }

    [Fact]
    public async Task Cancel_of_a_pid_that_is_no_backend_warns_and_returns_false()
    {
        using RawPostgresSession session = await ConnectAsync(_pg);
        List<byte[]> reply = await session.QueryAsync("select pg_cancel_backend(-1) AS \"Who\"");

        Assert.Equal(5, reply.Count);
        Assert.Equal(Build((ref PgWriter w) => InterceptReplies.WriteRowDescription(ref w, "Who", TypeOids.Bool, 0)), reply[0]);
        Assert.Equal(Build((ref PgWriter w) => InterceptErrors.WriteNotBackendProcessWarning(ref w, -1)), WithoutSourceLocation(reply[1]));
        Assert.Equal(Build((ref PgWriter w) => InterceptReplies.WriteDataRowBool(ref w, false, 0)), reply[2]);
        Assert.Equal(Build((ref PgWriter w) => InterceptReplies.WriteCommandComplete(ref w, InterceptReplies.SelectOneTag)), reply[3]);
    }

    [Fact]
    public async Task Terminate_with_null_returns_a_null_row()
    {
        using RawPostgresSession session = await ConnectAsync(_pg);
        List<byte[]> reply = await session.QueryAsync("select pg_terminate_backend(null)");

        Assert.Equal(Build((ref PgWriter w) => InterceptReplies.WriteRowDescription(ref w, "pg_terminate_backend", TypeOids.Bool, 0)), reply[0]);
        Assert.Equal(Build((ref PgWriter w) => InterceptReplies.WriteDataRowNull(ref w)), reply[1]);
    }

    [Fact]
    public async Task Negative_timeout_fails_after_the_row_description()
    {
        using RawPostgresSession session = await ConnectAsync(_pg);
        List<byte[]> reply = await session.QueryAsync("select pg_terminate_backend(-1, -1)");

        Assert.Equal(3, reply.Count);
        Assert.Equal((byte)'T', reply[0][0]);
        Assert.Equal(Build((ref PgWriter w) => InterceptErrors.WriteNegativeTimeout(ref w)), WithoutSourceLocation(reply[1]));
    }

    [Fact]
    public async Task Statement_in_a_failed_transaction_is_refused_the_same_way()
    {
        using RawPostgresSession session = await ConnectAsync(_pg);
        await session.QueryAsync("begin");
        await session.QueryAsync("select 1/0");
        List<byte[]> reply = await session.QueryAsync("select pg_backend_pid()");

        Assert.Equal(2, reply.Count);
        Assert.Equal(Build((ref PgWriter w) => InterceptErrors.WriteTransactionAborted(ref w)), WithoutSourceLocation(reply[0]));
        Assert.Equal(Build((ref PgWriter w) => w.WriteReadyForQuery(TransactionStatus.Failed)), reply[1]);
    }

    [Fact]
    public async Task Terminated_session_receives_the_same_fatal_error()
    {
        using RawPostgresSession victim = await ConnectAsync(_pg);
        using RawPostgresSession killer = await ConnectAsync(_pg);
        await killer.QueryAsync($"select pg_terminate_backend({victim.ProcessId})");

        byte[]? fatal = await victim.ReadMessageAsync();
        Assert.NotNull(fatal);
        Assert.Equal(Build((ref PgWriter w) => InterceptErrors.WriteTerminatedByAdministrator(ref w)), WithoutSourceLocation(fatal));
        Assert.Null(await victim.ReadMessageAsync());
    }

    [Fact]
    public async Task Extended_protocol_descriptions_and_binary_results_match()
    {
        using RawPostgresSession session = await ConnectAsync(_pg);
        await session.SendAsync(
            Parse("select pg_terminate_backend($1, $2)"),
            Describe('S', ""),
            Bind("", 1, [Int32(-1), [0, 0, 0, 0, 0, 0, 0, 5]], 1),
            Describe('P', ""),
            Execute(""),
            Sync());
        List<byte[]> reply = await session.ReadMessagesUntilReadyAsync();

        Assert.Equal(
            [
                Build((ref PgWriter w) => InterceptReplies.WriteParseComplete(ref w)),
                Build((ref PgWriter w) => InterceptReplies.WriteParameterDescription(ref w, [TypeOids.Int4, TypeOids.Int8])),
                Build((ref PgWriter w) => InterceptReplies.WriteRowDescription(ref w, "pg_terminate_backend", TypeOids.Bool, 0)),
                Build((ref PgWriter w) => InterceptReplies.WriteBindComplete(ref w)),
                Build((ref PgWriter w) => InterceptReplies.WriteRowDescription(ref w, "pg_terminate_backend", TypeOids.Bool, 1)),
                Build((ref PgWriter w) => InterceptErrors.WriteNotBackendProcessWarning(ref w, -1)),
                Build((ref PgWriter w) => InterceptReplies.WriteDataRowBool(ref w, false, 1)),
                Build((ref PgWriter w) => InterceptReplies.WriteCommandComplete(ref w, InterceptReplies.SelectOneTag)),
                Build((ref PgWriter w) => w.WriteReadyForQuery(TransactionStatus.Idle)),
            ],
            reply.Select(m => m[0] is (byte)'N' or (byte)'E' ? WithoutSourceLocation(m) : m).ToList());
    }

    [Fact]
    public async Task Binary_pg_backend_pid_matches()
    {
        using RawPostgresSession session = await ConnectAsync(_pg);
        await session.SendAsync(Parse("select pg_backend_pid()"), Bind("", 0, [], 1), Describe('P', ""), Execute(""), Sync());
        List<byte[]> reply = await session.ReadMessagesUntilReadyAsync();

        int pid = session.ProcessId;
        Assert.Equal(Build((ref PgWriter w) => InterceptReplies.WriteRowDescription(ref w, "pg_backend_pid", TypeOids.Int4, 1)), reply[2]);
        Assert.Equal(Build((ref PgWriter w) => InterceptReplies.WriteDataRowInt4(ref w, pid, 1)), reply[3]);
    }

    public static TheoryData<string, string, int, int> BindFailures => new()
    {
        // SQL, parameter text (hex), parameter format, parameter number.
        { "select pg_cancel_backend($1)", Convert.ToHexString("abc"u8), 0, 1 },
        { "select pg_cancel_backend($1)", Convert.ToHexString(""u8), 0, 1 },
        { "select pg_cancel_backend($1)", Convert.ToHexString("a'b"u8), 0, 1 },
        { "select pg_cancel_backend($1)", Convert.ToHexString("99999999999"u8), 0, 1 },
        { "select pg_cancel_backend($1)", Convert.ToHexString(" 99999999999x"u8), 0, 1 },
        { "select pg_cancel_backend($1)", "31c328", 0, 1 },
        { "select pg_cancel_backend($1)", "310032", 0, 1 },
        { "select pg_cancel_backend($1)", "e282", 0, 1 },
        { "select pg_cancel_backend($1)", "0000000000003039", 1, 1 },
        { "select pg_cancel_backend($1)", "0001", 1, 1 },
        { "select pg_terminate_backend(-1, $1)", Convert.ToHexString("x"u8), 0, 1 },
        { "select pg_terminate_backend(-1, $1)", Convert.ToHexString("9223372036854775808"u8), 0, 1 },
    };

    [Theory]
    [MemberData(nameof(BindFailures))]
    public async Task Bind_parameter_errors_match(string sql, string valueHex, int format, int parameterNumber)
    {
        byte[] value = Convert.FromHexString(valueHex);
        Assert.True(QueryScanner.TryMatch(Encoding.UTF8.GetBytes(sql), out InterceptedCall call));
        int typeOid = call.Function == InterceptedFunction.TerminateBackend ? TypeOids.Int8 : TypeOids.Int4;
        ParamDecodeResult result = InterceptReplies.TryDecodeIntParameter(value, false, (short)format, typeOid, out _);

        using RawPostgresSession session = await ConnectAsync(_pg);
        await session.SendAsync(Parse(sql), Bind("", (short)format, [value], 0), Execute(""), Sync());
        List<byte[]> reply = await session.ReadMessagesUntilReadyAsync();

        Assert.Equal(3, reply.Count);
        Assert.Equal((byte)'1', reply[0][0]);
        byte[] expected = Build((ref PgWriter w) =>
            Assert.True(InterceptErrors.WriteParameterError(ref w, result, typeOid, value, new BindParameterContext(default, parameterNumber))));
        Assert.Equal(Encoding.UTF8.GetString(expected), Encoding.UTF8.GetString(WithoutSourceLocation(reply[1])));
        Assert.Equal(expected, WithoutSourceLocation(reply[1]));
    }

    /// <summary>
    /// Statement, declared parameter types, and the ParameterDescription the proxy resolves ("-" when it
    /// leaves the statement to the server).
    /// </summary>
    public static TheoryData<string, string, string> ParameterTypeCases => new()
    {
        { "select pg_cancel_backend($1)", "", "23" },
        { "select pg_cancel_backend($1)", "23", "23" },
        { "select pg_cancel_backend($1)", "21", "21" },
        { "select pg_cancel_backend($1)", "705", "23" },
        { "select pg_cancel_backend($1)", "20", "-" },
        { "select pg_cancel_backend($1)", "25", "-" },
        { "select pg_cancel_backend($1)", "23,25", "23,25" },
        { "select pg_cancel_backend($1)", "0,0", "-" },
        { "select pg_cancel_backend($2)", "", "-" },
        { "select pg_cancel_backend($2)", "21", "21,23" },
        { "select pg_cancel_backend($1::int)", "", "23" },
        { "select pg_cancel_backend($1::int)", "20", "20" },
        { "select pg_cancel_backend($1::bigint)", "", "-" },
        { "select pg_cancel_backend(null::bigint)", "", "-" },
        { "select pg_cancel_backend(2147483648)", "", "-" },
        { "select pg_cancel_backend(-2147483648)", "", "" },
        { "select pg_terminate_backend($1, $2)", "", "23,20" },
        { "select pg_terminate_backend($1, $2)", "0,23", "23,23" },
        { "select pg_terminate_backend($1, $2)", "0,25", "-" },
        { "select pg_terminate_backend($1, $1)", "", "-" },
        { "select pg_terminate_backend($1, $1)", "23", "23" },
        { "select pg_terminate_backend($1, $1)", "20", "-" },
        { "select pg_terminate_backend($1, $1::int)", "", "23" },
        { "select pg_terminate_backend($1::int, $1)", "", "23" },
        { "select pg_terminate_backend($1::int8, $1)", "", "-" },
        { "select pg_terminate_backend($1, $1::bigint)", "", "-" },
        { "select pg_terminate_backend(null, $1)", "", "20" },
        { "select pg_terminate_backend(null::int, null::int)", "", "" },
        { "select pg_cancel_backend(null::int8)", "", "-" },
        { "select pg_cancel_backend($1::int4)", "21", "21" },
        { "select pg_cancel_backend($1::int4)", "705", "23" },
        { "select pg_terminate_backend($2, $1)", "", "20,23" },
        { "select pg_terminate_backend($1::int8, 5)", "", "-" },
        { "select pg_terminate_backend(-1, $1::int)", "20", "20" },
        { "select pg_terminate_backend(-1, $1::int)", "", "23" },
        { "select pg_terminate_backend(-1, 99999999999)", "", "" },
        { "select pg_backend_pid()", "", "" },
        { "select pg_backend_pid()", "23", "23" },
    };

    [Theory]
    [MemberData(nameof(ParameterTypeCases))]
    public async Task Parameter_types_resolve_as_postgres_resolves_them(string sql, string declared, string expected)
    {
        int[] declaredTypes = declared.Length == 0 ? [] : declared.Split(',').Select(t => int.Parse(t, System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        Assert.True(QueryScanner.TryMatch(Encoding.UTF8.GetBytes(sql), out InterceptedCall call));
        int[] resolved = new int[8];
        bool ok = call.TryResolveParameterTypes(declaredTypes, resolved, out int count);
        Assert.Equal(expected, ok ? string.Join(',', resolved.Take(count)) : "-");

        using RawPostgresSession session = await ConnectAsync(_pg);
        await session.SendAsync(Parse(sql, declaredTypes), Describe('S', ""), Sync());
        List<byte[]> reply = await session.ReadMessagesUntilReadyAsync();
        if (!ok)
        {
            Assert.Equal((byte)'E', reply[0][0]);
            return;
        }

        Assert.Equal((byte)'1', reply[0][0]);
        int[] types = resolved.Take(count).ToArray();
        Assert.Equal(Build((ref PgWriter w) => InterceptReplies.WriteParameterDescription(ref w, types)), reply[1]);
    }

    [Fact]
    public async Task Parameters_postgres_casts_from_other_types_are_left_to_the_server()
    {
        // PostgreSQL accepts text cast to int, but the proxy does not read text-typed parameters.
        Assert.True(QueryScanner.TryMatch("select pg_cancel_backend($1::int)"u8, out InterceptedCall call));
        Assert.False(call.TryResolveParameterTypes([TypeOids.Text], new int[1], out _));

        using RawPostgresSession session = await ConnectAsync(_pg);
        await session.SendAsync(Parse("select pg_cancel_backend($1::int)", TypeOids.Text), Describe('S', ""), Sync());
        List<byte[]> reply = await session.ReadMessagesUntilReadyAsync();
        Assert.Equal((byte)'1', reply[0][0]);
    }

    [Fact]
    public void Simple_queries_cannot_have_parameters_and_small_buffers_are_refused()
    {
        Assert.True(QueryScanner.TryMatch("select pg_cancel_backend($1)"u8, out InterceptedCall call));
        Assert.False(call.TryResolveParameterTypes([], new int[4], out _, simpleQuery: true));
        Assert.False(call.TryResolveParameterTypes([0, 0, 0], new int[2], out int count));
        Assert.Equal(3, count);

        Assert.True(QueryScanner.TryMatch("select pg_cancel_backend(-1)"u8, out call));
        Assert.True(call.TryResolveParameterTypes([], [], out count, simpleQuery: true));
        Assert.Equal(0, count);
    }

    [Fact]
    public async Task Column_names_and_types_of_every_accepted_statement_match_postgres()
    {
        using RawPostgresSession session = await ConnectAsync(_pg);
        int compared = 0;
        foreach (object[] row in QueryScannerTests.Accepted)
        {
            string sql = (string)row[0];
            byte[] bytes = Encoding.UTF8.GetBytes(sql);
            Assert.True(QueryScanner.TryMatch(bytes, out InterceptedCall call));
            if (!SafeToRun(call))
            {
                continue;
            }

            // PostgreSQL reads a vertical tab as whitespace from version 17 on (scan.l, commit ae6d06f);
            // the scanner follows 17, so an older server is not asked.
            if (sql.Contains('\v', StringComparison.Ordinal) && session.ServerMajorVersion < 17)
            {
                continue;
            }

            List<byte[]> reply = await session.QueryAsync(sql);
            int typeOid = call.Function == InterceptedFunction.BackendPid ? TypeOids.Int4 : TypeOids.Bool;
            string name = call.ColumnName(bytes);
            byte[] expected = Build((ref PgWriter w) => InterceptReplies.WriteRowDescription(ref w, name, typeOid, 0));
            Assert.True(expected.AsSpan().SequenceEqual(reply[0]), $"{sql}: PostgreSQL sent {DescribeRow(reply[0])}");
            compared++;
        }

        Assert.True(compared > 50, $"only {compared} statements compared");
    }

    [Fact]
    public async Task Mutated_statements_the_scanner_accepts_are_answered_by_postgres_with_the_same_column()
    {
        // Random edits of accepted token sequences, joined by random whitespace and comments (or nothing,
        // so that adjacent tokens fuse: "-" "-1" becomes a comment). Whatever the scanner accepts,
        // PostgreSQL must run, sending the RowDescription the proxy would send.
        string[][] seeds =
        [
            ["select", "pg_backend_pid", "(", ")"],
            ["SELECT", "pg_catalog", ".", "pg_cancel_backend", "(", "-1", ")", "as", "x", ";"],
            ["select", "pg_terminate_backend", "(", "0", ",", "100", ")", "\"Y z\""],
            ["select", "\"pg_cancel_backend\"", "(", "(", "null", ")", "::", "int", ")", "t"],
        ];
        string[] vocabulary =
        [
            "select", "SELECT", "pg_backend_pid", "PG_CANCEL_BACKEND", "pg_cancel_backend", "pg_terminate_backend",
            "\"pg_cancel_backend\"", "pg_catalog", ".", "(", ")", ",", "-", "+", "-1", "0", "2147483647", "null",
            "NULL", "::", "int", "bigint", "int4", "as", "AS", "x", "\"Y z\"", "from", "day", "is", "not", ";",
            "'1'", "1.5", "*", "=", "union", "t", "\"", "/*", "*/",
        ];
        string[] separators = [" ", " ", "\n", "", "/**/", "--c\n", "/* a /* b */ */", "\t\r\n"];

        var random = new Random(5_432);
        using RawPostgresSession session = await ConnectAsync(_pg);
        int accepted = 0;
        for (int round = 0; round < 4_000; round++)
        {
            var tokens = new List<string>(seeds[random.Next(seeds.Length)]);
            for (int edits = random.Next(0, 3); edits > 0; edits--)
            {
                int at = random.Next(tokens.Count + 1);
                switch (random.Next(3))
                {
                    case 0:
                        tokens.Insert(at, vocabulary[random.Next(vocabulary.Length)]);
                        break;
                    case 1 when at < tokens.Count:
                        tokens.RemoveAt(at);
                        break;
                    default:
                        if (at < tokens.Count)
                        {
                            tokens[at] = vocabulary[random.Next(vocabulary.Length)];
                        }

                        break;
                }
            }

            var sql = new StringBuilder();
            foreach (string token in tokens)
            {
                sql.Append(token).Append(separators[random.Next(separators.Length)]);
            }

            string text = sql.ToString();
            byte[] bytes = Encoding.UTF8.GetBytes(text);
            if (!QueryScanner.TryMatch(bytes, out InterceptedCall call) || !SafeToRun(call))
            {
                continue;
            }

            accepted++;
            List<byte[]> reply = await session.QueryAsync(text);
            int typeOid = call.Function == InterceptedFunction.BackendPid ? TypeOids.Int4 : TypeOids.Bool;
            string name = call.ColumnName(bytes);
            byte[] expected = Build((ref PgWriter w) => InterceptReplies.WriteRowDescription(ref w, name, typeOid, 0));
            Assert.True(expected.AsSpan().SequenceEqual(reply[0]), $"{text}: PostgreSQL sent {DescribeRow(reply[0])}");
            byte[]? error = reply.Find(m => m[0] == (byte)'E');
            Assert.True(error is null, $"{text}: PostgreSQL failed: {(error is null ? "" : DescribeRow(error))}");
        }

        Assert.True(accepted > 300, $"only {accepted} mutants were accepted");
    }

    // Statements PostgreSQL runs without error and that signal nothing that might exist: no $n (a Simple
    // Query has no parameters), no int8-typed pid (no such function), no pid a process could have.
    private static bool SafeToRun(InterceptedCall call)
    {
        CallArgument pid = call.Argument;
        if (pid.Kind == ArgumentKind.Parameter || call.Timeout.Kind == ArgumentKind.Parameter || pid.Int8Cast)
        {
            return false;
        }

        if (pid.Kind == ArgumentKind.Integer && (pid.Value is > 0 and <= LargestLinuxPid || pid.Value is < int.MinValue or > int.MaxValue))
        {
            return false;
        }

        // PostgreSQL rejects a timeout that is negative once truncated to 32 bits.
        return call.Timeout.Kind != ArgumentKind.Integer || InterceptErrors.PostgresTimeout(call.Timeout.Value) >= 0;
    }

    private static string DescribeRow(byte[] message)
    {
        if (message[0] != (byte)'T')
        {
            return $"'{(char)message[0]}' {Encoding.UTF8.GetString(message, 5, message.Length - 5)}";
        }

        int nameEnd = Array.IndexOf(message, (byte)0, 7);
        int typeOid = BinaryPrimitives.ReadInt32BigEndian(message.AsSpan(nameEnd + 1 + 4 + 2));
        return $"column \"{Encoding.UTF8.GetString(message, 7, nameEnd - 7)}\" type {typeOid}";
    }
}
