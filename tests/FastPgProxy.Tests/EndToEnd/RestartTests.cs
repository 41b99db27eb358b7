using System.Collections.Concurrent;
using FastPgProxy.Config;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// PostgreSQL restarts under a transaction pool: clients that start a transaction while it is down wait
/// for it and run, and only what was running at the instant of the shutdown fails, always with an error.
/// Each test has a PostgreSQL of its own, since it restarts it.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class RestartTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Transaction_clients_ride_through_a_fast_restart_and_only_queries_running_at_that_instant_fail()
    {
        using PostgresServer pg = PostgresServer.Start();
        await using ProxyHarness proxy = ProxyHarness.Start(pg, PoolMode.Transaction, poolSize: 8);

        var failures = new ConcurrentQueue<Exception>();
        long queries = 0;
        using var stop = new CancellationTokenSource();
        Task[] clients = Enumerable.Range(0, 16).Select(_ => Task.Run(async () =>
        {
            NpgsqlConnection? connection = null;
            try
            {
                while (!stop.IsCancellationRequested)
                {
                    try
                    {
                        connection ??= await proxy.OpenAsync(PostgresServer.TrustUser);
                        await using var command = new NpgsqlCommand("select 1", connection);
                        Assert.Equal(1, await command.ExecuteScalarAsync());
                        Interlocked.Increment(ref queries);
                    }
                    catch (NpgsqlException e)
                    {
                        failures.Enqueue(e);
                        if (connection is not null)
                        {
                            await connection.DisposeAsync();
                            connection = null;
                        }
                    }

                    await Task.Delay(50);
                }
            }
            finally
            {
                if (connection is not null)
                {
                    await connection.DisposeAsync();
                }
            }
        })).ToArray();

        // A client inside a transaction when PostgreSQL goes: nothing can save it, but it is told.
        using CancelRaceTests.RawClient inTransaction = await CancelRaceTests.RawClient.ConnectAsync(proxy, "in-transaction");
        Assert.Null((await inTransaction.QueryAsync("begin; select 1", Patience)).SqlState);

        await WaitForQueriesAsync(() => Interlocked.Read(ref queries), 300);
        await Task.Run(() =>
        {
            pg.Stop();
            pg.StartAgain();
        });
        await WaitForQueriesAsync(() => Interlocked.Read(ref queries), Interlocked.Read(ref queries) + 300);
        await stop.CancelAsync();
        await Task.WhenAll(clients).WaitAsync(Patience);

        (byte[] told, bool closed) = await inTransaction.ReadUntilCloseAsync(Patience);
        Assert.True(closed, "the client inside a transaction was not closed");
        Assert.Equal("57P01", RawProtocol.ErrorCode(told));

        // Only backends running a query at the instant can fail, and a failure is PostgreSQL's FATAL
        // passed on (or the proxy's 08006), never a connection dropped without a word.
        string described = string.Join("; ", failures.Select(e => $"{e.GetType().Name} {(e as PostgresException)?.SqlState} {e.Message}"));
        Assert.True(failures.Count <= 8, $"{failures.Count} of {Interlocked.Read(ref queries)} queries failed: {described}");
        Assert.All(failures, e => Assert.IsType<PostgresException>(e));
    }

    private static async Task WaitForQueriesAsync(Func<long> count, long target)
    {
        DateTime deadline = DateTime.UtcNow + Patience;
        while (count() < target)
        {
            Assert.True(DateTime.UtcNow < deadline, $"only {count()} of {target} queries ran");
            await Task.Delay(20);
        }
    }
}
