using FastPgProxy.Hosting;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

/// <summary>
/// client_message_timeout: a logged-in client that stops in the middle of a message is closed, whether it
/// relays or uses the console; between messages it may stay silent as long as client_idle_timeout allows
/// (relay clients between transactions; off by default).
/// </summary>
internal sealed partial class ClientSession
{
    private SessionTimer? _stallTimer;
    private SessionTimer? _idleClientTimer;

    /// <summary>Whether part of a client message has arrived and the rest has not (kept in the window, or streaming to the backend).</summary>
    private bool ClientMidMessage => _client.Buffered > 0 || _client.Parked > 0 || (_relay is not null && !_relay.ClientAtBoundary);

    /// <summary>
    /// Reads the client's next bytes once logged in (relay or console). Waiting for the rest of a message arms
    /// client_message_timeout, and every read that brings more pushes it back; between messages it is off.
    /// </summary>
    internal void ReceiveClient()
    {
        TimeSpan timeout = _proxy.Options.ClientMessageTimeout;
        if (timeout > TimeSpan.Zero && ClientMidMessage)
        {
            (_stallTimer ??= new SessionTimer(this, OnClientMessageTimeout)).Arm(timeout);
        }
        else
        {
            _stallTimer?.Disarm();
        }

        TimeSpan idle = _proxy.Options.ClientIdleTimeout;
        if (idle > TimeSpan.Zero && _relay is not null)
        {
            // Every read pushes client_idle_timeout back; it acts only on a client waited for between transactions.
            (_idleClientTimer ??= new SessionTimer(this, OnClientIdleTimeout)).Arm(idle);
        }

        _client.Receive();
    }

    private void OnClientIdleTimeout()
    {
        if (State == SessionState.Active && _client.ReceivePending && !ClientMidMessage && _relay!.IdleBetweenTransactions)
        {
            Log.Write(LogLevel.Info, $"client {ClientName} session {Id}: idle longer than client_idle_timeout, closing");
            Fatal(SqlState.ProtocolViolation, "client_idle_timeout");
        }
    }

    private void OnClientMessageTimeout()
    {
        if (State == SessionState.Active && _client.ReceivePending && ClientMidMessage)
        {
            // Half a message may sit on the backend: it cannot go back to the pool, and Close drops it.
            Log.Warning($"client {ClientName} session {Id}: message not finished within client_message_timeout, closing");
            Fatal(SqlState.ProtocolViolation, "incomplete message from client within client_message_timeout");
        }
    }
}
