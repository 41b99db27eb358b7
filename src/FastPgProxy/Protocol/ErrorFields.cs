using System.Text;

namespace FastPgProxy.Protocol;

/// <summary>Reads fields of an ErrorResponse (55.8: a type byte and a C string per field, then a zero byte).</summary>
internal static class ErrorFields
{
    /// <summary>The field code of the SQLSTATE.</summary>
    public const byte SqlStateCode = (byte)'C';

    /// <summary>The SQLSTATE of a whole ErrorResponse message (header included); null when it has none or is malformed.</summary>
    public static string? SqlStateOf(ReadOnlySpan<byte> message)
    {
        if (message.Length < MessageFramer.HeaderLength)
        {
            return null;
        }

        ReadOnlySpan<byte> fields = message.Slice(MessageFramer.HeaderLength);
        while (!fields.IsEmpty && fields[0] != 0)
        {
            byte code = fields[0];
            int end = fields.Slice(1).IndexOf((byte)0);
            if (end < 0)
            {
                return null;
            }

            if (code == SqlStateCode)
            {
                return Encoding.ASCII.GetString(fields.Slice(1, end));
            }

            fields = fields.Slice(end + 2);
        }

        return null;
    }
}
