using System.Diagnostics;
using System.Net.Sockets;
using FastPgProxy.Hosting;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

internal sealed partial class ClientSession
{
    // Client messages the relay acts on: Terminate ends the session without reaching the backend, so a
    // pooled backend is never told to quit; Query and Parse may be calls the proxy answers itself.
    private static readonly MessageTypeSet s_clientInspect = MessageTypeSet.None
        .With((byte)FrontendMessage.Terminate).With((byte)FrontendMessage.Query).With((byte)FrontendMessage.Parse);

    // Backend messages the relay looks into: ReadyForQuery (transaction status), ParameterStatus (kept for
    // replay to clients) and ErrorResponse (so a close after FATAL is not reported twice). All are still
    // forwarded untouched within the same run.
    private static readonly MessageTypeSet s_serverInspect = MessageTypeSet.None
        .With((byte)BackendMessage.ReadyForQuery)
        .With((byte)BackendMessage.ParameterStatus)
        .With((byte)BackendMessage.ErrorResponse);

    // What PostgreSQL accepts from a client after login (55.7): the simple and extended query messages,
    // FunctionCall, COPY's three, Flush, Sync and Terminate. Anything else would reach a pooled backend,
    // which answers FATAL 08P01 and quits, and the next client to get it would see that: the proxy says
    // it to the sender instead, the way PostgreSQL would, and closes the session.
    private static readonly MessageTypeSet s_frontendTypes = MessageTypeSet.None
        .With((byte)FrontendMessage.Query).With((byte)FrontendMessage.Parse).With((byte)'B').With((byte)'E')
        .With((byte)'D').With((byte)'C').With((byte)'H').With((byte)'S').With((byte)'F')
        .With((byte)'d').With((byte)'c').With((byte)'f').With((byte)FrontendMessage.Terminate);

    // Client messages that each earn one ReadyForQuery: Query, Sync, FunctionCall.
    private static readonly MessageTypeSet s_readyForQueryEarners = MessageTypeSet.None
        .With((byte)FrontendMessage.Query)
        .With((byte)'S')
        .With((byte)'F');

    private MessageFramer _clientFramer;
    private MessageFramer _serverFramer;
    private int _expectedReadyForQuery;
    private bool _openExtended;
    private int _clientRun;
    private int _serverRun;
    private bool _terminateAfterRun;
    private bool _serverSentError;

    /// <summary>The login tail is out: relay from now on. A backend held only for the login goes back in transaction mode.</summary>
    private void StartRelay()
    {
        State = SessionState.Active;
        _proxy.Stats.OnSessionOpened();
        _clientFramer.AllowedSet = s_frontendTypes;
        _clientFramer.WholeMessages = true;
        ConfigureTracking();
        if (_server is null || TryReleaseServer())
        {
            PumpClient();
            return;
        }

        StartServerWork();
    }

