using FastPgProxy.Config;
using FastPgProxy.Sessions;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>Two instances with their own <c>peer_id</c>: every pid a client sees names the instance that owns the session.</summary>
[Collection(PostgresCollection.Name)]
public sealed class PeerIdTests(PostgresFixture fixture)
{
    private readonly PostgresServer _pg = fixture.Server;

    [Fact]
    public async Task Pids_from_two_instances_carry_each_instances_peer_id_and_never_collide()
    {
        await using ProxyHarness first = ProxyHarness.Start(_pg, o => o.PeerId = 1);
        await using ProxyHarness second = ProxyHarness.Start(_pg, o => o.PeerId = 2, users: null);
        var pids = new HashSet<int>();
        var connections = new List<NpgsqlConnection>();
        try
        {
            foreach ((ProxyHarness proxy, int peer) in new[] { (first, 1), (second, 2) })
            {
                for (int i = 0; i < 10; i++)
                {
                    NpgsqlConnection connection = await proxy.OpenAsync();
                    connections.Add(connection);
                    Assert.Equal(peer, SessionRegistry.PeerOf(connection.ProcessID));
                    Assert.True(pids.Add(connection.ProcessID));

                    // pg_backend_pid() is the same id, answered by the instance itself.
                    await using var command = new NpgsqlCommand("SELECT pg_backend_pid()", connection);
                    Assert.Equal(connection.ProcessID, (int)(await command.ExecuteScalarAsync())!);
                }
            }
        }
        finally
        {
            foreach (NpgsqlConnection connection in connections)
            {
                await connection.DisposeAsync();
            }
        }
    }
}
