using System.Text;
using FastPgProxy.Interception;
using Xunit;

namespace FastPgProxy.Tests.Interception;

public class ParameterDecodeTests
{
    [Theory]
    [InlineData("42", TypeOids.Int4, 42)]
    [InlineData("  42 ", TypeOids.Int4, 42)]
    [InlineData("\t\n\v\f\r 42\r\n", TypeOids.Int4, 42)]
    [InlineData("-7", TypeOids.Int4, -7)]
    [InlineData("+7", TypeOids.Int4, 7)]
    [InlineData("007", TypeOids.Int4, 7)]
    [InlineData("-0", TypeOids.Int4, 0)]
    [InlineData("2147483647", TypeOids.Int4, int.MaxValue)]
    [InlineData("-2147483648", TypeOids.Int4, int.MinValue)]
    [InlineData("32767", TypeOids.Int2, short.MaxValue)]
    [InlineData("-32768", TypeOids.Int2, short.MinValue)]
    [InlineData("9223372036854775807", TypeOids.Int8, long.MaxValue)]
    [InlineData("-9223372036854775808", TypeOids.Int8, long.MinValue)]
    [InlineData("99999999999", TypeOids.Int8, 99999999999)]
    [InlineData("99999999999", TypeOids.Unspecified, 99999999999)]
    [InlineData(" 123 ", TypeOids.Text, 123)]
    [InlineData("123", TypeOids.VarChar, 123)]
    [InlineData("1_000", TypeOids.Int4, 1000)]
    [InlineData("1_000_000", TypeOids.Int8, 1000000)]
    [InlineData("0x1F", TypeOids.Int4, 31)]
    [InlineData("-0X1f", TypeOids.Int4, -31)]
    [InlineData("0x_1F", TypeOids.Int4, 31)]
    [InlineData("0o17", TypeOids.Int4, 15)]
    [InlineData("0O1_7", TypeOids.Int4, 15)]
    [InlineData("0b101", TypeOids.Int4, 5)]
    [InlineData("0B1_01", TypeOids.Int4, 5)]
    [InlineData("0x7FFFFFFF", TypeOids.Int4, int.MaxValue)]
    [InlineData("-0x80000000", TypeOids.Int4, int.MinValue)]
    [InlineData("0", TypeOids.Int2, 0)]
    public void Text_integers(string text, int typeOid, long expected)
    {
        Assert.Equal(ParamDecodeResult.Ok, InterceptReplies.TryDecodeIntParameter(Encoding.UTF8.GetBytes(text), false, 0, typeOid, out long result));
        Assert.Equal(expected, result);
    }

    [Theory]
    [InlineData("abc", TypeOids.Int4)]
    [InlineData("", TypeOids.Int4)]
    [InlineData("   ", TypeOids.Int4)]
    [InlineData("-", TypeOids.Int4)]
    [InlineData("+", TypeOids.Int4)]
    [InlineData("--1", TypeOids.Int4)]
    [InlineData("+-1", TypeOids.Int4)]
    [InlineData("- 1", TypeOids.Int4)]
    [InlineData("1 2", TypeOids.Int4)]
    [InlineData("1.0", TypeOids.Int4)]
    [InlineData("1e3", TypeOids.Int4)]
    [InlineData("12abc", TypeOids.Int4)]
    [InlineData("_1", TypeOids.Int4)]
    [InlineData("1_", TypeOids.Int4)]
    [InlineData("1__0", TypeOids.Int4)]
    [InlineData("0x", TypeOids.Int4)]
    [InlineData("0xG", TypeOids.Int4)]
    [InlineData("0x1_", TypeOids.Int4)]
    [InlineData("0o8", TypeOids.Int4)]
    [InlineData("0b2", TypeOids.Int4)]
    [InlineData("0b1_2", TypeOids.Int4)]
    [InlineData("\u00a01", TypeOids.Int4)]
    [InlineData("１", TypeOids.Int4)]
    [InlineData("abc", TypeOids.Int8)]
    [InlineData("abc", TypeOids.Text)]
    public void Text_that_is_not_an_integer_is_invalid_text(string text, int typeOid)
    {
        Assert.Equal(ParamDecodeResult.InvalidText, InterceptReplies.TryDecodeIntParameter(Encoding.UTF8.GetBytes(text), false, 0, typeOid, out long result));
        Assert.Equal(0, result);
    }