    /// <summary>
    /// Frames what the client sent and forwards the run of complete (or streaming) messages to the backend
    /// with one send straight out of the client's receive buffer. Called when the previous run was sent.
    /// In transaction mode a client without a backend asks the pool for one when its next message arrives.
    /// </summary>
    private void PumpClient()
    {
        Debug.Assert(Loop.InLoop && !_client.ReceivePending);
        if (_adminSession is not null)
        {
            _adminSession.Pump();
            return;
        }

        if (_cancelPendingRequest && !_syncingParameters)
        {
            SwallowCancelledRequest();
            return;
        }

        if (TryIntercept())
        {
            return;
        }

        Span<byte> window = _client.Window;
        if (_server is null)
        {
            if (window.IsEmpty)
            {
                ReceiveClient();
            }
            else if (!s_frontendTypes.Contains(window[0]))
            {
                FatalForeignMessage(window[0]);
            }
            else if (window[0] == (byte)FrontendMessage.Terminate)
            {
                CloseOnTerminate();
            }
            else if (!FirstMessageReady(window))
            {
                // No backend for half a message: a client that stalls here holds nothing but a few bytes.
            }
            else if (_tracker is not null && TryAnswerPrepareLocally())
            {
                return;
            }
            else if (WaitNode is null)
            {
                RequestServer();
            }

            return;
        }

        if (_syncingParameters || _server.Channel.SendPending)
        {
            return;
        }

        if (_tracker is not null)
        {
            PumpClientTracking();
            return;
        }

        int run = 0;
        bool heldBack = false;
        while (true)
        {
            FrameStatus status = _clientFramer.Scan(window.Slice(run), s_clientInspect, Loop.Buffers.BufferSize, out int passThrough, out int length);
            run += passThrough;
            if (status == FrameStatus.Inspect)
            {
                byte type = window[run];
                if (type != (byte)FrontendMessage.Terminate)
                {
                    // Only a call that starts a new batch is the proxy's to answer: inside an extended
                    // batch not yet ended by Sync it belongs to PostgreSQL with the rest of the batch.
                    bool batchOpen = IsExtendedMessage(_clientFramer.PreviousType);
                    if (batchOpen || MeasureInterceptedBatch(window.Slice(run)) == 0)
                    {
                        run += length;
                        continue;
                    }

                    // Answered by the proxy once what precedes it is through; it was counted, and is not sent.
                    if (type == (byte)FrontendMessage.Query)
                    {
                        _expectedReadyForQuery--;
                    }

                    heldBack = true;
                    break;
                }

                // Terminate: forward what came before it, then end the session.
                _terminateAfterRun = true;
                break;
            }

            if (status == FrameStatus.Invalid)
            {
                Fatal(SqlState.ProtocolViolation, "invalid message length");
                return;
            }

            if (status == FrameStatus.Foreign && run == 0)
            {
                FatalForeignMessage(window[0]);
                return;
            }

            // (A foreign type after other messages: they go first, it is refused on the next pass.)
            break;
        }

        _expectedReadyForQuery += _clientFramer.TakeCounted();
        _openExtended = IsExtendedMessage(heldBack ? _clientFramer.PreviousType : _clientFramer.LastType);
        if (run > 0)
        {
            _clientRun = run;
            _server.Channel.Send(_client.Buffer!, _client.Start, run);
            return;
        }

        if (_terminateAfterRun)
        {
            CloseOnTerminate();
            return;
        }

        ReceiveClient();
    }

    /// <summary>
    /// Whether the first message in the window is all there, or is longer than a buffer and must stream;
    /// until then the client gets no backend, and its next bytes are read.
    /// </summary>
    private bool FirstMessageReady(ReadOnlySpan<byte> window)
    {
        if (window.Length >= MessageFramer.HeaderLength)
        {
            int length = MessageFramer.ReadLength(window);
            if (length < sizeof(int) || length > MessageFramer.MaxMessageLength)
            {
                Fatal(SqlState.ProtocolViolation, "invalid message length");
                return false;
            }

            if (length + 1 <= window.Length || length + 1 > Loop.Buffers.BufferSize)
            {
                return true;
            }
        }

        ReceiveClient();
        return false;
    }

    /// <summary>A message type PostgreSQL does not take from a client after login: FATAL 08P01 to the sender, as PostgreSQL says it.</summary>
    private void FatalForeignMessage(byte type)
    {
        Log.Warning($"client {RemoteEndPoint} session {Id}: invalid frontend message type {type}");
        Fatal(SqlState.ProtocolViolation, $"invalid frontend message type {type}");
    }

    /// <summary>The client said Terminate: the session ends without the backend being told (it may be pooled).</summary>
    private void CloseOnTerminate()
    {
        Log.Write(LogLevel.Info, $"session {Id}: client sent Terminate");
        Close();
    }

    /// <summary>Whether a message of this type leaves an extended-protocol batch open until Sync.</summary>
    private static bool IsExtendedMessage(byte type) => type is (byte)'P' or (byte)'B' or (byte)'E' or (byte)'D' or (byte)'C' or (byte)'H';

    /// <summary>The backend took the client's run: drop it from the client's window and go on.</summary>
    private void OnClientRunSent()
    {
        CountClientRun(_clientRun);
        _client.Consume(_clientRun);
        _clientRun = 0;
        _tracker?.ReturnRewriteBuffer(Loop.Buffers);
        OnQuerySent();
        if (_terminateAfterRun)
        {
            CloseOnTerminate();
            return;
        }

        TryReleaseServer();
        PumpClient();
    }

