using System.Globalization;
using FastPgProxy.Config;

namespace FastPgProxy.Hosting;

/// <summary>
/// The process's open-file limit, read from /proc/self/limits (the runtime raises the soft limit to the
/// hard one at start-up, so the soft value read here is what applies), and how many descriptors the
/// configuration may need, for the start-up log.
/// </summary>
internal static class DescriptorLimit
{
    /// <summary>Reads the "Max open files" line; false when it cannot be read (not Linux). Unlimited is <see cref="long.MaxValue"/>.</summary>
    public static bool TryRead(out long soft, out long hard)
    {
        soft = hard = 0;
        try
        {
            return TryParse(File.ReadAllText("/proc/self/limits"), out soft, out hard);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Parses the text of /proc/self/limits: <c>Max open files  1024  524288  files</c>.</summary>
    public static bool TryParse(string limits, out long soft, out long hard)
    {
        soft = hard = 0;
        foreach (string line in limits.Split('\n'))
        {
            if (!line.StartsWith("Max open files", StringComparison.Ordinal))
            {
                continue;
            }

            string[] fields = line["Max open files".Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return fields.Length >= 2 && TryParseLimit(fields[0], out soft) && TryParseLimit(fields[1], out hard);
        }

        return false;
    }

    /// <summary>Descriptors open now (entries of /proc/self/fd); -1 when they cannot be counted.</summary>
    public static int CountOpen()
    {
        try
        {
            int count = 0;
            foreach (string _ in Directory.EnumerateFileSystemEntries("/proc/self/fd"))
            {
                count++;
            }

            // The enumeration's own descriptor on the directory is gone again.
            return count - 1;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return -1;
        }
    }

    /// <summary>
    /// The descriptors the configuration may need on top of those open at start: every client connection
    /// allowed (<c>max_client_conn</c> plus <c>max_login_clients</c> still logging in), and for each
    /// [databases] entry one pool's backends and cancel connections (a <c>*</c> entry, or several users of
    /// one database, make more pools than that).
    /// </summary>
    public static long Needed(ProxyOptions options)
    {
        long needed = (long)options.MaxClientConnections + options.EffectiveMaxLoginClients;
        foreach (DatabaseOptions db in options.Databases)
        {
            needed += (db.PoolSize ?? options.DefaultPoolSize) + options.MaxCancelConnections;
        }

        return needed;
    }

    /// <summary>Logs the limit, and a warning when the configuration may need more descriptors than it allows.</summary>
    public static void LogAtStart(ProxyOptions options)
    {
        if (!TryRead(out long soft, out long hard))
        {
            return;
        }

        int open = CountOpen();
        long needed = Needed(options);
        string limit = soft == long.MaxValue ? "unlimited" : soft.ToString(CultureInfo.InvariantCulture);
        string hardLimit = hard == long.MaxValue ? "unlimited" : hard.ToString(CultureInfo.InvariantCulture);
        long pools = needed - options.MaxClientConnections - options.EffectiveMaxLoginClients;
        Log.Write(LogLevel.Warning, $"file descriptor limit {limit} (hard {hardLimit}); {open} in use after start-up; the configuration may need {needed} more: max_client_conn {options.MaxClientConnections} + max_login_clients {options.EffectiveMaxLoginClients} + {pools} for one pool of each [databases] entry (pool_size + max_cancel_connections)");
        if (soft != long.MaxValue && open + needed > soft)
        {
            Log.Warning($"file descriptor limit {limit} is below the {open + needed} the configuration may need: clients would be refused or wait when descriptors run out; raise the limit (ulimit -n, systemd LimitNOFILE) or lower max_client_conn, max_login_clients or the pool sizes");
        }
    }

    private static bool TryParseLimit(string field, out long value)
    {
        if (field == "unlimited")
        {
            value = long.MaxValue;
            return true;
        }

        return long.TryParse(field, NumberStyles.None, CultureInfo.InvariantCulture, out value);
    }
}
