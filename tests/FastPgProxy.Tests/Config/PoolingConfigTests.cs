using FastPgProxy.Admin;
using FastPgProxy.Config;
using Xunit;

namespace FastPgProxy.Tests.Config;

/// <summary>The pooling keys PgBouncer 1.25 defines: the [users] section, the reserve pool, backend checks and the rest.</summary>
public class PoolingConfigTests
{
    private const string Head = "[pgbouncer]\nauth_type = trust\n";

    [Fact]
    public void Defaults_are_PgBouncers()
    {
        ProxyOptions o = ConfigLoader.Parse(Head + "[databases]\n* = host=h\n", "x.ini");

        Assert.Equal(0, o.MaxUserConnections);
        Assert.Equal(0, o.ReservePoolSize);
        Assert.Equal(TimeSpan.FromSeconds(5), o.ReservePoolTimeout);
        Assert.Equal("", o.ServerCheckQuery);
        Assert.Equal(TimeSpan.FromSeconds(30), o.ServerCheckDelay);
        Assert.Equal(TimeSpan.FromSeconds(15), o.ServerLoginRetry);
        Assert.False(o.ServerRoundRobin);
        Assert.False(o.ServerResetQueryAlways);
        Assert.False(o.ApplicationNameAddHost);
        Assert.Empty(o.Users);
        Assert.Null(o.Databases.Single().ConnectQuery);
        Assert.Null(o.Databases.Single().ReservePoolSize);
    }

    [Fact]
    public void Pooling_settings_are_read_and_shown_by_SHOW_CONFIG()
    {
        ProxyOptions o = ConfigLoader.Parse(
            Head + "max_user_connections = 7\nreserve_pool_size = 2\nreserve_pool_timeout = 1500ms\nserver_check_query = select 1\n"
            + "server_check_delay = 0\nserver_login_retry = 2.5\nserver_round_robin = 1\nserver_reset_query_always = 1\napplication_name_add_host = 1\n[databases]\n* = host=h\n",
            "x.ini");

        Assert.Equal((7, 2, TimeSpan.FromMilliseconds(1500)), (o.MaxUserConnections, o.ReservePoolSize, o.ReservePoolTimeout));
        Assert.Equal(("select 1", TimeSpan.Zero, TimeSpan.FromSeconds(2.5)), (o.ServerCheckQuery, o.ServerCheckDelay, o.ServerLoginRetry));
        Assert.True(o.ServerRoundRobin && o.ServerResetQueryAlways && o.ApplicationNameAddHost);
        Assert.Empty(o.Warnings);

        Dictionary<string, string> shown = ConfigSetting.All.ToDictionary(s => s.Key, s => s.Get(o));
        Assert.Equal("7", shown["max_user_connections"]);
        Assert.Equal("1.5", shown["reserve_pool_timeout"]);
        Assert.Equal("select 1", shown["server_check_query"]);
        Assert.Equal("1", shown["server_round_robin"]);
        Assert.All(
            ["max_user_connections", "reserve_pool_size", "reserve_pool_timeout", "server_check_query", "server_check_delay", "server_login_retry", "server_round_robin", "server_reset_query_always", "application_name_add_host"],
            key => Assert.True(ConfigSetting.All.Single(s => s.Key == key).Changeable, key));
    }

    [Theory]
    [InlineData("server_check_query = <empty>", "")]
    [InlineData("server_check_query =", null)]
    [InlineData("server_check_query = ''", null)]
    public void An_empty_check_query_turns_the_check_off_and_the_empty_marker_sends_an_empty_query(string line, string? expected)
    {
        ProxyOptions o = ConfigLoader.Parse(Head + line + "\n[databases]\n", "x.ini");

        Assert.Equal(expected, o.ServerCheckQuery);
        Assert.Equal(expected switch { null => "", "" => "<empty>", _ => expected }, ConfigSetting.All.Single(s => s.Key == "server_check_query").Get(o));
    }

