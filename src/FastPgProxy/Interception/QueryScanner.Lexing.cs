using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace FastPgProxy.Interception;

/// <summary>The scanner's lexical layer: trivia, keywords, punctuation, names and identifiers, by PostgreSQL's scan.l rules.</summary>
internal static partial class QueryScanner
{
    /// <summary>
    /// Whether the text starts with the keyword SELECT in any case followed by a byte that ends it. The
    /// six letters are folded and compared in one 64-bit load; among all bytes, <c>| 0x20</c> maps only
    /// the upper-case form of a letter onto its lower case.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool StartsWithSelect(ReadOnlySpan<byte> s)
    {
        const ulong sixLetters = 0x0000_FFFF_FFFF_FFFF;
        const ulong caseBits = 0x0000_2020_2020_2020;
        const ulong select = 0x0000_7463_656C_6573; // "select", little-endian
        return s.Length >= sizeof(ulong)
            && ((BinaryPrimitives.ReadUInt64LittleEndian(s) | caseBits) & sixLetters) == select
            && !IsIdentCont(s[SelectKeyword.Length]);
    }

    private static ReadOnlySpan<byte> SelectKeyword => "select"u8;

    /// <summary>Whether whitespace or a comment may start at a byte: control characters and space, '-', '/'.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool IsTriviaStart(byte b) => b <= (byte)' ' || b == (byte)'-' || b == (byte)'/';

    /// <summary>
    /// Skips whitespace and comments from <paramref name="i"/>. False only for a block comment that does
    /// not end, which PostgreSQL reports as an error.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool SkipTrivia(ReadOnlySpan<byte> s, ref int i)
        => i >= s.Length || !IsTriviaStart(s[i]) || SkipTriviaLoop(s, ref i);

    private static bool SkipTriviaLoop(ReadOnlySpan<byte> s, ref int i)
    {
        while (i < s.Length)
        {
            byte b = s[i];
            if (IsSpace(b))
            {
                i++;
            }
            else if (b == (byte)'-' && i + 1 < s.Length && s[i + 1] == (byte)'-')
            {
                // A line comment runs to the next LF or CR (scan.l: comment = "--"{non_newline}*).
                int end = s.Slice(i + 2).IndexOfAny((byte)'\n', (byte)'\r');
                i = end < 0 ? s.Length : i + 2 + end;
            }
            else if (b == (byte)'/' && i + 1 < s.Length && s[i + 1] == (byte)'*')
            {
                if (!SkipBlockComment(s, ref i))
                {
                    return false;
                }
            }
            else
            {
                break;
            }
        }

        return true;
    }

    /// <summary>Skips trivia and semicolons (empty statements) from <paramref name="i"/>; false only for an unterminated block comment.</summary>
    private static bool SkipSemicolons(ReadOnlySpan<byte> s, ref int i)
    {
        while (SkipTrivia(s, ref i))
        {
            if (i == s.Length || s[i] != (byte)';')
            {
                return true;
            }

            i++;
        }

        return false;
    }

    /// <summary>Skips a block comment starting at <paramref name="i"/>; block comments nest, as in PostgreSQL (scan.l xc).</summary>
    private static bool SkipBlockComment(ReadOnlySpan<byte> s, ref int i)
    {
        int depth = 1;
        i += 2;
        while (true)
        {
            int next = s.Slice(i).IndexOfAny((byte)'*', (byte)'/');
            if (next < 0)
            {
                return false;
            }

            i += next;
            if (i + 1 >= s.Length)
            {
                return false;
            }

            if (s[i] == (byte)'/' && s[i + 1] == (byte)'*')
            {
                depth++;
                i += 2;
            }
            else if (s[i] == (byte)'*' && s[i + 1] == (byte)'/')
            {
                i += 2;
                if (--depth == 0)
                {
                    return true;
                }
            }
            else
            {
                i++;
            }
        }
    }

    /// <summary>Consumes the unquoted keyword <paramref name="lowerKeyword"/> (whole identifier, any case).</summary>
    private static bool TryKeyword(ReadOnlySpan<byte> s, ref int i, ReadOnlySpan<byte> lowerKeyword)
    {
        if (i >= s.Length || !IsIdentStart(s[i]))
        {
            return false;
        }

        int end = IdentifierEnd(s, i);
        if (!EqualsFolded(s.Slice(i, end - i), lowerKeyword))
        {
            return false;
        }

        i = end;
        return true;
    }

    /// <summary>Consumes <paramref name="punctuation"/> and the trivia after it.</summary>
    private static bool TryPunctuation(ReadOnlySpan<byte> s, ref int i, byte punctuation)
    {
        if (i >= s.Length || s[i] != punctuation)
        {
            return false;
        }

        i++;
        return SkipTrivia(s, ref i);
    }

