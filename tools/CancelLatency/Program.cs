using System.Diagnostics;
using System.Globalization;
using Npgsql;

namespace FastPgProxy.Tools.CancelLatency;

/// <summary>
/// Measures query cancel latency end to end: <c>SELECT pg_sleep(30)</c> is started, cancelled with
/// <see cref="NpgsqlCommand.Cancel"/> (a CancelRequest on a new connection, protocol section 55.2.8)
/// and timed until the query fails with SQLSTATE 57014 on its own connection.
/// </summary>
/// <remarks>
/// Usage: <c>CancelLatency --connection "Host=...;Port=..." [--count 200] [--delay-ms 50]</c>.
/// Prints <c>cancels=N median_ms=X p99_ms=Y max_ms=Z</c> (nearest-rank percentiles) and exits 0;
/// exits 1 with a message when any round fails, 2 on bad arguments.
/// </remarks>
internal static class Program
{
    private const string Query = "SELECT pg_sleep(30)";

    // A cancel that has not ended the query by then was lost (it reached no backend, or one that
    // was not running the query yet).
    private static readonly TimeSpan CancelDeadline = TimeSpan.FromSeconds(10);

    private static async Task<int> Main(string[] args)
    {
        if (!TryParseArgs(args, out string connection, out int count, out int delayMs, out string? problem))
        {
            Console.Error.WriteLine($"error: {problem}");
            Console.Error.WriteLine("usage: CancelLatency --connection \"<Npgsql connection string>\" [--count 200] [--delay-ms 50]");
            return 2;
        }

        try
        {
            // Pooling off: one physical connection, opened here and closed at the end.
            var builder = new NpgsqlConnectionStringBuilder(connection) { Pooling = false };
            await using var conn = new NpgsqlConnection(builder.ConnectionString);
            await conn.OpenAsync();
            // No command timeout: only Cancel() may end the query.
            await using var cmd = new NpgsqlCommand(Query, conn) { CommandTimeout = 0 };

            // Round 0 is a warm-up (JIT, the proxy's first backend) and is not counted.
            var samples = new double[count];
            for (int i = 0; i <= count; i++)
            {
                double ms = await CancelOnceAsync(cmd, delayMs);
                if (i > 0)
                {
                    samples[i - 1] = ms;
                }
            }

            Array.Sort(samples);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"cancels={count} median_ms={NearestRank(samples, 50):F3} p99_ms={NearestRank(samples, 99):F3} max_ms={samples[^1]:F3}"));
            return 0;
        }
        catch (Exception e) when (e is NpgsqlException or TimeoutException or InvalidOperationException
            or OperationCanceledException or ArgumentException or IOException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 1;
        }
    }

    /// <summary>
    /// Starts the query, cancels it after <paramref name="delayMs"/> and returns the milliseconds from
    /// <see cref="NpgsqlCommand.Cancel"/> until the query failed with 57014. Any other outcome throws.
    /// </summary>
    private static async Task<double> CancelOnceAsync(NpgsqlCommand cmd, int delayMs)
    {
        Task query = cmd.ExecuteNonQueryAsync();
        await Task.Delay(delayMs);
        if (query.IsCompleted)
        {
            // Surfaces the query's own error, if it has one.
            await query;
            throw new InvalidOperationException($"{Query} finished before it was cancelled");
        }

        long start = Stopwatch.GetTimestamp();
        cmd.Cancel();
        try
        {
            await query.WaitAsync(CancelDeadline);
        }
        catch (Exception e) when (IsQueryCanceled(e))
        {
            return Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
        catch (TimeoutException)
        {
            throw new TimeoutException(string.Create(CultureInfo.InvariantCulture,
                $"{Query} still running {CancelDeadline.TotalSeconds:F0} s after Cancel(): the cancel was lost"));
        }
        throw new InvalidOperationException($"{Query} completed although it was cancelled");
    }

    /// <summary>
    /// True for SQLSTATE 57014 query_canceled, as Npgsql reports it: a <see cref="PostgresException"/>,
    /// or one wrapped in an <see cref="OperationCanceledException"/>.
    /// </summary>
    private static bool IsQueryCanceled(Exception e) => e switch
    {
        PostgresException p => p.SqlState == PostgresErrorCodes.QueryCanceled,
        OperationCanceledException { InnerException: PostgresException p } => p.SqlState == PostgresErrorCodes.QueryCanceled,
        _ => false,
    };

    /// <summary>The nearest-rank <paramref name="percentile"/> of <paramref name="sorted"/> (ascending, not empty).</summary>
    private static double NearestRank(double[] sorted, int percentile)
    {
        int rank = (int)Math.Ceiling(percentile / 100.0 * sorted.Length);
        return sorted[Math.Max(rank, 1) - 1];
    }

    private static bool TryParseArgs(string[] args, out string connection, out int count, out int delayMs, out string? problem)
    {
        string? conn = null;
        count = 200;
        delayMs = 50;
        problem = null;
        for (int i = 0; i < args.Length; i++)
        {
            string name = args[i];
            if (name is not ("--connection" or "--count" or "--delay-ms"))
            {
                problem = $"unknown argument '{name}'";
                break;
            }
            if (i + 1 == args.Length)
            {
                problem = $"{name} needs a value";
                break;
            }
            string value = args[++i];
            if (name == "--connection")
            {
                conn = value;
            }
            else if (!int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out int n)
                || (name == "--count" && n == 0))
            {
                problem = $"{name} must be a {(name == "--count" ? "positive" : "non-negative")} whole number, not '{value}'";
                break;
            }
            else if (name == "--count")
            {
                count = n;
            }
            else
            {
                delayMs = n;
            }
        }
        if (problem is null && string.IsNullOrEmpty(conn))
        {
            problem = "--connection is required";
        }
        connection = conn ?? "";
        return problem is null;
    }
}
