using System.Net.Sockets;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
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
        var options = new ProxyOptions { ListenAddress = "127.0.0.1", ListenPort = port, AuthType = AuthType.Trust, LoopThreads = 1 };
        options.Databases.Add(new DatabaseOptions { Name = "*" });
        SetReusePort(options, reusePort);
        return options;
    }

    private static void SetReusePort(ProxyOptions options, bool reusePort) => options.SoReusePort = reusePort;

    [Fact]
    public async Task A_second_server_on_a_port_in_use_fails_naming_the_address()
    {
        await using var first = new ProxyServer(Options(0));
        first.Start();
        int port = first.LocalEndPoint.Port;

        Exception e = Assert.ThrowsAny<Exception>(() => new ProxyServer(Options(port)));
        Assert.Contains($"127.0.0.1:{port}", e.Message, StringComparison.Ordinal);
        Assert.Contains("so_reuseport", e.Message, StringComparison.Ordinal);
        SocketException cause = Assert.IsType<SocketException>(e.InnerException);
        Assert.Equal(SocketError.AddressAlreadyInUse, cause.SocketErrorCode);
    }

    [Fact]
    public async Task With_so_reuseport_on_both_two_servers_share_the_port()
    {
        await using var first = new ProxyServer(Options(0, reusePort: true));
        first.Start();
        int port = first.LocalEndPoint.Port;

        await using var second = new ProxyServer(Options(port, reusePort: true));
        second.Start();
        Assert.Equal(port, second.LocalEndPoint.Port);
    }

    [Fact]
    public async Task So_reuseport_on_the_second_server_alone_does_not_take_the_port()
    {
        await using var first = new ProxyServer(Options(0));
        first.Start();
        int port = first.LocalEndPoint.Port;

        Exception e = Assert.ThrowsAny<Exception>(() => new ProxyServer(Options(port, reusePort: true)));
        Assert.Contains($"127.0.0.1:{port}", e.Message, StringComparison.Ordinal);
    }
}
