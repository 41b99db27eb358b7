using System.Diagnostics;

namespace FastPgProxy.Pooling;

/// <summary>
/// Traffic totals of one pool since it was created, for the admin console's SHOW STATS. Written only on
/// the pool's loop by the relay of its clients (plain additions: no allocation, no interlocked operation);
/// read by the console on that same loop. Times are <see cref="Stopwatch"/> ticks.
/// </summary>
internal sealed class PoolStats
{
    /// <summary>Transactions that ended (a ReadyForQuery 'I' after a request).</summary>
    public long Transactions { get; private set; }

    /// <summary>Requests answered: ReadyForQuery messages relayed to clients.</summary>
    public long Queries { get; private set; }

    /// <summary>Bytes clients sent that the relay forwarded to backends.</summary>
    public long BytesReceived { get; private set; }

    /// <summary>Bytes backends sent that the relay forwarded to clients.</summary>
    public long BytesSent { get; private set; }

    /// <summary>Time from the first request of each transaction to its ReadyForQuery 'I'.</summary>
    public long TransactionTicks { get; private set; }

    /// <summary>Time from each request to its ReadyForQuery (pipelined requests share the span).</summary>
    public long QueryTicks { get; private set; }

    /// <summary>Time clients spent waiting for a backend.</summary>
    public long WaitTicks { get; private set; }

    /// <summary>Counts a run of client bytes forwarded.</summary>
    public void AddReceived(int bytes) => BytesReceived += bytes;

    /// <summary>Counts a run of backend bytes forwarded.</summary>
    public void AddSent(int bytes) => BytesSent += bytes;

    /// <summary>Counts one answered request and its time.</summary>
    public void AddQuery(long ticks)
    {
        Queries++;
        QueryTicks += ticks;
    }

    /// <summary>Counts one ended transaction and its time.</summary>
    public void AddTransaction(long ticks)
    {
        Transactions++;
        TransactionTicks += ticks;
    }

    /// <summary>Counts the time one client waited for a backend.</summary>
    public void AddWait(long ticks) => WaitTicks += ticks;
}
