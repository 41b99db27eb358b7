using System.Buffers.Binary;
using System.Text;
using CsCheck;
using FastPgProxy.Cancellation;
using FastPgProxy.Protocol;
using FastPgProxy.Tests.EndToEnd;
using Xunit;

namespace FastPgProxy.Tests.Fuzz;

/// <summary>
/// The start-up packet header, StartupMessage parameters and CancelRequest parsers (see <see cref="StartupOracle"/>),
/// the cancel key comparison, and the reading of a server's NegotiateProtocolVersion.
/// </summary>
public class StartupProperties
{
    // Names and values: ASCII, Latin-1, CJK and emoji text, never NUL (a C string ends there).
    private static readonly Gen<string> Text = Gen.Frequency(
        (4, Gen.Char["abcdefghijklmnopqrstuvwxyz_.0123456789"].Array[1, 12].Select(c => new string(c))),
        (1, Gen.Char['\u0001', '\uD7FF'].Array[1, 8].Select(c => new string(c))),
        (1, Gen.OneOf("user", "database", "application_name", "options", "_pq_.x", "client_encoding", "😀", "é")));

    private static readonly Gen<KeyValuePair<string, string>[]> Parameters =
        Gen.Select(Text, Gen.Frequency((1, Gen.Const("")), (4, Text)), (k, v) => new KeyValuePair<string, string>(k, v))
            .Array[0, 12]
            .Select(ps => ps.DistinctBy(p => p.Key).ToArray());

    private static readonly Gen<int> Code = Gen.Frequency(
        (4, Gen.Int[0, 3].Select(minor => StartupCodes.Protocol30 | minor)),
        (1, Gen.OneOf(StartupCodes.SslRequestCode, StartupCodes.GssEncRequestCode, 2 << 16, 1234 << 16)),
        (1, Gen.Int));

    internal static byte[] StartupMessage(int code, KeyValuePair<string, string>[] parameters) =>
        RawProtocol.StartupWithVersion(code, Array.ConvertAll(parameters, p => (p.Key, p.Value)));

    internal static byte[] CancelPacket(int pid, byte[] key)
    {
        var packet = new byte[12 + key.Length];
        BinaryPrimitives.WriteInt32BigEndian(packet, packet.Length);
        BinaryPrimitives.WriteInt32BigEndian(packet.AsSpan(4), StartupCodes.CancelRequestCode);
        BinaryPrimitives.WriteInt32BigEndian(packet.AsSpan(8), pid);
        key.CopyTo(packet, 12);
        return packet;
    }

    internal static readonly Gen<byte[]> ValidStartup = Gen.Select(Code, Parameters, StartupMessage);

    internal static readonly Gen<byte[]> ValidCancel = Gen.Select(Gen.Int, Gen.Byte.Array[4, 256], CancelPacket);

    [Fact]
    public void Startup_messages_round_trip_whatever_the_pieces_they_arrive_in()
    {
        Gen.Select(Code, Parameters, Gen.Byte.Array[0, 20]).Sample(
            (code, parameters, after) =>
            {
                byte[] packet = StartupMessage(code, parameters);
                byte[] data = [.. packet, .. after]; // bytes the client sent next stay out of the packet
                for (int cut = 0; cut < packet.Length; cut++)
                {
                    StartupParseStatus early = StartupPacketHeader.TryRead(data.AsSpan(0, cut), out _);
                    Property.Require(early == (packet.Length > 10_000 && cut >= 4 ? StartupParseStatus.Invalid : StartupParseStatus.NeedMore), $"prefix of {cut} bytes: {early}");
                }

                StartupParseStatus status = StartupPacketHeader.TryRead(data, out StartupPacketHeader header);
                if (packet.Length > 10_000)
                {
                    Property.RequireEqual(StartupParseStatus.Invalid, status, "a packet over 10,000 bytes");
                    return;
                }

                Property.RequireEqual(StartupParseStatus.Complete, status, "status");
                Property.RequireEqual(new StartupPacketHeader(packet.Length, code), header, "header");
                var parsed = new List<KeyValuePair<string, string>>();
                Property.Require(StartupParameters.TryParse(packet.AsSpan(8), parsed, out string? error), $"parameters refused: {error}");
                Property.Require(parsed.SequenceEqual(parameters), "parameters differ from those written");
                StartupOracle.Check(data);
            },
            iter: FuzzSettings.Iterations(3_000));
    }