    [Fact]
    public void Database_entries_take_reserve_pool_and_connect_query()
    {
        ProxyOptions o = ConfigLoader.Parse(
            Head + "[databases]\na = host=h reserve_pool=3 connect_query='SET search_path = app, public'\nb = host=h reserve_pool_size=0\n", "x.ini");

        Assert.Equal((3, "SET search_path = app, public"), (o.FindDatabase("a")!.ReservePoolSize, o.FindDatabase("a")!.ConnectQuery));
        Assert.Equal(0, o.FindDatabase("b")!.ReservePoolSize);
    }

    [Fact]
    public void The_users_section_sets_pool_mode_sizes_and_max_user_connections_per_user()
    {
        ProxyOptions o = ConfigLoader.Parse(
            Head + "[databases]\n* = host=h\n[users]\nalice = pool_mode=transaction max_user_connections=3\nbob = pool_size=4 reserve_pool_size=1\n", "x.ini");

        UserOptions alice = o.Users["alice"];
        Assert.Equal((PoolMode.Transaction, 3, (int?)null), (alice.PoolMode, alice.MaxUserConnections, alice.PoolSize));
        UserOptions bob = o.Users["bob"];
        Assert.Equal(((PoolMode?)null, (int?)4, (int?)1, (int?)null), (bob.PoolMode, bob.PoolSize, bob.ReservePoolSize, bob.MaxUserConnections));
    }

    [Theory]
    [InlineData("max_user_connections = many", "x.ini:3: max_user_connections: invalid value 'many'")]
    [InlineData("max_user_connections = -1", "x.ini:3: max_user_connections: invalid value '-1'")]
    [InlineData("reserve_pool_size = -2", "x.ini:3: reserve_pool_size: invalid value '-2'")]
    [InlineData("reserve_pool_timeout = later", "x.ini:3: reserve_pool_timeout: invalid duration 'later'")]
    [InlineData("server_check_delay = -1", "x.ini:3: server_check_delay: invalid duration '-1'")]
    [InlineData("server_login_retry = soon", "x.ini:3: server_login_retry: invalid duration 'soon'")]
    [InlineData("server_round_robin = 2", "x.ini:3: server_round_robin: invalid value '2'")]
    [InlineData("server_reset_query_always = maybe", "x.ini:3: server_reset_query_always: invalid value 'maybe'")]
    [InlineData("application_name_add_host = 3", "x.ini:3: application_name_add_host: invalid value '3'")]
    [InlineData("[databases]\napp = host=h reserve_pool=x", "x.ini:4: app: reserve_pool: invalid value 'x'")]
    [InlineData("[users]\nalice = pool_mode=statement", "x.ini:4: alice: pool_mode: pool_mode 'statement' is not supported")]
    [InlineData("[users]\nalice = pool_mode=sometimes", "x.ini:4: alice: pool_mode: invalid value 'sometimes'")]
    [InlineData("[users]\nalice = max_user_connections=-1", "x.ini:4: alice: max_user_connections: invalid value '-1'")]
    [InlineData("[users]\nalice = pool_size=0", "x.ini:4: alice: pool_size: invalid value '0'")]
    [InlineData("[users]\nalice = query_timeout=5", "x.ini:4: alice: query_timeout: PgBouncer's per-user query_timeout is not implemented")]
    [InlineData("[users]\nalice = colour=blue", "x.ini:4: alice: unknown user parameter 'colour'")]
    [InlineData("[users]\nalice = pool_mode", "x.ini:4: alice: expected key=value near 'pool_mode'")]
    [InlineData("[users]\nalice = pool_size=2\nalice = pool_size=3", "x.ini:5: alice: user listed twice in [users]")]
    public void Bad_values_name_file_line_and_key(string line, string expected)
    {
        var e = Assert.Throws<ConfigException>(() => ConfigLoader.Parse(Head + line + "\n", "x.ini"));

        Assert.StartsWith(expected, e.Message, StringComparison.Ordinal);
    }
}
