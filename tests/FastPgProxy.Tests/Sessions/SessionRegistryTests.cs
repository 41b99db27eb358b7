using FastPgProxy.Config;
using FastPgProxy.Net;
using FastPgProxy.Sessions;
using Xunit;

namespace FastPgProxy.Tests.Sessions;

/// <summary>Session ids with and without <c>peer_id</c>: the layout, uniqueness and the limit of an instance.</summary>
public class SessionRegistryTests
{
    private readonly LoopRandom _random = new();

    [Fact]
    public void Without_a_peer_id_ids_are_positive_and_distinct()
    {
        var registry = new SessionRegistry();
        var ids = new HashSet<int>();
        for (int i = 0; i < 1000; i++)
        {
            int id = registry.Add(null!, _random);
            Assert.True(id > 0);
            Assert.True(ids.Add(id));
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(5)]
    [InlineData(SessionRegistry.MaxPeerId)]
    public void Ids_carry_the_peer_id_in_their_top_bits(int peerId)
    {
        var registry = new SessionRegistry(peerId);
        for (int i = 0; i < 1000; i++)
        {
            int id = registry.Add(null!, _random);
            Assert.True(id > 0, $"id {id} is not a positive pid");
            Assert.Equal(peerId, SessionRegistry.PeerOf(id));
            Assert.InRange(id & SessionRegistry.LocalIdCapacity, 1, SessionRegistry.LocalIdCapacity);
        }
    }

    [Fact]
    public void An_instance_with_a_peer_id_refuses_a_session_past_its_ids_and_reuses_a_freed_one()
    {
        var registry = new SessionRegistry(7);
        var ids = new HashSet<int>();
        for (int i = 0; i < SessionRegistry.LocalIdCapacity; i++)
        {
            Assert.True(ids.Add(registry.Add(null!, _random)));
        }

        Assert.DoesNotContain(0, ids);
        Assert.Equal(0, registry.Add(null!, _random));

        int freed = ids.First();
        registry.Remove(freed);
        Assert.Equal(freed, registry.Add(null!, _random));
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(SessionRegistry.MaxPeerId + 1)]
    public void A_peer_id_out_of_range_is_refused(int peerId) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => new SessionRegistry(peerId));

    [Fact]
    public void The_config_reads_peer_id_and_checks_its_range_and_max_client_conn()
    {
        const string databases = "[databases]\n* = host=h\n";
        Assert.Equal(0, ConfigLoader.Parse("[fastpgproxy]\nauth_type = trust\n" + databases, "x.ini").PeerId);
        Assert.Equal(16383, ConfigLoader.Parse("[fastpgproxy]\nauth_type = trust\npeer_id = 16383\n" + databases, "x.ini").PeerId);

        ConfigException range = Assert.Throws<ConfigException>(() => ConfigLoader.Parse("[fastpgproxy]\nauth_type = trust\npeer_id = 16384\n" + databases, "x.ini"));
        Assert.Equal("x.ini:3: peer_id: invalid value '16384' (an integer from 0 to 16383)", range.Message);

        ConfigException clients = Assert.Throws<ConfigException>(() => ConfigLoader.Parse("[fastpgproxy]\nauth_type = trust\npeer_id = 3\nmax_client_conn = 200000\n" + databases, "x.ini"));
        Assert.Contains("max_client_conn 200000 is more than the 131071 session ids", clients.Message, StringComparison.Ordinal);
    }
}
