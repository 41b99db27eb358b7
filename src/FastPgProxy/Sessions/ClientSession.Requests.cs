using System.Net.Sockets;
using FastPgProxy.Hosting;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

/// <summary>
/// What other sessions, the admin console and the cancel path ask of a session, from any thread: each
/// request is posted to the session's loop, where its <see cref="Relay"/> (if it has one) acts. Also what
/// the console reports about it (SHOW CLIENTS, SHOW SERVERS), read on the session's loop.
/// </summary>
internal sealed partial class ClientSession
{
    /// <summary>Whether this is an admin console session.</summary>
    public bool IsAdminConsole => _admin;

    /// <summary>The session's relay; null for the console and before StartupMessage names a pool. Loop only.</summary>
    internal Relay? Relay => _relay;

    /// <summary>The session's pool; null for the console and before StartupMessage. Loop only.</summary>
    public ServerPool? Pool => _relay?.Pool;

    /// <summary>The backend attached now, if any. Loop only.</summary>
    public ServerConnection? AttachedServer => _relay?.Server;

    /// <summary>Whether the session waits in its pool's queue for a backend. Loop only.</summary>
    public bool IsWaiting => _relay?.WaitNode is not null;

    /// <summary>When the session started waiting for a backend (<see cref="System.Diagnostics.Stopwatch"/> ticks); meaningful while <see cref="IsWaiting"/>. Loop only.</summary>
    public long WaitStarted => _relay?.WaitStarted ?? 0;

    /// <summary>When the client's latest request went to a backend (<see cref="System.Diagnostics.Stopwatch"/> ticks), 0 if none yet. Loop only.</summary>
    public long LastRequest => _relay?.LastRequest ?? 0;

    /// <summary>When the request running now went to the backend (<see cref="System.Diagnostics.Stopwatch"/> ticks), 0 when none runs. Loop only.</summary>
    public long RequestStarted => _relay?.RequestStarted ?? 0;

    /// <summary>
    /// Whether the session has a query to cancel: it waits for a backend with a query pending, or its
    /// backend owes it a ReadyForQuery (a query or an extended batch runs). Idle in a transaction is not
    /// running. Loop only.
    /// </summary>
    public bool IsQueryRunning => State == SessionState.Active && _relay is not null && _relay.IsQueryRunning;

    /// <summary>The transaction status the client believes in: its backend's, or idle without one. Loop only.</summary>
    internal TransactionStatus ClientTransactionStatus => _relay?.ClientTransactionStatus ?? TransactionStatus.Idle;

    /// <summary>The buffer the proxy's own message to the client is written in while it is on its way; null otherwise. Loop only.</summary>
    internal byte[]? OutBuffer => _out;

    /// <summary>The client's application_name: what it set last, or sent at start-up; empty when none. Loop only.</summary>
    public string ApplicationName
    {
        get
        {
            if (_relay?.ReportedApplicationName is { } reported)
            {
                return reported;
            }

            foreach (KeyValuePair<string, string> s in StartupParameters ?? [])
            {
                if (s.Key.Equals("application_name", StringComparison.OrdinalIgnoreCase))
                {
                    return s.Value;
                }
            }

            return "";
        }
    }

    /// <summary>Asks this session's loop to cancel its running query; <paramref name="cancelConnection"/> (a client's cancel connection) is closed when done. Any thread.</summary>
    public void RequestCancel(IDisposable? cancelConnection) => Loop.Post(() =>
    {
        if (_relay is { } relay)
        {
            relay.Cancel(cancelConnection);
            return;
        }

        // Still logging in, or the admin console: no query of this session runs on PostgreSQL.
        _proxy.CancelStats.OnDroppedIdle();
        Log.Debug($"session {Id}: cancel dropped, no query running (state {State})");
        cancelConnection?.Dispose();
    });

    /// <summary>Cancels this session's running query, from any thread, through the CancelRequest path.</summary>
    public void CancelFromAnywhere() => RequestCancel(null);

    /// <summary>
    /// Ends this session as an administrator command does (FATAL 57P01), from any thread: a running query
    /// is cancelled first, so its backend is never left busy.
    /// </summary>
    public void TerminateFromAnywhere() => Loop.Post(() =>
    {
        if (State == SessionState.Closed)
        {
            return;
        }

        _relay?.CancelIfRunning();
        Fatal(SqlState.AdminShutdown, "terminating connection due to administrator command");
    });

    /// <summary>
    /// Safe shutdown (SIGINT), from any thread: ends this session with FATAL 57P01 if it holds no open
    /// transaction: still logging in or waiting for a backend, on the console, or a relay waiting for the
    /// client between transactions. A session inside a transaction or a query is left to finish it; the
    /// shutdown asks again until it is done or shutdown_wait_timeout runs out.
    /// </summary>
    public void TerminateIfIdleFromAnywhere() => Loop.Post(() =>
    {
        bool idle = State switch
        {
            SessionState.Closed => false,
            SessionState.Active => _relay is null || (_client.ReceivePending && !ClientMidMessage && _relay.IdleBetweenTransactions),
            _ => true,
        };
        if (idle)
        {
            Fatal(SqlState.AdminShutdown, "terminating connection due to administrator command");
        }
    });

    /// <summary>Publishes the backend a cancel from another thread would reach now; null when none.</summary>
    internal void PublishCancelTarget(Cancellation.CancelTarget? target) => Volatile.Write(ref _cancelTarget, target);
}
