using System.Net.Sockets;
using FastPgProxy.Config;
using FastPgProxy.Tests.Infrastructure;
using Xunit;

namespace FastPgProxy.Tests.Hosting;

/// <summary>
/// Binding the listener: a port another listener holds is an error naming the address, so two instances
/// never split the connections between them by accident; with so_reuseport on both they share it on purpose.
/// </summary>
public class ListenTests
{
    private static ProxyOptions Options(int port, bool reusePort = false)
    {
        ProxyOptions options = ProxyHarness.Options();
        options.ListenPort = port;
        options.LoopThreads = 1;
        options.SoReusePort = reusePort;
        return options;
    }

    [Fact]
    public async Task A_second_server_on_a_port_in_use_fails_naming_the_address()
    {
        await using ProxyHarness first = ProxyHarness.Start(Options(0));
        int port = first.Port;

        Exception e = Assert.ThrowsAny<Exception>(() => ProxyHarness.Start(Options(port)));
        Assert.Contains($"127.0.0.1:{port}", e.Message, StringComparison.Ordinal);
        Assert.Contains("so_reuseport", e.Message, StringComparison.Ordinal);
        SocketException cause = Assert.IsType<SocketException>(e.InnerException);
        Assert.Equal(SocketError.AddressAlreadyInUse, cause.SocketErrorCode);
    }

    [Fact]
    public async Task With_so_reuseport_on_both_two_servers_share_the_port()
    {
        await using ProxyHarness first = ProxyHarness.Start(Options(0, reusePort: true));
        int port = first.Port;

        await using ProxyHarness second = ProxyHarness.Start(Options(port, reusePort: true));
        Assert.Equal(port, second.Port);
    }

    [Fact]
    public async Task So_reuseport_on_the_second_server_alone_does_not_take_the_port()
    {
        await using ProxyHarness first = ProxyHarness.Start(Options(0));
        int port = first.Port;

        Exception e = Assert.ThrowsAny<Exception>(() => ProxyHarness.Start(Options(port, reusePort: true)));
        Assert.Contains($"127.0.0.1:{port}", e.Message, StringComparison.Ordinal);
    }
}
