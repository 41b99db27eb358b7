using System.Diagnostics;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

internal sealed partial class Relay
{
    private bool _syncingParameters;

    /// <summary>
    /// The pool hands this session a backend: at login, or for the transaction the client just started.
    /// Before relaying, the backend's tracked parameters are brought in line with what the client has seen.
    /// </summary>
    public void OnServerAssigned(ServerConnection server)
    {
        Debug.Assert(Loop.InLoop);
        if (_session.State == SessionState.Closed)
        {
            _pool.Release(server, clean: true, reset: _pool.Mode == PoolMode.Session);
            _session.TryFinish();
            return;
        }

        _server = server;
        server.LastSessionId = _session.Id;
        _pool.Stats.AddAssignment();
        if (Log.IsEnabled(LogLevel.Debug))
        {
            Log.Debug($"session {_session.Id}: assigned server {server.Id}");
        }

        server.Channel.SetHandler(this);
        _serverFramer.Reset();
        _tracker?.ClearReplyActions();
        _booking.ReadyForQueryDue = 0;
        _booking.BatchOpen = false;
        _serverSentError = false;
        if (server.HasCancelKey)
        {
            _session.PublishCancelTarget(server.CancelTarget);
        }

        if (_session.State == SessionState.ConnectingServer)
        {
            // PostgreSQL applies start-up values at login and reports them its own way ('utf8' as 'UTF8');
            // the proxy applies them to the backend first, so the login tail tells the client the same.
            string? startup = TrackedParameters.BuildStartupSync(_session.StartupParameters!, server.Parameters, _pool.Welcome);
            if (startup is not null)
            {
                _syncingParameters = true;
                server.RunInternalQuery(startup, this);
                return;
            }

            FinishLogin(server);
            return;
        }

        StartServerWork();
    }

    /// <summary>
    /// The backend has the client's start-up values: the client is told them as the backend reports them,
    /// over the pool's defaults in transaction mode (the backend may carry another client's settings,
    /// which this client never sees) and over the backend's own values in session mode.
    /// </summary>
    private void FinishLogin(ServerConnection server)
    {
        List<KeyValuePair<string, ParameterStatus>> startup = _pool.Spellings.Learn(_session.StartupParameters!, server.Parameters);
        IReadOnlyDictionary<string, ParameterStatus> parameters = _pool.Mode == PoolMode.Transaction && _pool.Welcome is { } welcome ? welcome : server.Parameters;
        SendLoginTail(parameters, startup);
    }

    /// <summary>
    /// PostgreSQL refused a start-up value (or the backend failed) while it was applied before the login
    /// tail: the client gets the FATAL PostgreSQL would send at login, and the backend goes back.
    /// </summary>
    private void FailLogin(ServerConnection server)
    {
        _server = null;
        _session.PublishCancelTarget(null);
        bool clean = server.State == ServerState.Ready && server.TransactionStatus == TransactionStatus.Idle;
        _pool.Release(server, clean, reset: clean && _pool.Mode == PoolMode.Session);
        if (clean)
        {
            var names = string.Join(", ", _session.StartupParameters!.Select(p => $"{p.Key}={p.Value}"));
            Log.Info($"session {_session.Id}: PostgreSQL refused a start-up parameter ({names})");
            _session.Fatal(SqlState.InvalidParameterValue, $"invalid value for a start-up parameter ({names})");
        }
        else
        {
            _session.Fatal(SqlState.ConnectionFailure, "server connection failed during login");
        }
    }

    /// <summary>No backend could be had: PostgreSQL refused the login (its error is forwarded) or could not be reached.</summary>
    public void OnServerUnavailable(byte[]? errorResponse, string reason)
    {
        if (_session.State == SessionState.Closed)
        {
            return;
        }

        if (errorResponse is not null)
        {
            _session.ForwardErrorAndClose(errorResponse);
        }
        else
        {
            _session.Fatal(SqlState.ConnectionFailure, reason);
        }
    }

    /// <summary>Waited longer than query_wait_timeout for a backend.</summary>
    public void OnWaitTimeout()
    {
        Log.Warning($"session {_session.Id}: no backend within query_wait_timeout");
        _session.Fatal(SqlState.ProtocolViolation, "query_wait_timeout");
    }