    /// <summary>
    /// Frames what the backend sent and forwards it to the client in one send, noting ReadyForQuery status
    /// and ParameterStatus on the way. Nothing is rewritten: BackendKeyData only occurs during login.
    /// </summary>
    private void PumpServer()
    {
        Debug.Assert(Loop.InLoop && !_client.SendPending && _server is not null);
        Net.Channel channel = _server!.Channel;
        Debug.Assert(!channel.ReceivePending);
        Span<byte> window = channel.Window;
        int run = 0;
        MessageTypeSet inspect = _tracker is not null ? s_trackingServerInspect : s_serverInspect;
        while (true)
        {
            FrameStatus status = _serverFramer.Scan(window.Slice(run), inspect, Loop.Buffers.BufferSize, out int passThrough, out int length);
            run += passThrough;
            if (status == FrameStatus.Inspect)
            {
                byte type = window[run];
                if (type is (byte)'1' or (byte)'3')
                {
                    if (_tracker?.ShouldDropReply(type) == true)
                    {
                        if (run > 0)
                        {
                            // Forward what precedes it first; the reply is dropped on the next pass.
                            break;
                        }

                        _tracker?.OnReplyHandled(type);
                        channel.Consume(length);
                        window = channel.Window;
                        continue;
                    }

                    _tracker?.OnReplyHandled(type);
                    run += length;
                    continue;
                }

                OnServerMessage(window.Slice(run, length));
                _tracker?.OnReplyHandled(type);

                run += length;
                continue;
            }

            if (status == FrameStatus.Invalid)
            {
                Log.Warning($"session {Id}: backend pid {_server.BackendPid} sent an invalid message length");
                Fatal(SqlState.ProtocolViolation, "server sent an invalid message");
                return;
            }

            break;
        }

        if (Log.IsEnabled(LogLevel.Debug))
        {
            Log.Debug($"session {Id}: server run {run} bytes, window {window.Length}, status {(char)_server.TransactionStatus}, expected Z {_expectedReadyForQuery}, open {_openExtended}");
        }

        if (run > 0)
        {
            _serverRun = run;
            _client.Send(channel.Buffer!, channel.Start, run);
            return;
        }

        channel.Receive();
    }

    private void OnServerMessage(ReadOnlySpan<byte> message)
    {
        switch ((BackendMessage)message[0])
        {
            case BackendMessage.ReadyForQuery:
                if (message.Length == MessageFramer.HeaderLength + sizeof(byte))
                {
                    _server!.TransactionStatus = (TransactionStatus)message[MessageFramer.HeaderLength];
                }

                if (_expectedReadyForQuery > 0)
                {
                    _expectedReadyForQuery--;
                }

                _server!.ReadyCount++;
                CountReadyForQuery(_server!.TransactionStatus);
                _serverSentError = false;
                OnReadyForQueryRelayed(_server!.TransactionStatus);
                break;
            case BackendMessage.ErrorResponse:
                _serverSentError = true;
                break;
            default:
                // ParameterStatus: the client saw it, and the backend has it; both are remembered so the
                // next backend this client gets can be brought in line.
                if (ParameterStatus.TryParse(message) is { } p)
                {
                    _server!.Parameters[p.Name] = p.Status;
                    if (_clientParameters is not null)
                    {
                        _clientParameters[p.Name] = p.Status;
                    }
                }

                break;
        }
    }

    /// <summary>The client took the backend's run.</summary>
    private void OnServerRunSent()
    {
        CountServerRun(_serverRun);
        _server!.Channel.Consume(_serverRun);
        _serverRun = 0;
        if (TryReleaseServer())
        {
            if (!_client.ReceivePending)
            {
                PumpClient();
            }

            return;
        }

        PumpServer();
        if (_parkedForLocalReply && State == SessionState.Active && !_client.ReceivePending && _server is not null && !_server.Channel.SendPending)
        {
            PumpClient();
        }
    }

    /// <summary>
    /// The backend closed. After its own FATAL (administrator command, crash recovery) the client has the
    /// reason already; otherwise it is told the connection was lost (08006), then the session ends.
    /// </summary>
    private void OnServerClosed(SocketError error)
    {
        Log.Write(LogLevel.Info, $"session {Id}: backend pid {_server?.BackendPid} closed ({(error == SocketError.Success ? "end of stream" : error.ToString())})");
        _server!.Close();
        if (_serverSentError)
        {
            Close();
            return;
        }

        Fatal(SqlState.ConnectionFailure, "server closed the connection unexpectedly");
    }
}
