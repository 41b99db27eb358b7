using System.Buffers;
using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Text;

namespace FastPgProxy.Auth;

/// <summary>
/// Prepares a password for SCRAM the way PostgreSQL's <c>pg_saslprep</c> does: SASLprep (RFC 4013) when it
/// succeeds, the raw UTF-8 bytes when it does not.
/// </summary>
/// <remarks>
/// This is an approximation of RFC 4013, good for every password a person is likely to type:
/// <list type="bullet">
/// <item>ASCII passwords are used as they are, control characters included, as PostgreSQL does.</item>
/// <item>Non-ASCII spaces (RFC 3454 table C.1.2) become U+0020 and the characters of table B.1 are dropped.</item>
/// <item>The result is normalized to NFKC with <see cref="string.Normalize(NormalizationForm)"/>. With
/// invariant globalization (this project's setting) .NET has no normalization data and that call returns its
/// input unchanged; the step is then skipped, which is still exact for passwords that are already NFKC
/// (composed text without compatibility characters such as ligatures or full-width forms).</item>
/// <item>Prohibited output (tables C.1.2 to C.9) and unassigned code points make preparation fail, and then
/// the raw bytes are used, as PostgreSQL does. Unassigned is judged by the runtime's Unicode version rather
/// than Unicode 3.2, and the bidirectional rule (RFC 3454 section 6) is not checked.</item>
/// </list>
/// A password that is not valid UTF-16 (a lone surrogate) cannot be prepared; its UTF-8 encoding, with the
/// replacement character, is used as the raw bytes.
/// </remarks>
internal static class SaslPrep
{
    private static readonly bool NormalizationAvailable = ProbeNormalization();

    // RFC 3454 table C.1.2, non-ASCII space characters: mapped to U+0020 (RFC 4013 section 2.1).
    private static readonly SearchValues<char> NonAsciiSpaces = SearchValues.Create(
        "\u00A0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200A\u200B\u202F\u205F\u3000");

    // RFC 3454 table B.1, commonly mapped to nothing (RFC 4013 section 2.1).
    private static readonly SearchValues<char> MappedToNothing = SearchValues.Create(
        "\u00AD\u034F\u1806\u180B\u180C\u180D\u200B\u200C\u200D\u2060"
        + "\uFE00\uFE01\uFE02\uFE03\uFE04\uFE05\uFE06\uFE07\uFE08\uFE09\uFE0A\uFE0B\uFE0C\uFE0D\uFE0E\uFE0F\uFEFF");

    /// <summary>The bytes of <paramref name="password"/> that go into SCRAM's SaltedPassword.</summary>
    public static byte[] Prepare(string password)
    {
        ArgumentNullException.ThrowIfNull(password);
        if (Ascii.IsValid(password))
        {
            return Encoding.ASCII.GetBytes(password);
        }

        return Encoding.UTF8.GetBytes(TryPrepare(password, out var prepared) ? prepared : password);
    }

    /// <summary>Runs RFC 4013's steps; false where PostgreSQL's <c>pg_saslprep</c> reports failure.</summary>
    internal static bool TryPrepare(string input, [NotNullWhen(true)] out string? prepared)
    {
        prepared = null;

        // Step 1, mapping. A lone surrogate is PostgreSQL's "invalid UTF-8" case.
        var mapped = new StringBuilder(input.Length);
        var rest = input.AsSpan();
        while (!rest.IsEmpty)
        {
            if (Rune.DecodeFromUtf16(rest, out var rune, out var consumed) != OperationStatus.Done)
            {
                return false;
            }

            if (NonAsciiSpaces.Contains(rest[0]))
            {
                mapped.Append(' ');
            }
            else if (!MappedToNothing.Contains(rest[0]))
            {
                mapped.Append(rest[..consumed]);
            }

            rest = rest[consumed..];
        }

        // Step 2, NFKC (skipped where the runtime has no normalization data; see the remarks).
        var normalized = mapped.ToString();
        if (NormalizationAvailable)
        {
            try
            {
                normalized = normalized.Normalize(NormalizationForm.FormKC);
            }
            catch (ArgumentException)
            {
                return false;
            }
        }

        // Steps 3 and 5 (RFC 3454 section 7, as RFC 4013 section 2.3 and 2.5 apply it).
        foreach (var rune in normalized.EnumerateRunes())
        {
            if (IsProhibited(rune.Value))
            {
                return false;
            }
        }

        prepared = normalized;
        return true;
    }

    private static bool IsProhibited(int c)
    {
        if (c < 0x80)
        {
            // C.2.1: ASCII control characters.
            return c < 0x20 || c == 0x7F;
        }

        if (c <= 0xFFFF && NonAsciiSpaces.Contains((char)c))
        {
            return true; // C.1.2
        }

        return c is (>= 0x80 and <= 0x9F) // C.2.2: non-ASCII control characters
                or 0x06DD or 0x070F or 0x180E or 0x200C or 0x200D or 0x2028 or 0x2029
                or (>= 0x2060 and <= 0x2063) or (>= 0x206A and <= 0x206F) or 0xFEFF
                or (>= 0xFFF9 and <= 0xFFFC) or (>= 0x1D173 and <= 0x1D17A)
            or (>= 0xE000 and <= 0xF8FF) or (>= 0xF0000 and <= 0xFFFFD) or (>= 0x100000 and <= 0x10FFFD) // C.3
            or (>= 0xFDD0 and <= 0xFDEF) // C.4: non-character code points, with the last two of every plane
            or (>= 0xD800 and <= 0xDFFF) // C.5: surrogate code points
            or (>= 0xFFF9 and <= 0xFFFD) // C.6: inappropriate for plain text
            or (>= 0x2FF0 and <= 0x2FFB) // C.7: inappropriate for canonical representation
            or 0x0340 or 0x0341 or 0x200E or 0x200F or (>= 0x202A and <= 0x202E) // C.8: change display properties
            or 0xE0001 or (>= 0xE0020 and <= 0xE007F) // C.9: tagging characters
            || (c & 0xFFFE) == 0xFFFE
            || CharUnicodeInfo.GetUnicodeCategory(c) == UnicodeCategory.OtherNotAssigned; // A.1, approximately
    }

    private static bool ProbeNormalization()
    {
        try
        {
            // U+2168 ROMAN NUMERAL NINE has the compatibility decomposition "IX".
            return string.Equals("\u2168".Normalize(NormalizationForm.FormKC), "IX", StringComparison.Ordinal);
        }
        catch (PlatformNotSupportedException)
        {
            return false;
        }
    }
}