    /// <summary>Asks the pool for a backend for the client's next transaction.</summary>
    private void RequestServer()
    {
        if (_pool.Acquire(this) is { } server)
        {
            OnServerAssigned(server);
        }
    }

    /// <summary>With a backend attached: sync parameters if needed, then relay both ways.</summary>
    private void StartServerWork()
    {
        ServerConnection server = _server!;
        string? sync = _clientTracked is null ? null : TrackedParameters.BuildSync(_clientTracked, server.Tracked);
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
        if (_session.State == SessionState.Closed)
        {
            _session.TryFinish();
            return;
        }

        server.Channel.SetHandler(this);
        if (_session.State == SessionState.ConnectingServer)
        {
            if (ok)
            {
                FinishLogin(server);
            }
            else
            {
                FailLogin(server);
            }

            return;
        }

        if (!ok)
        {
            // The client's request must never run with another client's settings. The usual cause is a
            // cancel of this client's that PostgreSQL acted on only now: answer the request as cancelled
            // (57014); the backend goes back, and the next one is set afresh.
            Log.Warning($"session {_session.Id}: could not set the client's parameters on backend pid {server.BackendPid}; its request is answered as cancelled");
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

        if (_session.State == SessionState.Active && _server is not null && !_server.Channel.SendPending && !_client.ReceivePending)
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
            && _booking.ReadyForQueryDue == 0
            && !_booking.BatchOpen
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
        if (_pool.Mode != PoolMode.Transaction || _client.SendPending || !ServerIsClean())
        {
            return false;
        }

        ServerConnection server = _server!;
        _server = null;
        if (Log.IsEnabled(LogLevel.Debug))
        {
            Log.Debug($"session {_session.Id}: released server {server.Id}");
        }

        _session.PublishCancelTarget(null);
        _pool.Release(server, clean: true, reset: false);
        return true;
    }

    /// <summary>The session is closing: it no longer waits for a backend.</summary>
    public void LeavePool() => _pool.RemoveWaiter(this);

    /// <summary>
    /// The session is closing: a clean backend goes back to the pool, a busy one is drained in the
    /// background when it can be (cancel_on_disconnect), any other is closed.
    /// </summary>
    public void LetGoOfServer(bool wasActive)
    {
        if (_server is not null)
        {
            if (wasActive && ServerIsClean())
            {
                // Nothing of this client is in flight on the backend: it goes back to the pool (after
                // server_reset_query in session mode).
                ServerConnection server = _server;
                _server = null;
                _pool.Release(server, clean: true, reset: _pool.Mode == Config.PoolMode.Session);
            }
            else if (wasActive && CanDrainServer())
            {
                // Busy with this client's query or transaction: cancel what runs, then drain and roll
                // back in the background, and keep the backend (cancel_on_disconnect).
                ServerConnection server = _server;
                if (_booking.ReadyForQueryDue > 0 && server.PendingCancels == 0)
                {
                    // (A cancel already on its way, from a termination or query_timeout, is enough.)
                    CancelRunningQuery(null);
                }

                _server = null;
                _pool.Drain(server, _booking.ReadyForQueryDue, _booking.BatchOpen, _serverFramer, reset: _pool.Mode == Config.PoolMode.Session);
            }
            else
            {
                // Mid-transaction, mid-COPY or a send outstanding: close it. Its completions come here
                // until it is quiescent (a send may still read this client's buffer), then the pool forgets it.
                _server.Channel.SetHandler(this);
                _server.Close();
            }
        }

    }

    /// <summary>Whether no operation of the backend socket the relay holds is outstanding.</summary>
    public bool Quiescent => _server is null || _server.Channel.Quiescent;

    /// <summary>The session is finished: the statements and buffers it held go, and a backend still held is handed back as unclean.</summary>
    public void Finish()
    {
        _tracker?.ReturnRewriteBuffer(Loop.Buffers);
        _tracker?.ForgetStatements();
        if (_server is not null)
        {
            _pool.Release(_server, clean: false, reset: false);
            _server = null;
        }
    }
}