    [Fact]
    public void Cancel_requests_round_trip_and_odd_key_lengths_are_refused()
    {
        Gen.Select(Gen.Int, Gen.Frequency((4, Gen.Byte.Array[4, 256]), (1, Gen.Byte.Array[0, 3]), (1, Gen.Byte.Array[257, 300]))).Sample(
            (pid, key) =>
            {
                byte[] packet = CancelPacket(pid, key);
                Property.RequireEqual(StartupParseStatus.Complete, StartupPacketHeader.TryRead(packet, out StartupPacketHeader header), "status");
                Property.RequireEqual(StartupCodes.CancelRequestCode, header.Code, "code");
                bool ok = CancelRequest.TryParse(packet, out int parsedPid, out ReadOnlySpan<byte> parsedKey);
                Property.RequireEqual(key.Length is >= 4 and <= 256, ok, $"key of {key.Length} bytes accepted");
                if (ok)
                {
                    Property.RequireEqual(pid, parsedPid, "pid");
                    Property.Require(parsedKey.SequenceEqual(key), "key");
                }

                StartupOracle.Check(packet);
            },
            iter: FuzzSettings.Iterations(3_000));
    }

    [Fact]
    public void Mutated_and_random_packets_parse_like_the_reference_and_never_throw()
    {
        Gen<byte[]> anyPacket = Gen.Frequency(
            (3, Mutation.Mutated(ValidStartup)),
            (2, Mutation.Mutated(ValidCancel)),
            (1, Gen.Byte.Array[0, 64]),
            (1, Gen.Int[0, 10_010].SelectMany(n => Gen.Byte.Array[0, 80].Select(rest => (byte[])[(byte)(n >> 24), (byte)(n >> 16), (byte)(n >> 8), (byte)n, .. rest]))));
        anyPacket.Sample(StartupOracle.Check, iter: FuzzSettings.Iterations(6_000));
    }
    [Fact]
    public void Cancel_keys_match_only_the_key_issued_whatever_the_lengths()
    {
        // The issued key (4 or 32 bytes as the proxy gives them, or any length), and a presented key that is
        // the same bytes, the same with one bit flipped, cut or padded, or anything of 0 to 300 bytes.
        Gen<byte[]> issued = Gen.Frequency((2, Gen.Byte.Array[4]), (2, Gen.Byte.Array[32]), (1, Gen.Byte.Array[0, 64]));
        Gen<(byte[] Issued, byte[] Presented)> pairs = issued.SelectMany(key => Gen.Frequency(
            (2, Gen.Const(0).Select(_ => key.ToArray())),
            (2, Gen.Int[0, Math.Max(0, (key.Length * 8) - 1)].Select(bit => Flip(key, bit))),
            (1, Gen.Int[0, key.Length + 8].Select(n => key.Concat(new byte[8]).Take(n).ToArray())),
            (1, Gen.Byte.Array[0, 300])).Select(presented => (key, presented)));
        pairs.Sample(
            pair =>
            {
                bool expected = pair.Issued.Length > 0 && pair.Issued.AsSpan().SequenceEqual(pair.Presented);
                Property.RequireEqual(expected, CancelRequestCheck.KeyMatches(pair.Issued, pair.Presented), $"a {pair.Presented.Length}-byte key against a {pair.Issued.Length}-byte one");
            },
            iter: FuzzSettings.Iterations(3_000));
    }

