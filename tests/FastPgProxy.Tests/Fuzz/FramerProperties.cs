using System.Buffers.Binary;
using CsCheck;
using Xunit;

namespace FastPgProxy.Tests.Fuzz;

/// <summary>
/// <see cref="FastPgProxy.Protocol.MessageFramer"/> against a reference that walks headers one by one, with the
/// stream arriving in random pieces through the relay's 32 KiB window (see <see cref="FramerOracle"/>).
/// </summary>
public class FramerProperties
{
    /// <summary>One generated message: its type, body length, a length word to write instead (invalid), the fill byte.</summary>
    internal sealed record MessageSpec(byte Type, int BodyLength, int? LengthWord, byte Fill);

    private static readonly byte[] CommonTypes = "QSFPBDEHCXZ123dcfTKRNvA"u8.ToArray();

    private static readonly Gen<byte> Type = Gen.Frequency((8, Gen.OneOf(CommonTypes)), (1, Gen.Byte));

    // Mostly small messages; some just below, at and above the 32 KiB window (a 5-byte header plus the body),
    // some up to ~70 KB that must stream through it.
    private static readonly Gen<int> BodyLength = Gen.Frequency(
        (60, Gen.Int[0, 64]),
        (20, Gen.Int[65, 5_000]),
        (8, Gen.Int[32_740, 32_790]),
        (4, Gen.Int[32_791, 70_000]));

    private static readonly Gen<int?> InvalidLength = Gen.OneOf(int.MinValue, -1, 0, 1, 2, 3, 0x4000_0000, int.MaxValue)
        .Select(v => (int?)v);

    private static readonly Gen<MessageSpec> Valid = Gen.Select(Type, BodyLength, Gen.Byte, (t, n, f) => new MessageSpec(t, n, null, f));

    private static readonly Gen<MessageSpec> MaybeInvalid = Gen.Frequency(
        (30, Valid),
        (1, Gen.Select(Type, InvalidLength, (t, l) => new MessageSpec(t, 8, l, 0))));

    internal static byte[] Build(MessageSpec[] messages)
    {
        var stream = new List<byte>();
        foreach (MessageSpec m in messages)
        {
            var bytes = new byte[5 + m.BodyLength];
            bytes[0] = m.Type;
            BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(1), m.LengthWord ?? 4 + m.BodyLength);
            bytes.AsSpan(5).Fill(m.Fill);
            stream.AddRange(bytes);
        }

        return [.. stream];
    }

    internal static readonly Gen<byte[]> ValidStream = Valid.Array[1, 24].Select(Build);

    private static readonly Gen<TypeSet> Set = Gen.Frequency(
        (3, Gen.OneOf(TypeSet.None, TypeSet.Of("XQP"), TypeSet.Of("ZSE"), TypeSet.Every, TypeSet.Of("QFBP"), TypeSet.Of("QSF"))),
        (2, Gen.OneOf(CommonTypes).Array[0, 6].Select(t => new TypeSet(false, t))),
        (1, Gen.Byte.Array[0, 6].Select(t => new TypeSet(false, t))));

    private static readonly Gen<int[]> Chunks = Gen.Frequency(
        (2, Gen.Int[1, 8]),
        (3, Gen.Int[1, 2_000]),
        (2, Gen.Int[1, 40_000])).Array[1, 6];

    internal static readonly Gen<FramerSetup> Setup = Gen.Select(
        Set,
        Set,
        Set,
        Gen.OneOf(FramerSetup.Window, FramerSetup.Window, FramerSetup.Window - 1, 1024, 64, 6, 5),
        Chunks,
        Gen.Int[0, 1_000_000].Array[1, 3],
        (inspect, oversized, count, max, chunks, heads) => new FramerSetup(inspect, oversized, count, max, chunks, heads));

    internal static string Print(byte[] stream, FramerSetup setup) =>
        $"{stream.Length} bytes starting {Convert.ToHexString(stream.AsSpan(0, Math.Min(64, stream.Length)))}; {setup}";

    [Fact]
    public void Valid_streams_in_random_pieces_frame_like_the_reference()
    {
        Gen.Select(ValidStream, Setup).Sample(
            (stream, setup) => FramerOracle.Check(stream, setup),
            iter: FuzzSettings.Iterations(600),
            print: t => Print(t.Item1, t.Item2));
    }

    [Fact]
    public void Length_words_below_4_or_above_the_limit_are_reported_invalid_at_their_header()
    {
        Gen.Select(MaybeInvalid.Array[1, 16].Select(Build), Setup).Sample(
            (stream, setup) => FramerOracle.Check(stream, setup),
            iter: FuzzSettings.Iterations(600),
            print: t => Print(t.Item1, t.Item2));
    }

    /// <summary>Byte flips, overwritten runs, truncation and garbage: never a throw, a loop or an over-read; still the reference's answer.</summary>
    [Fact]
    public void Mutated_streams_frame_like_the_reference_and_never_throw()
    {
        Gen.Select(Mutation.Mutated(ValidStream), Setup).Sample(
            (stream, setup) => FramerOracle.Check(stream, setup),
            iter: FuzzSettings.Iterations(600),
            print: t => Print(t.Item1, t.Item2));
    }

    [Fact]
    public void Random_bytes_frame_like_the_reference_and_never_throw()
    {
        Gen.Select(Gen.Byte.Array[0, 2_000], Setup).Sample(
            (stream, setup) => FramerOracle.Check(stream, setup),
            iter: FuzzSettings.Iterations(2_000),
            print: t => Print(t.Item1, t.Item2));
    }
}
