namespace FastPgProxy.Hosting;

/// <summary>Process-wide counters; updated from any thread.</summary>
internal sealed class ProxyStats
{
    private long _loginsFailed;
    private long _sessionsOpened;
    private long _clientStatementBytes;

    /// <summary>Client logins refused for a wrong password.</summary>
    public long LoginsFailed => Volatile.Read(ref _loginsFailed);

    /// <summary>Client sessions that completed login.</summary>
    public long SessionsOpened => Volatile.Read(ref _sessionsOpened);

    /// <summary>Counts a failed login.</summary>
    public void OnLoginFailed() => Interlocked.Increment(ref _loginsFailed);

    /// <summary>Counts a completed login.</summary>
    public void OnSessionOpened() => Interlocked.Increment(ref _sessionsOpened);

    /// <summary>Bytes the proxy holds for clients' prepared statements in transaction mode (SHOW MEMORY).</summary>
    public long ClientStatementBytes => Volatile.Read(ref _clientStatementBytes);

    /// <summary>A client's prepared statements grew (or shrank, negative) by <paramref name="bytes"/>.</summary>
    public void OnClientStatementBytes(long bytes) => Interlocked.Add(ref _clientStatementBytes, bytes);

    // What one client must have freed to be worth giving memory back to the system for, and how seldom.
    private const long TrimThreshold = 8L * 1024 * 1024;
    private static readonly long s_trimInterval = System.Diagnostics.Stopwatch.Frequency * 10;
    private long _lastTrim = -s_trimInterval;

    /// <summary>
    /// A client that held many megabytes of statements went: collect and give the memory back to the system
    /// now (on the thread pool, at most every 10 s), rather than whenever the next full collection comes,
    /// which on an otherwise allocation-free proxy may be never.
    /// </summary>
    public void OnClientMemoryFreed(long bytes)
    {
        long now = System.Diagnostics.Stopwatch.GetTimestamp();
        long last = Volatile.Read(ref _lastTrim);
        if (bytes < TrimThreshold || now - last < s_trimInterval || Interlocked.CompareExchange(ref _lastTrim, now, last) != last)
        {
            return;
        }

        ThreadPool.UnsafeQueueUserWorkItem(static _ => GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true), null);
    }
}
