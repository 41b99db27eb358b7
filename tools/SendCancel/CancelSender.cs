using System.Globalization;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;

namespace FastPgProxy.Tools.SendCancel;

/// <summary>
/// Sends one CancelRequest (protocol section 55.2.8) on a new connection and waits for the server to
/// close it: PostgreSQL closes a cancel connection once it has acted on the request, and so does the
/// proxy, once PostgreSQL has closed the one it forwarded. Nothing is ever answered on it.
/// </summary>
internal static class CancelSender
{
    /// <summary>The ALPN protocol PostgreSQL 17 requires for direct TLS.</summary>
    private static readonly SslApplicationProtocol PostgresAlpn = new("postgresql"u8.ToArray());

    /// <summary>
    /// Connects, sends the CancelRequest of <paramref name="args"/> and waits for the close, all within
    /// <see cref="SendCancelArguments.Timeout"/>. Returns null on success, else what went wrong, for the user.
    /// </summary>
    public static async Task<string?> SendAsync(SendCancelArguments args)
    {
        string target = args.IsUnixSocket
            ? $"socket {UnixSocketPath(args)}"
            : string.Create(CultureInfo.InvariantCulture, $"{args.Host} port {args.Port}");
        using var deadline = new CancellationTokenSource(args.Timeout);
        CancellationToken token = deadline.Token;
        string step = "connecting to " + target;
        Stream? stream = null;
        try
        {
            stream = await ConnectAsync(args, token);
            if (args.Transport == CancelTransport.Tls)
            {
                step = "waiting for the answer to SSLRequest from " + target;
                await stream.WriteAsync(CancelPacket.SslRequest(), token);
                byte[] answer = new byte[1];
                int n = await stream.ReadAsync(answer, token);
                if (n == 0)
                {
                    return $"{target} closed the connection instead of answering SSLRequest";
                }

                if (answer[0] == (byte)'N')
                {
                    return $"{target} does not accept TLS (it answered N to SSLRequest); try without --tls";
                }

                if (answer[0] != (byte)'S')
                {
                    return string.Create(CultureInfo.InvariantCulture, $"{target} answered SSLRequest with byte 0x{answer[0]:X2}, not S or N: is it a PostgreSQL server?");
                }
            }

            if (args.Transport != CancelTransport.Plain)
            {
                step = "in the TLS handshake with " + target;
                var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
                stream = ssl;
                await ssl.AuthenticateAsClientAsync(TlsOptions(args), token);
            }

            step = "sending the CancelRequest to " + target;
            await stream.WriteAsync(CancelPacket.CancelRequest(args.ProcessId, args.Key), token);
            await stream.FlushAsync(token);

            step = "waiting for " + target + " to close the connection";
            await WaitForCloseAsync(stream, token);
            return null;
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested)
        {
            return string.Create(CultureInfo.InvariantCulture, $"timed out after {args.Timeout.TotalSeconds:0.###} s {step}");
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
        {
            return $"connection to {target} refused: is the server running and accepting connections there?";
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.HostNotFound or SocketError.TryAgain or SocketError.NoData)
        {
            return $"could not resolve host '{args.Host}': {e.Message}";
        }
        catch (AuthenticationException e)
        {
            return $"TLS handshake with {target} failed: {e.Message}";
        }
        catch (Exception e) when (e is SocketException or IOException)
        {
            return $"error {step}: {e.Message}";
        }
        finally
        {
            if (stream is not null)
            {
                await stream.DisposeAsync();
            }
        }
    }

    /// <summary>Opens the connection, TCP or Unix-domain; the returned stream owns the socket.</summary>
    private static async Task<Stream> ConnectAsync(SendCancelArguments args, CancellationToken token)
    {
        Socket socket = args.IsUnixSocket
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            if (args.IsUnixSocket)
            {
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(UnixSocketPath(args)), token);
            }
            else
            {
                // A dual-mode socket: the host's IPv4 and IPv6 addresses are tried in turn.
                await socket.ConnectAsync(args.Host, args.Port, token);
            }
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        return new NetworkStream(socket, ownsSocket: true);
    }

    /// <summary>
    /// Reads until the end of the stream. A reset or a TLS read failure after the request was sent also
    /// means the server is done with the connection. Anything the server sends is ignored.
    /// </summary>
    private static async Task WaitForCloseAsync(Stream stream, CancellationToken token)
    {
        byte[] buffer = new byte[256];
        try
        {
            while (await stream.ReadAsync(buffer, token) > 0)
            {
            }
        }
        catch (IOException)
        {
            // Closed abruptly: the server has finished with it all the same.
        }
    }

    /// <summary>The socket file libpq uses for a Unix-socket directory and a port.</summary>
    private static string UnixSocketPath(SendCancelArguments args) =>
        Path.Combine(args.Host, string.Create(CultureInfo.InvariantCulture, $".s.PGSQL.{args.Port}"));

    /// <summary>
    /// TLS options: SNI is the host name; the certificate is accepted unchecked (documented in the usage),
    /// and direct TLS offers ALPN <c>postgresql</c>, which PostgreSQL 17 requires.
    /// </summary>
    private static SslClientAuthenticationOptions TlsOptions(SendCancelArguments args) => new()
    {
        TargetHost = args.Host,
#pragma warning disable CA5359 // Not verifying is the documented behaviour: the tool only sends a key the user already holds.
        RemoteCertificateValidationCallback = static (_, _, _, _) => true,
#pragma warning restore CA5359
        ApplicationProtocols = args.Transport == CancelTransport.DirectTls ? [PostgresAlpn] : null,
    };
}
