using System.Buffers.Binary;
using System.Collections.Generic;
using System.Text;

namespace FastPgProxy.Protocol;

/// <summary>Outcome of looking at the first bytes a new connection sent.</summary>
internal enum StartupParseStatus
{
    /// <summary>The packet is not all here yet.</summary>
    NeedMore,
    /// <summary>A whole packet of <see cref="StartupPacketHeader.Length"/> bytes is buffered.</summary>
    Complete,
    /// <summary>The length word is outside 8..10,000: no packet can be read.</summary>
    Invalid,
}

/// <summary>The length and code words that begin every start-up packet (protocol 55.7: StartupMessage, CancelRequest, SSLRequest, GSSENCRequest).</summary>
internal readonly record struct StartupPacketHeader(int Length, int Code)
{
    /// <summary>Major protocol version of a StartupMessage, or 1234 for the special requests.</summary>
    public int Major => (int)((uint)Code >> 16);

    /// <summary>Minor protocol version.</summary>
    public int Minor => Code & 0xFFFF;

    /// <summary>Reads the header; <see cref="StartupParseStatus.Complete"/> once the whole packet is in <paramref name="data"/>.</summary>
    public static StartupParseStatus TryRead(ReadOnlySpan<byte> data, out StartupPacketHeader header)
    {
        header = default;
        if (data.Length < sizeof(int))
        {
            return StartupParseStatus.NeedMore;
        }

        int length = BinaryPrimitives.ReadInt32BigEndian(data);
        if (length < StartupCodes.MinStartupPacketLength || length > StartupCodes.MaxStartupPacketLength)
        {
            return StartupParseStatus.Invalid;
        }

        if (data.Length < length)
        {
            return StartupParseStatus.NeedMore;
        }

        header = new StartupPacketHeader(length, BinaryPrimitives.ReadInt32BigEndian(data.Slice(sizeof(int))));
        return StartupParseStatus.Complete;
    }
}

/// <summary>Parses the name/value list of a StartupMessage (55.7): NUL-terminated pairs ended by one extra NUL.</summary>
internal static class StartupParameters
{
    /// <summary>
    /// Decodes the parameters that follow the version word. Returns false with a reason on a missing
    /// terminator, an empty name, a name without value or a duplicate name.
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> body, List<KeyValuePair<string, string>> parameters, out string? error)
    {
        error = null;
        while (true)
        {
            if (body.IsEmpty)
            {
                error = "invalid startup packet layout: expected terminator as last byte";
                return false;
            }

            if (body[0] == 0)
            {
                if (body.Length != 1)
                {
                    error = "invalid startup packet layout: expected terminator as last byte";
                    return false;
                }

                return true;
            }

            int nameEnd = body.IndexOf((byte)0);
            if (nameEnd < 0)
            {
                error = "invalid startup packet layout: expected terminator as last byte";
                return false;
            }

            string name = Encoding.UTF8.GetString(body.Slice(0, nameEnd));
            body = body.Slice(nameEnd + 1);
            int valueEnd = body.IndexOf((byte)0);
            if (valueEnd < 0)
            {
                error = "invalid startup packet layout: expected terminator as last byte";
                return false;
            }

            string value = Encoding.UTF8.GetString(body.Slice(0, valueEnd));
            body = body.Slice(valueEnd + 1);
            foreach (KeyValuePair<string, string> existing in parameters)
            {
                if (existing.Key == name)
                {
                    error = $"duplicate startup parameter \"{name}\"";
                    return false;
                }
            }

            parameters.Add(new KeyValuePair<string, string>(name, value));
        }
    }
}

/// <summary>Reads a CancelRequest (55.7): length, code, the backend's pid and its secret key.</summary>
internal static class CancelRequest
{
    /// <summary>
    /// Splits a whole CancelRequest packet (length and code words included) into the pid and the key.
    /// False when the key is shorter than <see cref="StartupCodes.MinCancelKeyLength"/> or longer than
    /// <see cref="StartupCodes.MaxCancelKeyLength"/> bytes (protocol 3.2 allows keys of 4 to 256 bytes).
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> packet, out int pid, out ReadOnlySpan<byte> key)
    {
        pid = 0;
        key = default;
        int keyLength = packet.Length - (StartupCodes.MinStartupPacketLength + sizeof(int) /* pid */);
        if (keyLength < StartupCodes.MinCancelKeyLength || keyLength > StartupCodes.MaxCancelKeyLength)
        {
            return false;
        }

        pid = BinaryPrimitives.ReadInt32BigEndian(packet.Slice(StartupCodes.MinStartupPacketLength));
        key = packet.Slice(StartupCodes.MinStartupPacketLength + sizeof(int));
        return true;
    }
}
