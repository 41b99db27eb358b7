using FastPgProxy.Config;
using Xunit;

namespace FastPgProxy.Tests.Config;

/// <summary>The [peers] section as PgBouncer writes it, and what the loader refuses in it.</summary>
public class PeerConfigTests
{
    private const string Head = "[fastpgproxy]\nauth_type = trust\npeer_id = 1\n[databases]\n* = host=h\n";

    [Fact]
    public void Peer_lines_parse_with_pgbouncers_defaults()
    {
        ProxyOptions o = ConfigLoader.Parse(Head + "[peers]\n1 = host=10.0.0.1\n2 = host=10.0.0.2 port=6433 pool_size=4\n", "x.ini");

        Assert.Collection(
            o.Peers,
            p => Assert.Equal((1, "10.0.0.1", 6432, (int?)null), (p.Id, p.Host, p.Port, p.PoolSize)),
            p => Assert.Equal((2, "10.0.0.2", 6433, (int?)4), (p.Id, p.Host, p.Port, p.PoolSize)));
    }

    [Fact]
    public void Peer_lines_carry_the_login_for_signals_and_peer_users_who_may_send_them()
    {
        ProxyOptions o = ConfigLoader.Parse(
            Head.Replace("peer_id = 1\n", "peer_id = 1\npeer_users = fpp_peer, other\n", StringComparison.Ordinal)
            + "[peers]\n2 = host=10.0.0.2 user=fpp_peer password='se cret'\n3 = host=10.0.0.3\n",
            "x.ini");

        Assert.Equal(["fpp_peer", "other"], o.PeerUsers.Order());
        Assert.Collection(
            o.Peers,
            p => Assert.Equal((2, "fpp_peer", "se cret"), (p.Id, p.User, p.Password)),
            p => Assert.Equal((3, (string?)null, (string?)null), (p.Id, p.User, p.Password)));
    }

    [Theory]
    [InlineData("[peers]\n2 = host=a\n2 = host=b\n", "x.ini: [peers] lists peer 2 twice")]
    [InlineData("[peers]\n0 = host=a\n", "x.ini:7: peer id: invalid value '0' (an integer from 1 to 16383)")]
    [InlineData("[peers]\n2 = host=a dbname=u\n", "x.ini:7: 2: unknown peer parameter 'dbname' (host, port, pool_size, user, password)")]
    [InlineData("[peers]\n2 = host=a password=p\n", "x.ini:7: 2: password without user")]
    [InlineData("[peers]\n2 = host=a port=0\n", "x.ini:7: 2: port: invalid value '0' (an integer from 1 to 65535)")]
    public void Bad_peer_lines_name_what_is_wrong(string peers, string message)
    {
        ConfigException e = Assert.Throws<ConfigException>(() => ConfigLoader.Parse(Head + peers, "x.ini"));
        Assert.Equal(message, e.Message);
    }

    [Fact]
    public void Peers_without_this_instances_peer_id_are_an_error()
    {
        ConfigException e = Assert.Throws<ConfigException>(() => ConfigLoader.Parse("[fastpgproxy]\nauth_type = trust\n[databases]\n* = host=h\n[peers]\n1 = host=a\n", "x.ini"));
        Assert.Equal("x.ini: [peers] needs this instance's own peer_id", e.Message);
    }
}
