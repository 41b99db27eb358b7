using FastPgProxy.Config;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// The pid of a NotificationResponse names a proxy session, like every other pid a client sees
/// (BackendKeyData, <c>pg_backend_pid()</c>): the session behind the backend that ran NOTIFY, in session
/// and transaction mode. A NOTIFY from a backend the proxy did not open keeps PostgreSQL's pid.
/// </summary>
/// <remarks>
/// Each test listens on a channel of its own, so no other test's NOTIFY reaches its backends. In
/// transaction mode a listener only gets a notification while it holds a backend: PostgreSQL sends it
/// before the ReadyForQuery that ends a transaction, so the listener either notifies itself in the same
/// request or keeps a transaction open while the other client notifies, and gets it with its COMMIT.
/// Transaction mode runs with statement tracking off (max_prepared_statements 0) and on, as the relay
/// frames the backend's messages with a different set of inspected types in each.
/// </remarks>
[Collection(PostgresCollection.Name)]
public sealed class NotifyPidTests(PostgresFixture fixture)
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);

    private readonly PostgresServer _pg = fixture.Server;

    [Fact]
    public async Task Session_mode_self_notify_shows_the_listeners_own_session_id()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Session, poolSize: 4);
        await using NpgsqlConnection client = await proxy.OpenAsync();
        Task<NpgsqlNotificationEventArgs> received = NextNotification(client);

        await ExecuteAsync(client, "LISTEN fpp_notify_self_session");
        await ExecuteAsync(client, "NOTIFY fpp_notify_self_session, 'self'");

        NpgsqlNotificationEventArgs notification = await received.WaitAsync(Patience);
        Assert.Equal("self", notification.Payload);
        Assert.Equal(client.ProcessID, notification.PID);
        Assert.Equal(client.ProcessID, await ScalarAsync<int>(client, "SELECT pg_backend_pid()"));
    }

    [Fact]
    public async Task Session_mode_notify_from_another_client_shows_the_notifiers_session_id()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Session, poolSize: 4);
        await using NpgsqlConnection listener = await proxy.OpenAsync();
        await using NpgsqlConnection notifier = await proxy.OpenAsync();
        Task<NpgsqlNotificationEventArgs> received = NextNotification(listener);
        await ExecuteAsync(listener, "LISTEN fpp_notify_other_session");

        int notifierPid = await ScalarAsync<int>(notifier, "SELECT pg_backend_pid()");
        await ExecuteAsync(notifier, "NOTIFY fpp_notify_other_session, 'from notifier'");

        NpgsqlNotificationEventArgs notification = await WaitForNotificationAsync(listener, received);
        Assert.Equal("from notifier", notification.Payload);
        Assert.Equal(notifier.ProcessID, notifierPid);
        Assert.Equal(notifierPid, notification.PID);
        Assert.NotEqual(listener.ProcessID, notification.PID);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(200)]
    public async Task Transaction_mode_self_notify_shows_the_listeners_own_session_id(int maxPreparedStatements)
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 2, o => o.MaxPreparedStatements = maxPreparedStatements);
        await using NpgsqlConnection client = await proxy.OpenAsync();
        Task<NpgsqlNotificationEventArgs> received = NextNotification(client);

        // One request: the backend that listens is the one that notifies, and it is still the client's
        // when PostgreSQL sends the notification, just before the request's ReadyForQuery.
        await ExecuteAsync(client, "LISTEN fpp_notify_self_transaction; NOTIFY fpp_notify_self_transaction, 'self'");

        NpgsqlNotificationEventArgs notification = await received.WaitAsync(Patience);
        Assert.Equal("self", notification.Payload);
        Assert.Equal(client.ProcessID, notification.PID);
        Assert.Equal(client.ProcessID, await ScalarAsync<int>(client, "SELECT pg_backend_pid()"));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(200)]
    public async Task Transaction_mode_notify_from_another_client_shows_the_notifiers_session_id(int maxPreparedStatements)
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Transaction, poolSize: 2, o => o.MaxPreparedStatements = maxPreparedStatements);
        await using NpgsqlConnection listener = await proxy.OpenAsync();
        await using NpgsqlConnection notifier = await proxy.OpenAsync();
        Task<NpgsqlNotificationEventArgs> received = NextNotification(listener);

        // LISTEN is committed, then a transaction stays open: the listener keeps its backend, and the
        // notifier's request runs on the other one.
        await ExecuteAsync(listener, "BEGIN; LISTEN fpp_notify_other_transaction; COMMIT; BEGIN");
        int notifierPid = await ScalarAsync<int>(notifier, "SELECT pg_backend_pid()");
        await ExecuteAsync(notifier, "NOTIFY fpp_notify_other_transaction, 'from notifier'");
        Assert.False(received.IsCompleted);

        // PostgreSQL holds the notification back while the listener's transaction is open and sends it
        // before the ReadyForQuery of its COMMIT, while the listener still has the backend.
        await ExecuteAsync(listener, "COMMIT");

        NpgsqlNotificationEventArgs notification = await received.WaitAsync(Patience);
        Assert.Equal("from notifier", notification.Payload);
        Assert.Equal(notifier.ProcessID, notifierPid);
        Assert.Equal(notifierPid, notification.PID);
        Assert.NotEqual(listener.ProcessID, notification.PID);
    }

    [Fact]
    public async Task Notify_from_a_backend_not_opened_by_the_proxy_keeps_postgresqls_pid()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, PoolMode.Session, poolSize: 4);
        await using NpgsqlConnection listener = await proxy.OpenAsync();
        await using var direct = new NpgsqlConnection(_pg.ConnectionString());
        await direct.OpenAsync();
        Task<NpgsqlNotificationEventArgs> received = NextNotification(listener);
        await ExecuteAsync(listener, "LISTEN fpp_notify_direct");

        int directPid = await ScalarAsync<int>(direct, "SELECT pg_backend_pid()");
        Assert.Equal(direct.ProcessID, directPid);
        await ExecuteAsync(direct, "NOTIFY fpp_notify_direct, 'direct'");

        NpgsqlNotificationEventArgs notification = await WaitForNotificationAsync(listener, received);
        Assert.Equal("direct", notification.Payload);
        Assert.Equal(directPid, notification.PID);
    }

    /// <summary>The first notification <paramref name="connection"/> raises from now on.</summary>
    private static Task<NpgsqlNotificationEventArgs> NextNotification(NpgsqlConnection connection)
    {
        var received = new TaskCompletionSource<NpgsqlNotificationEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        connection.Notification += (_, e) => received.TrySetResult(e);
        return received.Task;
    }

    /// <summary>Reads from an idle <paramref name="connection"/> until <paramref name="received"/> completes.</summary>
    private static async Task<NpgsqlNotificationEventArgs> WaitForNotificationAsync(NpgsqlConnection connection, Task<NpgsqlNotificationEventArgs> received)
    {
        using var cts = new CancellationTokenSource(Patience);
        await connection.WaitAsync(cts.Token);
        return await received.WaitAsync(Patience);
    }

    private static async Task ExecuteAsync(NpgsqlConnection connection, string sql)
    {
        await using var command = new NpgsqlCommand(sql, connection);
        await command.ExecuteNonQueryAsync();
    }

    private static async Task<T> ScalarAsync<T>(NpgsqlConnection connection, string sql)
    {
        await using var command = new NpgsqlCommand(sql, connection);
        return (T)(await command.ExecuteScalarAsync())!;
    }
}
