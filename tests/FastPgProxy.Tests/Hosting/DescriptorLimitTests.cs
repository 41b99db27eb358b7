using FastPgProxy.Config;
using FastPgProxy.Hosting;
using Xunit;

namespace FastPgProxy.Tests.Hosting;

public class DescriptorLimitTests
{
    private const string Limits = """
        Limit                     Soft Limit           Hard Limit           Units
        Max cpu time              unlimited            unlimited            seconds
        Max open files            1024                 524288               files
        Max locked memory         8388608              8388608              bytes
        """;

    [Fact]
    public void Reads_the_open_files_line_of_proc_self_limits()
    {
        Assert.True(DescriptorLimit.TryParse(Limits, out long soft, out long hard));
        Assert.Equal((1024L, 524288L), (soft, hard));
    }

    [Fact]
    public void Unlimited_reads_as_long_MaxValue_and_a_missing_line_as_unknown()
    {
        Assert.True(DescriptorLimit.TryParse("Max open files            unlimited            unlimited            files\n", out long soft, out long hard));
        Assert.Equal((long.MaxValue, long.MaxValue), (soft, hard));
        Assert.False(DescriptorLimit.TryParse("Max cpu time              unlimited            unlimited            seconds\n", out _, out _));
    }

    [Fact]
    public void Reads_this_process_limit_and_counts_its_descriptors()
    {
        Assert.True(DescriptorLimit.TryRead(out long soft, out long hard));
        Assert.True(soft > 0 && soft <= hard);
        Assert.True(DescriptorLimit.CountOpen() > 2);
    }

    [Fact]
    public void Needed_counts_every_client_and_one_pool_with_its_cancel_connections_per_database_entry()
    {
        var options = new ProxyOptions { MaxClientConnections = 1000, MaxLoginClients = 100, DefaultPoolSize = 20, MaxCancelConnections = 32 };
        options.Databases.Add(new DatabaseOptions { Name = "app", PoolSize = 50 });
        options.Databases.Add(new DatabaseOptions { Name = "*" });
        Assert.Equal(1000 + 100 + (50 + 32) + (20 + 32), DescriptorLimit.Needed(options));
        options.MaxLoginClients = 0;
        Assert.Equal(1000 + 1000 + (50 + 32) + (20 + 32), DescriptorLimit.Needed(options));
    }
}
