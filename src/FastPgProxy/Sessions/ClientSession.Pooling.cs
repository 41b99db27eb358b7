using System.Diagnostics;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

internal sealed partial class ClientSession
{
    private bool _syncingParameters;

    /// <summary>
    /// The pool hands this session a backend: at login, or for the transaction the client just started.
    /// Before relaying, the backend's tracked parameters are brought in line with what the client has seen.
    /// </summary>
    public void OnServerAssigned(ServerConnection server)
    {
        Debug.Assert(Loop.InLoop);
        if (State == SessionState.Closed)
        {
            _pool!.Release(server, clean: true, reset: _pool.Mode == PoolMode.Session);
            TryFinish();
            return;
        }

        _server = server;
        if (Log.IsEnabled(LogLevel.Debug))
        {
            Log.Debug($"session {Id}: assigned server {server.Id}");
        }

        server.Channel.SetHandler(this);
        _serverFramer.Reset();
        _tracker?.ClearReplyActions();
        _expectedReadyForQuery = 0;
        _openExtended = false;
        _serverSentError = false;
        if (server.HasCancelKey)
        {
            Volatile.Write(ref _cancelTarget, server.CancelTarget);
        }

        if (State == SessionState.ConnectingServer)
        {
            SendLoginTail(server.Parameters);
            return;
        }

        StartServerWork();
    }

    /// <summary>No backend could be had: PostgreSQL refused the login (its error is forwarded) or could not be reached.</summary>
    public void OnServerUnavailable(byte[]? errorResponse, string reason)
    {
        if (State == SessionState.Closed)
        {
            return;
        }

        if (errorResponse is not null)
        {
            ForwardErrorAndClose(errorResponse);
        }
        else
        {
            Fatal(SqlState.ConnectionFailure, reason);
        }
    }

    /// <summary>Waited longer than query_wait_timeout for a backend.</summary>
    public void OnWaitTimeout()
    {
        Log.Warning($"session {Id}: no backend within query_wait_timeout");
        Fatal(SqlState.ProtocolViolation, "query_wait_timeout");
    }

    /// <summary>Asks the pool for a backend for the client's next transaction.</summary>
    private void RequestServer()
    {
        if (_pool!.Acquire(this) is { } server)
        {
            OnServerAssigned(server);
        }
    }

    /// <summary>With a backend attached: sync parameters if needed, then relay both ways.</summary>
    private void StartServerWork()
    {
        ServerConnection server = _server!;
        string? sync = _clientParameters is null ? null : TrackedParameters.BuildSync(_clientParameters, server.Parameters);
        if (sync is not null)
        {
            _syncingParameters = true;
            server.RunInternalQuery(sync, this);
            return;
        }

        ResumeRelay();
    }

    /// <inheritdoc/>
    public void OnInternalQueryDone(ServerConnection server, bool ok)
    {
        _syncingParameters = false;
        if (State == SessionState.Closed)
        {
            TryFinish();
            return;
        }

        server.Channel.SetHandler(this);
        if (!ok)
        {
            // The client's request must never run with another client's settings. The usual cause is a
            // cancel of this client's that PostgreSQL acted on only now: answer the request as cancelled
            // (57014); the backend goes back, and the next one is set afresh.
            Log.Warning($"session {Id}: could not set the client's parameters on backend pid {server.BackendPid}; its request is answered as cancelled");
            _cancelPendingRequest = true;
        }

        ResumeRelay();
    }

    private void ResumeRelay()
    {
        if (!_server!.Channel.ReceivePending && !_client.SendPending)
        {
            PumpServer();
        }

        if (State == SessionState.Active && _server is not null && !_server.Channel.SendPending && !_client.ReceivePending)
        {
            PumpClient();
        }
    }

    /// <summary>
    /// Whether the attached backend holds nothing of this client: idle (ReadyForQuery 'I'), every
    /// ReadyForQuery the client's messages earn has arrived, no extended-protocol batch left open
    /// without Sync, nothing half-sent or half-received in either direction.
    /// </summary>
    private bool ServerIsClean()
    {
        ServerConnection? server = _server;
        return server is not null
            && !_syncingParameters
            && server.State == ServerState.Ready
            && server.TransactionStatus == TransactionStatus.Idle
            && _expectedReadyForQuery == 0
            && !_openExtended
            && !server.Channel.SendPending
            && server.Channel.Buffered == 0
            && _serverFramer.AtBoundary
            && _clientFramer.AtBoundary;
    }

    /// <summary>
    /// Whether a busy backend can be made clean without this client: cancel_on_disconnect is on, it is
    /// logged in and idle at the protocol level on the client's side (no half-sent message, no send of
    /// this client's buffer in flight, no reply of it being sent to the client).
    /// </summary>
    private bool CanDrainServer()
    {
        ServerConnection? server = _server;
        return server is not null
            && _pool is not null
            && _proxy.Options.CancelOnDisconnect
            && !_syncingParameters
            && server.State == ServerState.Ready
            && !server.Channel.SendPending
            && !_client.SendPending
            && _clientFramer.AtBoundary;
    }

    /// <summary>In transaction mode, gives the backend back as soon as the client's transaction is over.</summary>
    private bool TryReleaseServer()
    {
        if (_pool!.Mode != PoolMode.Transaction || _client.SendPending || !ServerIsClean())
        {
            return false;
        }

        ServerConnection server = _server!;
        _server = null;
        if (Log.IsEnabled(LogLevel.Debug))
        {
            Log.Debug($"session {Id}: released server {server.Id}");
        }

        Volatile.Write(ref _cancelTarget, null);
        _pool.Release(server, clean: true, reset: false);
        return true;
    }
}
