using System.Diagnostics;
using FastPgProxy.Config;
using FastPgProxy.Sessions;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// Signals that carry only a pid (<c>pg_cancel_backend</c>, <c>pg_terminate_backend</c>, the console's KILL)
/// for a session that lives on another instance: sent to the owner as a PEER command over a login as a
/// user in its peer_users (SCRAM here, the owner's auth_type), checked there against the caller's user and
/// admin flag, and answered as a local target's would be. Clients reach the cluster through a real HAProxy.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class PeerSignalTests(PostgresFixture fixture)
{
    private const string PeerUser = "fpp_peer";
    private const string PeerPassword = "peer-secret";
    private const string User = PostgresServer.TrustUser;
    private const string UserPassword = "user-secret";
    private const string Other = PostgresServer.OtherUser;
    private const string OtherPassword = "other-secret";
    private const string Admin = PostgresServer.Superuser;
    private const string AdminPassword = "admin-secret";
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);
    private static readonly (string, string)[] Users =
        [(PeerUser, PeerPassword), (User, UserPassword), (Other, OtherPassword), (Admin, AdminPassword)];

    private readonly PostgresServer _pg = fixture.Server;

    /// <summary>
    /// One instance per peer id, SCRAM for every login, <see cref="Admin"/> in admin_users and
    /// <see cref="PeerUser"/> in peer_users; each [peers] line logs in as <see cref="PeerUser"/>, and
    /// <paramref name="configure"/> changes instance i's options last.
    /// </summary>
    private List<ProxyHarness> StartCluster(int[] peerIds, Action<int, ProxyOptions>? configure = null) =>
        ProxyHarness.StartCluster(
            _pg,
            peerIds,
            line => new PeerOptions { Id = line.Id, Host = line.Host, Port = line.Port, User = PeerUser, Password = PeerPassword },
            (index, o) =>
            {
                o.AuthType = AuthType.ScramSha256;
                o.CancelTimeout = TimeSpan.FromSeconds(3);
                o.AdminUsers.Add(Admin);
                o.PeerUsers.Add(PeerUser);
                configure?.Invoke(index, o);
            },
            Users);

    [Fact]
    public async Task Behind_HAProxy_pg_cancel_backend_and_pg_terminate_backend_reach_sessions_on_every_instance()
    {
        List<ProxyHarness> cluster = StartCluster([1, 2, 3]);
        var connections = new List<NpgsqlConnection>();
        var targets = new List<NpgsqlConnection>();
        try
        {
            using HaproxyServer haproxy = await HaproxyServer.StartAsync([.. cluster]);
            for (int i = 0; i < 3; i++)
            {
                targets.Add(await Track(connections, OpenAsync(haproxy, User, UserPassword)));
            }

            // The ids name their instances, are unique across the cluster and are what pg_backend_pid() says.
            int[] pids = [.. targets.Select(t => t.ProcessID)];
            Assert.Equal([1, 2, 3], pids.Select(SessionRegistry.PeerOf).Order());
            for (int i = 0; i < targets.Count; i++)
            {
                Assert.Equal(pids[i], await ScalarAsync<int>(targets[i], "SELECT pg_backend_pid()"));
            }

            NpgsqlConnection caller = await Track(connections, OpenAsync(haproxy, User, UserPassword));
            Assert.DoesNotContain(caller.ProcessID, pids);
            for (int i = 0; i < targets.Count; i++)
            {
                string marker = $"peer-signal-cancel-{i}";
                Task<Exception?> running = FailureOfAsync(targets[i], $"SELECT pg_sleep(60) /* {marker} */");
                await _pg.WaitUntilRunningAsync(marker, Patience);
                Assert.True(await ScalarAsync<bool>(caller, $"SELECT pg_cancel_backend({pids[i]})"));
                Assert.Equal("57014", Assert.IsType<PostgresException>(await running.WaitAsync(Patience)).SqlState);
                Assert.Equal(1, await ScalarAsync<int>(targets[i], "SELECT 1"));
            }

            for (int i = 0; i < targets.Count; i++)
            {
                string marker = $"peer-signal-terminate-{i}";
                Task<Exception?> running = FailureOfAsync(targets[i], $"SELECT pg_sleep(60) /* {marker} */");
                await _pg.WaitUntilRunningAsync(marker, Patience);
                Assert.True(await ScalarAsync<bool>(caller, $"SELECT pg_terminate_backend({pids[i]}, 10000)"));
                Assert.Equal("57P01", Assert.IsType<PostgresException>(await running.WaitAsync(Patience)).SqlState);
            }

            // Every signal but the two for the caller's own instance crossed to another one, and was counted there.
            Assert.Equal(4, cluster.Sum(p => p.Server.Peers.All.Sum(l => l.SignalsForwarded)));
            Assert.Equal(4, cluster.Sum(p => p.Server.Peers.All.Sum(l => l.SignalsReceived)));
            Assert.Equal(0, cluster.Sum(p => p.Server.Peers.All.Sum(l => l.SignalsFailed)));
        }
        finally
        {
            await DisposeAllAsync(connections, cluster);
        }
    }

    [Fact]
    public async Task Behind_HAProxy_another_users_session_on_another_instance_gives_42501_and_an_unknown_pid_there_gives_false_with_the_warning()
    {
        List<ProxyHarness> cluster = StartCluster([1, 2, 3]);
        var connections = new List<NpgsqlConnection>();
        try
        {
            using HaproxyServer haproxy = await HaproxyServer.StartAsync([.. cluster]);
            NpgsqlConnection target = await Track(connections, OpenAsync(haproxy, User, UserPassword));
            NpgsqlConnection caller = await Track(connections, OpenAsync(haproxy, Other, OtherPassword));
            Assert.NotEqual(SessionRegistry.PeerOf(target.ProcessID), SessionRegistry.PeerOf(caller.ProcessID));
            string marker = "peer-signal-denied";
            Task<Exception?> running = FailureOfAsync(target, $"SELECT pg_sleep(3), 'done' /* {marker} */");
            await _pg.WaitUntilRunningAsync(marker, Patience);

            var cancel = await Assert.ThrowsAsync<PostgresException>(() => ScalarAsync<bool>(caller, $"SELECT pg_cancel_backend({target.ProcessID})"));
            Assert.Equal("42501", cancel.SqlState);
            Assert.Equal("permission denied to cancel query", cancel.MessageText);
            var terminate = await Assert.ThrowsAsync<PostgresException>(() => ScalarAsync<bool>(caller, $"SELECT pg_terminate_backend({target.ProcessID})"));
            Assert.Equal("42501", terminate.SqlState);
            Assert.Equal("permission denied to terminate process", terminate.MessageText);
            Assert.Null(await running.WaitAsync(Patience));

            // A pid of the target's instance that no session has: f, with PostgreSQL's warning, as for a local pid.
            int unknown = UnknownIdBeside(cluster, target.ProcessID);
            var notices = new List<PostgresNotice>();
            caller.Notice += (_, e) => notices.Add(e.Notice);
            Assert.False(await ScalarAsync<bool>(caller, $"SELECT pg_cancel_backend({unknown})"));
            Assert.False(await ScalarAsync<bool>(caller, $"SELECT pg_terminate_backend({unknown}, 1000)"));
            Assert.Equal(2, notices.Count);
            Assert.All(notices, n => Assert.Equal(("WARNING", "01000", $"PID {unknown} is not a PostgreSQL backend process"), (n.InvariantSeverity, n.SqlState, n.MessageText)));

            // The caller's session goes on, and the extended protocol gets the same answers.
            await using var prepared = new NpgsqlCommand("SELECT pg_cancel_backend(@pid)", caller);
            prepared.Parameters.AddWithValue("pid", target.ProcessID);
            Assert.Equal("42501", (await Assert.ThrowsAsync<PostgresException>(() => prepared.ExecuteScalarAsync())).SqlState);
            Assert.Equal(1, await ScalarAsync<int>(caller, "SELECT 1"));
        }
        finally
        {
            await DisposeAllAsync(connections, cluster);
        }
    }

    [Fact]
    public async Task Behind_HAProxy_admin_KILL_on_one_instance_acts_on_sessions_of_the_others()
    {
        List<ProxyHarness> cluster = StartCluster([1, 2, 3]);
        var connections = new List<NpgsqlConnection>();
        try
        {
            // Round robin puts the three connections on the three instances.
            using HaproxyServer haproxy = await HaproxyServer.StartAsync([.. cluster]);
            NpgsqlConnection onTwo = await Track(connections, OpenAsync(haproxy, User, UserPassword));
            NpgsqlConnection onThree = await Track(connections, OpenAsync(haproxy, User, UserPassword));
            NpgsqlConnection console = await Track(connections, OpenAsync(
                ProxyHarness.ConnectionString(haproxy.Host, haproxy.Port, Admin, AdminPassword, "fastpgproxy", pooling: false) + ";Server Compatibility Mode=NoTypeLoading"));
            int consoleInstance = SessionRegistry.PeerOf(console.ProcessID);
            Assert.Equal(3, new[] { SessionRegistry.PeerOf(onTwo.ProcessID), SessionRegistry.PeerOf(onThree.ProcessID), consoleInstance }.Distinct().Count());
            var notices = new List<string>();
            console.Notice += (_, e) => notices.Add(e.Notice.MessageText);

            Task<Exception?> running = FailureOfAsync(onTwo, "SELECT pg_sleep(60) /* peer-kill-query */");
            await _pg.WaitUntilRunningAsync("peer-kill-query", Patience);
            await ExecuteAsync(console, $"KILL PGSQL QUERY {onTwo.ProcessID}");
            Assert.Equal("57014", Assert.IsType<PostgresException>(await running.WaitAsync(Patience)).SqlState);
            await ExecuteAsync(console, $"KILL PGSQL QUERY {onTwo.ProcessID}");
            Assert.Equal($"no query running on session {onTwo.ProcessID}", Assert.Single(notices));

            running = FailureOfAsync(onThree, "SELECT pg_sleep(60) /* peer-kill-connection */");
            await _pg.WaitUntilRunningAsync("peer-kill-connection", Patience);
            await ExecuteAsync(console, $"KILL PGSQL CONNECTION {onThree.ProcessID}");
            Assert.Equal("57P01", Assert.IsType<PostgresException>(await running.WaitAsync(Patience)).SqlState);

            int unknown = UnknownIdBeside(cluster, onTwo.ProcessID);
            var error = await Assert.ThrowsAsync<PostgresException>(() => ExecuteAsync(console, $"KILL PGSQL QUERY {unknown}"));
            Assert.Equal("42704", error.SqlState);
            Assert.Equal($"unknown session id: {unknown}", error.MessageText);
        }
        finally
        {
            await DisposeAllAsync(connections, cluster);
        }
    }

    [Fact]
    public async Task A_forged_signal_without_peer_credentials_is_refused()
    {
        List<ProxyHarness> cluster = StartCluster([1, 2]);
        var connections = new List<NpgsqlConnection>();
        try
        {
            ProxyHarness owner = cluster[0];
            NpgsqlConnection target = await Track(connections, OpenAsync(owner, User, UserPassword));
            Task<Exception?> running = FailureOfAsync(target, "SELECT pg_sleep(3), 'done' /* peer-forged */");
            await _pg.WaitUntilRunningAsync("peer-forged", Patience);
            string forged = $"PEER TERMINATE {target.ProcessID} \"{User}\" ADMIN 0";

            // A client that can reach the owner's port, logged in as itself, even an admin: not in peer_users.
            foreach ((string user, string password) in new[] { (Other, OtherPassword), (Admin, AdminPassword) })
            {
                NpgsqlConnection console = await Track(connections, OpenConsoleAsync(owner, user, password));
                var refused = await Assert.ThrowsAsync<PostgresException>(() => ExecuteAsync(console, forged));
                Assert.Equal("42501", refused.SqlState);
                Assert.Equal("permission denied for PEER", refused.MessageText);
            }

            // The peer's user name without its password does not log in.
            var login = await Assert.ThrowsAsync<PostgresException>(() => OpenConsoleAsync(owner, PeerUser, "guessed"));
            Assert.Equal("28P01", login.SqlState);

            // Nothing reached the session: its query ran to its end.
            Assert.Null(await running.WaitAsync(Patience));
            Assert.Equal(1, await ScalarAsync<int>(target, "SELECT 1"));
            Assert.Equal(0, owner.Server.Peers.All.Sum(l => l.SignalsReceived));
        }
        finally
        {
            await DisposeAllAsync(connections, cluster);
        }
    }

    [Fact]
    public async Task A_peer_that_cannot_be_asked_gives_false_with_a_warning_and_is_counted()
    {
        // Instance 2 has no user= for instance 1; instance 3 logs in to 1 with a wrong password.
        List<ProxyHarness> cluster = StartCluster(
            [1, 2, 3],
            configure: (index, o) =>
            {
                if (index == 0)
                {
                    return;
                }

                PeerOptions one = o.Peers.Single(p => p.Id == 1);
                o.Peers.Remove(one);
                o.Peers.Add(new PeerOptions { Id = 1, Host = one.Host, Port = one.Port, User = index == 1 ? null : PeerUser, Password = index == 1 ? null : "wrong" });
            });
        var connections = new List<NpgsqlConnection>();
        try
        {
            NpgsqlConnection target = await Track(connections, OpenAsync(cluster[0], User, UserPassword));
            foreach (int index in new[] { 1, 2 })
            {
                NpgsqlConnection caller = await Track(connections, OpenAsync(cluster[index], User, UserPassword));
                var notices = new List<PostgresNotice>();
                caller.Notice += (_, e) => notices.Add(e.Notice);
                Assert.False(await ScalarAsync<bool>(caller, $"SELECT pg_cancel_backend({target.ProcessID})"));
                PostgresNotice notice = Assert.Single(notices);
                Assert.Equal(("WARNING", "01000", $"could not send signal to process {target.ProcessID}"), (notice.InvariantSeverity, notice.SqlState, notice.MessageText));
                Assert.Equal(1, cluster[index].Server.Peers.Find(1)!.SignalsFailed);
            }

            // A stopped owner costs a refused connect, not a hang.
            await cluster[0].DisposeAsync();
            NpgsqlConnection last = await Track(connections, OpenAsync(cluster[2], User, UserPassword));
            var stopwatch = Stopwatch.StartNew();
            Assert.False(await ScalarAsync<bool>(last, $"SELECT pg_terminate_backend({target.ProcessID})"));
            Assert.True(stopwatch.Elapsed < Patience);
            Assert.Equal("down", cluster[2].Server.Peers.Find(1)!.State);
        }
        finally
        {
            await DisposeAllAsync(connections, cluster.Skip(1));
        }
    }

    /// <summary>A session id of the instance that owns <paramref name="id"/> that no session of it has.</summary>
    private static int UnknownIdBeside(List<ProxyHarness> cluster, int id)
    {
        ProxyHarness owner = cluster.Single(p => p.Server.Peers.SelfId == SessionRegistry.PeerOf(id));
        int unknown = id ^ 1;
        while (owner.Server.Sessions.TryGet(unknown, out _))
        {
            unknown ^= 2;
        }

        return unknown;
    }

    /// <summary>Keeps <paramref name="opening"/>'s connection in <paramref name="connections"/>, for the test's end to close.</summary>
    private static async Task<NpgsqlConnection> Track(List<NpgsqlConnection> connections, Task<NpgsqlConnection> opening)
    {
        NpgsqlConnection connection = await opening;
        connections.Add(connection);
        return connection;
    }

    private static Task<NpgsqlConnection> OpenAsync(HaproxyServer haproxy, string user, string password) =>
        OpenAsync(ProxyHarness.ConnectionString(haproxy.Host, haproxy.Port, user, password, PostgresServer.Database, pooling: false));

    private static Task<NpgsqlConnection> OpenAsync(ProxyHarness proxy, string user, string password) =>
        OpenAsync(proxy.ConnectionString(user, password));

    private static async Task<NpgsqlConnection> OpenAsync(string connectionString)
    {
        var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync();
        return connection;
    }

    private static async Task<NpgsqlConnection> OpenConsoleAsync(ProxyHarness proxy, string user, string password)
    {
        // No catalog queries at open: the console has no pg_type.
        var connection = new NpgsqlConnection(proxy.ConnectionString(user, password, "fastpgproxy") + ";Server Compatibility Mode=NoTypeLoading");
        await connection.OpenAsync();
        return connection;
    }

    private static async Task<T> ScalarAsync<T>(NpgsqlConnection connection, string sql)
    {
        await using var cmd = new NpgsqlCommand(sql, connection);
        return (T)(await cmd.ExecuteScalarAsync())!;
    }

    private static async Task ExecuteAsync(NpgsqlConnection connection, string sql)
    {
        await using var cmd = new NpgsqlCommand(sql, connection);
        await cmd.ExecuteNonQueryAsync();
    }

    /// <summary>Runs <paramref name="sql"/>; the exception it ended with, or null when it completed.</summary>
    private static async Task<Exception?> FailureOfAsync(NpgsqlConnection connection, string sql)
    {
        try
        {
            await ExecuteAsync(connection, sql);
            return null;
        }
        catch (Exception e) when (e is PostgresException or NpgsqlException)
        {
            return e;
        }
    }

    private static async Task DisposeAllAsync(IEnumerable<NpgsqlConnection> connections, IEnumerable<ProxyHarness> cluster)
    {
        // The instances first: a connection whose query still runs (a failed test) is then closed, not awaited.
        foreach (ProxyHarness proxy in cluster)
        {
            await proxy.DisposeAsync();
        }

        foreach (NpgsqlConnection connection in connections)
        {
            await connection.DisposeAsync();
        }
    }
}
