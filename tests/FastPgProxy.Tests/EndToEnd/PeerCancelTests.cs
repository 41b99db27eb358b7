using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using FastPgProxy.Cancellation;
using FastPgProxy.Config;
using FastPgProxy.Sessions;
using FastPgProxy.Tests.Infrastructure;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// CancelRequests that reach an instance other than the session's owner: forwarded to the owner (named by
/// the pid's peer id), checked there against the client's own key, bounded by a hop limit when the
/// [peers] sections disagree, counted when the owner is down, and refused from anyone who is not a peer.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class PeerCancelTests(PostgresFixture fixture)
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);
    private readonly PostgresServer _pg = fixture.Server;

    /// <summary>Starts one instance per peer id, each with a [peers] section naming every instance.</summary>
    private List<ProxyHarness> StartCluster(params int[] peerIds) =>
        ProxyHarness.StartCluster(_pg, peerIds, configure: (_, o) => o.CancelTimeout = TimeSpan.FromSeconds(3));

    [Fact]
    public async Task A_cancel_sent_to_another_instance_is_forwarded_to_the_owner_and_cancels()
    {
        List<ProxyHarness> cluster = StartCluster(1, 2, 3);
        try
        {
            ProxyHarness owner = cluster[0], other = cluster[1];
            (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(owner, Protocol32.V30);
            using (raw)
            {
                (int pid, byte[] key) = Protocol32.KeyData(login);
                Assert.Equal(1, SessionRegistry.PeerOf(pid));
                await raw.SendAsync(RawProtocol.Query("SELECT pg_sleep(60) /* peer-forward */"));
                await WaitRunningAsync("peer-forward");

                await Protocol32.SendCancelAsync(other, RawProtocol.CancelRequest(pid, key));

                List<(byte Type, byte[] Body)> reply = await RawProtocol.ReadUntilReadyAsync(raw, Patience);
                Assert.Equal("57014", Protocol32.ErrorCode(reply));
                Assert.Equal(1, other.Server.CancelStats.ForwardedToPeer);
                Assert.Equal(1, owner.Server.CancelStats.ReceivedFromPeer);
                Assert.Equal(1, other.Server.Peers.Find(1)!.Forwarded);
                Assert.Equal("up", other.Server.Peers.Find(1)!.State);
            }
        }
        finally
        {
            await DisposeAllAsync(cluster);
        }
    }

    [Fact]
    public async Task Behind_HAProxy_every_sessions_cancel_reaches_its_owner_and_wrong_keys_cancel_nothing()
    {
        const int sessions = 30;
        List<ProxyHarness> cluster = StartCluster(1, 2, 3);
        var raws = new List<(Socket Socket, int Pid, byte[] Key)>();
        try
        {
            using HaproxyServer haproxy = await HaproxyServer.StartAsync([.. cluster]);
            for (int i = 0; i < sessions; i++)
            {
                var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
                await socket.ConnectAsync(haproxy.Host, haproxy.Port);
                await socket.SendAsync(RawProtocol.Startup(("user", PostgresServer.Superuser), ("database", PostgresServer.Database)));
                (int pid, byte[] key) = Protocol32.KeyData(await RawProtocol.ReadUntilReadyAsync(socket, Patience));
                raws.Add((socket, pid, key));
            }

            Assert.Equal(3, raws.Select(r => SessionRegistry.PeerOf(r.Pid)).Distinct().Count());
            Assert.Equal(sessions, raws.Select(r => r.Pid).Distinct().Count());

            // Wrong keys first: every session's query runs on to its end.
            foreach ((Socket socket, _, _) in raws)
            {
                await socket.SendAsync(RawProtocol.Query("SELECT pg_sleep(1), 'finished' /* lb-wrong */"));
            }

            await WaitRunningAsync("lb-wrong", sessions);
            await ShiftRoundRobinAsync(haproxy);
            foreach ((_, int pid, byte[] key) in raws)
            {
                byte[] wrong = [.. key];
                wrong[^1] ^= 0x40;
                await RawProtocol.SendCancelAsync(haproxy.Host, haproxy.Port, pid, wrong, Patience);
            }

            foreach ((Socket socket, _, _) in raws)
            {
                Assert.Null(Protocol32.ErrorCode(await RawProtocol.ReadUntilReadyAsync(socket, Patience)));
            }

            // Right keys, each through whichever instance HAProxy picks: every one cancels.
            foreach ((Socket socket, _, _) in raws)
            {
                await socket.SendAsync(RawProtocol.Query("SELECT pg_sleep(60) /* lb-cancel */"));
            }

            await WaitRunningAsync("lb-cancel", sessions);
            await ShiftRoundRobinAsync(haproxy);
            foreach ((_, int pid, byte[] key) in raws)
            {
                await RawProtocol.SendCancelAsync(haproxy.Host, haproxy.Port, pid, key, Patience);
            }

            foreach ((Socket socket, _, _) in raws)
            {
                Assert.Equal("57014", Protocol32.ErrorCode(await RawProtocol.ReadUntilReadyAsync(socket, Patience)));
            }

            // Every cancel landed on the instance after its session's owner, so every one was forwarded.
            await WaitUntilAsync(() => cluster.Sum(p => p.Server.CancelStats.ForwardedToPeer) == 2 * sessions, "cancels that landed on another instance were not forwarded");
            Assert.Equal(0, cluster.Sum(p => p.Server.CancelStats.PeerUnreachable));
            Assert.Equal(sessions, cluster.Sum(p => p.Server.CancelStats.WrongKey));
        }
        finally
        {
            foreach ((Socket socket, _, _) in raws)
            {
                socket.Dispose();
            }

            await DisposeAllAsync(cluster);
        }
    }

    [Fact]
    public async Task A_wrong_key_through_another_instance_cancels_nothing_and_counts_at_the_owner()
    {
        List<ProxyHarness> cluster = StartCluster(1, 2);
        try
        {
            ProxyHarness owner = cluster[0], other = cluster[1];
            (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(owner, Protocol32.V30);
            using (raw)
            {
                (int pid, byte[] key) = Protocol32.KeyData(login);
                key[0] ^= 0x01;
                await raw.SendAsync(RawProtocol.Query("SELECT pg_sleep(1.5), 'finished' /* peer-wrong-key */"));
                await WaitRunningAsync("peer-wrong-key");

                await Protocol32.SendCancelAsync(other, RawProtocol.CancelRequest(pid, key));

                List<(byte Type, byte[] Body)> reply = await RawProtocol.ReadUntilReadyAsync(raw, Patience);
                Assert.Null(Protocol32.ErrorCode(reply));
                Assert.Equal(1, owner.Server.CancelStats.WrongKey);
                Assert.Equal(0, other.Server.CancelStats.WrongKey);
            }
        }
        finally
        {
            await DisposeAllAsync(cluster);
        }
    }

    [Fact]
    public async Task A_forwarding_loop_between_misconfigured_instances_dies_at_the_hop_limit()
    {
        int portA = NetUtil.GetFreeTcpPort(), portB = NetUtil.GetFreeTcpPort();

        // Both say peer 3 lives at the other one: a cancel for peer 3 would go round for ever.
        ProxyHarness a = ProxyHarness.Start(_pg, o =>
        {
            o.ListenPort = portA;
            o.PeerId = 1;
            o.Peers.Add(new PeerOptions { Id = 2, Host = "127.0.0.1", Port = portB });
            o.Peers.Add(new PeerOptions { Id = 3, Host = "127.0.0.1", Port = portB });
        });
        ProxyHarness b = ProxyHarness.Start(_pg, o =>
        {
            o.ListenPort = portB;
            o.PeerId = 2;
            o.Peers.Add(new PeerOptions { Id = 1, Host = "127.0.0.1", Port = portA });
            o.Peers.Add(new PeerOptions { Id = 3, Host = "127.0.0.1", Port = portA });
        });
        try
        {
            int pidOfPeer3 = (3 << SessionRegistry.LocalIdBits) | 42;
            await Protocol32.SendCancelAsync(a, RawProtocol.CancelRequest(pidOfPeer3, 1234));

            await WaitUntilAsync(() => a.Server.CancelStats.PeerTtlExhausted + b.Server.CancelStats.PeerTtlExhausted == 1, "the loop was not stopped at the hop limit");
            Assert.Equal(PeerCancel.MaxHops, a.Server.CancelStats.ReceivedFromPeer + b.Server.CancelStats.ReceivedFromPeer);

            // Both keep serving.
            foreach (ProxyHarness proxy in new[] { a, b })
            {
                await using Npgsql.NpgsqlConnection connection = await proxy.OpenAsync();
                await using var command = new Npgsql.NpgsqlCommand("SELECT 1", connection);
                Assert.Equal(1, (int)(await command.ExecuteScalarAsync())!);
            }
        }
        finally
        {
            await DisposeAllAsync([a, b]);
        }
    }

    [Fact]
    public async Task With_one_instance_stopped_cancels_between_the_live_ones_work_and_its_own_fail_fast_counted()
    {
        List<ProxyHarness> cluster = StartCluster(1, 2, 3);
        ProxyHarness owner = cluster[0], other = cluster[1];
        try
        {
            await cluster[2].DisposeAsync();

            // A session on a live instance, cancelled through the other live one.
            (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(owner, Protocol32.V30);
            using (raw)
            {
                (int pid, byte[] key) = Protocol32.KeyData(login);
                await raw.SendAsync(RawProtocol.Query("SELECT pg_sleep(60) /* peer-live */"));
                await WaitRunningAsync("peer-live");
                await Protocol32.SendCancelAsync(other, RawProtocol.CancelRequest(pid, key));
                Assert.Equal("57014", Protocol32.ErrorCode(await RawProtocol.ReadUntilReadyAsync(raw, Patience)));
            }

            // A cancel for the stopped instance's session: its connect is refused at once, and counted.
            int pidOnStopped = (3 << SessionRegistry.LocalIdBits) | 7;
            var elapsed = Stopwatch.StartNew();
            await Protocol32.SendCancelAsync(owner, RawProtocol.CancelRequest(pidOnStopped, 99));
            Assert.True(elapsed.Elapsed < Patience);
            await WaitUntilAsync(() => owner.Server.CancelStats.PeerUnreachable == 1, "the unreachable peer was not counted");
            Assert.Equal("down", owner.Server.Peers.Find(3)!.State);
        }
        finally
        {
            await DisposeAllAsync([owner, other]);
        }
    }

    [Fact]
    public async Task A_cancel_timeout_longer_than_a_timer_can_hold_still_forwards_and_closes()
    {
        // cancel_timeout may be up to a year; a token holds about 49 days.
        int refusedPort = NetUtil.GetFreeTcpPort();
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o =>
        {
            o.PeerId = 1;
            o.CancelTimeout = TimeSpan.FromDays(100);
            o.Peers.Add(new PeerOptions { Id = 2, Host = "127.0.0.1", Port = refusedPort });
        });

        await Protocol32.SendCancelAsync(proxy, RawProtocol.CancelRequest((2 << SessionRegistry.LocalIdBits) | 7, 99));

        await WaitUntilAsync(() => proxy.Server.CancelStats.PeerUnreachable == 1, "the unreachable peer was not counted");
        Assert.Equal(0, proxy.Server.Peers.Find(2)!.InFlight);
    }

    [Fact]
    public async Task A_forwarded_cancel_from_an_address_that_is_no_peer_is_refused()
    {
        // The only peer is at 127.0.0.2; the test client connects from 127.0.0.1.
        await using ProxyHarness owner = ProxyHarness.Start(_pg, o =>
        {
            o.PeerId = 1;
            o.Peers.Add(new PeerOptions { Id = 2, Host = "127.0.0.2", Port = 1 });
        });
        (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(owner, Protocol32.V30);
        using (raw)
        {
            (int pid, byte[] key) = Protocol32.KeyData(login);
            await raw.SendAsync(RawProtocol.Query("SELECT pg_sleep(1.5), 'finished' /* peer-forged */"));
            await WaitRunningAsync("peer-forged");

            await Protocol32.SendCancelAsync(owner, PeerCancel.Wrap(1, IPAddress.Parse("203.0.113.9"), pid, key));

            List<(byte Type, byte[] Body)> reply = await RawProtocol.ReadUntilReadyAsync(raw, Patience);
            Assert.Null(Protocol32.ErrorCode(reply));
            Assert.Equal(1, owner.Server.CancelStats.Malformed);
            Assert.Equal(0, owner.Server.CancelStats.ReceivedFromPeer);
        }
    }

    [Fact]
    public async Task Without_peering_a_forwarded_cancel_is_an_unknown_protocol()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg);
        using Socket raw = await proxy.ConnectRawAsync();
        await raw.SendAsync(PeerCancel.Wrap(1, IPAddress.Loopback, 5, new byte[4]));

        (byte Type, byte[] Body)? reply = await RawProtocol.ReadMessageAsync(raw, Patience);
        Assert.NotNull(reply);
        Assert.Equal((byte)'E', reply.Value.Type);
        Assert.Contains("unsupported frontend protocol 1234.5690", RawProtocol.Fields(reply.Value.Body).Single(f => f.Code == 'M').Value, StringComparison.Ordinal);
    }

    /// <summary>
    /// One connection through HAProxy that closes at once, so that the next <c>n</c> connections reach the
    /// instances one step further in the rotation than the <c>n</c> before them: cancels then never land on
    /// the instance that owns their session.
    /// </summary>
    private static async Task ShiftRoundRobinAsync(HaproxyServer haproxy)
    {
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(haproxy.Host, haproxy.Port);
        socket.Shutdown(SocketShutdown.Both);
        await RawProtocol.ReadUntilCloseAsync(socket, Patience);
    }

    private static async Task DisposeAllAsync(IEnumerable<ProxyHarness> cluster)
    {
        foreach (ProxyHarness proxy in cluster)
        {
            await proxy.DisposeAsync();
        }
    }

    private static async Task WaitUntilAsync(Func<bool> condition, string failure)
    {
        var deadline = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(deadline.Elapsed < Patience, failure);
            await Task.Delay(20);
        }
    }

    private Task WaitRunningAsync(string marker, int count = 1) => _pg.WaitUntilRunningAsync(marker, Patience, count);
}
