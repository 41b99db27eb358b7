using System.Diagnostics;
using FastPgProxy.Config;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// stats_period through a real PostgreSQL: SHOW STATS's avg_* columns (and SHOW STATS_AVERAGES) are per-second
/// rates and per-query times over the last completed period and the current one, as PgBouncer computes them,
/// while the total_* columns (and SHOW STATS_TOTALS) keep counting.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class StatsPeriodTests(PostgresFixture fixture)
{
    private const string AdminUser = "fpp_admin";

    private readonly PostgresServer _pg = fixture.Server;

    private static async Task<Dictionary<string, long>> StatsRowAsync(NpgsqlConnection console, string command)
    {
        await using var cmd = new NpgsqlCommand(command, console);
        await using NpgsqlDataReader reader = await cmd.ExecuteReaderAsync();
        while (await reader.ReadAsync())
        {
            if (reader.GetString(0) != PostgresServer.Database)
            {
                continue;
            }

            var row = new Dictionary<string, long>(StringComparer.Ordinal);
            for (int i = 1; i < reader.FieldCount; i++)
            {
                row[reader.GetName(i)] = reader.GetInt64(i);
            }

            return row;
        }

        throw new Xunit.Sdk.XunitException($"{command} has no row for {PostgresServer.Database}");
    }

    [Fact]
    public async Task Averages_cover_the_last_period_and_fall_to_zero_when_traffic_stops()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o =>
        {
            o.AdminUsers.Add(AdminUser);
            o.PoolMode = PoolMode.Transaction;
            o.StatsPeriod = TimeSpan.FromSeconds(1);
        });
        await using (NpgsqlConnection client = await proxy.OpenAsync())
        {
            for (int i = 0; i < 40; i++)
            {
                await using var cmd = new NpgsqlCommand("SELECT pg_sleep(0.005)", client);
                await cmd.ExecuteScalarAsync();
            }
        }

        await using var console = new NpgsqlConnection(proxy.ConnectionString(AdminUser, null, "fastpgproxy") + ";Server Compatibility Mode=NoTypeLoading");
        await console.OpenAsync();
        Dictionary<string, long> busy = await StatsRowAsync(console, "SHOW STATS");
        Assert.True(busy["total_query_count"] >= 40, $"total_query_count {busy["total_query_count"]}");
        Assert.True(busy["total_server_assignment_count"] >= 40, $"total_server_assignment_count {busy["total_server_assignment_count"]}");
        foreach (string column in new[] { "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent", "avg_server_assignment_count" })
        {
            Assert.True(busy[column] > 0, $"{column} {busy[column]} right after the traffic");
        }

        Assert.True(busy["avg_query_time"] >= 5_000, $"avg_query_time {busy["avg_query_time"]} µs");
        Assert.True(busy["avg_xact_time"] >= 5_000, $"avg_xact_time {busy["avg_xact_time"]} µs");

        // Two periods without traffic: every average is zero again; the totals stay.
        var waited = Stopwatch.StartNew();
        Dictionary<string, long> averages;
        while (true)
        {
            averages = await StatsRowAsync(console, "SHOW STATS_AVERAGES");
            if (averages["query_count"] == 0 || waited.Elapsed > TimeSpan.FromSeconds(30))
            {
                break;
            }

            await Task.Delay(200);
        }

        Assert.All(averages, a => Assert.True(a.Value == 0, $"{a.Key} {a.Value} after {waited.Elapsed.TotalSeconds:F1} s without traffic"));
        Dictionary<string, long> totals = await StatsRowAsync(console, "SHOW STATS_TOTALS");
        Assert.Equal(busy["total_query_count"], totals["query_count"]);
        Assert.Equal(busy["total_received"], totals["bytes_received"]);
        Dictionary<string, long> idle = await StatsRowAsync(console, "SHOW STATS");
        Assert.Equal(0, idle["avg_query_count"]);
        Assert.Equal(busy["total_xact_count"], idle["total_xact_count"]);
    }
}