    [Theory]
    [InlineData("99999999999", TypeOids.Int4)]
    [InlineData("2147483648", TypeOids.Int4)]
    [InlineData("-2147483649", TypeOids.Int4)]
    [InlineData("32768", TypeOids.Int2)]
    [InlineData("9223372036854775808", TypeOids.Int8)]
    [InlineData("-9223372036854775809", TypeOids.Int8)]
    [InlineData("0x80000000", TypeOids.Int4)]
    [InlineData("99999999999999999999", TypeOids.Unspecified)]

    // An overflow while reading digits wins over junk after them, as in pg_strtoint32.
    [InlineData("99999999999abc", TypeOids.Int4)]
    public void Integers_outside_the_type_are_out_of_range(string text, int typeOid)
        => Assert.Equal(ParamDecodeResult.OutOfRange, InterceptReplies.TryDecodeIntParameter(Encoding.UTF8.GetBytes(text), false, 0, typeOid, out _));

    [Fact]
    public void Text_that_is_not_utf8_or_holds_nul_is_an_encoding_error()
    {
        Assert.Equal(ParamDecodeResult.InvalidEncoding, InterceptReplies.TryDecodeIntParameter([(byte)'1', 0, (byte)'2'], false, 0, TypeOids.Int4, out _));
        Assert.Equal(ParamDecodeResult.InvalidEncoding, InterceptReplies.TryDecodeIntParameter([(byte)'1', 0xC3, 0x28], false, 0, TypeOids.Int4, out _));
        Assert.Equal(ParamDecodeResult.InvalidEncoding, InterceptReplies.TryDecodeIntParameter([0xFF], false, 0, TypeOids.Text, out _));
    }

    [Fact]
    public void Null_is_null_whatever_the_bytes()
    {
        Assert.Equal(ParamDecodeResult.Null, InterceptReplies.TryDecodeIntParameter("garbage"u8, true, 0, TypeOids.Int4, out long result));
        Assert.Equal(0, result);
        Assert.Equal(ParamDecodeResult.Null, InterceptReplies.TryDecodeIntParameter(default, true, 1, TypeOids.Int8, out _));
    }

    [Theory]
    [InlineData("fffe", TypeOids.Int2, -2)]
    [InlineData("7fff", TypeOids.Int2, short.MaxValue)]
    [InlineData("00003039", TypeOids.Int4, 12345)]
    [InlineData("80000000", TypeOids.Int4, int.MinValue)]
    [InlineData("ffffffffffffffff", TypeOids.Int8, -1)]
    [InlineData("000000174876e7ff", TypeOids.Int8, 99999999999)]
    [InlineData("0005", TypeOids.Unspecified, 5)]
    [InlineData("00000005", TypeOids.Unspecified, 5)]
    [InlineData("0000000000000005", TypeOids.Unspecified, 5)]
    public void Binary_integers(string hex, int typeOid, long expected)
    {
        Assert.Equal(ParamDecodeResult.Ok, InterceptReplies.TryDecodeIntParameter(Convert.FromHexString(hex), false, 1, typeOid, out long result));
        Assert.Equal(expected, result);
    }

    [Theory]
    [InlineData("", TypeOids.Int4, nameof(ParamDecodeResult.BinaryTooShort))]
    [InlineData("0001", TypeOids.Int4, nameof(ParamDecodeResult.BinaryTooShort))]
    [InlineData("0000000000003039", TypeOids.Int4, nameof(ParamDecodeResult.BinaryTooLong))]
    [InlineData("00003039", TypeOids.Int8, nameof(ParamDecodeResult.BinaryTooShort))]
    [InlineData("000000", TypeOids.Int2, nameof(ParamDecodeResult.BinaryTooLong))]
    [InlineData("000000", TypeOids.Unspecified, nameof(ParamDecodeResult.UnsupportedType))]
    [InlineData("00003039", 700, nameof(ParamDecodeResult.UnsupportedType))]
    public void Binary_values_of_the_wrong_length(string hex, int typeOid, string expected)
        => Assert.Equal(Enum.Parse<ParamDecodeResult>(expected), InterceptReplies.TryDecodeIntParameter(Convert.FromHexString(hex), false, 1, typeOid, out _));

