using System.Text;
using FastPgProxy.Protocol;

namespace FastPgProxy.Tests.Fuzz;

/// <summary>
/// Checks the start-up packet header, the StartupMessage parameter list and the CancelRequest parser against
/// slow references written from protocol chapter 55.7, on any bytes.
/// </summary>
internal static class StartupOracle
{
    /// <summary>The reference for a packet's first bytes: length word in 8..10,000, and the whole packet present.</summary>
    public static (StartupParseStatus Status, int Length, int Code) ReferenceHeader(byte[] data)
    {
        if (data.Length < 4)
        {
            return (StartupParseStatus.NeedMore, 0, 0);
        }

        int length = (data[0] << 24) | (data[1] << 16) | (data[2] << 8) | data[3];
        if (length < 8 || length > 10_000)
        {
            return (StartupParseStatus.Invalid, 0, 0);
        }

        if (data.Length < length)
        {
            return (StartupParseStatus.NeedMore, 0, 0);
        }

        return (StartupParseStatus.Complete, length, (data[4] << 24) | (data[5] << 16) | (data[6] << 8) | data[7]);
    }

    /// <summary>
    /// The reference for the parameter list: the body ends with a NUL that follows either nothing or the NUL
    /// of the last value; what is before splits on NUL into name/value pairs with non-empty, distinct names.
    /// </summary>
    public static List<KeyValuePair<string, string>>? ReferenceParameters(byte[] body)
    {
        if (body.Length == 0 || body[^1] != 0)
        {
            return null;
        }

        byte[] content = body[..^1];
        var result = new List<KeyValuePair<string, string>>();
        if (content.Length == 0)
        {
            return result;
        }

        if (content[^1] != 0)
        {
            return null;
        }

        var strings = new List<byte[]>();
        int from = 0;
        for (int i = 0; i < content.Length - 1; i++)
        {
            if (content[i] == 0)
            {
                strings.Add(content[from..i]);
                from = i + 1;
            }
        }

        strings.Add(content[from..^1]);
        if (strings.Count % 2 != 0)
        {
            return null;
        }

        for (int i = 0; i < strings.Count; i += 2)
        {
            if (strings[i].Length == 0)
            {
                return null;
            }

            string name = Encoding.UTF8.GetString(strings[i]);
            if (result.Any(p => p.Key == name))
            {
                return null;
            }

            result.Add(new(name, Encoding.UTF8.GetString(strings[i + 1])));
        }

        return result;
    }

    /// <summary>Checks the header reader on every prefix of <paramref name="data"/> and the parsers on the packet it frames.</summary>
    public static void Check(byte[] data)
    {
        // Bytes arrive in pieces: every prefix must give the same answer as the reference.
        int step = Math.Max(1, data.Length / 64);
        for (int cut = 0; cut <= data.Length; cut += cut < 16 ? 1 : step)
        {
            CheckHeader(data[..cut]);
        }

        CheckHeader(data);
        (StartupParseStatus status, int length, _) = ReferenceHeader(data);
        if (status != StartupParseStatus.Complete)
        {
            return;
        }

        byte[] packet = data[..length];
        CheckParameters(packet[StartupCodes.MinStartupPacketLength..]);
        CheckCancel(packet);
    }

    public static void CheckHeader(byte[] data)
    {
        (StartupParseStatus status, int length, int code) = ReferenceHeader(data);
        StartupParseStatus actual = StartupPacketHeader.TryRead(data, out StartupPacketHeader header);
        Property.RequireEqual(status, actual, $"header status of {data.Length} bytes");
        if (status == StartupParseStatus.Complete)
        {
            Property.RequireEqual(length, header.Length, "packet length");
            Property.RequireEqual(code, header.Code, "packet code");
            Property.RequireEqual((int)((uint)code >> 16), header.Major, "major version");
            Property.RequireEqual(code & 0xFFFF, header.Minor, "minor version");
        }
        else
        {
            Property.RequireEqual(default, header, "header when not complete");
        }
    }

    public static void CheckParameters(byte[] body)
    {
        List<KeyValuePair<string, string>>? expected = ReferenceParameters(body);
        var actual = new List<KeyValuePair<string, string>>();
        bool ok = StartupParameters.TryParse(body, actual, out string? error);
        Property.RequireEqual(expected is not null, ok, $"parameters accepted ({error})");
        Property.Require(ok == (error is null), "an error is given exactly when the parameters are refused");
        if (expected is not null)
        {
            Property.Require(expected.SequenceEqual(actual), "parameters as parsed differ from the reference");
        }
    }

    public static void CheckCancel(byte[] packet)
    {
        bool expected = packet.Length - 12 is >= 4 and <= 256;
        bool ok = CancelRequest.TryParse(packet, out int pid, out ReadOnlySpan<byte> key);
        Property.RequireEqual(expected, ok, $"cancel request of {packet.Length} bytes accepted");
        if (ok)
        {
            Property.RequireEqual((packet[8] << 24) | (packet[9] << 16) | (packet[10] << 8) | packet[11], pid, "cancel pid");
            Property.Require(key.SequenceEqual(packet.AsSpan(12)), "cancel key");
        }
        else
        {
            Property.Require(pid == 0 && key.IsEmpty, "nothing reported for a refused cancel request");
        }
    }
}
