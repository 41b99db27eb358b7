using System.Buffers.Binary;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using FastPgProxy.Tests.Infrastructure;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// A hand-driven client connection to the proxy that can turn to TLS: the one-byte answer to SSLRequest,
/// an <see cref="SslStream"/> handshake (after <c>S</c>, or from the first byte for direct TLS), then
/// start-up packets and messages over whichever stream is in use. For tests that send what Npgsql and
/// psql never would.
/// </summary>
internal sealed class TlsRawClient : IDisposable
{
    /// <summary>How long any single read waits: generous, so a slow machine never fails a test, and a hang still does.</summary>
    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    /// <summary>The ALPN protocol PostgreSQL 17 requires for direct TLS.</summary>
    public static readonly SslApplicationProtocol PostgresAlpn = new("postgresql");

    private readonly Socket _socket;
    private Stream _stream;

    private TlsRawClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
    }

    /// <summary>The TLS stream once <see cref="StartTlsAsync"/> succeeded; null while plain.</summary>
    public SslStream? Ssl => _stream as SslStream;

    /// <summary>Connects to the proxy on <paramref name="port"/> of 127.0.0.1.</summary>
    public static async Task<TlsRawClient> ConnectAsync(int port)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync("127.0.0.1", port);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        return new TlsRawClient(socket);
    }

    /// <summary>
    /// Client options that trust only <paramref name="ca"/> and check the name <c>localhost</c>;
    /// <paramref name="alpn"/> offers ALPN <c>postgresql</c>, <paramref name="clientCertificate"/> is presented when asked for.
    /// </summary>
    public static SslClientAuthenticationOptions Trusting(X509Certificate2 ca, bool alpn = false, X509Certificate2? clientCertificate = null)
    {
        var chain = new X509ChainPolicy
        {
            TrustMode = X509ChainTrustMode.CustomRootTrust,
            RevocationMode = X509RevocationMode.NoCheck,
        };
        chain.CustomTrustStore.Add(ca);
        return new SslClientAuthenticationOptions
        {
            TargetHost = TestCertificates.ServerName,
            CertificateChainPolicy = chain,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            ApplicationProtocols = alpn ? [PostgresAlpn] : null,
            ClientCertificates = clientCertificate is null ? null : [clientCertificate],
        };
    }

    /// <summary>Sends bytes as they are, on the plain socket or inside TLS.</summary>
    public async Task SendAsync(byte[] bytes)
    {
        using var cts = new CancellationTokenSource(Patience);
        await _stream.WriteAsync(bytes, cts.Token);
        await _stream.FlushAsync(cts.Token);
    }

    /// <summary>Ends the sending direction (a half close): the proxy reads the end of the stream.</summary>
    public void ShutdownSend() => _socket.Shutdown(SocketShutdown.Send);

    /// <summary>Sends SSLRequest and returns the proxy's one-byte answer (<c>S</c> or <c>N</c>); null when it closed instead.</summary>
    public async Task<char?> RequestSslAsync()
    {
        await SendAsync(RawProtocol.SslRequest());
        return await ReadByteAsync();
    }

    /// <summary>Reads one byte; null when the peer closes first.</summary>
    public async Task<char?> ReadByteAsync()
    {
        byte[] one = new byte[1];
        return await ReadExactlyAsync(one, Patience) ? (char)one[0] : null;
    }

    /// <summary>Runs the client side of a TLS handshake on the connection; the stream is TLS from then on.</summary>
    public async Task StartTlsAsync(SslClientAuthenticationOptions options)
    {
        var ssl = new SslStream(_stream, leaveInnerStreamOpen: false);
        _stream = ssl;
        using var cts = new CancellationTokenSource(Patience);
        await ssl.AuthenticateAsClientAsync(options, cts.Token);
    }

    /// <summary>SSLRequest, <c>S</c>, and the handshake trusting <paramref name="ca"/>.</summary>
    public async Task NegotiateTlsAsync(X509Certificate2 ca, X509Certificate2? clientCertificate = null)
    {
        Assert.Equal('S', await RequestSslAsync());
        await StartTlsAsync(Trusting(ca, clientCertificate: clientCertificate));
    }

    /// <summary>
    /// Sends a StartupMessage and reads up to ReadyForQuery (trust logins only); returns the pid and key of
    /// BackendKeyData. A login error fails the test with PostgreSQL's words.
    /// </summary>
    public async Task<(int ProcessId, int SecretKey)> LoginAsync(string user = PostgresServer.TrustUser, string database = PostgresServer.Database)
    {
        await SendAsync(RawProtocol.Startup(("user", user), ("database", database), ("application_name", "tls-raw")));
        int? pid = null;
        int key = 0;
        foreach ((byte type, byte[] body) in await ReadUntilReadyAsync())
        {
            if (type == (byte)'K')
            {
                Assert.Equal(2 * sizeof(int), body.Length);
                pid = BinaryPrimitives.ReadInt32BigEndian(body);
                key = BinaryPrimitives.ReadInt32BigEndian(body.AsSpan(sizeof(int)));
            }
            else if (type == (byte)'E')
            {
                Assert.Fail($"login failed: {Field(body, 'C')} {Field(body, 'M')}");
            }
        }

        Assert.True(pid.HasValue, "no BackendKeyData before ReadyForQuery");
        return (pid.Value, key);
    }

    /// <summary>Sends a simple Query.</summary>
    public Task SendQueryAsync(string sql) => SendAsync(RawProtocol.Query(sql));

    /// <summary>Reads one typed message; null when the peer closes first. A timeout throws.</summary>
    public async Task<(byte Type, byte[] Body)?> ReadMessageAsync(TimeSpan timeout)
    {
        byte[] header = new byte[1 + sizeof(int)];
        if (!await ReadExactlyAsync(header, timeout))
        {
            return null;
        }

        int length = BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(1));
        if (length < sizeof(int) || length > 1 << 20)
        {
            throw new InvalidDataException($"message '{(char)header[0]}' has an invalid length {length}");
        }

        byte[] body = new byte[length - sizeof(int)];
        return await ReadExactlyAsync(body, timeout) ? (header[0], body) : null;
    }

    /// <summary>Reads messages up to and including ReadyForQuery; a close before it fails with what was read.</summary>
    public async Task<List<(byte Type, byte[] Body)>> ReadUntilReadyAsync()
    {
        var messages = new List<(byte Type, byte[] Body)>();
        while (true)
        {
            (byte Type, byte[] Body) message = await ReadMessageAsync(Patience)
                ?? throw new InvalidDataException($"the proxy closed before ReadyForQuery; got '{string.Concat(messages.Select(m => (char)m.Type))}'");
            messages.Add(message);
            if (message.Type == (byte)'Z')
            {
                return messages;
            }
        }
    }

    /// <summary>Reads until ReadyForQuery; the SQLSTATE of the first ErrorResponse, null when the query succeeded.</summary>
    public async Task<string?> ReadResultAsync()
    {
        List<(byte Type, byte[] Body)> messages = await ReadUntilReadyAsync();
        return messages.Where(m => m.Type == (byte)'E').Select(m => Field(m.Body, 'C')).FirstOrDefault();
    }

    /// <summary>
    /// Reads until the peer closes (a reset or a failed TLS read count as a close) or <paramref name="timeout"/>
    /// passes; the bytes read and whether it closed.
    /// </summary>
    public async Task<(byte[] Data, bool Closed)> ReadUntilCloseAsync(TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? Patience);
        var data = new List<byte>();
        byte[] buffer = new byte[8192];
        try
        {
            while (true)
            {
                int n = await _stream.ReadAsync(buffer, cts.Token);
                if (n == 0)
                {
                    return (data.ToArray(), true);
                }

                data.AddRange(buffer.AsSpan(0, n));
            }
        }
        catch (OperationCanceledException)
        {
            return (data.ToArray(), false);
        }
        catch (Exception e) when (e is IOException or SocketException or AuthenticationException or ObjectDisposedException)
        {
            return (data.ToArray(), true);
        }
    }

    /// <summary>Reads until the proxy closes; the SQLSTATE and message of the first ErrorResponse, or nulls when there was none.</summary>
    public async Task<(string? SqlState, string? Message)> ReadErrorAndCloseAsync()
    {
        (byte[] data, bool closed) = await ReadUntilCloseAsync();
        Assert.True(closed, "the proxy did not close the connection");
        return (RawProtocol.ErrorCode(data), RawProtocol.ErrorField(data, (byte)'M'));
    }

    /// <summary>The value of field <paramref name="code"/> of an ErrorResponse body.</summary>
    public static string? Field(byte[] body, char code) =>
        RawProtocol.Fields(body).Where(f => f.Code == code).Select(f => f.Value).FirstOrDefault();

    private async Task<bool> ReadExactlyAsync(byte[] buffer, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await _stream.ReadExactlyAsync(buffer, cts.Token);
            return true;
        }
        catch (IOException)
        {
            // End of stream, a reset, or a TLS alert: the peer closed.
            return false;
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"nothing came from the proxy within {timeout.TotalSeconds:0} s");
        }
    }

    /// <summary>Closes the connection (without TLS's close_notify: tests often close mid-way).</summary>
    public void Dispose()
    {
        _socket.Dispose();
        _stream.Dispose();
    }
}
