using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using FastPgProxy.Hosting;
using FastPgProxy.Sessions;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// The Prometheus endpoint (metrics_port) through a real PostgreSQL: a real HTTP client scrapes it after
/// real traffic and a real cancel, the body is checked by a strict exposition-format reader, and hostile
/// HTTP (oversized heads, garbage, silence, wrong paths and methods) gets a clear status or a close while
/// the endpoint goes on serving.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class MetricsEndpointTests(PostgresFixture fixture)
{
    private const string Database = PostgresServer.Database;
    private const string User = PostgresServer.Superuser;

    private readonly PostgresServer _pg = fixture.Server;

    private ProxyHarness Start() => ProxyHarness.Start(_pg, o => o.MetricsPort = NetUtil.GetFreeTcpPort());

    private static Uri MetricsUri(ProxyHarness proxy, string path = "/metrics") => new($"http://127.0.0.1:{proxy.Server.Metrics!.LocalEndPoint.Port}{path}");

    private static async Task<PrometheusText> ScrapeAsync(ProxyHarness proxy)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        using HttpResponseMessage response = await http.GetAsync(MetricsUri(proxy));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(MetricsWriter.ContentType, response.Content.Headers.ContentType!.ToString());
        return PrometheusText.Parse(await response.Content.ReadAsStringAsync());
    }

    /// <summary>Sends <paramref name="request"/> on a raw socket and reads until the endpoint closes.</summary>
    private static async Task<string> RawAsync(ProxyHarness proxy, byte[] request)
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(proxy.Server.Metrics!.LocalEndPoint);
        await socket.SendAsync(request);
        return await ReadToCloseAsync(socket);
    }

    private static async Task<string> ReadToCloseAsync(Socket socket)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var reply = new MemoryStream();
        byte[] buffer = new byte[64 * 1024];
        try
        {
            int read;
            while ((read = await socket.ReceiveAsync(buffer, SocketFlags.None, timeout.Token)) > 0)
            {
                reply.Write(buffer, 0, read);
            }
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
            // Closed with our unread bytes still queued: a reset after (or instead of) the reply.
        }

        return Encoding.UTF8.GetString(reply.ToArray());
    }

    [Fact]
    public async Task Scrape_shows_pools_stats_clients_and_cancels_in_the_exposition_format()
    {
        await using ProxyHarness proxy = Start();
        string builder = proxy.ConnectionString() + ";Application Name='scrape \"app\" \\\\ one'";
        await using var client = new NpgsqlConnection(builder);
        await client.OpenAsync();
        for (int i = 0; i < 5; i++)
        {
            await using var select = new NpgsqlCommand("SELECT 1", client);
            await select.ExecuteScalarAsync();
        }

        long forwardedBefore = proxy.Server.CancelStats.Forwarded;
        await using (var sleep = new NpgsqlCommand("SELECT pg_sleep(30) /* metrics-cancel */", client))
        {
            Task<object?> running = sleep.ExecuteScalarAsync();
            var started = Stopwatch.StartNew();
            while (await _pg.ScalarAsync<long>("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%metrics-cancel%' AND pid <> pg_backend_pid()") == 0)
            {
                Assert.True(started.Elapsed < TimeSpan.FromSeconds(30), "the query to cancel did not start");
                await Task.Delay(20);
            }

            sleep.Cancel();
            Exception e = await Assert.ThrowsAnyAsync<Exception>(() => running.WaitAsync(TimeSpan.FromSeconds(20)));
            Assert.Equal("57014", Assert.IsType<PostgresException>(e is OperationCanceledException ? e.InnerException : e).SqlState);
        }

        // The forward is counted once PostgreSQL closes the cancel connection, which may come after the 57014.
        var counted = Stopwatch.StartNew();
        while (proxy.Server.CancelStats.Forwarded <= forwardedBefore)
        {
            Assert.True(counted.Elapsed < TimeSpan.FromSeconds(20), "the cancel was never counted as forwarded");
            await Task.Delay(10);
        }

        PrometheusText metrics = await ScrapeAsync(proxy);
        Assert.Equal(1, metrics.Value("pgbouncer_up"));
        Assert.True(metrics.Value("pgbouncer_stats_queries_pooled_total", ("database", Database)) >= 6);
        Assert.True(metrics.Value("pgbouncer_stats_received_bytes_total", ("database", Database)) > 0);
        Assert.True(metrics.Value("pgbouncer_stats_sent_bytes_total", ("database", Database)) > 0);
        Assert.True(metrics.Value("pgbouncer_stats_queries_duration_seconds_total", ("database", Database)) > 0);
        Assert.Equal(1, metrics.Value("pgbouncer_pools_client_active_connections", ("database", Database), ("user", User)));
        Assert.Equal(1, metrics.Value("pgbouncer_pools_server_active_connections", ("database", Database), ("user", User)));
        Assert.Equal(0, metrics.Value("pgbouncer_pools_client_waiting_connections", ("database", Database), ("user", User)));
        Assert.Equal(1, metrics.Value("pgbouncer_client_connections", ("database", Database), ("user", User), ("application_name", "scrape \"app\" \\\\ one"), ("state", "active")));
        Assert.True(metrics.Value("fastpgproxy_cancels_total", ("outcome", "forwarded")) >= 1);
        Assert.True(metrics.Value("fastpgproxy_cancel_requests_total") >= 1);
        Assert.Equal(0, metrics.Value("fastpgproxy_cancels_total", ("outcome", "timed_out")));
        Assert.Equal(proxy.Server.Options.MaxClientConnections, metrics.Value("pgbouncer_config_max_client_connections"));
        Assert.Equal(1, metrics.Value("pgbouncer_databases_current_connections", ("name", "*")));
        Assert.Equal("counter", metrics.Types["pgbouncer_stats_queries_pooled_total"]);
        Assert.Equal("gauge", metrics.Types["pgbouncer_pools_client_active_connections"]);
        Assert.True(metrics.Value("fastpgproxy_sessions_opened_total") >= 1);
    }

    [Fact]
    public async Task Query_timeout_cancels_are_counted()
    {
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, o =>
        {
            o.MetricsPort = NetUtil.GetFreeTcpPort();
            o.QueryTimeout = TimeSpan.FromMilliseconds(200);
        });
        await using NpgsqlConnection client = await proxy.OpenAsync();
        await using var sleep = new NpgsqlCommand("SELECT pg_sleep(30)", client);
        PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => sleep.ExecuteScalarAsync().WaitAsync(TimeSpan.FromSeconds(20)));
        Assert.Equal("57014", e.SqlState);
        Assert.Equal(1, (await ScrapeAsync(proxy)).Value("fastpgproxy_cancels_total", ("outcome", "timed_out")));
    }

    [Fact]
    public async Task Wrong_paths_and_methods_get_404_and_405_and_head_gets_no_body()
    {
        await using ProxyHarness proxy = Start();
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        using (HttpResponseMessage missing = await http.GetAsync(MetricsUri(proxy, "/")))
        {
            Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        }

        using (HttpResponseMessage post = await http.PostAsync(MetricsUri(proxy), new StringContent("x")))
        {
            Assert.Equal(HttpStatusCode.MethodNotAllowed, post.StatusCode);
            Assert.Contains("GET", post.Content.Headers.Allow);
        }

        using (var head = new HttpRequestMessage(HttpMethod.Head, MetricsUri(proxy)))
        using (HttpResponseMessage reply = await http.SendAsync(head))
        {
            Assert.Equal(HttpStatusCode.OK, reply.StatusCode);
            Assert.Empty(await reply.Content.ReadAsByteArrayAsync());
        }

        using (HttpResponseMessage query = await http.GetAsync(MetricsUri(proxy, "/metrics?name[]=pgbouncer_up")))
        {
            Assert.Equal(HttpStatusCode.OK, query.StatusCode);
            Assert.True(query.Headers.ConnectionClose);
        }
    }

    [Fact]
    public async Task Oversized_heads_and_garbage_get_a_status_and_a_close()
    {
        await using ProxyHarness proxy = Start();
        string oversized = await RawAsync(proxy, Encoding.ASCII.GetBytes("GET /metrics HTTP/1.1\r\nX-Padding: " + new string('a', MetricsEndpoint.MaxHeadBytes) + "\r\n\r\n"));
        Assert.StartsWith("HTTP/1.1 431 ", oversized, StringComparison.Ordinal);
        Assert.Contains("Connection: close", oversized, StringComparison.Ordinal);

        foreach (string garbage in new[] { "\0\x01\x02\xff\r\n\r\n", "GET\r\n\r\n", "GET /metrics HTTP/9.9\r\n\r\n", "GET metrics HTTP/1.1\r\n\r\n", "GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", "GET /metrics HTTP/1.1\n\n" })
        {
            string reply = await RawAsync(proxy, Encoding.Latin1.GetBytes(garbage));
            Assert.True(reply.StartsWith("HTTP/1.1 400 ", StringComparison.Ordinal), $"{garbage.ReplaceLineEndings("\\n")}: {reply}");
        }

        // A head cut short by the client's close is answered 400 too.
        using (var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            await socket.ConnectAsync(proxy.Server.Metrics!.LocalEndPoint);
            await socket.SendAsync("GET /metr"u8.ToArray());
            socket.Shutdown(SocketShutdown.Send);
            Assert.StartsWith("HTTP/1.1 400 ", await ReadToCloseAsync(socket), StringComparison.Ordinal);
        }

        Assert.Equal(1, (await ScrapeAsync(proxy)).Value("pgbouncer_up"));
    }

    [Fact]
    public async Task A_silent_client_is_closed_after_the_timeout_and_scrapes_go_on_meanwhile()
    {
        await using ProxyHarness proxy = Start();
        using var silent = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await silent.ConnectAsync(proxy.Server.Metrics!.LocalEndPoint);
        Task<string> closed = ReadToCloseAsync(silent);
        Assert.Equal(1, (await ScrapeAsync(proxy)).Value("pgbouncer_up"));
        Assert.False(closed.IsCompleted, "the silent client was closed before its timeout");
        Assert.Equal("", await closed.WaitAsync(MetricsEndpoint.ReadTimeout + TimeSpan.FromSeconds(20)));
        Assert.Equal(1, (await ScrapeAsync(proxy)).Value("pgbouncer_up"));
    }

    [Fact]
    public async Task Connections_over_the_scrape_limit_are_closed_at_once()
    {
        await using ProxyHarness proxy = Start();
        var held = new List<Socket>();
        try
        {
            for (int i = 0; i < MetricsEndpoint.MaxConcurrentScrapes; i++)
            {
                var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                held.Add(socket);
                await socket.ConnectAsync(proxy.Server.Metrics!.LocalEndPoint);
                await socket.SendAsync("GET /met"u8.ToArray());
            }

            // Each held connection is counted once accepted; until then one more may still get in, so retry.
            var deadline = Stopwatch.StartNew();
            while (true)
            {
                using var extra = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                await extra.ConnectAsync(proxy.Server.Metrics!.LocalEndPoint);
                Task<string> reply = ReadToCloseAsync(extra);
                if (await Task.WhenAny(reply, Task.Delay(TimeSpan.FromSeconds(2))) == reply)
                {
                    Assert.Equal("", await reply);
                    break;
                }

                Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(30), "a connection over the limit was never refused");
            }
        }
        finally
        {
            foreach (Socket socket in held)
            {
                socket.Dispose();
            }
        }

        // The held connections' closes free their slots.
        var retry = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                Assert.Equal(1, (await ScrapeAsync(proxy)).Value("pgbouncer_up"));
                break;
            }
            catch (HttpRequestException) when (retry.Elapsed < TimeSpan.FromSeconds(30))
            {
                await Task.Delay(50);
            }
        }
    }

    [Fact]
    public async Task Peer_forwarding_is_counted_on_both_instances()
    {
        List<ProxyHarness> cluster = ProxyHarness.StartCluster(_pg, [1, 2], configure: (_, o) => o.MetricsPort = NetUtil.GetFreeTcpPort());
        try
        {
            ProxyHarness owner = cluster[0], other = cluster[1];
            (Socket raw, List<(byte Type, byte[] Body)> login) = await Protocol32.LoginAsync(owner, Protocol32.V30);
            using (raw)
            {
                (int pid, byte[] key) = Protocol32.KeyData(login);
                Assert.Equal(1, SessionRegistry.PeerOf(pid));
                await raw.SendAsync(RawProtocol.Query("SELECT pg_sleep(60) /* metrics-peer */"));
                await _pg.WaitUntilRunningAsync("metrics-peer", TimeSpan.FromSeconds(30), 1);
                await Protocol32.SendCancelAsync(other, RawProtocol.CancelRequest(pid, key));
                Assert.Equal("57014", Protocol32.ErrorCode(await RawProtocol.ReadUntilReadyAsync(raw, TimeSpan.FromSeconds(30))));
            }

            PrometheusText sender = await ScrapeAsync(other);
            Assert.Equal(1, sender.Value("fastpgproxy_peer_cancels_forwarded_total", ("peer", "1")));
            Assert.Equal(1, sender.Value("fastpgproxy_cancels_total", ("outcome", "forwarded_to_peer")));
            Assert.Equal(0, sender.Value("fastpgproxy_peer_signals_failed_total", ("peer", "1")));
            PrometheusText receiver = await ScrapeAsync(owner);
            Assert.Equal(1, receiver.Value("fastpgproxy_cancels_total", ("outcome", "received_from_peer")));
            Assert.Equal(0, receiver.Value("fastpgproxy_cancels_total", ("outcome", "forwarded_to_peer")));
        }
        finally
        {
            foreach (ProxyHarness proxy in cluster)
            {
                await proxy.DisposeAsync();
            }
        }
    }

    [Fact]
    public async Task A_metrics_port_in_use_fails_the_start_and_a_stopped_proxy_stops_serving()
    {
        ProxyHarness proxy = Start();
        var endPoint = proxy.Server.Metrics!.LocalEndPoint;
        ListenException e = Assert.Throws<ListenException>(() => ProxyHarness.Start(_pg, o => o.MetricsPort = endPoint.Port));
        Assert.Contains("metrics", e.Message, StringComparison.Ordinal);
        Assert.Equal(1, (await ScrapeAsync(proxy)).Value("pgbouncer_up"));
        await proxy.DisposeAsync();
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        SocketException refused = await Assert.ThrowsAsync<SocketException>(async () => await socket.ConnectAsync(endPoint));
        Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
    }
}
