using System.Globalization;

namespace FastPgProxy.Hosting;

/// <summary>Log levels, lowest first.</summary>
internal enum LogLevel
{
    /// <summary>Protocol details and outcomes that peers caused.</summary>
    Debug,
    /// <summary>Connections and start-up.</summary>
    Info,
    /// <summary>Something the proxy caused or could not do.</summary>
    Warning,
    /// <summary>A bug or a failure of the proxy itself.</summary>
    Error,
}

/// <summary>
/// Minimal line logger to standard error, and to <c>logfile</c> when set. Check <see cref="IsEnabled"/> before formatting on hot paths so a
/// disabled level costs one comparison and no allocation.
/// </summary>
internal static class Log
{
    private static readonly object s_gate = new();
    private static StreamWriter? s_file;

    /// <summary>The lowest level written. Default <see cref="LogLevel.Warning"/>.</summary>
    public static LogLevel MinLevel { get; set; } = LogLevel.Warning;

    /// <summary>Whether a message at <paramref name="level"/> would be written.</summary>
    public static bool IsEnabled(LogLevel level) => level >= MinLevel;

    /// <summary>Sets the level from PgBouncer's <c>verbose</c> count (0 = warnings, 1 = info, 2+ = debug).</summary>
    public static void SetVerbosity(int verbose) =>
        MinLevel = verbose switch { <= 0 => LogLevel.Warning, 1 => LogLevel.Info, _ => LogLevel.Debug };

    /// <summary>Writes a debug line.</summary>
    public static void Debug(string message) => Write(LogLevel.Debug, message);

    /// <summary>Writes an informational line.</summary>
    public static void Info(string message) => Write(LogLevel.Info, message);

    /// <summary>Writes a warning.</summary>
    public static void Warning(string message) => Write(LogLevel.Warning, message);

    /// <summary>Writes an error.</summary>
    public static void Error(string message) => Write(LogLevel.Error, message);

    /// <summary>
    /// Writes a LOG line whatever the verbosity: what a setting of its own asked for (log_connections,
    /// log_disconnections), as PgBouncer writes those at its default verbosity.
    /// </summary>
    public static void Always(string message) => WriteLine("LOG", message);

    /// <summary>Writes a line when the level is enabled.</summary>
    public static void Write(LogLevel level, string message)
    {
        if (level < MinLevel)
        {
            return;
        }

        WriteLine(Name(level), message);
    }

    private static void WriteLine(string levelName, string message)
    {
        string line = string.Create(CultureInfo.InvariantCulture, $"{DateTime.UtcNow:yyyy-MM-dd HH:mm:ss.fff} {levelName} {message}");
        lock (s_gate)
        {
            Console.Error.WriteLine(line);
            s_file?.WriteLine(line);
        }
    }

    /// <summary>
    /// Appends every line to <paramref name="path"/> as well (null: standard error only), closing the file
    /// written before: a rotated file is let go. Throws <see cref="IOException"/> or
    /// <see cref="UnauthorizedAccessException"/> when it cannot be opened; the file before is then kept.
    /// </summary>
    public static void SetFile(string? path)
    {
        StreamWriter? file = path is null ? null : new StreamWriter(new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.ReadWrite | FileShare.Delete)) { AutoFlush = true };
        lock (s_gate)
        {
            s_file?.Dispose();
            s_file = file;
        }
    }

    private static string Name(LogLevel level) => level switch
    {
        LogLevel.Debug => "DEBUG",
        LogLevel.Info => "LOG",
        LogLevel.Warning => "WARNING",
        _ => "ERROR",
    };
}
