using System.Diagnostics;
using System.Text;

namespace FastPgProxy.Tools.Fuzz;

/// <summary>
/// A plain in-process fuzzer for machines without afl-fuzz: mutates the target's seeds and the inputs it kept
/// (bit flips, byte sets, insertions, deletions, repeated runs, splices, interesting integers), runs the target,
/// and stops at the first failure after saving the input. Not coverage-guided: it keeps a random sample of
/// inputs that ran, so mutations pile up.
/// </summary>
internal static class MutationLoop
{
    private static readonly int[] Interesting = [0, 1, 3, 4, 5, 7, 8, 255, 256, 10_000, 10_001, 32_767, 32_768, 65_535, 0x3FFF_FFFF, 0x4000_0000, int.MaxValue, -1, int.MinValue];

    private static readonly byte[][] Tokens =
    [
        .. new[] { "select", "pg_backend_pid", "pg_cancel_backend", "pg_terminate_backend", "pg_catalog", "(", ")", ",", ";", "::", "int", "bigint", "null", "$1", "--", "/*", "*/", "\"", "'", "as", "n,,", "y,,", "r=", "c=biws", "p=!", ",", "=", "user", "database", "SCRAM-SHA-256" }
            .Select(Encoding.UTF8.GetBytes),
    ];

    public static int Run(string name, Action<byte[]> target, long iterations, int seed)
    {
        var random = new Random(seed);
        var pool = Targets.Seeds(name).ToList();
        var clock = Stopwatch.StartNew();
        Console.WriteLine($"{name}: {iterations} iterations, seed {seed}");
        for (long i = 0; i < iterations; i++)
        {
            byte[] input = Mutate(pool[random.Next(pool.Count)], random);
            try
            {
                target(input);
            }
            catch (Exception e)
            {
                string file = $"crash-{name}-{seed}-{i}";
                File.WriteAllBytes(file, input);
                Console.WriteLine($"FAILED after {i + 1} inputs ({clock.Elapsed.TotalSeconds:F0} s), input saved to {file}");
                Console.WriteLine($"{e.GetType().Name}: {e.Message}");
                Console.WriteLine(e.StackTrace);
                return 1;
            }

            // Keep a bounded, changing sample so edits accumulate over generations.
            if (input.Length <= 200_000 && random.Next(8) == 0)
            {
                if (pool.Count < 4_000)
                {
                    pool.Add(input);
                }
                else
                {
                    pool[random.Next(pool.Count)] = input;
                }
            }

            if ((i + 1) % 100_000 == 0)
            {
                Console.WriteLine($"{i + 1} inputs, {(i + 1) / clock.Elapsed.TotalSeconds:F0}/s");
            }
        }

        Console.WriteLine($"{iterations} inputs in {clock.Elapsed.TotalSeconds:F0} s: no failure");
        return 0;
    }

    private static byte[] Mutate(byte[] original, Random random)
    {
        var data = new List<byte>(original);
        int edits = 1 + random.Next(4);
        for (int e = 0; e < edits; e++)
        {
            int at = data.Count == 0 ? 0 : random.Next(data.Count + 1);
            switch (random.Next(9))
            {
                case 0 when at < data.Count:
                    data[at] ^= (byte)(1 << random.Next(8));
                    break;
                case 1 when at < data.Count:
                    data[at] = (byte)random.Next(256);
                    break;
                case 2:
                    data.RemoveRange(at, Math.Min(random.Next(1, 17), data.Count - at));
                    break;
                case 3:
                    data.InsertRange(at, Enumerable.Range(0, random.Next(1, 9)).Select(_ => (byte)random.Next(256)));
                    break;
                case 4:
                    data.InsertRange(at, data.GetRange(at, Math.Min(random.Next(1, 33), data.Count - at)));
                    break;
                case 5:
                    data.InsertRange(at, Tokens[random.Next(Tokens.Length)]);
                    break;
                case 6 when at + 4 <= data.Count:
                    int value = Interesting[random.Next(Interesting.Length)];
                    data[at] = (byte)(value >> 24);
                    data[at + 1] = (byte)(value >> 16);
                    data[at + 2] = (byte)(value >> 8);
                    data[at + 3] = (byte)value;
                    break;
                case 7:
                    data.RemoveRange(at, data.Count - at);
                    break;
                default:
                    if (data.Count > 0)
                    {
                        data[at == data.Count ? at - 1 : at] = (byte)"\0\n ;()\"'-/*$:,=p"[random.Next(16)];
                    }

                    break;
            }
        }

        return [.. data];
    }
}
