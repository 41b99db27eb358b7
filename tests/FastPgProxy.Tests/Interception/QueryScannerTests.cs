using System.Globalization;
using System.Text;
using FastPgProxy.Interception;
using Xunit;

namespace FastPgProxy.Tests.Interception;

public class QueryScannerTests
{
    /// <summary>
    /// Accepted statements and what the scanner must make of them, written as
    /// <c>function(argument[, timeout]) column</c>: <c>pid</c>, <c>cancel</c>, <c>terminate</c>; an argument
    /// is a number, <c>null</c> or <c>$n</c>, with <c>::int4</c> or <c>::int8</c> when cast.
    /// </summary>
    public static TheoryData<string, string> Accepted => new()
    {
        { "SELECT pg_backend_pid()", "pid() pg_backend_pid" },
        { "select pg_backend_pid();", "pid() pg_backend_pid" },
        { "SeLeCt Pg_Backend_Pid ( ) ;", "pid() pg_backend_pid" },
        { " \t\r\n\f\vselect\n\tpg_backend_pid\r\n(\f)\v;\n", "pid() pg_backend_pid" },
        { "\tselect\r\npg_backend_pid\f(\n)\t;\r", "pid() pg_backend_pid" },
        { "select pg_backend_pid() as pid", "pid() pid" },
        { "select pg_backend_pid() AS \"My Pid\"", "pid() My Pid" },
        { "select pg_backend_pid() \"A\"\"b\"", "pid() A\"b" },
        { "select pg_backend_pid() \"\"\"\"", "pid() \"" },
        { "select pg_backend_pid() MyPid", "pid() mypid" },
        { "select pg_backend_pid()x", "pid() x" },
        { "select pg_backend_pid()\"X\"", "pid() X" },
        { "select pg_backend_pid() as select", "pid() select" },
        { "select pg_backend_pid() AS FROM", "pid() from" },
        { "select pg_backend_pid() as as", "pid() as" },
        { "select pg_backend_pid() as \"from\"", "pid() from" },
        { "select pg_backend_pid() select", "pid() select" },
        { "select pg_backend_pid() null", "pid() null" },
        { "select pg_backend_pid() is", "pid() is" },
        { "select pg_backend_pid() asx", "pid() asx" },
        { "select pg_backend_pid() a$1", "pid() a$1" },
        { "select pg_backend_pid() _x9", "pid() _x9" },
        { "select pg_backend_pid() ÄBc", "pid() Äbc" },
        { "select pg_backend_pid() as \"Ä\"", "pid() Ä" },
        { "select pg_backend_pid()\u00a0", "pid() \u00a0" },
        { "select pg_backend_pid() " + new string('a', 63), "pid() " + new string('a', 63) },
        { "select pg_backend_pid() \"" + new string('B', 63) + "\"", "pid() " + new string('B', 63) },
        { "select pg_catalog.pg_backend_pid()", "pid() pg_backend_pid" },
        { "select PG_CATALOG . pg_backend_pid()", "pid() pg_backend_pid" },
        { "select pg_catalog/* dot */./**/pg_backend_pid()", "pid() pg_backend_pid" },
        { "select \"pg_catalog\".\"pg_backend_pid\"()", "pid() pg_backend_pid" },
        { "select\"pg_backend_pid\"()", "pid() pg_backend_pid" },
        { "select/**/pg_backend_pid/**/(/**/)/**/", "pid() pg_backend_pid" },
        { "/* lead */ select pg_backend_pid() -- trailing comment", "pid() pg_backend_pid" },
        { "--first line\nselect pg_backend_pid()", "pid() pg_backend_pid" },
        { "select /* a /* b */ c */ pg_backend_pid()", "pid() pg_backend_pid" },
        { "select /* a /* b /* c */ */ */ pg_backend_pid() /**/", "pid() pg_backend_pid" },
        { "select /*/ still a comment */ pg_backend_pid()", "pid() pg_backend_pid" },
        { "select /*** stars ***/ pg_backend_pid()", "pid() pg_backend_pid" },
        { "select pg_backend_pid() --x\r;", "pid() pg_backend_pid" },
        { "select pg_backend_pid();;", "pid() pg_backend_pid" },
        { "select pg_backend_pid() ; ; -- x\n ;", "pid() pg_backend_pid" },
        { "; select pg_backend_pid()", "pid() pg_backend_pid" },
        { ";;SELECT pg_backend_pid();;", "pid() pg_backend_pid" },
        { "/* c */ ; --x\n; select pg_cancel_backend(-1)", "cancel(-1) pg_cancel_backend" },
        { "select pg_cancel_backend(1)", "cancel(1) pg_cancel_backend" },
        { "select pg_cancel_backend(-1)", "cancel(-1) pg_cancel_backend" },
        { "select pg_cancel_backend(+2147483647)", "cancel(2147483647) pg_cancel_backend" },
        { "select pg_cancel_backend(- /* c */ 42)", "cancel(-42) pg_cancel_backend" },
        { "select pg_cancel_backend(-\n--c\n5)", "cancel(-5) pg_cancel_backend" },
        { "select pg_cancel_backend(-00012)", "cancel(-12) pg_cancel_backend" },
        { "select pg_cancel_backend(0)", "cancel(0) pg_cancel_backend" },
        { "select pg_cancel_backend(NULL)", "cancel(null) pg_cancel_backend" },
        { "select pg_cancel_backend(null::int)", "cancel(null::int4) pg_cancel_backend" },
        { "select pg_cancel_backend((-5))", "cancel(-5) pg_cancel_backend" },
        { "select pg_cancel_backend(( -5 )::integer)", "cancel(-5::int4) pg_cancel_backend" },
        { "select pg_cancel_backend((-5::int4))", "cancel(-5::int4) pg_cancel_backend" },
        { "select pg_cancel_backend(-5 :: INT)", "cancel(-5::int4) pg_cancel_backend" },
        { "select pg_cancel_backend(1/**/)", "cancel(1) pg_cancel_backend" },
        { "select pg_cancel_backend((-2147483648)::int)", "cancel(-2147483648::int4) pg_cancel_backend" },
        { "select pg_cancel_backend(2147483648)", "cancel(2147483648) pg_cancel_backend" },
        { "select pg_cancel_backend(-2147483649::bigint)", "cancel(-2147483649::int8) pg_cancel_backend" },
        { "select pg_cancel_backend(9223372036854775807)", "cancel(9223372036854775807) pg_cancel_backend" },
        { "select pg_cancel_backend(-9223372036854775808)", "cancel(-9223372036854775808) pg_cancel_backend" },
        { "select pg_cancel_backend($1)", "cancel($1) pg_cancel_backend" },
        { "select pg_cancel_backend($01)", "cancel($1) pg_cancel_backend" },
        { "select pg_cancel_backend($65535)", "cancel($65535) pg_cancel_backend" },
        { "select pg_cancel_backend(($1)::int8)", "cancel($1::int8) pg_cancel_backend" },
        { "SeLeCt PG_CATALOG . Pg_Cancel_Backend ( $1 :: BIGINT ) AS \"Who\" ;", "cancel($1::int8) Who" },
        { "select pg_cancel_backend(1) -- trailing comment", "cancel(1) pg_cancel_backend" },
        { "select pg_cancel_backend(1);;", "cancel(1) pg_cancel_backend" },
        { "select pg_cancel_backend(1)as\"x\"", "cancel(1) x" },
        { "select \"pg_cancel_backend\"(1)", "cancel(1) pg_cancel_backend" },
        { "select pg_terminate_backend(1)", "terminate(1) pg_terminate_backend" },
        { "select pg_terminate_backend(-1, 500)", "terminate(-1, 500) pg_terminate_backend" },
        { "select pg_terminate_backend(-1,-5)", "terminate(-1, -5) pg_terminate_backend" },
        { "select pg_terminate_backend(-1, null)", "terminate(-1, null) pg_terminate_backend" },
        { "select pg_terminate_backend(null, 0::bigint)", "terminate(null, 0::int8) pg_terminate_backend" },
        { "select pg_terminate_backend($1,$2)", "terminate($1, $2) pg_terminate_backend" },
        { "select pg_terminate_backend( $2::int , $1::int8 ) t", "terminate($2::int4, $1::int8) t" },
        { "select pg_catalog.pg_terminate_backend((0), (1000)) as \"T\"", "terminate(0, 1000) T" },
        { "select \"pg_terminate_backend\"(-1, 9223372036854775807)", "terminate(-1, 9223372036854775807) pg_terminate_backend" },
    };

