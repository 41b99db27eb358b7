using FastPgProxy.Admin;
using FastPgProxy.Config;
using Xunit;

namespace FastPgProxy.Tests.Config;

/// <summary>stats_period, metrics_addr and metrics_port in the config file, SHOW CONFIG and RELOAD.</summary>
public class MetricsConfigTests
{
    private static ProxyOptions Parse(string settings) =>
        ConfigLoader.Parse($"[pgbouncer]\nauth_type = trust\n{settings}\n[databases]\n* = host=h", "x.ini");

    [Fact]
    public void Defaults_are_pgbouncers_period_and_no_endpoint()
    {
        ProxyOptions o = Parse("");
        Assert.Equal(TimeSpan.FromSeconds(60), o.StatsPeriod);
        Assert.Equal("127.0.0.1", o.MetricsAddress);
        Assert.Equal(0, o.MetricsPort);
    }

    [Fact]
    public void Reads_the_keys_without_a_not_implemented_warning()
    {
        ProxyOptions o = Parse("stats_period = 15\nmetrics_addr = 0.0.0.0\nmetrics_port = 9127");
        Assert.Equal(TimeSpan.FromSeconds(15), o.StatsPeriod);
        Assert.Equal("0.0.0.0", o.MetricsAddress);
        Assert.Equal(9127, o.MetricsPort);
        Assert.Empty(o.Warnings);
        Assert.Equal(TimeSpan.FromMinutes(2), Parse("stats_period = 2min").StatsPeriod);
        Assert.Equal("*", Parse("metrics_addr = *").MetricsAddress);
    }

    [Theory]
    [InlineData("stats_period = 0", "x.ini:3: stats_period: invalid value '0' (at least 1 second)")]
    [InlineData("stats_period = soon", "x.ini:3: stats_period: invalid duration 'soon'")]
    [InlineData("metrics_port = 70000", "x.ini:3: metrics_port: invalid value '70000'")]
    [InlineData("metrics_port = -1", "x.ini:3: metrics_port: invalid value '-1'")]
    [InlineData("metrics_addr = example.com", "x.ini:3: metrics_addr: invalid address 'example.com'")]
    public void Bad_values_name_line_and_key(string setting, string expected)
    {
        ConfigException e = Assert.Throws<ConfigException>(() => Parse(setting));
        Assert.StartsWith(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Show_config_lists_the_keys_and_reload_applies_only_stats_period()
    {
        ConfigSetting period = ConfigSetting.All.Single(s => s.Key == "stats_period");
        ConfigSetting address = ConfigSetting.All.Single(s => s.Key == "metrics_addr");
        ConfigSetting port = ConfigSetting.All.Single(s => s.Key == "metrics_port");
        var running = new ProxyOptions();
        Assert.Equal(("60", "127.0.0.1", "0"), (period.Get(running), address.Get(running), port.Get(running)));
        Assert.False(address.Changeable);
        Assert.False(port.Changeable);
        period.Apply!(running, Parse("stats_period = 5"));
        Assert.Equal(TimeSpan.FromSeconds(5), running.StatsPeriod);
    }
}
