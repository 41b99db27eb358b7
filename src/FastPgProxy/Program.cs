namespace FastPgProxy;

/// <summary>Entry point of the <c>fastpgproxy</c> executable.</summary>
internal static class Program
{
    /// <summary>Runs the proxy until SIGTERM or SIGINT.</summary>
    public static int Main(string[] args) => 0;
}
