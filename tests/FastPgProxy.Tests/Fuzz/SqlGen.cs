using System.Globalization;
using System.Numerics;
using System.Text;
using CsCheck;
using FastPgProxy.Interception;

namespace FastPgProxy.Tests.Fuzz;

/// <summary>A generated statement and what the scanner must read in it.</summary>
internal sealed record GeneratedSql(string Text, ExpectedCall Call)
{
    public byte[] Bytes => Encoding.UTF8.GetBytes(Text);
}

/// <summary>
/// Generates statements the scanner must accept, built from its grammar with random whitespace, comments,
/// letter case, parentheses, signs, casts, aliases and semicolons, each with the call it spells.
/// </summary>
internal static class SqlGen
{
    private static readonly string[] Spaces = [" ", "\t", "\n", "\r\n", "\f", "\v", "  "];

    private static readonly string[] Comments =
        ["/* c */", "/**/", "/* a /* b */ c */", "/*/ x */", "/*** s ***/", "/* é ü 日本 */", "/* ; ) ( , ' \" $$ */", "-- line\n", "--\r", "-- x ; select 1\n"];

    private static readonly Gen<string> Piece = Gen.Frequency((3, Gen.OneOf(Spaces)), (1, Gen.OneOf(Comments)));

    // After a sign no line comment may follow at once: "-" then "-- x" is "--- x", a comment that eats the sign.
    private static readonly Gen<string> PieceAfterSign = Gen.Frequency((3, Gen.OneOf(Spaces)), (1, Gen.OneOf(Comments.Where(c => !c.StartsWith('-')).ToArray())));

    /// <summary>Trivia between two tokens; <paramref name="required"/> when the tokens would otherwise run together.</summary>
    public static Gen<string> Trivia(bool required = false, bool afterSign = false) =>
        Gen.Frequency((required ? 0 : 3, Gen.Const("")), (2, (afterSign ? PieceAfterSign : Piece).Array[1, 3].Select(string.Concat)));

    /// <summary>The word in random letter case.</summary>
    public static Gen<string> AnyCase(string word) =>
        Gen.Bool.Array[word.Length].Select(upper => new string(word.Select((c, i) => upper[i] ? char.ToUpperInvariant(c) : c).ToArray()));

    /// <summary>A name as an unquoted word in any case, or quoted exactly; the flag says whether it was quoted.</summary>
    private static Gen<(string Text, bool Quoted)> Name(string name) =>
        Gen.Frequency((4, AnyCase(name).Select(t => (t, false))), (1, Gen.Const(($"\"{name}\"", true))));

    private static readonly Gen<long> IntegerValue = Gen.Frequency(
        (4, Gen.Long[-1_000, 100_000]),
        (2, Gen.Int.Select(v => (long)v)),
        (1, Gen.Long),
        (2, Gen.OneOf(0L, int.MaxValue, int.MinValue, int.MaxValue + 1L, int.MinValue - 1L, long.MaxValue, long.MinValue, -1L)));

    private static readonly Gen<int> ParameterNumber = Gen.Frequency((4, Gen.Int[1, 3]), (1, Gen.Int[1, 65_535]), (1, Gen.OneOf(65_535, 9, 10, 99)));

    private static readonly Gen<string> Zeros = Gen.Frequency((5, Gen.Const("")), (1, Gen.OneOf("0", "00", "000")));

    private static Gen<(string Text, ArgumentCast Cast)> CastTo(ArgumentCast cast) => Gen.SelectMany(
        cast == ArgumentCast.Int4 ? Gen.OneOf("int", "integer", "int4") : Gen.OneOf("bigint", "int8"),
        word => Gen.Select(Trivia(), AnyCase(word), Trivia(), (before, w, after) => ($"{before}::{after}{w}", cast)));

    private static bool Fits(BigInteger value, ArgumentCast cast) => cast == ArgumentCast.Int4
        ? value >= int.MinValue && value <= int.MaxValue
        : value >= long.MinValue && value <= long.MaxValue;