    [Fact]
    public void Text_types_are_read_as_characters_in_either_format()
    {
        Assert.Equal(ParamDecodeResult.Ok, InterceptReplies.TryDecodeIntParameter(" -15 "u8, false, 1, TypeOids.Text, out long result));
        Assert.Equal(-15, result);
        Assert.Equal(ParamDecodeResult.Ok, InterceptReplies.TryDecodeIntParameter("15"u8, false, 0, TypeOids.Unknown, out result));
        Assert.Equal(15, result);
        Assert.Equal(ParamDecodeResult.UnsupportedType, InterceptReplies.TryDecodeIntParameter("15"u8, false, 0, 700, out _));
    }

    [Fact]
    public void Text_parsing_agrees_with_a_slow_reference_on_random_inputs()
    {
        // Random strings over the alphabet the parser cares about, against a small model of pg_strtoint32.
        var random = new Random(20_261_121);
        byte[] alphabet = " \t+-_0123456789xXoObBaAfFgG."u8.ToArray();
        for (int round = 0; round < 200_000; round++)
        {
            int length = random.Next(0, 12);
            byte[] text = new byte[length];
            for (int k = 0; k < length; k++)
            {
                text[k] = alphabet[random.Next(alphabet.Length)];
            }

            ParamDecodeResult actual = InterceptReplies.TryDecodeIntParameter(text, false, 0, TypeOids.Int4, out long value);
            (ParamDecodeResult expected, long expectedValue) = Reference(Encoding.ASCII.GetString(text));
            Assert.True(expected == actual && expectedValue == value, $"'{Encoding.ASCII.GetString(text)}': {actual} {value}, expected {expected} {expectedValue}");
        }
    }

    // A deliberately naive reading of PostgreSQL 16's integer input: strip, sign, prefix, digits with
    // single underscores, range check with BigInteger.
    private static (ParamDecodeResult, long) Reference(string s)
    {
        int p = 0;
        while (p < s.Length && " \t\n\v\f\r".Contains(s[p], StringComparison.Ordinal))
        {
            p++;
        }

        bool negative = false;
        if (p < s.Length && (s[p] == '-' || s[p] == '+'))
        {
            negative = s[p] == '-';
            p++;
        }

        int radix = 10;
        if (p + 1 < s.Length && s[p] == '0' && "xXoObB".Contains(s[p + 1], StringComparison.Ordinal))
        {
            radix = char.ToLowerInvariant(s[p + 1]) switch { 'x' => 16, 'o' => 8, _ => 2 };
            p += 2;
        }

        const string digitsOf16 = "0123456789abcdef";
        int first = p;
        System.Numerics.BigInteger magnitude = 0;
        System.Numerics.BigInteger limit = System.Numerics.BigInteger.One << 31;
        while (p < s.Length)
        {
            int d = digitsOf16.IndexOf(char.ToLowerInvariant(s[p]), StringComparison.Ordinal);
            if (d >= 0 && d < radix)
            {
                if (magnitude > limit / radix)
                {
                    return (ParamDecodeResult.OutOfRange, 0);
                }

                magnitude = (magnitude * radix) + d;
                p++;
            }
            else if (s[p] == '_')
            {
                if (radix == 10 && p == first)
                {
                    return (ParamDecodeResult.InvalidText, 0);
                }

                p++;
                int next = p < s.Length ? digitsOf16.IndexOf(char.ToLowerInvariant(s[p]), StringComparison.Ordinal) : -1;
                if (next < 0 || next >= radix)
                {
                    return (ParamDecodeResult.InvalidText, 0);
                }
            }
            else
            {
                break;
            }
        }

        if (p == first)
        {
            return (ParamDecodeResult.InvalidText, 0);
        }

        while (p < s.Length && " \t\n\v\f\r".Contains(s[p], StringComparison.Ordinal))
        {
            p++;
        }

        if (p != s.Length)
        {
            return (ParamDecodeResult.InvalidText, 0);
        }

        System.Numerics.BigInteger signedValue = negative ? -magnitude : magnitude;
        return signedValue < int.MinValue || signedValue > int.MaxValue
            ? (ParamDecodeResult.OutOfRange, 0)
            : (ParamDecodeResult.Ok, (long)signedValue);
    }
}
