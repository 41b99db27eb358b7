using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using FastPgProxy.Protocol;

namespace FastPgProxy.Server;

internal sealed partial class ClientSession
{
    // Client messages the relay acts on: Terminate ends the session without reaching the backend, so a
    // pooled backend is never told to quit.
    private static readonly MessageTypeSet s_clientInspect = MessageTypeSet.None.With((byte)FrontendMessage.Terminate);

    // Backend messages the relay looks into: ReadyForQuery (transaction status), ParameterStatus (kept for
    // replay to clients) and ErrorResponse (so a close after FATAL is not reported twice). All are still
    // forwarded untouched within the same run.
    private static readonly MessageTypeSet s_serverInspect = MessageTypeSet.None
        .With((byte)BackendMessage.ReadyForQuery)
        .With((byte)BackendMessage.ParameterStatus)
        .With((byte)BackendMessage.ErrorResponse);

    private MessageFramer _clientFramer;
    private MessageFramer _serverFramer;
    private int _clientRun;
    private int _serverRun;
    private bool _terminateAfterRun;
    private bool _serverSentError;

    /// <summary>Login is complete on both sides: relay whatever each side has buffered, then read both.</summary>
    private void StartRelay()
    {
        Debug.Assert(_server is not null);
        State = SessionState.Active;
        _proxy.Stats.OnSessionOpened();
        _server.Channel.SetHandler(this);
        _authFramer.Reset();
        PumpServer();
        if (State == SessionState.Active)
        {
            PumpClient();
        }
    }

    /// <summary>
    /// Frames what the client sent and forwards the run of complete (or streaming) messages to the backend
    /// with one send straight out of the client's receive buffer. Called when the previous run was sent.
    /// </summary>
    private void PumpClient()
    {
        Debug.Assert(Loop.InLoop && !_server!.Channel.SendPending && !_client.ReceivePending);
        Span<byte> window = _client.Window;
        int run = 0;
        while (true)
        {
            FrameStatus status = _clientFramer.Scan(window.Slice(run), s_clientInspect, Loop.Buffers.BufferSize, out int passThrough, out int length);
            run += passThrough;
            if (status == FrameStatus.Inspect)
            {
                // Terminate: forward what came before it, then end the session.
                _terminateAfterRun = true;
                break;
            }

            if (status == FrameStatus.Invalid)
            {
                Fatal(SqlState.ProtocolViolation, "invalid message length");
                return;
            }

            break;
        }

        if (run > 0)
        {
            _clientRun = run;
            _server!.Channel.Send(_client.Buffer!, _client.Start, run);
            return;
        }

        if (_terminateAfterRun)
        {
            Log.Write(LogLevel.Info, $"session {Id}: client sent Terminate");
            Close();
            return;
        }

        _client.Receive();
    }

    /// <summary>The backend took the client's run: drop it from the client's window and go on.</summary>
    private void OnClientRunSent()
    {
        _client.Consume(_clientRun);
        _clientRun = 0;
        if (_terminateAfterRun)
        {
            Log.Write(LogLevel.Info, $"session {Id}: client sent Terminate");
            Close();
            return;
        }

        PumpClient();
    }

    /// <summary>
    /// Frames what the backend sent and forwards it to the client in one send, noting ReadyForQuery status
    /// and ParameterStatus on the way. Nothing is rewritten: BackendKeyData only occurs during login.
    /// </summary>
    private void PumpServer()
    {
        Debug.Assert(Loop.InLoop && !_client.SendPending);
        Net.SocketChannel channel = _server!.Channel;
        Debug.Assert(!channel.ReceivePending);
        Span<byte> window = channel.Window;
        int run = 0;
        while (true)
        {
            FrameStatus status = _serverFramer.Scan(window.Slice(run), s_serverInspect, Loop.Buffers.BufferSize, out int passThrough, out int length);
            run += passThrough;
            if (status == FrameStatus.Inspect)
            {
                OnServerMessage(window.Slice(run, length));
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

                _serverSentError = false;
                break;
            case BackendMessage.ErrorResponse:
                _serverSentError = true;
                break;
            default:
                ReadOnlySpan<byte> body = message.Slice(MessageFramer.HeaderLength);
                int nameEnd = body.IndexOf((byte)0);
                if (nameEnd > 0)
                {
                    _server!.Parameters[Encoding.UTF8.GetString(body.Slice(0, nameEnd))] = message.ToArray();
                }

                break;
        }
    }

    /// <summary>The client took the backend's run.</summary>
    private void OnServerRunSent()
    {
        _server!.Channel.Consume(_serverRun);
        _serverRun = 0;
        PumpServer();
    }

    /// <summary>
    /// The backend closed. After its own FATAL (administrator command, crash recovery) the client has the
    /// reason already; otherwise it is told the connection was lost (08006), then the session ends.
    /// </summary>
    private void OnServerClosed(SocketError error)
    {
        Log.Write(LogLevel.Info, $"session {Id}: backend pid {_server?.BackendPid} closed ({(error == SocketError.Success ? "end of stream" : error.ToString())})");
        if (_serverSentError)
        {
            Close();
            return;
        }

        Fatal(SqlState.ConnectionFailure, "server closed the connection unexpectedly");
    }
}
