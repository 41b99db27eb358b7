using FastPgProxy.Hosting;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

/// <summary>
/// query_timeout cancels a query on PostgreSQL (the client gets 57014 and keeps its session, unlike a
/// dropped connection); idle_transaction_timeout closes a client that sits idle inside a transaction, and
/// its backend is rolled back and kept. A timer that comes due after its query or idle spell ended does
/// nothing. (client_message_timeout is the session's: ClientSession.Receive.cs.)
/// </summary>
internal sealed partial class Relay
{
    private SessionTimer? _queryTimer;
    private SessionTimer? _idleTimer;

    /// <summary>
    /// Whether the client owes the proxy nothing and is owed nothing: no reply due, no batch open, no
    /// transaction open, no reply of the proxy's own pending. client_idle_timeout acts only then.
    /// </summary>
    public bool IdleBetweenTransactions =>
        _booking.ReadyForQueryDue == 0 && !_booking.BatchOpen && !_parkedForLocalReply
        && (_interceptor is null || !_interceptor.ReplyPending)
        && (_server is null || _server.TransactionStatus == TransactionStatus.Idle);

    /// <summary>Whether the framer is between client messages (none half-forwarded to the backend).</summary>
    public bool ClientAtBoundary => _clientFramer.AtBoundary;

    /// <summary>Reads the client's next bytes (the session arms client_message_timeout when a message is half here).</summary>
    private void ReceiveClient() => _session.ReceiveClient();

    /// <summary>A query went to the backend: arm query_timeout if it is not armed.</summary>
    private void OnQuerySent()
    {
        _idleTimer?.Disarm();
        TimeSpan timeout = _proxy.Options.QueryTimeout;
        if (timeout > TimeSpan.Zero && _booking.ReadyForQueryDue > 0 && !(_queryTimer?.Armed ?? false))
        {
            (_queryTimer ??= new SessionTimer(_session, OnQueryTimeout)).Arm(timeout);
        }
    }

    /// <summary>ReadyForQuery arrived: the query timer ends when nothing more is owed; idle in a transaction arms the idle timer.</summary>
    private void OnReadyForQueryRelayed(TransactionStatus status)
    {
        if (_booking.ReadyForQueryDue > 0)
        {
            return;
        }

        _queryTimer?.Disarm();
        TimeSpan timeout = _proxy.Options.IdleTransactionTimeout;
        if (timeout > TimeSpan.Zero && status != TransactionStatus.Idle)
        {
            (_idleTimer ??= new SessionTimer(_session, OnIdleTransactionTimeout)).Arm(timeout);
        }
    }

    private void OnQueryTimeout()
    {
        if (_session.State == SessionState.Active && _server is not null && _booking.ReadyForQueryDue > 0)
        {
            Log.Write(LogLevel.Info, $"session {_session.Id}: query_timeout, cancelling the query on backend pid {_server.BackendPid}");
            _proxy.CancelStats.OnTimedOut();
            CancelRunningQuery(null);
        }
    }

    private void OnIdleTransactionTimeout()
    {
        if (_session.State == SessionState.Active && _server is not null && _booking.ReadyForQueryDue == 0 && _server.TransactionStatus != TransactionStatus.Idle)
        {
            Log.Write(LogLevel.Info, $"session {_session.Id}: idle_transaction_timeout, closing");
            _session.Fatal("25P03", "terminating connection due to idle-in-transaction timeout");
        }
    }
}
