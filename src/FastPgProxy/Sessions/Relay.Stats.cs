using System.Diagnostics;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

/// <summary>
/// The relay's counters for SHOW STATS and SHOW CLIENTS. They are plain fields of the relay and its pool,
/// updated on the loop where the relay already looks at a message (a run sent, a ReadyForQuery relayed):
/// no allocation. The properties are read on the session's loop, where the console collects its snapshot.
/// </summary>
internal sealed partial class Relay
{
    // Stopwatch timestamps; 0 when nothing is outstanding.
    private long _requestStarted;
    private long _transactionStarted;
    private long _lastRequest;

    /// <summary>When the client's latest request went to a backend (<see cref="Stopwatch"/> ticks), 0 if none yet. Loop only.</summary>
    public long LastRequest => _lastRequest;

    /// <summary>When the request running now went to the backend (<see cref="Stopwatch"/> ticks), 0 when none runs. Loop only.</summary>
    public long RequestStarted => _requestStarted;

    /// <summary>Whether the client waits for a backend with a request pending, or its backend owes it a ReadyForQuery. Loop only.</summary>
    public bool IsQueryRunning => WaitNode is not null || (_server is not null && (_booking.ReadyForQueryDue > 0 || _booking.BatchOpen));

    /// <summary>A run of <paramref name="bytes"/> client bytes went to the backend: counted, and a new request starts the clocks.</summary>
    private void CountClientRun(int bytes)
    {
        PoolStats stats = _pool.Stats;
        stats.AddReceived(bytes);
        if (_requestStarted == 0 && (_booking.ReadyForQueryDue > 0 || _booking.BatchOpen))
        {
            long now = Stopwatch.GetTimestamp();
            _requestStarted = now;
            _lastRequest = now;
            if (_transactionStarted == 0)
            {
                _transactionStarted = now;
            }
        }
    }

    /// <summary>A run of <paramref name="bytes"/> backend bytes reached the client.</summary>
    private void CountServerRun(int bytes) => _pool.Stats.AddSent(bytes);

    /// <summary>
    /// A ReadyForQuery is being relayed (after the count of those still owed went down): one request
    /// answered; with status 'I', one transaction ended. Pipelined requests split the time between them.
    /// </summary>
    private void CountReadyForQuery(TransactionStatus status)
    {
        long now = Stopwatch.GetTimestamp();
        PoolStats stats = _pool.Stats;
        stats.AddQuery(_requestStarted == 0 ? 0 : now - _requestStarted);
        _requestStarted = _booking.ReadyForQueryDue > 0 ? now : 0;
        if (status == TransactionStatus.Idle && _transactionStarted != 0)
        {
            stats.AddTransaction(now - _transactionStarted);
            _transactionStarted = 0;
        }
    }
}
