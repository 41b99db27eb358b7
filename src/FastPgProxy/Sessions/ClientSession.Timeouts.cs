using System.Diagnostics;
using FastPgProxy.Hosting;
using FastPgProxy.Net;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

/// <summary>
/// query_timeout cancels a query on PostgreSQL (the client gets 57014 and keeps its session, unlike a
/// dropped connection); idle_transaction_timeout closes a client that sits idle inside a transaction, and
/// its backend is rolled back and kept; client_message_timeout closes a client that stops in the middle
/// of a message. A timer that comes due after its query, idle spell or message ended does nothing.
/// </summary>
internal sealed partial class ClientSession
{
    private SessionTimer? _queryTimer;
    private SessionTimer? _idleTimer;
    private SessionTimer? _stallTimer;

    /// <summary>Whether part of a client message has arrived and the rest has not (kept in the window, or streaming to the backend).</summary>
    private bool ClientMidMessage => _client.Buffered > 0 || _client.Parked > 0 || !_clientFramer.AtBoundary;

    /// <summary>
    /// Reads the client's next bytes in the relay. Waiting for the rest of a message arms
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

        _client.Receive();
    }

    private void OnClientMessageTimeout()
    {
        if (State == SessionState.Active && _client.ReceivePending && ClientMidMessage)
        {
            // Half a message may sit on the backend: it cannot go back to the pool, and Close drops it.
            Log.Warning($"client {RemoteEndPoint} session {Id}: message not finished within client_message_timeout, closing");
            Fatal(SqlState.ProtocolViolation, "incomplete message from client within client_message_timeout");
        }
    }

    /// <summary>A query went to the backend: arm query_timeout if it is not armed.</summary>
    private void OnQuerySent()
    {
        _idleTimer?.Disarm();
        TimeSpan timeout = _proxy.Options.QueryTimeout;
        if (timeout > TimeSpan.Zero && _expectedReadyForQuery > 0 && !(_queryTimer?.Armed ?? false))
        {
            (_queryTimer ??= new SessionTimer(this, OnQueryTimeout)).Arm(timeout);
        }
    }

    /// <summary>ReadyForQuery arrived: the query timer ends when nothing more is owed; idle in a transaction arms the idle timer.</summary>
    private void OnReadyForQueryRelayed(TransactionStatus status)
    {
        if (_expectedReadyForQuery > 0)
        {
            return;
        }

        _queryTimer?.Disarm();
        TimeSpan timeout = _proxy.Options.IdleTransactionTimeout;
        if (timeout > TimeSpan.Zero && status != TransactionStatus.Idle)
        {
            (_idleTimer ??= new SessionTimer(this, OnIdleTransactionTimeout)).Arm(timeout);
        }
    }

    private void OnQueryTimeout()
    {
        if (State == SessionState.Active && _server is not null && _expectedReadyForQuery > 0)
        {
            Log.Write(LogLevel.Info, $"session {Id}: query_timeout, cancelling the query on backend pid {_server.BackendPid}");
            _proxy.CancelStats.OnTimedOut();
            CancelRunningQuery(null);
        }
    }

    private void OnIdleTransactionTimeout()
    {
        if (State == SessionState.Active && _server is not null && _expectedReadyForQuery == 0 && _server.TransactionStatus != TransactionStatus.Idle)
        {
            Log.Write(LogLevel.Info, $"session {Id}: idle_transaction_timeout, closing");
            Fatal("25P03", "terminating connection due to idle-in-transaction timeout");
        }
    }

    /// <summary>
    /// One re-armable timer of a session, on the session's loop. Arming allocates nothing: at most one
    /// callback sits in the loop's timer queue, and when it comes due before the current deadline (the
    /// timer was re-armed meanwhile) it is put back for the deadline instead of firing.
    /// </summary>
    private sealed class SessionTimer(ClientSession session, Action fire) : ILoopTimer
    {
        private long _deadline;

        // The loop whose timer queue holds this timer; null when none does. A session that moved to
        // another loop leaves a stale entry behind, which then finds the session gone and does nothing.
        private EventLoop? _queuedOn;
        private long _queuedDue;

        public bool Armed { get; private set; }

        public void Arm(TimeSpan after)
        {
            Armed = true;
            _deadline = Stopwatch.GetTimestamp() + (long)(after.TotalSeconds * Stopwatch.Frequency);
            EventLoop loop = session.Loop;
            // A queued entry due after the deadline (the timeout was lowered by RELOAD) is superseded by an
            // earlier one; only the entry last queued acts.
            if (_queuedOn != loop || _queuedDue > _deadline)
            {
                Queue(loop);
            }
        }

        public void Disarm() => Armed = false;

        public void OnTimer(long dueTimestamp)
        {
            EventLoop loop = session.Loop;
            if (!loop.InLoop || _queuedOn != loop || dueTimestamp != _queuedDue)
            {
                // Left on a loop the session has since left, or superseded by an earlier entry.
                return;
            }

            _queuedOn = null;
            if (!Armed)
            {
                return;
            }

            if (Stopwatch.GetTimestamp() < _deadline)
            {
                Queue(loop);
                return;
            }

            Armed = false;
            fire();
        }

        private void Queue(EventLoop loop)
        {
            _queuedOn = loop;
            _queuedDue = _deadline;
            loop.Schedule(this, _deadline);
        }
    }
}