    /// <summary>One argument: its text and the argument it must be read as.</summary>
    public static readonly Gen<(string Text, ExpectedArgument Argument)> Argument = Gen.SelectMany(
        Gen.Frequency((6, Gen.Const(ArgumentKind.Integer)), (1, Gen.Const(ArgumentKind.Null)), (2, Gen.Const(ArgumentKind.Parameter))),
        IntegerValue, ParameterNumber, Zeros, Gen.Bool, Gen.Int[0, 2], Gen.OneOf(ArgumentCast.Int4, ArgumentCast.Int8),
        (kind, value, parameter, zeros, plus, castPlace, castType) =>
        {
            string valueText;
            bool signed = false;
            Gen<string> sign = Gen.Const("");
            switch (kind)
            {
                case ArgumentKind.Integer:
                    BigInteger magnitude = BigInteger.Abs(value);
                    valueText = zeros + magnitude.ToString(CultureInfo.InvariantCulture);
                    if (value < 0 || plus)
                    {
                        signed = true;
                        sign = Trivia(afterSign: true).Select(t => (value < 0 ? "-" : "+") + t);
                    }

                    break;
                case ArgumentKind.Null:
                    valueText = "null";
                    value = 0;
                    break;
                default:
                    valueText = "$" + zeros + parameter.ToString(CultureInfo.InvariantCulture);
                    value = 0;
                    break;
            }

            // castPlace: 0 none, 1 right after the value, 2 after the parentheses. A literal must survive its cast:
            // inside, the sign applies after the cast; outside, the cast takes the signed constant.
            BigInteger checkedValue = castPlace == 1 && signed ? BigInteger.Abs(value) : value;
            if (castPlace != 0 && kind == ArgumentKind.Integer && !Fits(checkedValue, castType))
            {
                castType = ArgumentCast.Int8;
                if (!Fits(checkedValue, castType))
                {
                    castPlace = 0;
                }
            }

            ArgumentCast cast = castPlace == 0 ? ArgumentCast.None : castType;
            var expected = new ExpectedArgument(kind, kind == ArgumentKind.Integer ? value : 0, kind == ArgumentKind.Parameter ? parameter : 0, cast);
            Gen<string> valueGen = kind == ArgumentKind.Null ? AnyCase(valueText) : Gen.Const(valueText);
            Gen<string> castGen = cast == ArgumentCast.None ? Gen.Const("") : CastTo(cast).Select(c => c.Text);
            return Gen.Select(sign, valueGen, castGen, Gen.Bool, Trivia(), Trivia(), (s, v, c, parenthesized, t1, t2) =>
                (castPlace == 2 || (parenthesized && castPlace != 0)
                    ? $"({t1}{s}{v}{(castPlace == 1 ? c : "")}{t2}){(castPlace == 2 ? c : "")}"
                    : parenthesized ? $"({t1}{s}{v}{t2})" : $"{s}{v}{c}", expected));
        });

    private static readonly Gen<string> BareWord = Gen.Frequency(
        (3, Gen.Select(Gen.Char["abcxyzABCXYZ_"], Gen.Char["abcxyzABCXYZ_019$"].Array[0, 20], (first, rest) => first + new string(rest))),
        (1, Gen.OneOf("select", "null", "is", "pid", "MyPid", "a$1", "_x9", "Äbc", "日本", "é", "int", "pg_backend_pid", "AS_", "asx")),
        (1, Gen.Select(Gen.Char['a', 'z'], Gen.Char["abcéßЖ日"].Array[0, 20], (first, rest) => first + new string(rest))));

    private static readonly Gen<string> QuotedContent = Gen.Frequency(
        (3, Gen.Char["abcABC _\"\"'();,.é日-*/"].Array[1, 30].Select(c => new string(c))),
        (1, Gen.OneOf("from", "select", "\"", "FROM", "x y", "Ä")))
        .Where(c => Encoding.UTF8.GetByteCount(c) <= 63);

    private static string Fold(string word) => string.Concat(word.Select(c => c is >= 'A' and <= 'Z' ? (char)(c + 32) : c));

