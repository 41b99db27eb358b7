using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;

namespace FastPgProxy.Benchmarks;

/// <summary>
/// One launch, three warm-up and ten measured iterations: enough to read a 0 B allocation budget and a
/// stable mean on a shared two-core machine, short enough that the whole suite runs in a few minutes.
/// </summary>
public sealed class ShortJobConfig : ManualConfig
{
    /// <summary>Adds the short job.</summary>
    public ShortJobConfig()
    {
        AddJob(Job.Default
            .WithLaunchCount(1)
            .WithWarmupCount(3)
            .WithIterationCount(10)
            .WithId("Short"));
    }
}
