using System.Text;
using System.Text.Unicode;

namespace FastPgProxy.Interception;

/// <summary>
/// Recognises, in the SQL text of a Query or Parse message, the few statements the proxy answers itself:
/// <c>SELECT pg_backend_pid()</c>, <c>SELECT pg_cancel_backend(pid)</c> and
/// <c>SELECT pg_terminate_backend(pid[, timeout])</c>, each alone in its message.
/// </summary>
/// <remarks>
/// <para>
/// A hand-written scanner over UTF-8 bytes that follows PostgreSQL's lexer (scan.l) for the tokens it
/// accepts and gives up at the first byte that cannot belong to an accepted form, so an ordinary query
/// costs a few nanoseconds. It allocates nothing. The accepted grammar, tokens separated by any amount of
/// whitespace (space, tab, CR, LF, FF, and VT as PostgreSQL 17+ reads it; older servers reject VT as a
/// syntax error), <c>--</c> line comments and nesting <c>/* */</c> comments:
/// </para>
/// <code>
/// statement := {';'} SELECT call [alias] {';'} end
/// call      := [schema '.'] pg_backend_pid '(' ')'
///            | [schema '.'] pg_cancel_backend '(' arg ')'
///            | [schema '.'] pg_terminate_backend '(' arg [',' arg] ')'
/// schema    := pg_catalog | "pg_catalog"
/// arg       := value [cast] | '(' value [cast] ')' [cast]          (at most one cast)
/// value     := ['+' | '-'] digits | NULL | '$' digits
/// cast      := '::' (int | integer | int4 | bigint | int8)
/// alias     := AS (identifier | keyword | quoted) | identifier-not-AS_LABEL-keyword | quoted
/// </code>
/// <para>
/// Keywords and unquoted names match in any letter case; a quoted name (<c>"pg_cancel_backend"</c>) must
/// match exactly. Whatever the scanner does not accept goes to the server unchanged, so it errs on the
/// side of "no match": integer literals must fit in int64, <c>$n</c> must be 1..65535, an alias longer
/// than 63 bytes (which PostgreSQL would truncate, with a NOTICE) is not accepted, and neither is text
/// that is not valid UTF-8 (PostgreSQL rejects it with 22021). A bare alias may be any identifier or
/// keyword except those PostgreSQL 14+ only accepts after AS (kwlist.h AS_LABEL: FROM, WHERE, UNION,
/// ORDER, ...), since those mean the statement continues.
/// </para>
/// </remarks>
internal static partial class QueryScanner
{
    /// <summary>The longest identifier PostgreSQL keeps: NAMEDATALEN - 1 bytes.</summary>
    public const int MaxIdentifierLength = 63;

    /// <summary>The highest parameter number accepted: a Bind message counts its parameters in an int16.</summary>
    public const int MaxParameterIndex = ushort.MaxValue;

    // The keywords PostgreSQL 14+ marks AS_LABEL in kwlist.h: usable as a column label only after AS.
    // Each is framed by spaces so that a lookup is one IndexOf of " word ".
    private static ReadOnlySpan<byte> AsLabelKeywords =>
        " array as char character create day except fetch filter for from grant group having hour intersect into isnull limit minute month notnull offset on order over overlaps precision returning second to union varying where window with within without year "u8;

    // The longest AS_LABEL keyword ("character", "intersect", "precision", "returning").
    private const int LongestAsLabelKeyword = 9;

