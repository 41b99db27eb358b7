using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using FastPgProxy.Hosting;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

/// <summary>
/// Counts client connections from accept to close, and those among them still logging in (from accept
/// until authentication succeeds; a CancelRequest until it has been read). The accept loop refuses a
/// connection while <c>max_login_clients</c> are logging in, so connections that never finish their login
/// cannot take every descriptor; <c>max_client_conn</c> is checked against every connection, logged in or
/// not, when a StartupMessage arrives. Counters are updated from any loop; only the accept loop admits.
/// </summary>
internal sealed class ClientAdmission
{
    // Refusals are logged when they start, then at most once per interval with how many there were.
    private static readonly long s_logInterval = Stopwatch.Frequency * 10;

    // FATAL 53300, as PostgreSQL answers a connection over max_connections; sent as is at accept.
    private static readonly byte[] s_tooManyClients = BuildTooManyClients();

    // Whatever the refused client sent before the refusal is read into this and dropped (accept loop only).
    private readonly byte[] _discard = new byte[512];

    private int _connections;
    private int _loggingIn;
    private long _refused;
    private long _refusedAtLastLog;
    private long _lastLog;

    /// <summary>Client connections open now (logged in or not, cancel requests included until read).</summary>
    public int Connections => Volatile.Read(ref _connections);

    /// <summary>Client connections that have not finished logging in.</summary>
    public int LoggingIn => Volatile.Read(ref _loggingIn);

    /// <summary>Connections refused at accept since start.</summary>
    public long Refused => Interlocked.Read(ref _refused);

    /// <summary>
    /// Counts a new connection as logging in, or, when <paramref name="maxLoggingIn"/> are already logging
    /// in, answers it FATAL 53300 if that can be sent at once, closes it and returns false. Accept loop only.
    /// </summary>
    public bool TryAdmit(Socket socket, int maxLoggingIn)
    {
        if (Volatile.Read(ref _loggingIn) >= maxLoggingIn)
        {
            Refuse(socket, maxLoggingIn);
            return false;
        }

        Interlocked.Increment(ref _connections);
        Interlocked.Increment(ref _loggingIn);
        return true;
    }

    /// <summary>An admitted connection has logged in (or is no longer logging in); once per connection.</summary>
    public void OnLoginDone() => Interlocked.Decrement(ref _loggingIn);

    /// <summary>An admitted connection is closed; once per connection.</summary>
    public void OnClosed() => Interlocked.Decrement(ref _connections);

    private void Refuse(Socket socket, int maxLoggingIn)
    {
        // Counted before the close, so whoever sees the close sees the count.
        long refused = Interlocked.Increment(ref _refused);
        IPEndPoint? remote = null;
        try
        {
            remote = socket.RemoteEndPoint as IPEndPoint;

            // Read what the client already sent, so the close is a FIN it reads after the error rather than
            // a reset that discards it (bytes arriving after the close still get a reset: the error is best
            // effort); then one non-blocking send into the empty socket buffer.
            socket.Blocking = false;
            for (int i = 0; i < 16 && socket.Receive(_discard, SocketFlags.None, out SocketError error) > 0 && error == SocketError.Success; i++)
            {
            }

            socket.Send(s_tooManyClients, SocketFlags.None, out _);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Gone already: closing is all there is to do.
        }

        socket.Dispose();
        long now = Stopwatch.GetTimestamp();
        if (now - _lastLog <= s_logInterval)
        {
            return;
        }

        if (refused == _refusedAtLastLog + 1)
        {
            Log.Warning($"connection from {remote} refused: max_login_clients ({maxLoggingIn}) clients are logging in; further refusals are logged every 10 s");
        }
        else
        {
            Log.Warning($"{refused - _refusedAtLastLog} connections refused in the last {Stopwatch.GetElapsedTime(_lastLog, now).TotalSeconds:0} s: max_login_clients ({maxLoggingIn}) clients were logging in");
        }

        _refusedAtLastLog = refused;
        _lastLog = now;
    }

    private static byte[] BuildTooManyClients()
    {
        var buffer = new byte[256];
        var writer = new PgWriter(buffer);
        writer.WriteError(BackendMessage.ErrorResponse, "FATAL", SqlState.TooManyConnections, "sorry, too many clients already");
        return buffer.AsSpan(0, writer.Position).ToArray();
    }
}