    /// <summary>Statements the proxy must leave to the server.</summary>
    public static TheoryData<string> Rejected => new()
    {
        // Not one of the accepted forms.
        "",
        "   ",
        ";",
        "; ;",
        ";select",
        "; /* unterminated select pg_backend_pid()",
        "select",
        "select pg_backend_pid",
        "select pg_catalog.pg_backend_pid",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "select pg_cancel_backend(1) ; select 1",
        "select pg_backend_pid() ; select 1",
        "select pg_backend_pid() ;x",
        "select pg_backend_pid() ; select",
        "select pg_backend_pid() ; ; select 1",
        "select 1; select pg_backend_pid()",
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity",
        "select 'pg_backend_pid()'",
        "select $$pg_backend_pid()$$",
        "select E'pg_backend_pid()'",
        "select \"pg_backend_pid()\"",
        "select pg_backend_pid() + 1",
        "select pg_backend_pid() -- comment\n + 1",
        "select pg_backend_pid()::text",
        "select pg_backend_pid() is null",
        "select pg_backend_pid(), 2",
        "select 2, pg_backend_pid()",
        "select pg_backend_pid(1)",
        "select pg_cancel_backend()",
        "select pg_cancel_backend(1, 2)",
        "select pg_terminate_backend(1,2,3)",
        "select pg_terminate_backend(1,)",
        "select pg_terminate_backend(,1)",
        "select * from pg_backend_pid()",
        "explain select pg_backend_pid()",
        "select all pg_backend_pid()",
        "select distinct pg_backend_pid()",
        "select (pg_backend_pid())",
        "(select pg_backend_pid())",
        "with x as (select 1) select pg_backend_pid()",
        "selectpg_backend_pid()",
        "select\u00a0pg_backend_pid()",
        "select pg_cancel_backend(pid)",
        "select pg_cancel_backend(1) + 1",
        "select pg_cancel_backend(($1))::int8",

        // Unterminated or odd comments.
        "select pg_backend_pid() /* unterminated",
        "/* unterminated select pg_backend_pid()",
        "select pg_backend_pid() /* a /* b */",
        "select pg_backend_pid() /*/",
        "select pg_backend_pid(/* unterminated )",
        "select pg_backend_pid() - - comment",

        // Names.
        "select pg_cancel_backend_x(1)",
        "select pg_backend_pidx()",
        "select pg_backend_pid$()",
        "select xpg_backend_pid()",
        "select pg_backend_pi()",
        "select \"PG_BACKEND_PID\"()",
        "select \"pg_backend_pid \"()",
        "select \"pg_backend_pid\"\"\"()",
        "select pg_catalog.\"Pg_backend_pid\"()",
        "select \"PG_CATALOG\".pg_backend_pid()",
        "select public.pg_backend_pid()",
        "select pg_catalogx.pg_backend_pid()",
        "select pg_catalog..pg_backend_pid()",
        "select .pg_backend_pid()",
        "select pg_catalog.pg_catalog.pg_backend_pid()",
        "select db.pg_catalog.pg_backend_pid()",
        "select u&\"pg_backend_pid\"()",

        // Arguments.
        "select pg_cancel_backend(9223372036854775808)",
        "select pg_cancel_backend(-9223372036854775809)",
        "select pg_cancel_backend(99999999999999999999999)",
        "select pg_cancel_backend(1.5)",
        "select pg_cancel_backend(1.)",
        "select pg_cancel_backend(.5)",
        "select pg_cancel_backend(1e3)",
        "select pg_cancel_backend(1_000)",
        "select pg_cancel_backend(0x10)",
        "select pg_cancel_backend(1abc)",
        "select pg_cancel_backend('1')",
        "select pg_cancel_backend(--1\n)",
        "select pg_cancel_backend(- -1)",
        "select pg_cancel_backend(+-1)",
        "select pg_cancel_backend(-)",
        "select pg_cancel_backend(-$1)",
        "select pg_cancel_backend(-null)",
        "select pg_cancel_backend(nul)",
        "select pg_cancel_backend(nullx)",
        "select pg_cancel_backend(\"null\")",
        "select pg_cancel_backend($0)",
        "select pg_cancel_backend($)",
        "select pg_cancel_backend($ 1)",
        "select pg_cancel_backend($65536)",
        "select pg_cancel_backend($99999999999)",
        "select pg_cancel_backend($1a)",
        "select pg_cancel_backend($1$)",
        "select pg_cancel_backend(1::text)",
        "select pg_cancel_backend(1::int2)",
        "select pg_cancel_backend(1::smallint)",
        "select pg_cancel_backend(1::\"int4\")",
        "select pg_cancel_backend(1::pg_catalog.int4)",
        "select pg_cancel_backend(1::int[])",
        "select pg_cancel_backend(1::int(4))",
        "select pg_cancel_backend(1::)",
        "select pg_cancel_backend(1: :int)",
        "select pg_cancel_backend(1:int)",
        "select pg_cancel_backend(1::int::int)",
        "select pg_cancel_backend((1::int)::int)",
        "select pg_cancel_backend(2147483648::int)",
        "select pg_cancel_backend(-2147483648::int)",
        "select pg_cancel_backend((-2147483648::int))",
        "select pg_cancel_backend(+2147483648::int4)",
        "select pg_cancel_backend((2147483648)::int)",
        "select pg_cancel_backend(-9223372036854775808::bigint)",
        "select pg_cancel_backend(((1)))",
        "select pg_cancel_backend((1)",
        "select pg_cancel_backend(1",
        "select pg_cancel_backend(1))",
        "select pg_cancel_backend(()1)",
        "select pg_cancel_backend(1 2)",

        // Aliases.
        "select pg_backend_pid() from",
        "select pg_backend_pid() FROM t",
        "select pg_backend_pid() where true",
        "select pg_backend_pid() union select 1",
        "select pg_backend_pid() order by 1",
        "select pg_backend_pid() limit 1",
        "select pg_backend_pid() offset 1",
        "select pg_backend_pid() into x",
        "select pg_backend_pid() group by 1",
        "select pg_backend_pid() having true",
        "select pg_backend_pid() window w as ()",
        "select pg_backend_pid() for update",
        "select pg_backend_pid() fetch first 1 row only",
        "select pg_backend_pid() except select 1",
        "select pg_backend_pid() intersect select 1",
        "select pg_backend_pid() day",
        "select pg_backend_pid() isnull",
        "select pg_backend_pid() NOTNULL",
        "select pg_backend_pid() with",
        "select pg_backend_pid() as",
        "select pg_backend_pid() as;",
        "select pg_backend_pid() x y",
        "select pg_backend_pid() x.y",
        "select pg_backend_pid() x, 1",
        "select pg_backend_pid() as \"x\" y",
        "select pg_backend_pid() \"\"",
        "select pg_backend_pid() as \"\"",
        "select pg_backend_pid() \"unterminated",
        "select pg_backend_pid() \"a\"\"",
        "select pg_backend_pid() as U&\"x\"",
        "select pg_backend_pid() 1",
        "select pg_backend_pid() $1",
        "select pg_backend_pid() " + new string('a', 64),
        "select pg_backend_pid() \"" + new string('B', 64) + "\"",
        "select pg_backend_pid() \"" + new string('B', 63) + "\"\"\"",
    };