    /// <summary>
    /// Whether <paramref name="sql"/> is exactly one of the accepted statements. On success
    /// <paramref name="call"/> describes it; on failure it is default and the text must go to the server.
    /// </summary>
    public static bool TryMatch(ReadOnlySpan<byte> sql, out InterceptedCall call)
    {
        call = default;

        // Nearly every statement a client sends is not one of these, and is told apart by its first
        // bytes: most start with their keyword, and only SELECT (one 8-byte compare) gets further.
        int i;
        if (StartsWithSelect(sql))
        {
            i = SelectKeyword.Length;
        }
        else
        {
            // Whitespace, comments or empty statements first: PostgreSQL's parser drops the empty
            // statements, so "; SELECT ..." is still a single statement.
            i = 0;
            if (sql.IsEmpty || !(IsTriviaStart(sql[0]) || sql[0] == (byte)';') || !SkipSemicolons(sql, ref i)
                || !TryKeyword(sql, ref i, SelectKeyword))
            {
                return false;
            }
        }

        // Every accepted function name starts with 'p' (pg_catalog, pg_...) or a quote: an ordinary
        // SELECT stops here, at the first byte of its select list.
        if (!SkipTrivia(sql, ref i) || i >= sql.Length || ((sql[i] | 0x20) != (byte)'p' && sql[i] != (byte)'"'))
        {
            return false;
        }

        if (!TryFunctionName(sql, ref i, out InterceptedFunction function)
            || !TryPunctuation(sql, ref i, (byte)'('))
        {
            return false;
        }

        CallArgument argument = default;
        CallArgument timeout = default;
        if (function != InterceptedFunction.BackendPid)
        {
            if (!TryArgument(sql, ref i, out argument))
            {
                return false;
            }

            if (function == InterceptedFunction.TerminateBackend && i < sql.Length && sql[i] == (byte)',')
            {
                i++;
                if (!SkipTrivia(sql, ref i) || !TryArgument(sql, ref i, out timeout))
                {
                    return false;
                }
            }
        }

        if (!TryPunctuation(sql, ref i, (byte)')')
            || !TryAlias(sql, ref i, out int aliasStart, out int aliasLength, out bool aliasQuoted))
        {
            return false;
        }

        // Empty statements after the call are dropped as well: "SELECT ...;;" is one statement.
        if (!SkipSemicolons(sql, ref i))
        {
            return false;
        }

        // Every token accepted above is ASCII; only comments and the alias can hold other bytes, and
        // PostgreSQL rejects the whole message if they are not valid UTF-8.
        if (i != sql.Length || !(Ascii.IsValid(sql) || Utf8.IsValid(sql)))
        {
            return false;
        }

        call = new InterceptedCall(function, argument, timeout, aliasStart, aliasLength, aliasQuoted);
        return true;
    }

    /// <summary>
    /// Consumes one argument and the trivia after it: a value with an optional cast, or the same in one
    /// pair of parentheses with the cast inside or after them.
    /// </summary>
    private static bool TryArgument(ReadOnlySpan<byte> s, ref int i, out CallArgument argument)
    {
        argument = default;
        bool parenthesized = i < s.Length && s[i] == (byte)'(';
        if (parenthesized)
        {
            i++;
            if (!SkipTrivia(s, ref i))
            {
                return false;
            }
        }

        if (!TryValue(s, ref i, out ArgumentKind kind, out long value, out int parameterIndex, out bool signed)
            || !SkipTrivia(s, ref i)
            || !TryCast(s, ref i, out ArgumentCast cast))
        {
            return false;
        }

        // A cast binds tighter than a sign: "-2147483648::int" is -(2147483648::int), which overflows.
        // Whatever cast applies must hold the literal's magnitude, or PostgreSQL raises 22003.
        if (kind == ArgumentKind.Integer && cast != ArgumentCast.None && !FitsCast(value, signed, cast))
        {
            return false;
        }

        if (parenthesized)
        {
            if (!TryPunctuation(s, ref i, (byte)')'))
            {
                return false;
            }

            if (cast == ArgumentCast.None)
            {
                // "(-2147483648)::int" casts the folded constant: the sign counts here.
                if (!TryCast(s, ref i, out cast)
                    || (kind == ArgumentKind.Integer && cast != ArgumentCast.None && !FitsCast(value, signed: false, cast)))
                {
                    return false;
                }
            }
        }

        argument = new CallArgument(kind, value, parameterIndex, cast);
        return true;
    }

