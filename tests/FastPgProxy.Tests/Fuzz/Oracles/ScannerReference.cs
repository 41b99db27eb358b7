using System.Numerics;
using System.Text;
using FastPgProxy.Interception;

namespace FastPgProxy.Tests.Fuzz;

/// <summary>A call as the reference reads it: which function, its arguments and the final column name.</summary>
internal sealed record ExpectedCall(InterceptedFunction Function, ExpectedArgument? Argument, ExpectedArgument? Timeout, string ColumnName, bool Aliased, bool AliasQuoted)
{
    public override string ToString() => $"{Function}({Argument}{(Timeout is null ? "" : ", " + Timeout)}) {(Aliased ? (AliasQuoted ? "\"" + ColumnName + "\"" : ColumnName) : "-")}";
}

/// <summary>One argument: an integer, NULL or $n, and the cast written (none, int4 or int8).</summary>
internal sealed record ExpectedArgument(ArgumentKind Kind, long Value, int Parameter, ArgumentCast Cast)
{
    public override string ToString() => Kind switch
    {
        ArgumentKind.Integer => Value.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ArgumentKind.Null => "null",
        _ => "$" + Parameter.ToString(System.Globalization.CultureInfo.InvariantCulture),
    } + Cast switch { ArgumentCast.Int4 => "::int4", ArgumentCast.Int8 => "::int8", _ => "" };
}

/// <summary>
/// A slow reference for <see cref="QueryScanner"/>: a tokenizer that follows PostgreSQL's scan.l for the tokens
/// the accepted grammar uses (anything else is an error token), then a recursive-descent parser of the grammar
/// documented on the scanner:
/// <code>
/// statement := {';'} SELECT call [alias] {';'} end
/// call      := [schema '.'] pg_backend_pid '(' ')' | [schema '.'] pg_cancel_backend '(' arg ')'
///            | [schema '.'] pg_terminate_backend '(' arg [',' arg] ')'
/// arg       := value [cast] | '(' value [cast] ')' [cast]   (at most one cast)
/// value     := ['+' | '-'] digits | NULL | '$' digits
/// cast      := '::' (int | integer | int4 | bigint | int8)
/// alias     := AS (identifier | keyword | quoted) | identifier-not-AS_LABEL-keyword | quoted
/// </code>
/// </summary>
internal static class ScannerReference
{
    private enum Kind
    {
        Word,
        Quoted,
        Integer,
        Parameter,
        Cast,
        Punct,
    }

    private sealed record Token(Kind Kind, string Text, byte[] Raw);

    // PostgreSQL 15's pg_get_keywords() where not barelabel: words that are a column label only after AS.
    private static readonly HashSet<string> AsLabel =
    [
        "array", "as", "char", "character", "create", "day", "except", "fetch", "filter", "for", "from", "grant", "group",
        "having", "hour", "intersect", "into", "isnull", "limit", "minute", "month", "notnull", "offset", "on", "order",
        "over", "overlaps", "precision", "returning", "second", "to", "union", "varying", "where", "window", "with",
        "within", "without", "year",
    ];

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private static bool IsSpace(byte b) => b is (byte)' ' or (byte)'\t' or (byte)'\n' or (byte)'\r' or (byte)'\f' or (byte)'\v';

    private static bool IsIdentStart(byte b) => b is >= (byte)'a' and <= (byte)'z' or >= (byte)'A' and <= (byte)'Z' or (byte)'_' or >= 0x80;

    private static bool IsIdentCont(byte b) => IsIdentStart(b) || b is >= (byte)'0' and <= (byte)'9' or (byte)'$';

    private static bool IsDigit(byte b) => b is >= (byte)'0' and <= (byte)'9';