    [Fact]
    public void NegotiateProtocolVersion_from_a_server_is_read_like_the_reference()
    {
        Gen<int> version = Gen.Frequency(
            (4, Gen.OneOf(StartupCodes.Protocol30, StartupCodes.Protocol31Reserved, StartupCodes.Protocol32, (3 << 16) | 3, 2 << 16, 4 << 16)),
            (1, Gen.Int));
        Gen<int> count = Gen.Frequency((4, Gen.Int[0, 3]), (1, Gen.OneOf(-1, int.MinValue, int.MaxValue)), (1, Gen.Int));
        Gen<string[]> names = Gen.OneOf(Gen.Const("_pq_.a"), Gen.Const("b"), Gen.Const(""), Gen.Const("é😀")).Array[0, 3];
        Gen<byte[]> valid = Gen.Select(version, count, names, NegotiateBody);
        Gen.Frequency((3, valid), (2, Mutation.Mutated(valid)), (1, Gen.Byte.Array[0, 24])).Sample(
            body =>
            {
                (int expectedVersion, string? expectedError) = ReferenceServerAnswer(body, StartupCodes.Protocol32);
                bool ok = ProtocolNegotiation.TryReadServerAnswer(body, StartupCodes.Protocol32, out int actualVersion, out string? error);
                Property.RequireEqual(expectedError is null, ok, $"answer accepted ({error}; the reference says {expectedError ?? "ok"})");
                Property.RequireEqual(expectedVersion, actualVersion, "version");
                if (!ok)
                {
                    Property.Require(error!.Contains(expectedError!, StringComparison.Ordinal), $"reason '{error}' names '{expectedError}'");
                }
            },
            iter: FuzzSettings.Iterations(3_000));
    }

    private static byte[] Flip(byte[] key, int bit)
    {
        byte[] flipped = key.ToArray();
        if (flipped.Length > 0)
        {
            flipped[bit / 8] ^= (byte)(1 << (bit % 8));
        }

        return flipped;
    }

    private static byte[] NegotiateBody(int version, int count, string[] names)
    {
        var body = new byte[8];
        BinaryPrimitives.WriteInt32BigEndian(body, version);
        BinaryPrimitives.WriteInt32BigEndian(body.AsSpan(4), count);
        return [.. body, .. names.SelectMany(n => (byte[])[.. Encoding.UTF8.GetBytes(n), 0])];
    }

    /// <summary>
    /// The reference for a server's NegotiateProtocolVersion (55.7) to a request for <paramref name="requested"/>,
    /// with libpq's checks: the words split off, the names split on NUL with nothing left over, then the
    /// version between 3.0 and the request but not 3.1, no names, and some change. The version, or the
    /// words the reason must contain.
    /// </summary>
    private static (int Version, string? Error) ReferenceServerAnswer(byte[] body, int requested)
    {
        if (body.Length < 8)
        {
            return (0, "malformed");
        }

        int version = (body[0] << 24) | (body[1] << 16) | (body[2] << 8) | body[3];
        int count = (body[4] << 24) | (body[5] << 16) | (body[6] << 8) | body[7];
        var names = new List<byte[]>();
        int at = 8;
        for (long i = 0; i < count; i++)
        {
            int nul = Array.IndexOf(body, (byte)0, at);
            if (nul < 0)
            {
                return (0, "malformed");
            }

            names.Add(body[at..nul]);
            at = nul + 1;
        }

        if (at != body.Length)
        {
            return (0, "malformed");
        }

        return version > requested ? (0, "higher-numbered")
            : version < (3 << 16) ? (0, "pre-3.0")
            : version == ((3 << 16) | 1) ? (0, "3.1")
            : count < 0 ? (0, "negative")
            : count > 0 ? (0, $"(\"{Encoding.UTF8.GetString(names[0])}\")")
            : version == requested ? (0, "no changes")
            : (version, null);
    }
}
