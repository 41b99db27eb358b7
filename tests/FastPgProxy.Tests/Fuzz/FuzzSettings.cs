namespace FastPgProxy.Tests.Fuzz;

/// <summary>
/// Iteration counts of the property tests, sized so the whole suite runs in well under a minute on two cores
/// in Release. CsCheck picks a fresh seed per run and prints it with any failure; set the CsCheck_Seed
/// environment variable to that value to replay it. FPP_FUZZ_SCALE multiplies every count (a longer run by hand).
/// </summary>
internal static class FuzzSettings
{
    private static readonly long Scale = long.TryParse(Environment.GetEnvironmentVariable("FPP_FUZZ_SCALE"), out long scale) && scale > 0 ? scale : 1;

    /// <summary>Iterations for a property whose single case costs about <paramref name="baseCount"/>⁻¹ of a second's share.</summary>
    public static long Iterations(long baseCount) => baseCount * Scale;
}