    /// <summary>Consumes an integer literal (with one optional sign, reported in <paramref name="signed"/>), <c>NULL</c> or <c>$n</c>.</summary>
    private static bool TryValue(ReadOnlySpan<byte> s, ref int i, out ArgumentKind kind, out long value, out int parameterIndex, out bool signed)
    {
        kind = ArgumentKind.None;
        value = 0;
        parameterIndex = 0;
        signed = false;
        if (i >= s.Length)
        {
            return false;
        }

        byte b = s[i];
        if (b == (byte)'$')
        {
            // scan.l param: '$' digits; digits followed by identifier characters are "trailing junk".
            int start = ++i;
            int n = 0;
            while (i < s.Length && IsDigit(s[i]))
            {
                n = (n * 10) + (s[i++] - '0');
                if (n > MaxParameterIndex)
                {
                    return false;
                }
            }

            if (i == start || n == 0 || (i < s.Length && IsIdentCont(s[i])))
            {
                return false;
            }

            kind = ArgumentKind.Parameter;
            parameterIndex = n;
            return true;
        }

        if ((b | 0x20) == (byte)'n')
        {
            if (!TryKeyword(s, ref i, "null"u8))
            {
                return false;
            }

            kind = ArgumentKind.Null;
            return true;
        }

        // A sign is a separate operator token: PostgreSQL allows whitespace and comments after it and
        // folds it into the constant (gram.y doNegate), so "- 2147483648" is still an int4.
        bool negative = false;
        if (b == (byte)'-' || b == (byte)'+')
        {
            negative = b == (byte)'-';
            signed = true;
            i++;
            if (!SkipTrivia(s, ref i))
            {
                return false;
            }
        }

        if (i >= s.Length || !IsDigit(s[i]))
        {
            return false;
        }

        // Accumulate the magnitude; long.MinValue's magnitude is one more than long.MaxValue.
        ulong limit = negative ? 1UL << 63 : long.MaxValue;
        ulong magnitude = 0;
        while (i < s.Length && IsDigit(s[i]))
        {
            uint digit = (uint)(s[i++] - '0');
            if (magnitude > (limit - digit) / 10)
            {
                return false;
            }

            magnitude = (magnitude * 10) + digit;
        }

        // "1.5", "1e3" (numeric), "1_000" and "0x10" (PostgreSQL 16 integer syntax), "1abc" (junk).
        if (i < s.Length && (IsIdentCont(s[i]) || s[i] == (byte)'.'))
        {
            return false;
        }

        kind = ArgumentKind.Integer;
        value = negative ? (long)(0UL - magnitude) : (long)magnitude;
        return true;
    }

    /// <summary>
    /// Consumes an optional <c>::type</c> and the trivia after it. True with <see cref="ArgumentCast.None"/>
    /// when there is no cast; false for a cast to any type but int4 or int8.
    /// </summary>
    private static bool TryCast(ReadOnlySpan<byte> s, ref int i, out ArgumentCast cast)
    {
        cast = ArgumentCast.None;
        if (i + 1 >= s.Length || s[i] != (byte)':' || s[i + 1] != (byte)':')
        {
            return true;
        }

        i += 2;
        if (!SkipTrivia(s, ref i) || i >= s.Length || !IsIdentStart(s[i]))
        {
            return false;
        }

        int end = IdentifierEnd(s, i);
        ReadOnlySpan<byte> type = s.Slice(i, end - i);
        if (EqualsFolded(type, "int"u8) || EqualsFolded(type, "integer"u8) || EqualsFolded(type, "int4"u8))
        {
            cast = ArgumentCast.Int4;
        }
        else if (EqualsFolded(type, "bigint"u8) || EqualsFolded(type, "int8"u8))
        {
            cast = ArgumentCast.Int8;
        }
        else
        {
            return false;
        }

        i = end;
        return SkipTrivia(s, ref i);
    }

    /// <summary>
    /// Whether an integer literal survives a cast: its value, or when a sign was written outside the cast
    /// the literal's magnitude, must fit the cast's type.
    /// </summary>
    private static bool FitsCast(long value, bool signed, ArgumentCast cast)
    {
        long max = cast == ArgumentCast.Int4 ? int.MaxValue : long.MaxValue;
        long min = cast == ArgumentCast.Int4 ? int.MinValue : long.MinValue;
        if (!signed)
        {
            return value >= min && value <= max;
        }

        // The sign applies after the cast, to the unsigned literal: its magnitude must fit.
        return value != long.MinValue && Math.Abs(value) <= max;
    }

    /// <summary>
    /// Consumes an optional alias and the trivia after it. True with <paramref name="start"/> -1 when the
    /// text continues with <c>;</c> or ends; false when what follows cannot be an alias.
    /// </summary>
    private static bool TryAlias(ReadOnlySpan<byte> s, ref int i, out int start, out int length, out bool quoted)
    {
        start = -1;
        length = 0;
        quoted = false;
        if (i == s.Length || s[i] == (byte)';')
        {
            return true;
        }

        if (s[i] != (byte)'"')
        {
            if (!IsIdentStart(s[i]))
            {
                return false;
            }

            int end = IdentifierEnd(s, i);
            ReadOnlySpan<byte> word = s.Slice(i, end - i);
            if (EqualsFolded(word, "as"u8))
            {
                // After AS any identifier or keyword is a column label (gram.y ColLabel).
                i = end;
                if (!SkipTrivia(s, ref i))
                {
                    return false;
                }
            }
            else if (IsAsLabelKeyword(word))
            {
                return false;
            }
        }

        if (!TryName(s, ref i, out start, out length, out quoted) || (!quoted && length > MaxIdentifierLength))
        {
            start = -1;
            length = 0;
            quoted = false;
            return false;
        }

        return SkipTrivia(s, ref i);
    }
}

