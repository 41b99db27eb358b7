using System.Net;
using System.Net.Sockets;
using System.Text;
using FastPgProxy.Config;

namespace FastPgProxy.Hosting;

/// <summary>
/// The Prometheus endpoint (metrics_addr, metrics_port): <c>GET /metrics</c> over plain HTTP/1.1, one
/// request per connection (<c>Connection: close</c>). It runs on the thread pool, never on the event loops:
/// a scrape reads the loops' state the way the admin console does, by posting work to each loop and
/// awaiting the copies (<see cref="MetricsWriter.RenderAsync"/>). The request reader is bounded: a head of
/// at most <see cref="MaxHeadBytes"/>, read within <see cref="ReadTimeout"/>, and at most
/// <see cref="MaxConcurrentScrapes"/> connections served at once (more are closed at accept).
/// </summary>
internal sealed class MetricsEndpoint : IAsyncDisposable
{
    /// <summary>Largest request line and headers accepted; a longer head gets 431 and a close.</summary>
    public const int MaxHeadBytes = 8 * 1024;

    /// <summary>Connections served at once; one more is closed as soon as it is accepted.</summary>
    public const int MaxConcurrentScrapes = 4;

    /// <summary>How long a client has to send its request head, and to take the reply.</summary>
    public static readonly TimeSpan ReadTimeout = TimeSpan.FromSeconds(10);

    private static readonly byte[] s_headEnd = "\r\n\r\n"u8.ToArray();

    private readonly ProxyServer _proxy;
    private readonly Socket _listener;
    private readonly CancellationTokenSource _stopping = new();
    private Task? _acceptLoop;
    private int _active;

    /// <summary>Binds the endpoint's socket; throws <see cref="ListenException"/> when the address cannot be bound.</summary>
    public MetricsEndpoint(ProxyServer proxy, ProxyOptions options)
    {
        _proxy = proxy;
        IPAddress address = options.MetricsAddress switch
        {
            "*" => IPAddress.IPv6Any,
            "localhost" => IPAddress.Loopback,
            _ => IPAddress.Parse(options.MetricsAddress),
        };
        var endPoint = new IPEndPoint(address, options.MetricsPort);
        _listener = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            if (address.Equals(IPAddress.IPv6Any))
            {
                _listener.DualMode = true;
            }

            _listener.Bind(endPoint);
        }
        catch (SocketException e)
        {
            _listener.Dispose();
            throw new ListenException($"cannot listen for metrics on {endPoint}: {e.Message}", e);
        }

