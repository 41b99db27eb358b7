using System.Globalization;
using SharpFuzz;

namespace FastPgProxy.Tools.Fuzz;

/// <summary>
/// Runs one fuzz target (framer, startup, scram, scanner) under afl-fuzz or libFuzzer through SharpFuzz, or on its
/// own as a random mutation loop; see README.md.
/// </summary>
internal static class Program
{
    private const string Usage = """
        usage: FastPgProxy.Fuzz <framer|startup|scram|scanner> [mode]
          (no mode)                  under afl-fuzz: the SharpFuzz fork server; otherwise run stdin once
          --libfuzzer                under libfuzzer-dotnet
          --iterations N [--seed S]  in-process random mutation loop from the built-in seeds, no instrumentation
          --run FILE...              run saved inputs (a crash afl-fuzz found) and report each outcome
          --seeds DIR                write the built-in seeds to DIR (afl-fuzz -i)
        FastPgProxy.Fuzz --instrument PATH/fastpgproxy.dll    instrument the proxy's assembly in place
        """;

    public static int Main(string[] args)
    {
        if (args.Length == 2 && args[0] == "--instrument")
        {
            Instrument(args[1]);
            return 0;
        }

        if (args.Length == 0 || !Targets.All.TryGetValue(args[0], out Action<byte[]>? target))
        {
            Console.Error.WriteLine(Usage);
            return 2;
        }

        string mode = args.Length > 1 ? args[1] : "";
        switch (mode)
        {
            case "":
                Fuzzer.OutOfProcess.Run(stream =>
                {
                    using var copy = new MemoryStream();
                    stream.CopyTo(copy);
                    target(copy.ToArray());
                });
                return 0;
            case "--libfuzzer":
                Fuzzer.LibFuzzer.Run(span => target(span.ToArray()));
                return 0;
            case "--iterations" or "--run" when Instrumented():
                // The instrumented code writes coverage to afl-fuzz's shared memory, which exists only under afl-fuzz.
                Console.Error.WriteLine("fastpgproxy.dll next to this program is instrumented: run --iterations and --run from an uninstrumented build (tools/Fuzz/bin).");
                return 2;
            case "--iterations" when args.Length >= 3:
                long iterations = long.Parse(args[2], CultureInfo.InvariantCulture);
                int seed = args.Length >= 5 && args[3] == "--seed" ? int.Parse(args[4], CultureInfo.InvariantCulture) : Environment.TickCount;
                return MutationLoop.Run(args[0], target, iterations, seed);
            case "--run" when args.Length >= 3:
                return RunFiles(target, args[2..]);
            case "--seeds" when args.Length == 3:
                Directory.CreateDirectory(args[2]);
                int n = 0;
                foreach (byte[] input in Targets.Seeds(args[0]))
                {
                    File.WriteAllBytes(Path.Combine(args[2], $"seed-{n++}"), input);
                }

                Console.WriteLine($"{n} seeds written to {args[2]}");
                return 0;
            default:
                Console.Error.WriteLine(Usage);
                return 2;
        }
    }

    /// <summary>Whether the proxy's assembly was rewritten by <see cref="Instrument"/> (it then references SharpFuzz.Common).</summary>
    private static bool Instrumented() =>
        typeof(FastPgProxy.Protocol.MessageFramer).Assembly.GetReferencedAssemblies().Any(a => a.Name == "SharpFuzz.Common");

    /// <summary>Instruments the proxy's types for afl-fuzz (the job of SharpFuzz.CommandLine's <c>sharpfuzz</c>).</summary>
    private static void Instrument(string path)
    {
        IEnumerable<string> types = Fuzzer.Instrument(path, type => type.StartsWith("FastPgProxy.", StringComparison.Ordinal), Options.Value);
        Console.WriteLine($"instrumented {types.Count()} types in {path}");
    }

    private static int RunFiles(Action<byte[]> target, string[] files)
    {
        int failed = 0;
        foreach (string file in files)
        {
            try
            {
                target(File.ReadAllBytes(file));
                Console.WriteLine($"ok      {file}");
            }
            catch (Exception e)
            {
                failed++;
                Console.WriteLine($"FAILED  {file}: {e.GetType().Name}: {e.Message}");
                Console.WriteLine(e.StackTrace);
            }
        }

        return failed == 0 ? 0 : 1;
    }
}
