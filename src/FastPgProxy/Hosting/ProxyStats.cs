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
}