        LocalEndPoint = (IPEndPoint)_listener.LocalEndPoint!;
    }

    /// <summary>Where the endpoint listens (the real port when 0 was asked).</summary>
    public IPEndPoint LocalEndPoint { get; }

    /// <summary>Starts accepting scrapes.</summary>
    public void Start()
    {
        _listener.Listen(64);
        _acceptLoop = Task.Run(AcceptLoopAsync);
        Log.Info($"metrics on http://{LocalEndPoint}/metrics");
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stopping.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await _listener.AcceptAsync(_stopping.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            catch (SocketException e)
            {
                Log.Warning($"metrics: accept failed: {e.SocketErrorCode}: {e.Message}");
                try
                {
                    await Task.Delay(100, _stopping.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }

                continue;
            }

            if (Interlocked.Increment(ref _active) > MaxConcurrentScrapes)
            {
                Interlocked.Decrement(ref _active);
                Log.Debug($"metrics: {MaxConcurrentScrapes} scrapes already running; connection from {socket.RemoteEndPoint} closed");
                socket.Dispose();
                continue;
            }

            _ = Task.Run(() => ServeAsync(socket));
        }
    }

    /// <summary>Reads one request, answers it and closes; never throws.</summary>
    private async Task ServeAsync(Socket socket)
    {
        CancellationTokenSource? timeout = null;
        try
        {
            timeout = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
            timeout.CancelAfter(ReadTimeout);
            (int status, string? body, bool head) = await ReadRequestAsync(socket, timeout.Token).ConfigureAwait(false) switch
            {
                null => (0, null, false),
                { Error: int error } => (error, null, false),
                { Method: "GET" or "HEAD", Path: "/metrics" } r => (200, await MetricsWriter.RenderAsync(_proxy).ConfigureAwait(false), r.Method == "HEAD"),
                { Path: "/metrics" } => (405, null, false),
                _ => (404, null, false),
            };
            if (status != 0)
            {
                await ReplyAsync(socket, status, body, head, timeout.Token).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException or IOException)
        {
            Log.Debug($"metrics: connection closed: {(timeout?.IsCancellationRequested == true ? "timed out" : e.Message)}");
        }
        catch (Exception e)
        {
            Log.Error($"metrics: scrape failed: {e}");
        }
        finally
        {
            timeout?.Dispose();
            socket.Dispose();
            Interlocked.Decrement(ref _active);
        }
    }

    /// <summary>A parsed request head: method and path, or the status of a request that cannot be served.</summary>
    private sealed record Request(string Method = "", string Path = "", int? Error = null);

    /// <summary>
    /// Reads the request head (request line and headers, up to the blank line); null when the client closed
    /// before sending one. The body, if any, is not read: every reply closes the connection.
    /// </summary>
    private static async Task<Request?> ReadRequestAsync(Socket socket, CancellationToken cancellation)
    {
        byte[] buffer = new byte[MaxHeadBytes];
        int filled = 0;
        int end;
        while ((end = buffer.AsSpan(0, filled).IndexOf(s_headEnd)) < 0)
        {
            if (buffer.AsSpan(0, filled).IndexOf("\n\n"u8) >= 0)
            {
                // Lines end in CRLF (RFC 9112 section 2.2); a blank line of a bare LF would otherwise wait for the timeout.
                return new Request(Error: 400);
            }

            if (filled == buffer.Length)
            {
                return new Request(Error: 431);
            }

            int read = await socket.ReceiveAsync(buffer.AsMemory(filled), SocketFlags.None, cancellation).ConfigureAwait(false);
            if (read == 0)
            {
                return filled == 0 ? null : new Request(Error: 400);
            }

            filled += read;
        }

        return Parse(buffer.AsSpan(0, end));
    }

    /// <summary>Parses a request line and header lines (RFC 9112 sections 3 and 5); 400 for anything malformed.</summary>
    private static Request Parse(ReadOnlySpan<byte> head)
    {
        int lineEnd = head.IndexOf("\r\n"u8);
        ReadOnlySpan<byte> requestLine = lineEnd < 0 ? head : head[..lineEnd];
        int firstSpace = requestLine.IndexOf((byte)' ');
        int lastSpace = requestLine.LastIndexOf((byte)' ');
        if (firstSpace <= 0 || lastSpace <= firstSpace + 1)
        {
            return new Request(Error: 400);
        }

        ReadOnlySpan<byte> method = requestLine[..firstSpace];
        ReadOnlySpan<byte> target = requestLine[(firstSpace + 1)..lastSpace];
        ReadOnlySpan<byte> version = requestLine[(lastSpace + 1)..];
        if (!IsToken(method) || target[0] != (byte)'/' || target.ContainsAnyInRange((byte)0, (byte)' ') || target.ContainsAnyInRange((byte)0x7F, (byte)0xFF)
            || !(version.SequenceEqual("HTTP/1.1"u8) || version.SequenceEqual("HTTP/1.0"u8)))
        {
            return new Request(Error: 400);
        }

        ReadOnlySpan<byte> headers = lineEnd < 0 ? default : head[(lineEnd + 2)..];
        while (!headers.IsEmpty)
        {
            int next = headers.IndexOf("\r\n"u8);
            ReadOnlySpan<byte> line = next < 0 ? headers : headers[..next];
            int colon = line.IndexOf((byte)':');
            if (colon <= 0 || !IsToken(line[..colon]) || line.Contains((byte)'\n') || line.Contains((byte)'\r') || line.Contains((byte)0))
            {
                return new Request(Error: 400);
            }

            headers = next < 0 ? default : headers[(next + 2)..];
        }

        int query = target.IndexOf((byte)'?');
        return new Request(Encoding.ASCII.GetString(method), Encoding.ASCII.GetString(query < 0 ? target : target[..query]));
    }

    /// <summary>An HTTP token (RFC 9110 section 5.6.2): visible ASCII without separators.</summary>
    private static bool IsToken(ReadOnlySpan<byte> text)
    {
        if (text.IsEmpty)
        {
            return false;
        }

        foreach (byte b in text)
        {
            if (b <= (byte)' ' || b >= 0x7F || "\"(),/:;<=>?@[\\]{}"u8.Contains(b))
            {
                return false;
            }
        }

        return true;
    }

    private static async Task ReplyAsync(Socket socket, int status, string? body, bool headOnly, CancellationToken cancellation)
    {
        string reason = status switch
        {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Request Header Fields Too Large",
        };
        body ??= status switch
        {
            404 => "not found: the metrics are at /metrics\n",
            405 => "method not allowed: use GET\n",
            _ => reason.ToLowerInvariant() + "\n",
        };
        byte[] content = Encoding.UTF8.GetBytes(body);
        var text = new StringBuilder(128)
            .Append("HTTP/1.1 ").Append(status).Append(' ').Append(reason).Append("\r\n")
            .Append("Content-Type: ").Append(status == 200 ? MetricsWriter.ContentType : "text/plain; charset=utf-8").Append("\r\n")
            .Append("Content-Length: ").Append(content.Length).Append("\r\n");
        if (status == 405)
        {
            text.Append("Allow: GET, HEAD\r\n");
        }

        text.Append("Connection: close\r\n\r\n");
        byte[] head = Encoding.ASCII.GetBytes(text.ToString());
        byte[] reply = headOnly ? head : [.. head, .. content];
        int sent = 0;
        while (sent < reply.Length)
        {
            sent += await socket.SendAsync(reply.AsMemory(sent), SocketFlags.None, cancellation).ConfigureAwait(false);
        }

        socket.Shutdown(SocketShutdown.Send);
    }

    /// <summary>Stops accepting and waits for the accept loop; scrapes running end at their timeout or close now.</summary>
    public async ValueTask DisposeAsync()
    {
        await _stopping.CancelAsync().ConfigureAwait(false);
        _listener.Dispose();
        if (_acceptLoop is not null)
        {
            await _acceptLoop.ConfigureAwait(false);
        }

        _stopping.Dispose();
    }
}
