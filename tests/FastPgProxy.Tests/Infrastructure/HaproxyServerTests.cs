using System.Net;
using System.Net.Sockets;
using FastPgProxy.Sessions;
using FastPgProxy.Tests.EndToEnd;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>
/// <see cref="HaproxyServer"/> really balances: consecutive connections go to each backend in turn, and
/// three in-process instances with their own <c>peer_id</c> behind it all serve clients.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class HaproxyServerTests(PostgresFixture fixture)
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    private readonly PostgresServer _pg = fixture.Server;

    [Fact]
    public async Task Consecutive_connections_go_to_each_of_three_backends_in_turn()
    {
        TcpListener[] listeners = [.. Enumerable.Range(0, 3).Select(_ => new TcpListener(IPAddress.Loopback, 0))];
        var sockets = new List<Socket>();
        try
        {
            foreach (TcpListener listener in listeners)
            {
                listener.Start();
            }

            using HaproxyServer haproxy = await HaproxyServer.StartAsync([.. listeners.Select(l => ((IPEndPoint)l.LocalEndpoint).Port)]);
            Task<Socket>[] accepts = [.. listeners.Select(l => l.AcceptSocketAsync())];
            var order = new List<int>();
            for (int i = 0; i < 9; i++)
            {
                var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
                sockets.Add(client);
                await client.ConnectAsync(haproxy.Host, haproxy.Port);

                // Wait for the backend this connection reached before making the next one, so the order of
                // the accepts is the order of the connections.
                Task first = await Task.WhenAny([.. accepts, Task.Delay(Patience)]);
                int backend = Array.IndexOf(accepts, first);
                Assert.True(backend >= 0, $"connection {i} reached no backend within {Patience}; haproxy output:\n{haproxy.Output}");
                sockets.Add(await accepts[backend]);
                order.Add(backend);
                accepts[backend] = listeners[backend].AcceptSocketAsync();
            }

            // A fixed rotation over all three: the first three differ, and every later one repeats the rotation.
            Assert.Equal(3, order.Take(3).Distinct().Count());
            for (int i = 3; i < order.Count; i++)
            {
                Assert.True(order[i] == order[i - 3], $"connection {i} went to backend {order[i]}, out of turn: {string.Join(",", order)}");
            }
        }
        finally
        {
            foreach (Socket socket in sockets)
            {
                socket.Dispose();
            }

            foreach (TcpListener listener in listeners)
            {
                listener.Stop();
            }
        }
    }

    [Fact]
    public async Task Thirty_connections_through_haproxy_land_on_all_three_instances_and_each_answers()
    {
        await using ProxyHarness first = ProxyHarness.Start(_pg, o => o.PeerId = 1);
        await using ProxyHarness second = ProxyHarness.Start(_pg, o => o.PeerId = 2);
        await using ProxyHarness third = ProxyHarness.Start(_pg, o => o.PeerId = 3);
        using HaproxyServer haproxy = await HaproxyServer.StartAsync(first, second, third);

        var perPeer = new Dictionary<int, int>();
        var connections = new List<NpgsqlConnection>();
        try
        {
            for (int i = 0; i < 30; i++)
            {
                NpgsqlConnection connection = await haproxy.OpenAsync();
                connections.Add(connection);
                int peer = SessionRegistry.PeerOf(connection.ProcessID);
                perPeer[peer] = perPeer.GetValueOrDefault(peer) + 1;

                await using var select = new NpgsqlCommand("SELECT 1", connection);
                Assert.Equal(1, (int)(await select.ExecuteScalarAsync())!);

                // The instance that answered is the one the pid names.
                await using var pid = new NpgsqlCommand("SELECT pg_backend_pid()", connection);
                Assert.Equal(connection.ProcessID, (int)(await pid.ExecuteScalarAsync())!);
            }

            Assert.Equal([1, 2, 3], perPeer.Keys.Order());

            // Round robin with nothing else connecting: ten each, all still open on their instance.
            Assert.All(perPeer.Values, count => Assert.Equal(10, count));
            Assert.All(new[] { first, second, third }, proxy => Assert.Equal(10, proxy.Server.Sessions.Count));
        }
        finally
        {
            foreach (NpgsqlConnection connection in connections)
            {
                await connection.DisposeAsync();
            }
        }
    }

    [Fact]
    public async Task A_cancel_request_through_haproxy_for_no_session_is_closed_without_a_reply()
    {
        await using ProxyHarness first = ProxyHarness.Start(_pg, o => o.PeerId = 1);
        await using ProxyHarness second = ProxyHarness.Start(_pg, o => o.PeerId = 2);
        await using ProxyHarness third = ProxyHarness.Start(_pg, o => o.PeerId = 3);
        using HaproxyServer haproxy = await HaproxyServer.StartAsync(first, second, third);

        // No session exists yet on any instance: whichever one gets the request drops it silently.
        int pid = (1 << SessionRegistry.LocalIdBits) | 1;
        Assert.Equal(1, SessionRegistry.PeerOf(pid));
        (byte[] data, bool closed) = await RawProtocol.SendCancelAsync(haproxy.Host, haproxy.Port, pid, 0x5EC2E7, Patience);
        Assert.True(closed, "the cancel connection through haproxy stayed open");
        Assert.Empty(data);
    }
}
