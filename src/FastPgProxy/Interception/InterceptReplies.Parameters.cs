using System.Buffers.Binary;
using System.Text.Unicode;

namespace FastPgProxy.Interception;

/// <summary>What <see cref="InterceptReplies.TryDecodeIntParameter"/> made of a Bind parameter value.</summary>
internal enum ParamDecodeResult : byte
{
    /// <summary>An integer within the type's range.</summary>
    Ok,
    /// <summary>The value is NULL (length -1).</summary>
    Null,
    /// <summary>Text that is not an integer: 22P02 invalid_text_representation.</summary>
    InvalidText,
    /// <summary>Text holding an integer outside the type's range: 22003 numeric_value_out_of_range.</summary>
    OutOfRange,
    /// <summary>Text that is not valid UTF-8 or holds a NUL byte: 22021 character_not_in_repertoire.</summary>
    InvalidEncoding,
    /// <summary>A binary value shorter than its type: 08P01 "insufficient data left in message".</summary>
    BinaryTooShort,
    /// <summary>A binary value longer than its type: 22P03 invalid_binary_representation.</summary>
    BinaryTooLong,
    /// <summary>The parameter's type is not one this decoder reads; let the server handle the statement.</summary>
    UnsupportedType,
}

/// <content>Decoding of the integer arguments a client binds to <c>$n</c> (protocol 55.2.3, Bind).</content>
internal static partial class InterceptReplies
{
    /// <summary>
    /// Reads a Bind parameter value as PostgreSQL's input functions would for the parameter's type.
    /// </summary>
    /// <param name="value">The value's bytes (ignored when <paramref name="isNull"/>).</param>
    /// <param name="isNull">Whether the Bind gave length -1.</param>
    /// <param name="formatCode">The parameter's format code: 0 text, 1 binary.</param>
    /// <param name="typeOid">
    /// The parameter's type as the statement resolved it: the OID the Parse declared, or the one the server
    /// infers (int4 for the pid, int8 for the timeout or after <c>::bigint</c>).
    /// int2, int4, int8: text as int2in/int4in/int8in read it (PostgreSQL 16+: surrounding whitespace, one
    /// sign, decimal or 0x/0o/0b digits, single underscores between digits; range of the type), binary as
    /// exactly 2, 4 or 8 big-endian bytes. 0 (unspecified): text in the int8 range, binary by its length.
    /// text, varchar, bpchar, name, unknown: the characters in either format, in the int8 range; PostgreSQL
    /// converts such a value only in the cast to int, where errors carry the cast's type and no Bind context.
    /// Other types: <see cref="ParamDecodeResult.UnsupportedType"/>.
    /// </param>
    /// <param name="result">The integer when the result is <see cref="ParamDecodeResult.Ok"/>; 0 otherwise.</param>
    public static ParamDecodeResult TryDecodeIntParameter(ReadOnlySpan<byte> value, bool isNull, short formatCode, int typeOid, out long result)
    {
        result = 0;
        if (isNull)
        {
            return ParamDecodeResult.Null;
        }

        switch (typeOid)
        {
            case TypeOids.Int2:
                return formatCode == TextFormat ? ParseIntegerText(value, 16, out result) : ReadBinaryInteger(value, sizeof(short), out result);
            case TypeOids.Int4:
                return formatCode == TextFormat ? ParseIntegerText(value, 32, out result) : ReadBinaryInteger(value, sizeof(int), out result);
            case TypeOids.Int8:
                return formatCode == TextFormat ? ParseIntegerText(value, 64, out result) : ReadBinaryInteger(value, sizeof(long), out result);
            case TypeOids.Unspecified:
                if (formatCode == TextFormat)
                {
                    return ParseIntegerText(value, 64, out result);
                }

                return value.Length is sizeof(short) or sizeof(int) or sizeof(long)
                    ? ReadBinaryInteger(value, value.Length, out result)
                    : ParamDecodeResult.UnsupportedType;
            case TypeOids.Text:
            case TypeOids.VarChar:
            case TypeOids.BpChar:
            case TypeOids.Name:
            case TypeOids.Unknown:
                return ParseIntegerText(value, 64, out result);
            default:
                return ParamDecodeResult.UnsupportedType;
        }
    }

