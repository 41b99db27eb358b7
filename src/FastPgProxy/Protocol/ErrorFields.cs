using System.Text;

namespace FastPgProxy.Protocol;

/// <summary>Reads fields of an ErrorResponse (55.8: a type byte and a C string per field, then a zero byte).</summary>
internal static class ErrorFields
{
    /// <summary>The field code of the SQLSTATE.</summary>
    public const byte SqlStateCode = (byte)'C';

    /// <summary>The field code of the primary message.</summary>
    public const byte MessageCode = (byte)'M';

    /// <summary>The SQLSTATE of a whole ErrorResponse message (header included); null when it has none or is malformed.</summary>
    public static string? SqlStateOf(ReadOnlySpan<byte> message) =>
        message.Length < MessageFramer.HeaderLength ? null : Field(message.Slice(MessageFramer.HeaderLength), SqlStateCode);

    /// <summary>The SQLSTATE of an ErrorResponse's body (the fields, no header); null when it has none or is malformed.</summary>
    public static string? SqlStateOfFields(ReadOnlySpan<byte> fields) => Field(fields, SqlStateCode);

    /// <summary>The primary message of an ErrorResponse's body (the fields, no header); a placeholder when it has none.</summary>
    public static string MessageOf(ReadOnlySpan<byte> fields) => Field(fields, MessageCode) ?? "(no message)";

    /// <summary>The field with <paramref name="code"/> among <paramref name="fields"/>; null when absent or malformed.</summary>
    private static string? Field(ReadOnlySpan<byte> fields, byte code)
    {
        while (!fields.IsEmpty && fields[0] != 0)
        {
            int end = fields.Slice(1).IndexOf((byte)0);
            if (end < 0)
            {
                return null;
            }

            if (fields[0] == code)
            {
                return Encoding.UTF8.GetString(fields.Slice(1, end));
            }

            fields = fields.Slice(end + 2);
        }

        return null;
    }
}
