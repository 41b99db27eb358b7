using System.Diagnostics;
using FastPgProxy.Net;
using FastPgProxy.Protocol;

namespace FastPgProxy.Server;

/// <summary>
/// query_timeout cancels a query on PostgreSQL (the client gets 57014 and keeps its session, unlike a
/// dropped connection); idle_transaction_timeout closes a client that sits idle inside a transaction, and
/// its backend is rolled back and kept. Each arming gets a sequence number so a timer that fires after
/// its query or idle spell ended does nothing.
/// </summary>
internal sealed partial class ClientSession
{
    private SessionTimer? _queryTimer;
    private SessionTimer? _idleTimer;

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

    /// <summary>One re-armable timer of a session, on the session's loop.</summary>
    private sealed class SessionTimer(ClientSession session, Action fire)
    {
        private long _sequence;
        private long _armedSequence = -1;

        public bool Armed => _armedSequence == _sequence;

        public void Arm(TimeSpan after)
        {
            _sequence++;
            _armedSequence = _sequence;
            EventLoop loop = session.Loop;
            loop.Schedule(new Shot(this, _sequence), Stopwatch.GetTimestamp() + (long)(after.TotalSeconds * Stopwatch.Frequency));
        }

        public void Disarm() => _armedSequence = -1;

        private void Fire(long sequence)
        {
            if (_armedSequence == sequence && session.Loop.InLoop)
            {
                _armedSequence = -1;
                fire();
            }
        }

        private sealed class Shot(SessionTimer timer, long sequence) : ILoopTimer
        {
            public void OnTimer(long dueTimestamp) => timer.Fire(sequence);
        }
    }
}