    /// <summary>A big-endian integer of exactly <paramref name="size"/> bytes (int2recv, int4recv, int8recv).</summary>
    private static ParamDecodeResult ReadBinaryInteger(ReadOnlySpan<byte> value, int size, out long result)
    {
        result = 0;
        if (value.Length < size)
        {
            return ParamDecodeResult.BinaryTooShort;
        }

        if (value.Length > size)
        {
            return ParamDecodeResult.BinaryTooLong;
        }

        result = size switch
        {
            sizeof(short) => BinaryPrimitives.ReadInt16BigEndian(value),
            sizeof(int) => BinaryPrimitives.ReadInt32BigEndian(value),
            _ => BinaryPrimitives.ReadInt64BigEndian(value),
        };
        return ParamDecodeResult.Ok;
    }

    /// <summary>
    /// Text to a signed integer of <paramref name="bits"/> bits, accepting what PostgreSQL 16+'s
    /// pg_strtoint16/32/64 accept, and failing the way they fail: an overflow while reading digits is
    /// out of range even if junk follows; anything else malformed is invalid syntax.
    /// </summary>
    private static ParamDecodeResult ParseIntegerText(ReadOnlySpan<byte> text, int bits, out long result)
    {
        result = 0;

        // The server converts a text parameter from the client encoding (UTF-8 here) before parsing it,
        // and the conversion rejects NUL bytes and ill-formed sequences (mbutils.c).
        if (text.Contains((byte)0) || !Utf8.IsValid(text))
        {
            return ParamDecodeResult.InvalidEncoding;
        }

        int p = 0;
        while (p < text.Length && IsCSpace(text[p]))
        {
            p++;
        }

        bool negative = false;
        if (p < text.Length && (text[p] == (byte)'-' || text[p] == (byte)'+'))
        {
            negative = text[p] == (byte)'-';
            p++;
        }

        // The magnitude of the type's minimum: accumulating unsigned lets it hold -2^(bits-1).
        ulong limit = 1UL << (bits - 1);
        uint radix = 10;
        if (p + 1 < text.Length && text[p] == (byte)'0')
        {
            switch (text[p + 1] | 0x20)
            {
                case 'x':
                    radix = 16;
                    break;
                case 'o':
                    radix = 8;
                    break;
                case 'b':
                    radix = 2;
                    break;
            }

            if (radix != 10)
            {
                p += 2;
            }
        }

        int firstDigit = p;
        ulong magnitude = 0;
        while (p < text.Length)
        {
            uint digit = DigitValue(text[p]);
            if (digit < radix)
            {
                if (magnitude > limit / radix)
                {
                    return ParamDecodeResult.OutOfRange;
                }

                magnitude = (magnitude * radix) + digit;
                p++;
            }
            else if (text[p] == (byte)'_')
            {
                // An underscore separates digits: it must be followed by one, and in decimal it may not
                // come first (with a 0x/0o/0b prefix PostgreSQL lets it follow the prefix).
                if (radix == 10 && p == firstDigit)
                {
                    return ParamDecodeResult.InvalidText;
                }

                p++;
                if (p == text.Length || DigitValue(text[p]) >= radix)
                {
                    return ParamDecodeResult.InvalidText;
                }
            }
            else
            {
                break;
            }
        }

        if (p == firstDigit)
        {
            return ParamDecodeResult.InvalidText;
        }

        while (p < text.Length && IsCSpace(text[p]))
        {
            p++;
        }

        if (p != text.Length)
        {
            return ParamDecodeResult.InvalidText;
        }

        if (negative ? magnitude > limit : magnitude > limit - 1)
        {
            return ParamDecodeResult.OutOfRange;
        }

        result = negative ? (long)(0UL - magnitude) : (long)magnitude;
        return ParamDecodeResult.Ok;
    }

    /// <summary>The value of a hexadecimal digit (which covers the octal, binary and decimal ones); 16 or more otherwise.</summary>
    private static uint DigitValue(byte b)
    {
        uint d = (uint)(b - '0');
        if (d <= 9)
        {
            return d;
        }

        uint letter = (uint)((b | 0x20) - 'a');
        return letter <= 'f' - 'a' ? letter + 10 : uint.MaxValue;
    }

    // isspace() in the C locale: space, \t, \n, \v, \f, \r.
    private static bool IsCSpace(byte b) => b == (byte)' ' || (uint)(b - '\t') <= '\r' - '\t';
}
