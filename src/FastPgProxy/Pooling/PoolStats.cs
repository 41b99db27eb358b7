using System.Diagnostics;

namespace FastPgProxy.Pooling;

/// <summary>The counters of <see cref="PoolStats"/> at one moment; times are <see cref="Stopwatch"/> ticks.</summary>
internal readonly record struct PoolTotals(
    long ServerAssignments,
    long Transactions,
    long Queries,
    long BytesReceived,
    long BytesSent,
    long TransactionTicks,
    long QueryTicks,
    long WaitTicks)
{
    /// <summary>What was counted between <paramref name="older"/> and <paramref name="newer"/>.</summary>
    public static PoolTotals operator -(PoolTotals newer, PoolTotals older) => new(
        newer.ServerAssignments - older.ServerAssignments,
        newer.Transactions - older.Transactions,
        newer.Queries - older.Queries,
        newer.BytesReceived - older.BytesReceived,
        newer.BytesSent - older.BytesSent,
        newer.TransactionTicks - older.TransactionTicks,
        newer.QueryTicks - older.QueryTicks,
        newer.WaitTicks - older.WaitTicks);
}

/// <summary>
/// Traffic totals of one pool since it was created, for the admin console's SHOW STATS. Written only on
/// the pool's loop by the relay of its clients (plain additions: no allocation, no interlocked operation);
/// read by the console on that same loop. Times are <see cref="Stopwatch"/> ticks.
/// </summary>
internal sealed class PoolStats
{
    // stats_period: the totals when the last two periods ended (PgBouncer's older_stats and newer_stats).
    // The averages run from the older one to now: the last completed period and the current one so far.
    private PoolTotals _older;
    private PoolTotals _newer;
    private long _olderStamp = Stopwatch.GetTimestamp();
    private long _newerStamp = Stopwatch.GetTimestamp();

    /// <summary>Backends handed to clients (at login, and for each transaction in transaction mode).</summary>
    public long ServerAssignments { get; private set; }

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

    /// <summary>Every counter now.</summary>
    public PoolTotals Totals => new(ServerAssignments, Transactions, Queries, BytesReceived, BytesSent, TransactionTicks, QueryTicks, WaitTicks);

    /// <summary>The totals where the averaging span starts (the start of the last completed stats_period).</summary>
    public PoolTotals PeriodStart => _older;

    /// <summary>When the averaging span started (<see cref="Stopwatch"/> ticks).</summary>
    public long PeriodStartStamp => _olderStamp;

    /// <summary>
    /// Ends a stats_period when <paramref name="period"/> ticks have passed since the last one ended: the
    /// totals of the period end before become the start of the averaging span. Called from the pool's
    /// once-a-second tick, so a period ends up to a second late; a twentieth of a second early counts as
    /// due, so that a tick that fires a little early does not skip a whole second.
    /// </summary>
    public void Roll(long now, long period)
    {
        if (now - _newerStamp < period - (Stopwatch.Frequency / 20))
        {
            return;
        }

        _older = _newer;
        _olderStamp = _newerStamp;
        _newer = Totals;
        _newerStamp = now;
    }

    /// <summary>Counts a backend handed to a client.</summary>
    public void AddAssignment() => ServerAssignments++;

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