    private static readonly HashSet<string> AsLabel =
    [
        "array", "as", "char", "character", "create", "day", "except", "fetch", "filter", "for", "from", "grant", "group",
        "having", "hour", "intersect", "into", "isnull", "limit", "minute", "month", "notnull", "offset", "on", "order",
        "over", "overlaps", "precision", "returning", "second", "to", "union", "varying", "where", "window", "with",
        "within", "without", "year",
    ];

    /// <summary>An alias: its text (with what precedes it), the column name, whether it is quoted; null text for none.</summary>
    private static readonly Gen<(string Text, string? Column, bool Quoted)> Alias = Gen.Frequency(
        (5, Gen.Const(("", (string?)null, false))),
        (2, Gen.Select(Trivia(), BareWord.Where(w => !AsLabel.Contains(Fold(w)) && Encoding.UTF8.GetByteCount(w) <= 63),
            (t, w) => (t + w, (string?)Fold(w), false))),
        (2, Gen.Select(Trivia(), AnyCase("as"), Trivia(required: true), Gen.Frequency((2, BareWord), (1, Gen.OneOf("from", "FROM", "as", "where", "select"))).Where(w => Encoding.UTF8.GetByteCount(w) <= 63),
            (t1, a, t2, w) => ($"{t1}{a}{t2}{w}", (string?)Fold(w), false))),
        (2, Gen.Select(Trivia(), Gen.Frequency((1, Gen.Const("")), (1, AnyCase("as").SelectMany(a => Trivia().Select(t => a + t)))), QuotedContent,
            (t, a, c) => ($"{t}{a}\"{c.Replace("\"", "\"\"", StringComparison.Ordinal)}\"", (string?)c, true))));

    private static Gen<string> Semicolons(bool leading) => Gen.Int[0, 2].SelectMany(n => Gen.Select(Trivia(), Trivia()).Array[n])
        .Select(parts => string.Concat(parts.Select(p => leading ? p.Item1 + ";" + p.Item2 : p.Item1 + ";" + p.Item2)));

    /// <summary>Statements the scanner must accept, with the call each one spells.</summary>
    public static readonly Gen<GeneratedSql> Accepted = Gen.SelectMany(
        Gen.OneOf(InterceptedFunction.BackendPid, InterceptedFunction.CancelBackend, InterceptedFunction.TerminateBackend),
        Gen.Bool, Gen.Bool,
        (function, schema, twoArguments) =>
        {
            string name = function switch
            {
                InterceptedFunction.BackendPid => "pg_backend_pid",
                InterceptedFunction.CancelBackend => "pg_cancel_backend",
                _ => "pg_terminate_backend",
            };
            Gen<(string Text, bool Quoted)> schemaGen = schema ? Name("pg_catalog") : Gen.Const(("", true));
            Gen<(string Text, ExpectedArgument? Argument)> first = function == InterceptedFunction.BackendPid
                ? Gen.Const(("", (ExpectedArgument?)null))
                : Argument.Select(a => (a.Text, (ExpectedArgument?)a.Argument));
            Gen<(string Text, ExpectedArgument? Argument)> second = function == InterceptedFunction.TerminateBackend && twoArguments
                ? Gen.Select(Trivia(), Trivia(), Argument, (t1, t2, a) => ($"{t1},{t2}{a.Text}", (ExpectedArgument?)a.Argument))
                : Gen.Const(("", (ExpectedArgument?)null));
            return Gen.Select(
                Gen.Select(Semicolons(leading: true), Trivia(), AnyCase("select")),
                Gen.Select(schemaGen, Trivia(), Trivia(), Name(name)),
                Gen.Select(Trivia(), Trivia(), first, Trivia(), second, Trivia()),
                Alias,
                Gen.Select(Trivia(), Semicolons(leading: false)),
                (lead, call, args, alias, tail) =>
                {
                    (string semis, string t0, string select) = lead;
                    ((string schemaText, bool schemaQuoted), string s1, string s2, (string nameText, bool nameQuoted)) = call;
                    (string a0, string a1, (string firstText, ExpectedArgument? a), string a2, (string secondText, ExpectedArgument? b), string a3) = args;

                    // SELECT and an unquoted name need something between them.
                    bool quotedNext = schema ? schemaQuoted : nameQuoted;
                    string afterSelect = quotedNext || s1.Length > 0 ? s1 : " ";
                    string qualified = schema ? $"{schemaText}{s2}.{s2}{nameText}" : nameText;
                    string lastTrivia = tail.Item1;
                    string text = $"{semis}{t0}{select}{afterSelect}{qualified}{a0}({a1}{firstText}{a2}{secondText}{a3}){alias.Text}{lastTrivia}{tail.Item2}";
                    var expected = new ExpectedCall(function, a, b, alias.Column ?? name, alias.Column is not null, alias.Quoted);
                    return new GeneratedSql(text, expected);
                });
        });

    /// <summary>Text pieces a mutation may insert: tokens of the grammar and of what surrounds it.</summary>
    public static readonly byte[][] Tokens =
    [
        .. new[]
        {
            "(", ")", ",", ";", "'", "\"", "$", "$1", "$$", "::", "-", "+", "--", "/*", "*/", ".", "0", "9", "2147483648", "as", "AS", "from",
            "null", "int", "bigint", "text", "\n", " ", "\0", "pg_backend_pid", "pg_cancel_backend", "pg_terminate_backend", "pg_catalog",
            "select", "e'", "u&", "[", "]", "*", "=", "1.5", "1e3", "_", "x", "Ä", "where", "union", "\v", "\f",
        }.Select(Encoding.UTF8.GetBytes),
        [0xC3], [0xFF], [0x80], [0xE6, 0x97],
    ];

    /// <summary>Statements that look like an accepted one but are not, or are only by accident: the scanner must not read a call in them wrongly.</summary>
    public static readonly Gen<string> NearMiss = Gen.SelectMany(Accepted, Gen.Int[0, 5], Gen.Int[0, 1000], (sql, how, pick) =>
    {
        string[] tails = [" + 1", ", 1", "; select 1", " from t", " where true", ")", "(", " x y", "::text", " /* open", " union select 1", "[1]", ".x", " 'x'", " $$x$$", " || 'a'", " is null", " limit 1", " x.y", " AS", " 1"];
        string[] prefixes = ["explain ", "with x as (select 1) ", "(", "select 1; ", "select 1, ", "select all ", "select distinct ", "e", "x", "/* */ 1 ", "'"];
        string[] names = ["pg_backend_pidx", "pg_backend_pi", "xpg_backend_pid", "pg_cancel_backend_", "pg_cancel_backends", "pg_terminate_backend2", "\"PG_BACKEND_PID\"", "\"Pg_cancel_backend\"", "public.pg_backend_pid", "pg_catalogx.pg_cancel_backend", "pg_catalog.pg_catalog.pg_backend_pid", "\"pg_catalog \".pg_backend_pid", "pg_backend_pid$", "pg_stat_activity"];
        string[] wrapped = ["select 'TEXT'", "select $$TEXT$$", "select $q$TEXT$q$", "select E'TEXT'", "select \"TEXT\"", "select 1 -- TEXT", "/* TEXT */ select 1", "select (TEXT)", "select count(*) from (TEXT) s", "select TEXT, 1", "select 1, TEXT"];
        string text = sql.Text;
        string trimmed = text.TrimEnd(' ', '\t', '\r', '\n', '\f', '\v', ';');
        string call = text.TrimStart(' ', '\t', '\r', '\n', '\f', '\v', ';');
        return Gen.Const(how switch
        {
            0 => trimmed + tails[pick % tails.Length],
            1 => prefixes[pick % prefixes.Length] + text,
            2 => System.Text.RegularExpressions.Regex.Replace(text, "(?i)pg_(backend_pid|cancel_backend|terminate_backend)", names[pick % names.Length], System.Text.RegularExpressions.RegexOptions.None, TimeSpan.FromSeconds(1)),
            3 => wrapped[pick % wrapped.Length].Replace("TEXT", call.Replace("'", "''", StringComparison.Ordinal), StringComparison.Ordinal),
            4 => text.Replace("(", "((", StringComparison.Ordinal),
            _ => text.Replace(")", ", 1)", StringComparison.Ordinal),
        });
    });
}