    /// <summary>Splits the text into tokens; null when some byte cannot start a token the grammar uses.</summary>
    private static List<Token>? Tokenize(byte[] s)
    {
        var tokens = new List<Token>();
        int i = 0;
        while (i < s.Length)
        {
            byte b = s[i];
            if (IsSpace(b))
            {
                i++;
            }
            else if (b == (byte)'-' && i + 1 < s.Length && s[i + 1] == (byte)'-')
            {
                while (i < s.Length && s[i] != (byte)'\n' && s[i] != (byte)'\r')
                {
                    i++;
                }
            }
            else if (b == (byte)'/' && i + 1 < s.Length && s[i + 1] == (byte)'*')
            {
                int depth = 0;
                while (true)
                {
                    if (i + 1 >= s.Length)
                    {
                        return null; // unterminated /* comment
                    }

                    if (s[i] == (byte)'/' && s[i + 1] == (byte)'*')
                    {
                        depth++;
                        i += 2;
                    }
                    else if (s[i] == (byte)'*' && s[i + 1] == (byte)'/')
                    {
                        depth--;
                        i += 2;
                        if (depth == 0)
                        {
                            break;
                        }
                    }
                    else
                    {
                        i++;
                    }
                }
            }
            else if (IsIdentStart(b))
            {
                int start = i;
                while (i < s.Length && IsIdentCont(s[i]))
                {
                    i++;
                }

                tokens.Add(new Token(Kind.Word, Latin1(s, start, i), s[start..i]));
            }
            else if (b == (byte)'"')
            {
                var content = new List<byte>();
                i++;
                while (true)
                {
                    if (i >= s.Length)
                    {
                        return null; // unterminated quoted identifier
                    }

                    if (s[i] == (byte)'"')
                    {
                        if (i + 1 < s.Length && s[i + 1] == (byte)'"')
                        {
                            content.Add((byte)'"');
                            i += 2;
                            continue;
                        }

                        i++;
                        break;
                    }

                    content.Add(s[i++]);
                }

                if (content.Count == 0 || content.Count > 63)
                {
                    return null; // zero-length, or longer than NAMEDATALEN - 1 (the scanner does not truncate)
                }

                tokens.Add(new Token(Kind.Quoted, Latin1([.. content], 0, content.Count), [.. content]));
            }
            else if (IsDigit(b))
            {
                int start = i;
                while (i < s.Length && IsDigit(s[i]))
                {
                    i++;
                }

                if (i < s.Length && (IsIdentCont(s[i]) || s[i] == (byte)'.'))
                {
                    return null; // numeric, PostgreSQL 16 integer syntax, or trailing junk
                }

                tokens.Add(new Token(Kind.Integer, Latin1(s, start, i), s[start..i]));
            }
            else if (b == (byte)'$')
            {
                int start = ++i;
                while (i < s.Length && IsDigit(s[i]))
                {
                    i++;
                }

                if (i == start || (i < s.Length && IsIdentCont(s[i])))
                {
                    return null; // a dollar quote, or a parameter with trailing junk
                }

                tokens.Add(new Token(Kind.Parameter, Latin1(s, start, i), s[start..i]));
            }
            else if (b == (byte)':' && i + 1 < s.Length && s[i + 1] == (byte)':')
            {
                tokens.Add(new Token(Kind.Cast, "::", [(byte)':', (byte)':']));
                i += 2;
            }
            else if (b is (byte)'(' or (byte)')' or (byte)',' or (byte)';' or (byte)'.' or (byte)'+' or (byte)'-')
            {
                tokens.Add(new Token(Kind.Punct, ((char)b).ToString(), [b]));
                i++;
            }
            else
            {
                return null;
            }
        }

        return tokens;
    }

    private static string Latin1(byte[] s, int start, int end) => Encoding.Latin1.GetString(s, start, end - start);

    /// <summary>What the scanner must make of <paramref name="sql"/>: the call, or null when it must be left to the server.</summary>
    public static ExpectedCall? Match(byte[] sql)
    {
        try
        {
            _ = StrictUtf8.GetString(sql);
        }
        catch (DecoderFallbackException)
        {
            return null;
        }

        List<Token>? tokens = Tokenize(sql);
        return tokens is null ? null : new Parser(tokens).Statement();
    }

    private sealed class Parser(List<Token> tokens)
    {
        private int _next;

        private Token? Peek => _next < tokens.Count ? tokens[_next] : null;

        private bool IsPunct(string p) => Peek is { Kind: Kind.Punct } t && t.Text == p;

        private bool IsWord(string lower) => Peek is { Kind: Kind.Word } t && FoldAscii(t.Text) == lower;

        // Only ASCII letters fold in an unquoted identifier (downcase_identifier with a multibyte encoding).
        private static string FoldAscii(string text) => string.Concat(text.Select(c => c is >= 'A' and <= 'Z' ? (char)(c + 32) : c));

        private bool Name(string lower) => Peek is { } t && (t.Kind == Kind.Word ? FoldAscii(t.Text) == lower : t.Kind == Kind.Quoted && t.Text == lower);