    [Theory]
    [MemberData(nameof(Accepted))]
    public void Accepts(string sql, string expected)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(sql);
        Assert.True(QueryScanner.TryMatch(bytes, out InterceptedCall call), sql);
        Assert.Equal(expected, Describe(call, bytes));
    }

    [Theory]
    [MemberData(nameof(Rejected))]
    public void Rejects(string sql)
    {
        Assert.False(QueryScanner.TryMatch(Encoding.UTF8.GetBytes(sql), out InterceptedCall call), sql);
        Assert.Equal(default, call.Function);
        Assert.Equal(0, call.ColumnNameStart);
    }

    [Theory]
    [MemberData(nameof(Accepted))]
    public void Accepted_forms_followed_by_more_sql_are_rejected(string sql, string expected)
    {
        _ = expected;

        // A trailing line comment would swallow the appended text.
        if (sql.Contains("--", StringComparison.Ordinal))
        {
            return;
        }

        string trimmed = sql.TrimEnd(' ', '\t', '\r', '\n', '\f', '\v', ';');
        foreach (string tail in new[] { " + 1", ", 1", "; select 1", " from t", " where true", ")", "(", " x y", "::text", " /* open" })
        {
            Assert.False(QueryScanner.TryMatch(Encoding.UTF8.GetBytes(trimmed + tail), out _), trimmed + tail);
        }
    }

    [Theory]
    [MemberData(nameof(Accepted))]
    public void Accepted_forms_match_the_same_with_comments_and_line_breaks_between_tokens(string sql, string expected)
    {
        // Spaces separate tokens in the table, except inside quoted names and comments.
        if (sql.Contains('"', StringComparison.Ordinal) || sql.Contains("--", StringComparison.Ordinal) || sql.Contains("/*", StringComparison.Ordinal))
        {
            return;
        }

        string spread = sql.Replace(" ", "\n/* x /* nested */ y */\t-- to end of line\r\n\v\f", StringComparison.Ordinal);
        byte[] bytes = Encoding.UTF8.GetBytes(spread);
        Assert.True(QueryScanner.TryMatch(bytes, out InterceptedCall call), spread);
        Assert.Equal(expected, Describe(call, bytes));
    }

    [Theory]
    [MemberData(nameof(Accepted))]
    public void Accepted_forms_match_the_same_in_upper_case_when_nothing_is_quoted(string sql, string expected)
    {
        if (sql.Contains('"', StringComparison.Ordinal))
        {
            return;
        }

        // Keywords and names match in any case, and a bare alias folds back to lower case.
        byte[] bytes = Encoding.UTF8.GetBytes(sql.ToUpperInvariant());
        Assert.True(QueryScanner.TryMatch(bytes, out InterceptedCall call), sql);
        Assert.Equal(expected, Describe(call, bytes));
    }

    [Fact]
    public void Text_that_is_not_valid_utf8_is_left_to_the_server()
    {
        byte[] inComment = [.. "select pg_backend_pid() /* "u8, 0xC3, 0x28, .. " */"u8];
        byte[] inAlias = [.. "select pg_backend_pid() x"u8, 0xFF];
        byte[] valid = [.. "select pg_backend_pid() /* "u8, 0xC3, 0xA9, .. " */"u8];
        Assert.False(QueryScanner.TryMatch(inComment, out _));
        Assert.False(QueryScanner.TryMatch(inAlias, out _));
        Assert.True(QueryScanner.TryMatch(valid, out _));
    }

    [Fact]
    public void Column_name_offsets_point_into_the_text()
    {
        byte[] bare = "select pg_backend_pid() AS Whom"u8.ToArray();
        Assert.True(QueryScanner.TryMatch(bare, out InterceptedCall call));
        Assert.True(call.HasAlias);
        Assert.False(call.ColumnNameQuoted);
        Assert.Equal("Whom", Encoding.UTF8.GetString(bare, call.ColumnNameStart, call.ColumnNameLength));
        Assert.Equal("whom", call.ColumnName(bare));

        byte[] quoted = "select pg_backend_pid() \"a\"\"B\";"u8.ToArray();
        Assert.True(QueryScanner.TryMatch(quoted, out call));
        Assert.True(call.ColumnNameQuoted);
        Assert.Equal("a\"\"B", Encoding.UTF8.GetString(quoted, call.ColumnNameStart, call.ColumnNameLength));
        Assert.Equal("a\"B", call.ColumnName(quoted));

        byte[] none = "select pg_backend_pid()"u8.ToArray();
        Assert.True(QueryScanner.TryMatch(none, out call));
        Assert.False(call.HasAlias);
        Assert.Equal(-1, call.ColumnNameStart);
        Assert.Equal(0, call.ColumnNameLength);
        Assert.Equal("pg_backend_pid", call.ColumnName(none));

        Span<byte> name = stackalloc byte[QueryScanner.MaxIdentifierLength];
        int length = call.CopyColumnName(none, name);
        Assert.Equal("pg_backend_pid"u8.ToArray(), name.Slice(0, length).ToArray());
    }

    [Fact]
    public void Parameter_count_is_the_highest_placeholder()
    {
        Assert.True(QueryScanner.TryMatch("select pg_terminate_backend($3, $2)"u8, out InterceptedCall call));
        Assert.Equal(3, call.ParameterCount);
        Assert.True(QueryScanner.TryMatch("select pg_cancel_backend(1)"u8, out call));
        Assert.Equal(0, call.ParameterCount);
        Assert.True(QueryScanner.TryMatch("select pg_terminate_backend(1, $1)"u8, out call));
        Assert.Equal(1, call.ParameterCount);
    }

    [Fact]
    public void Casts_and_kinds_are_reported()
    {
        Assert.True(QueryScanner.TryMatch("select pg_terminate_backend($1::bigint, null::int)"u8, out InterceptedCall call));
        Assert.Equal(InterceptedFunction.TerminateBackend, call.Function);
        Assert.Equal(ArgumentKind.Parameter, call.Argument.Kind);
        Assert.Equal(1, call.Argument.ParameterIndex);
        Assert.True(call.Argument.Int8Cast);
        Assert.Equal(ArgumentKind.Null, call.Timeout.Kind);
        Assert.Equal(ArgumentCast.Int4, call.Timeout.Cast);
        Assert.False(call.Timeout.Int8Cast);

        Assert.True(QueryScanner.TryMatch("select pg_terminate_backend(7)"u8, out call));
        Assert.Equal(ArgumentKind.Integer, call.Argument.Kind);
        Assert.Equal(7, call.Argument.Value);
        Assert.Equal(ArgumentKind.None, call.Timeout.Kind);
    }

    [Fact]
    public void Scanning_allocates_nothing()
    {
        byte[][] statements =
        [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1"u8.ToArray(),
            "select pg_backend_pid()"u8.ToArray(),
            "/* c */ SELECT pg_catalog.pg_cancel_backend($1::bigint) AS \"Who\"; -- x"u8.ToArray(),
            "select pg_terminate_backend(12345, 500) t"u8.ToArray(),
            "select pg_backend_pid() from t"u8.ToArray(),
        ];
        int matched = 0;
        foreach (byte[] statement in statements)
        {
            matched += QueryScanner.TryMatch(statement, out _) ? 1 : 0;
        }

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int round = 0; round < 100; round++)
        {
            foreach (byte[] statement in statements)
            {
                matched += QueryScanner.TryMatch(statement, out _) ? 1 : 0;
            }
        }

        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        Assert.Equal(3 * 101, matched);
    }

    /// <summary>The compact form the tables use: <c>function(arguments) column</c>.</summary>
    internal static string Describe(InterceptedCall call, ReadOnlySpan<byte> sql)
    {
        var text = new StringBuilder();
        text.Append(call.Function switch
        {
            InterceptedFunction.BackendPid => "pid",
            InterceptedFunction.CancelBackend => "cancel",
            _ => "terminate",
        });
        text.Append('(');
        if (call.Argument.Kind != ArgumentKind.None)
        {
            text.Append(Describe(call.Argument));
        }

        if (call.Timeout.Kind != ArgumentKind.None)
        {
            text.Append(", ").Append(Describe(call.Timeout));
        }

        text.Append(") ").Append(call.ColumnName(sql));
        return text.ToString();
    }

    private static string Describe(CallArgument argument)
    {
        string value = argument.Kind switch
        {
            ArgumentKind.Integer => argument.Value.ToString(CultureInfo.InvariantCulture),
            ArgumentKind.Null => "null",
            ArgumentKind.Parameter => "$" + argument.ParameterIndex.ToString(CultureInfo.InvariantCulture),
            _ => "?",
        };
        return argument.Cast switch
        {
            ArgumentCast.Int4 => value + "::int4",
            ArgumentCast.Int8 => value + "::int8",
            _ => value,
        };
    }
}
