using System.Text;
using FastPgProxy.Protocol;

namespace FastPgProxy.Pooling;

/// <summary>One ParameterStatus as the backend reported it: the value, and the message to replay to clients.</summary>
internal sealed record ParameterStatus(string Value, byte[] Message)
{
    /// <summary>Parses a whole ParameterStatus message (type byte included); null when malformed.</summary>
    public static (string Name, ParameterStatus Status)? TryParse(ReadOnlySpan<byte> message)
    {
        ReadOnlySpan<byte> body = message.Slice(MessageFramer.HeaderLength);
        int nameEnd = body.IndexOf((byte)0);
        if (nameEnd <= 0)
        {
            return null;
        }

        ReadOnlySpan<byte> rest = body.Slice(nameEnd + 1);
        int valueEnd = rest.IndexOf((byte)0);
        if (valueEnd < 0)
        {
            return null;
        }

        return (Encoding.UTF8.GetString(body.Slice(0, nameEnd)), new ParameterStatus(Encoding.UTF8.GetString(rest.Slice(0, valueEnd)), message.ToArray()));
    }

    /// <summary>Builds the message for a value the proxy reports itself.</summary>
    public static ParameterStatus Create(string name, string value)
    {
        byte[] buffer = new byte[MessageFramer.HeaderLength + Encoding.UTF8.GetByteCount(name) + Encoding.UTF8.GetByteCount(value) + 2];
        var writer = new PgWriter(buffer);
        writer.BeginMessage((byte)BackendMessage.ParameterStatus);
        writer.WriteCString(name);
        writer.WriteCString(value);
        writer.EndMessage();
        return new ParameterStatus(value, buffer);
    }
}
