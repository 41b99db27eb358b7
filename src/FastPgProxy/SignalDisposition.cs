using System.Runtime.InteropServices;

namespace FastPgProxy;

/// <summary>
/// Takes back signals the proxy was started with ignored. A shell without job control starts background
/// commands with SIGINT and SIGQUIT ignored, and the runtime leaves an ignored signal ignored, so SIGINT
/// would never reach the shutdown handler. PostgreSQL and PgBouncer install their handlers whatever they
/// inherited; so does the proxy.
/// </summary>
internal static class SignalDisposition
{
    private const int SigInt = 2;
    private static readonly nint s_default = 0;

    /// <summary>Restores the default disposition of SIGINT (Linux and macOS), before its handler is registered.</summary>
    public static void ResetInterrupt()
    {
        if (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS())
        {
            _ = Signal(SigInt, s_default);
        }
    }

    // DllImport rather than LibraryImport: the signature is blittable, and the project has no unsafe code.
    [DllImport("libc", EntryPoint = "signal")]
    [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
#pragma warning disable SYSLIB1054
    private static extern nint Signal(int signal, nint handler);
#pragma warning restore SYSLIB1054
}
