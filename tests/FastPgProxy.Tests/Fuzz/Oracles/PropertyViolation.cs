namespace FastPgProxy.Tests.Fuzz;

/// <summary>A property of the code under test did not hold: the oracles throw it, xunit and the fuzzer report it.</summary>
public sealed class PropertyViolationException : Exception
{
    public PropertyViolationException()
    {
    }

    public PropertyViolationException(string message)
        : base(message)
    {
    }

    public PropertyViolationException(string message, Exception inner)
        : base(message, inner)
    {
    }
}

/// <summary>Checks that throw <see cref="PropertyViolationException"/>, usable outside a test framework (the fuzz tool links the oracles).</summary>
internal static class Property
{
    /// <summary>Throws unless <paramref name="condition"/> holds.</summary>
    public static void Require(bool condition, string what)
    {
        if (!condition)
        {
            throw new PropertyViolationException(what);
        }
    }

    /// <summary>Throws unless the two values are equal.</summary>
    public static void RequireEqual<T>(T expected, T actual, string what)
    {
        if (!EqualityComparer<T>.Default.Equals(expected, actual))
        {
            throw new PropertyViolationException($"{what}: expected {expected}, got {actual}");
        }
    }
}