    /// <summary>Consumes an optionally schema-qualified function name and the trivia after it.</summary>
    private static bool TryFunctionName(ReadOnlySpan<byte> s, ref int i, out InterceptedFunction function)
    {
        function = default;
        if (!TryName(s, ref i, out int start, out int length, out bool quoted) || !SkipTrivia(s, ref i))
        {
            return false;
        }

        // PostgreSQL allows whitespace and comments around the dot of a qualified name.
        if (i < s.Length && s[i] == (byte)'.')
        {
            if (!NameEquals(s.Slice(start, length), quoted, "pg_catalog"u8))
            {
                return false;
            }

            i++;
            if (!SkipTrivia(s, ref i)
                || !TryName(s, ref i, out start, out length, out quoted)
                || !SkipTrivia(s, ref i))
            {
                return false;
            }
        }

        ReadOnlySpan<byte> name = s.Slice(start, length);
        switch (length)
        {
            case 14 when NameEquals(name, quoted, "pg_backend_pid"u8):
                function = InterceptedFunction.BackendPid;
                return true;
            case 17 when NameEquals(name, quoted, "pg_cancel_backend"u8):
                function = InterceptedFunction.CancelBackend;
                return true;
            case 20 when NameEquals(name, quoted, "pg_terminate_backend"u8):
                function = InterceptedFunction.TerminateBackend;
                return true;
            default:
                return false;
        }
    }

    /// <summary>
    /// Consumes an identifier, unquoted or double-quoted. For a quoted one, the span is its content as
    /// written (doubled quotes still doubled).
    /// </summary>
    private static bool TryName(ReadOnlySpan<byte> s, ref int i, out int start, out int length, out bool quoted)
    {
        if (i < s.Length && s[i] == (byte)'"')
        {
            quoted = true;
            return TryQuotedIdentifier(s, ref i, out start, out length);
        }

        quoted = false;
        start = i;
        length = 0;
        if (i >= s.Length || !IsIdentStart(s[i]))
        {
            return false;
        }

        i = IdentifierEnd(s, i);
        length = i - start;
        return true;
    }

    /// <summary>
    /// Consumes a double-quoted identifier at <paramref name="i"/>. Fails when it does not end, is empty
    /// (PostgreSQL: zero-length delimited identifier) or is longer than PostgreSQL keeps once unescaped.
    /// </summary>
    private static bool TryQuotedIdentifier(ReadOnlySpan<byte> s, ref int i, out int start, out int length)
    {
        start = i + 1;
        length = 0;
        int pos = start;
        int unescaped = 0;
        while (true)
        {
            int quote = s.Slice(pos).IndexOf((byte)'"');
            if (quote < 0)
            {
                return false;
            }

            unescaped += quote;
            pos += quote + 1;
            if (pos < s.Length && s[pos] == (byte)'"')
            {
                // A doubled quote stands for one quote character.
                unescaped++;
                pos++;
                continue;
            }

            break;
        }

        if (unescaped == 0 || unescaped > MaxIdentifierLength)
        {
            return false;
        }

        length = pos - 1 - start;
        i = pos;
        return true;
    }

    /// <summary>Whether a name as written equals <paramref name="lowerName"/>: exactly when quoted, in any letter case when not.</summary>
    private static bool NameEquals(ReadOnlySpan<byte> name, bool quoted, ReadOnlySpan<byte> lowerName)
        => quoted ? name.SequenceEqual(lowerName) : EqualsFolded(name, lowerName);

    /// <summary>Whether an unquoted word is one PostgreSQL only accepts as a column label after AS.</summary>
    private static bool IsAsLabelKeyword(ReadOnlySpan<byte> word)
    {
        if (word.Length > LongestAsLabelKeyword)
        {
            return false;
        }

        // " word " in lower case, looked up in the space-separated list.
        Span<byte> framed = stackalloc byte[LongestAsLabelKeyword + 2];
        framed[0] = (byte)' ';
        for (int k = 0; k < word.Length; k++)
        {
            byte b = word[k];
            framed[k + 1] = (uint)(b - 'A') <= 'Z' - 'A' ? (byte)(b | 0x20) : b;
        }

        framed[word.Length + 1] = (byte)' ';
        return AsLabelKeywords.IndexOf(framed.Slice(0, word.Length + 2)) >= 0;
    }

    /// <summary>
    /// Compares an identifier's bytes with a lower-case ASCII word. Both sides hold identifier characters
    /// only, and among those <c>| 0x20</c> maps nothing but an upper-case letter onto its lower case.
    /// </summary>
    private static bool EqualsFolded(ReadOnlySpan<byte> identifier, ReadOnlySpan<byte> lowerWord)
    {
        if (identifier.Length != lowerWord.Length)
        {
            return false;
        }

        for (int k = 0; k < identifier.Length; k++)
        {
            if ((identifier[k] | 0x20) != (lowerWord[k] | 0x20))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>The offset just past the identifier starting at <paramref name="i"/>.</summary>
    private static int IdentifierEnd(ReadOnlySpan<byte> s, int i)
    {
        i++;
        while (i < s.Length && IsIdentCont(s[i]))
        {
            i++;
        }

        return i;
    }

    // scan.l space: [ \t\n\r\f\v] (\v since PostgreSQL 17).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool IsSpace(byte b) => b == (byte)' ' || (uint)(b - '\t') <= '\r' - '\t';

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool IsDigit(byte b) => (uint)(b - '0') <= 9;

    // scan.l ident_start: [A-Za-z\200-\377_].
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool IsIdentStart(byte b) => (uint)((b | 0x20) - 'a') <= 'z' - 'a' || b == (byte)'_' || b >= 0x80;

    // scan.l ident_cont: [A-Za-z\200-\377_0-9\$].
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool IsIdentCont(byte b) => IsIdentStart(b) || IsDigit(b) || b == (byte)'$';
}
