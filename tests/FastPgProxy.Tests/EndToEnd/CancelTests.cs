using System.Diagnostics;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>Clients cancel their own queries through the proxy, with keys the proxy issued, and never anyone else's.</summary>
[Collection(PostgresCollection.Name)]
public sealed class CancelTests(PostgresFixture fixture) : IAsyncLifetime
{
    private readonly PostgresServer _pg = fixture.Server;
    private ProxyHarness _proxy = null!;

    public Task InitializeAsync()
    {
        _proxy = ProxyHarness.Start(_pg);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _proxy.DisposeAsync();

    /// <summary>Waits until PostgreSQL runs <paramref name="count"/> queries containing <paramref name="marker"/>.</summary>
    private async Task WaitRunningAsync(string marker, int count = 1)
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            long running = await _pg.ScalarAsync<long>(
                $"SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()");
            if (running >= count)
            {
                return;
            }

            Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(30), $"queries '{marker}' did not start");
            await Task.Delay(20);
        }
    }

    /// <summary>
    /// Npgsql reports a query cancelled by <see cref="NpgsqlCommand.Cancel"/> as an OperationCanceledException
    /// wrapping PostgreSQL's 57014 error; anything else (a timeout, another error) fails the test.
    /// </summary>
    private static async Task AssertCancelledAsync(Task running)
    {
        Exception e = await Assert.ThrowsAnyAsync<Exception>(() => running.WaitAsync(TimeSpan.FromSeconds(20)));
        PostgresException pg = Assert.IsType<PostgresException>(e is OperationCanceledException ? e.InnerException : e);
        Assert.Equal("57014", pg.SqlState);
    }

    [Fact]
    public async Task NpgsqlCommand_Cancel_cancels_the_running_query()
    {
        await using NpgsqlConnection c = await _proxy.OpenAsync();
        await using var cmd = new NpgsqlCommand("SELECT pg_sleep(30) /* npgsql-cancel */", c);
        Task<object?> running = cmd.ExecuteScalarAsync();
        await WaitRunningAsync("npgsql-cancel");
        var sw = Stopwatch.StartNew();
        long forwardedBefore = _proxy.Server.CancelStats.Forwarded;
        cmd.Cancel();
        await AssertCancelledAsync(running);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"cancel took {sw.Elapsed}");

        // The session is usable afterwards.
        await using var next = new NpgsqlCommand("SELECT 5", c);
        Assert.Equal(5, await next.ExecuteScalarAsync());
        // Counted once PostgreSQL has closed the cancel connection, which may come after the 57014 itself.
        var counted = Stopwatch.StartNew();
        while (_proxy.Server.CancelStats.Forwarded <= forwardedBefore)
        {
            Assert.True(counted.Elapsed < TimeSpan.FromSeconds(20), "the cancel was never counted as forwarded");
            await Task.Delay(10);
        }
    }

    [Fact]
    public async Task CancelRequest_with_a_wrong_secret_leaves_the_query_running()
    {
        await using NpgsqlConnection c = await _proxy.OpenAsync();
        await using var cmd = new NpgsqlCommand("SELECT pg_sleep(1.5), 'finished' /* wrong-key */", c);
        Task<object?> running = cmd.ExecuteScalarAsync();
        await WaitRunningAsync("wrong-key");
        long wrongBefore = _proxy.Server.CancelStats.WrongKey;
        for (int i = 0; i < 5; i++)
        {
            using System.Net.Sockets.Socket raw = await _proxy.ConnectRawAsync();
            await raw.SendAsync(RawProtocol.CancelRequest(c.ProcessID, unchecked(0x5EC2E7 + i)));
            (byte[] data, bool closed) = await RawProtocol.ReadUntilCloseAsync(raw, TimeSpan.FromSeconds(10));
            Assert.True(closed);
            Assert.Empty(data);
        }

        await running.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(wrongBefore + 5, _proxy.Server.CancelStats.WrongKey);
    }

    [Fact]
    public async Task Fifty_sessions_each_cancelled_alone_only_the_target_fails()
    {
        const int sessions = 50;
        var connections = new NpgsqlConnection[sessions];
        var commands = new NpgsqlCommand[sessions];
        var tasks = new Task<object?>[sessions];
        try
        {
            for (int i = 0; i < sessions; i++)
            {
                connections[i] = await _proxy.OpenAsync();
                commands[i] = new NpgsqlCommand($"SELECT pg_sleep(60) /* fifty-{i:D2} */", connections[i]);
                tasks[i] = commands[i].ExecuteScalarAsync();
            }

            await WaitRunningAsync("fifty-", sessions);
            for (int i = 0; i < sessions; i++)
            {
                commands[i].Cancel();
                await AssertCancelledAsync(tasks[i]);
                for (int j = i + 1; j < sessions; j++)
                {
                    Assert.False(tasks[j].IsCompleted, $"session {j} ended when session {i} was cancelled");
                }
            }

            long stillRunning = await _pg.ScalarAsync<long>("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%fifty-%' AND pid <> pg_backend_pid()");
            Assert.Equal(0, stillRunning);
        }
        finally
        {
            // A failed assertion must not leave sleeping queries behind: disposing a busy connection waits for it.
            await _pg.ExecuteNonQueryAsync("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%fifty-%' AND pid <> pg_backend_pid()");
            foreach (NpgsqlCommand? cmd in commands)
            {
                cmd?.Dispose();
            }

            foreach (NpgsqlConnection? c in connections)
            {
                if (c is not null)
                {
                    await c.DisposeAsync();
                }
            }
        }
    }

    [Fact]
    public async Task Psql_sigint_cancels_the_running_query()
    {
        string psql = ProcessRunner.FindOnPath("psql") ?? _pg.ToolPath("psql");
        var start = new ProcessStartInfo(psql)
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        foreach (string arg in new[] { "-X", "-h", "127.0.0.1", "-p", _proxy.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "-U", "postgres", "-d", "fpp", "-c", "SELECT pg_sleep(30) /* psql-sigint */" })
        {
            start.ArgumentList.Add(arg);
        }

        start.Environment["PGCONNECT_TIMEOUT"] = "10";
        using Process process = Process.Start(start)!;
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        try
        {
            await WaitRunningAsync("psql-sigint");
            (int killCode, _, string killErr) = await ProcessRunner.RunAsync("kill", ["-INT", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)], TimeSpan.FromSeconds(10));
            Assert.True(killCode == 0, killErr);
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            await process.WaitForExitAsync(cts.Token);
            string err = await stderr;
            Assert.Contains("canceling statement due to user request", err, StringComparison.Ordinal);
            Assert.NotEqual(0, process.ExitCode);
            _ = await stdout;
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }
    }
}