        public ExpectedCall? Statement()
        {
            while (IsPunct(";"))
            {
                _next++;
            }

            if (!IsWord("select"))
            {
                return null;
            }

            _next++;
            if (Peek is null || Peek.Kind is not (Kind.Word or Kind.Quoted))
            {
                return null;
            }

            if (_next + 1 < tokens.Count && tokens[_next + 1] is { Kind: Kind.Punct, Text: "." })
            {
                if (!Name("pg_catalog"))
                {
                    return null;
                }

                _next += 2;
            }

            InterceptedFunction function;
            if (Name("pg_backend_pid"))
            {
                function = InterceptedFunction.BackendPid;
            }
            else if (Name("pg_cancel_backend"))
            {
                function = InterceptedFunction.CancelBackend;
            }
            else if (Name("pg_terminate_backend"))
            {
                function = InterceptedFunction.TerminateBackend;
            }
            else
            {
                return null;
            }

            _next++;
            if (!IsPunct("("))
            {
                return null;
            }

            _next++;
            ExpectedArgument? argument = null, timeout = null;
            if (function != InterceptedFunction.BackendPid)
            {
                argument = Argument();
                if (argument is null)
                {
                    return null;
                }

                if (function == InterceptedFunction.TerminateBackend && IsPunct(","))
                {
                    _next++;
                    timeout = Argument();
                    if (timeout is null)
                    {
                        return null;
                    }
                }
            }

            if (!IsPunct(")"))
            {
                return null;
            }

            _next++;
            string column = Encoding.UTF8.GetString(Encoding.Latin1.GetBytes(FunctionName(function)));
            bool aliased = false, quoted = false;
            if (Peek is { } alias && !IsPunct(";"))
            {
                if (IsWord("as"))
                {
                    _next++;
                }
                else if (alias.Kind == Kind.Word && AsLabel.Contains(FoldAscii(alias.Text)))
                {
                    return null;
                }

                if (Peek is not { Kind: Kind.Word or Kind.Quoted } name || (name.Kind == Kind.Word && name.Raw.Length > 63))
                {
                    return null;
                }

                aliased = true;
                quoted = name.Kind == Kind.Quoted;
                column = Encoding.UTF8.GetString(quoted ? name.Raw : Encoding.Latin1.GetBytes(FoldAscii(name.Text)));
                _next++;
            }

            while (IsPunct(";"))
            {
                _next++;
            }

            return Peek is null ? new ExpectedCall(function, argument, timeout, column, aliased, quoted) : null;
        }

        private static string FunctionName(InterceptedFunction function) => function switch
        {
            InterceptedFunction.BackendPid => "pg_backend_pid",
            InterceptedFunction.CancelBackend => "pg_cancel_backend",
            _ => "pg_terminate_backend",
        };

        /// <summary>value [cast] | '(' value [cast] ')' [cast], at most one cast, and the literal must survive it.</summary>
        private ExpectedArgument? Argument()
        {
            bool parenthesized = IsPunct("(");
            if (parenthesized)
            {
                _next++;
            }

            (ArgumentKind kind, BigInteger value, int parameter, bool signed)? v = Value();
            if (v is null)
            {
                return null;
            }

            ArgumentCast? cast = Cast();
            if (cast is null)
            {
                return null;
            }

            // Inside: the cast binds before the sign, so the literal's magnitude must fit.
            if (v.Value.kind == ArgumentKind.Integer && cast != ArgumentCast.None
                && !Fits(v.Value.signed ? BigInteger.Abs(v.Value.value) : v.Value.value, cast.Value))
            {
                return null;
            }

            if (parenthesized)
            {
                if (!IsPunct(")"))
                {
                    return null;
                }

                _next++;
                if (cast == ArgumentCast.None)
                {
                    // After the parentheses the cast applies to the folded, signed constant.
                    cast = Cast();
                    if (cast is null || (v.Value.kind == ArgumentKind.Integer && cast != ArgumentCast.None && !Fits(v.Value.value, cast.Value)))
                    {
                        return null;
                    }
                }
            }

            return new ExpectedArgument(v.Value.kind, (long)v.Value.value, v.Value.parameter, cast.Value);
        }

        private static bool Fits(BigInteger value, ArgumentCast cast) => cast == ArgumentCast.Int4
            ? value >= int.MinValue && value <= int.MaxValue
            : value >= long.MinValue && value <= long.MaxValue;

        private (ArgumentKind, BigInteger, int, bool)? Value()
        {
            if (Peek is { Kind: Kind.Parameter } p)
            {
                _next++;
                BigInteger n = BigInteger.Parse(p.Text, System.Globalization.CultureInfo.InvariantCulture);
                return n >= 1 && n <= 65535 ? (ArgumentKind.Parameter, 0, (int)n, false) : null;
            }

            if (IsWord("null"))
            {
                _next++;
                return (ArgumentKind.Null, 0, 0, false);
            }

            bool signed = IsPunct("-") || IsPunct("+");
            bool negative = IsPunct("-");
            if (signed)
            {
                _next++;
            }

            if (Peek is not { Kind: Kind.Integer } digits)
            {
                return null;
            }

            _next++;
            BigInteger value = BigInteger.Parse(digits.Text, System.Globalization.CultureInfo.InvariantCulture);
            if (negative)
            {
                value = -value;
            }

            return value >= long.MinValue && value <= long.MaxValue ? (ArgumentKind.Integer, value, 0, signed) : null;
        }

        /// <summary>None when there is no cast, null for a cast to any other type.</summary>
        private ArgumentCast? Cast()
        {
            if (Peek is not { Kind: Kind.Cast })
            {
                return ArgumentCast.None;
            }

            _next++;
            if (Peek is not { Kind: Kind.Word } type)
            {
                return null;
            }

            _next++;
            return FoldAscii(type.Text) switch
            {
                "int" or "integer" or "int4" => ArgumentCast.Int4,
                "bigint" or "int8" => ArgumentCast.Int8,
                _ => null,
            };
        }
    }
}
