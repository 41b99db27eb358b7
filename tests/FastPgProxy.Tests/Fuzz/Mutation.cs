using CsCheck;

namespace FastPgProxy.Tests.Fuzz;

/// <summary>Byte-level mutations of valid inputs, as a fuzzer makes them.</summary>
internal static class Mutation
{
    /// <summary>One edit: what to do, where (as a fraction of the length), and with what.</summary>
    internal sealed record Edit(int Kind, double Where, int Length, byte[] Bytes);

    private static readonly Gen<Edit> AnyEdit = Gen.Select(
        Gen.Int[0, 6], Gen.Double[0, 1], Gen.Int[0, 16], Gen.Byte.Array[1, 8], (k, w, n, b) => new Edit(k, w, n, b));

    /// <summary>Applies the edits in order.</summary>
    public static byte[] Apply(byte[] input, Edit[] edits, IReadOnlyList<byte[]>? tokens = null)
    {
        var data = new List<byte>(input);
        foreach (Edit e in edits)
        {
            int at = (int)(e.Where * data.Count);
            int length = Math.Min(e.Length, data.Count - at);
            switch (e.Kind)
            {
                case 0 when at < data.Count:
                    data[at] ^= (byte)(1 << (e.Bytes[0] & 7)); // one bit
                    break;
                case 1 when at < data.Count:
                    data[at] = e.Bytes[0]; // one byte
                    break;
                case 2:
                    data.RemoveRange(at, length); // a run deleted
                    break;
                case 3:
                    data.InsertRange(at, tokens is { Count: > 0 } ? tokens[e.Bytes[0] % tokens.Count] : e.Bytes); // inserted
                    break;
                case 4:
                    data.InsertRange(at, data.GetRange(at, length)); // a run repeated
                    break;
                case 5:
                    data.RemoveRange(at, data.Count - at); // truncated
                    break;
                default:
                    for (int k = 0; k < e.Bytes.Length && at + k < data.Count; k++)
                    {
                        data[at + k] = e.Bytes[k]; // a run overwritten
                    }

                    break;
            }
        }

        return [.. data];
    }

    /// <summary>Inputs from <paramref name="valid"/> with one to four edits.</summary>
    public static Gen<byte[]> Mutated(Gen<byte[]> valid, IReadOnlyList<byte[]>? tokens = null) =>
        Gen.Select(valid, AnyEdit.Array[1, 4], (input, edits) => Apply(input, edits, tokens));
}
