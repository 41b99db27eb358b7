using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using FastPgProxy.Hosting;
using FastPgProxy.Protocol;
using FastPgProxy.Tls;

namespace FastPgProxy.Cancellation;

/// <summary>Where and how to cancel the query a backend runs: its server address and its own pid and key.</summary>
internal sealed class CancelTarget
{
    /// <summary>Creates a target; <paramref name="tls"/> is set when the backend's own connection is TLS (so is the cancel's).</summary>
    public CancelTarget(EndPoint endPoint, int processId, byte[] secretKey, ServerTls? tls = null, string? host = null)
    {
        EndPoint = endPoint;
        ProcessId = processId;
        SecretKey = secretKey;
        Tls = tls;
        Host = host ?? endPoint.ToString() ?? "";
    }

    /// <summary>How the backend's connection used TLS; null when it was plain.</summary>
    public ServerTls? Tls { get; }

    /// <summary>The server's host name as configured, for TLS's name check.</summary>
    public string Host { get; }

    /// <summary>The PostgreSQL server the backend belongs to.</summary>
    public EndPoint EndPoint { get; }

    /// <summary>The backend's own pid, from its BackendKeyData.</summary>
    public int ProcessId { get; }

    /// <summary>The backend's own secret key.</summary>
    public byte[] SecretKey { get; }
}

/// <summary>
/// Sends a CancelRequest to PostgreSQL on a new connection (protocol 55.2.7). Runs as a task on the thread
/// pool with non-blocking sockets, so no loop thread ever waits on a cancel. The client's cancel socket
/// stays open until PostgreSQL closes the cancel connection (it has then signalled the backend), because
/// libpq waits for that close before it reports the cancel as sent; then it is closed. Nothing is ever
/// written to the client's cancel socket.
/// </summary>
internal static class CancelForwarder
{
    // CancellationTokenSource takes at most about 49 days; a longer cancel_timeout means "as long as that".
    private static readonly TimeSpan s_longestTimeout = TimeSpan.FromDays(24);

    /// <summary>
    /// Forwards the cancel and closes <paramref name="clientConnection"/> afterwards; <paramref name="done"/>
    /// runs when PostgreSQL has closed the cancel connection or the attempt failed, with false when the
    /// request may have reached PostgreSQL without its close being seen (it may still act on it).
    /// </summary>
    public static async Task ForwardAsync(IDisposable? clientConnection, CancelTarget target, TimeSpan timeout, CancelStats stats, Action<bool>? done = null)
    {
        bool sent = false;
        bool confirmed = false;
        using CancellationTokenSource cts = Deadline(timeout);
        try
        {
            using Socket server = target.EndPoint is UnixDomainSocketEndPoint
                ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
                : new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            await server.ConnectAsync(target.EndPoint, cts.Token).ConfigureAwait(false);
            await using Stream stream = await OpenAsync(server, target.Tls, target.Host, cts.Token).ConfigureAwait(false);
            byte[] packet = new byte[StartupCodes.CancelRequestLength - sizeof(int) + target.SecretKey.Length];
            var writer = new PgWriter(packet);
            writer.WriteCancelRequest(target.ProcessId, target.SecretKey);
            sent = true;
            await SendAndAwaitCloseAsync(stream, packet.AsMemory(0, writer.Position), cts.Token).ConfigureAwait(false);
            confirmed = true;
            stats.OnForwarded();
            Log.Debug($"cancel forwarded to backend pid {target.ProcessId}");
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException or IOException or AuthenticationException)
        {
            stats.OnFailed();
            Log.Warning($"cancel for backend pid {target.ProcessId} failed: {e.Message}");
        }
        finally
        {
            clientConnection?.Dispose();
            done?.Invoke(confirmed || !sent);
        }
    }

    /// <summary>A token that fires after <paramref name="timeout"/> (a longer one than a token can hold means as long as that).</summary>
    public static CancellationTokenSource Deadline(TimeSpan timeout) => new(timeout < s_longestTimeout ? timeout : s_longestTimeout);

    /// <summary>
    /// Sends <paramref name="packet"/> and waits until the other side closes: PostgreSQL (or a peer instance)
    /// answers a cancel with nothing and closes once it has acted on it.
    /// </summary>
    public static async Task SendAndAwaitCloseAsync(Stream stream, ReadOnlyMemory<byte> packet, CancellationToken cancellation)
    {
        await stream.WriteAsync(packet, cancellation).ConfigureAwait(false);
        byte[] sink = new byte[16];
        while (await stream.ReadAsync(sink, cancellation).ConfigureAwait(false) > 0)
        {
        }
    }

    /// <summary>
    /// The stream a CancelRequest goes on: TLS with <paramref name="tls"/> when given (SSLRequest, S, the
    /// handshake, then the request inside it, as PostgreSQL 17's libpq sends it; a backend's cancel is TLS
    /// when the backend's own connection is), else the plain socket. Also used to forward to a peer.
    /// </summary>
    public static async Task<Stream> OpenAsync(Socket server, ServerTls? tls, string host, CancellationToken cancellation)
    {
        var plain = new NetworkStream(server, ownsSocket: false);
        if (tls is null)
        {
            return plain;
        }

        byte[] request = new byte[StartupCodes.MinStartupPacketLength];
        var writer = new PgWriter(request);
        writer.WriteInt32(StartupCodes.MinStartupPacketLength);
        writer.WriteInt32(StartupCodes.SslRequestCode);
        await plain.WriteAsync(request, cancellation).ConfigureAwait(false);
        byte[] answer = new byte[1];
        if (await plain.ReadAsync(answer, cancellation).ConfigureAwait(false) != 1)
        {
            throw new IOException("server closed the connection after SSLRequest");
        }

        if (answer[0] == (byte)'N' && !tls.Required)
        {
            return plain;
        }

        if (answer[0] != (byte)'S')
        {
            throw new IOException(answer[0] == (byte)'N' ? "server refused TLS for the cancel connection" : "server sent an invalid answer to SSLRequest");
        }

        var ssl = new SslStream(plain, leaveInnerStreamOpen: false);
        await ssl.AuthenticateAsClientAsync(tls.Options(host), cancellation).ConfigureAwait(false);
        return ssl;
    }
}
