using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace FastPgProxy.Net;

/// <summary>The operation a <see cref="LoopSocketArgs"/> carries.</summary>
internal enum ChannelOperation
{
    /// <summary>A receive (or a zero-byte readiness probe).</summary>
    Receive,
    /// <summary>A send.</summary>
    Send,
    /// <summary>A connect.</summary>
    Connect,
}

/// <summary>
/// Socket operation arguments that route their completion to the owning loop: the runtime's completion
/// thread only enqueues this object (no allocation), and the loop then runs <see cref="Execute"/>.
/// </summary>
internal sealed class LoopSocketArgs : SocketAsyncEventArgs, ILoopWork
{
    /// <summary>Creates arguments bound to one channel.</summary>
    public LoopSocketArgs(SocketChannel channel) : base(unsafeSuppressExecutionContextFlow: true) => Channel = channel;

    /// <summary>The channel whose operation this is; send arguments change channels through the loop's <see cref="SendArgsPool"/>.</summary>
    public SocketChannel Channel { get; set; }

    /// <summary>What the pending operation is.</summary>
    public ChannelOperation Operation { get; set; }

    /// <inheritdoc/>
    protected override void OnCompleted(SocketAsyncEventArgs e) => Channel.Loop.Post(this);

    /// <summary>Runs the completion on the loop.</summary>
    public void Execute() => Channel.Complete(this);
}

/// <summary>
/// The plain <see cref="Channel"/>: one socket with its receive window and one receive and one send in
/// flight at most. The window is <c>Buffer[Start..End)</c>: bytes received and not yet consumed by the
/// handler. Sends may point into any buffer (the relay sends straight out of the peer's receive window:
/// zero copy), and the caller keeps that buffer alive until <see cref="IChannelHandler.OnSend"/>.
/// Connecting and the socket itself are this class's own, outside the contract.
/// </summary>
internal sealed class SocketChannel : ClientChannel, ILoopWork
{
    // Send arguments are rented from the loop's SendArgsPool only for what a synchronous write left (a full
    // socket buffer), until its OnSend: an idle channel holds none.
    private readonly LoopSocketArgs _receiveArgs;
    private bool _probing;
    private int _sendEnd;

    // How the last send that finished inside Send (a synchronous write took it all, or failed) ended;
    // the channel itself is then posted to the loop to report it (Execute).
    private SocketError _inlineSendResult;

    // Readiness reports in a row that found nothing to read (see Complete); reset by every read that brings bytes.
    private int _emptyWakes;

    // After this many empty reports in a row the channel waits for data holding its buffer, as a channel that
    // keeps one always does, rather than loop through the queue on reports that keep coming.
    private const int MaxEmptyWakes = 4;

    // The few bytes of a message begun and not finished (Parked of them), kept while the channel waits
    // without a buffer.
    private byte[]? _parked;

    /// <summary>Most unconsumed bytes a channel that idles without a buffer keeps aside instead of a buffer.</summary>
    public const int ParkCapacity = 256;

    /// <summary>Wraps <paramref name="socket"/> (null for a channel that will connect) on <paramref name="loop"/>.</summary>
    public SocketChannel(EventLoop loop, Socket? socket, IChannelHandler handler)
        : base(loop, handler)
    {
        Socket = socket;
        _receiveArgs = new LoopSocketArgs(this) { Operation = ChannelOperation.Receive };
    }

    /// <summary>
    /// Starts a receive into the free tail of the window, compacting it first when the tail is full. When
    /// <see cref="Channel.IdleWithoutBuffer"/> is set, an empty window waits for readability with a
    /// zero-byte receive and no buffer (the buffer is rented once bytes are there), and a window of at
    /// most <see cref="ParkCapacity"/> bytes is kept aside meanwhile.
    /// </summary>
    public override void Receive()
    {
        Debug.Assert(Loop.InLoop && !ReceivePending && Socket is not null);
        if (Closed)
        {
            return;
        }

        if (Start == End)
        {
            Start = End = 0;
            if (IdleWithoutBuffer && Buffer is not null)
            {
                ReleaseBuffer();
            }
        }
        else if (IdleWithoutBuffer && End - Start <= ParkCapacity)
        {
            _parked ??= new byte[ParkCapacity];
            Parked = End - Start;
            Window.CopyTo(_parked);
            ReleaseBuffer();
        }
        else if (End == Buffer!.Length)
        {
            Compact();
        }

        if (Buffer is null)
        {
            if (IdleWithoutBuffer)
            {
                _probing = true;
                _receiveArgs.SetBuffer(null, 0, 0);
                StartReceive();
                return;
            }

            Buffer = Loop.Buffers.Rent();
        }

        _probing = false;
        _receiveArgs.SetBuffer(Buffer, End, Buffer.Length - End);
        StartReceive();
    }

    private void StartReceive()
    {
        ReceivePending = true;
        bool pending;
        try
        {
            pending = Socket!.ReceiveAsync(_receiveArgs);
        }
        catch (ObjectDisposedException)
        {
            _receiveArgs.SocketError = SocketError.OperationAborted;
            pending = false;
        }

        if (!pending)
        {
            // Completed at once: run it as the loop's next item rather than recursing, so a fast stream
            // cannot grow the stack.
            Loop.Post(_receiveArgs);
        }
    }

    /// <summary>Moves the unconsumed bytes to the front of the buffer.</summary>
    public void Compact()
    {
        if (Start == 0 || Buffer is null)
        {
            return;
        }

        Buffer.AsSpan(Start, End - Start).CopyTo(Buffer);
        End -= Start;
        Start = 0;
    }

    /// <summary>
    /// Sends the run. It is first written with a non-blocking synchronous send, which on a connection
    /// with room in its send buffer (nearly always) writes it all in one system call without the runtime's
    /// asynchronous machinery; what the kernel did not take is sent asynchronously. Either way
    /// <see cref="IChannelHandler.OnSend"/> comes as a later item of the loop, never from inside this call.
    /// </summary>
    public override void Send(byte[] buffer, int offset, int count)
    {
        Debug.Assert(Loop.InLoop && !SendPending && Socket is not null);
        SendPending = true;
        _sendEnd = offset + count;
        Socket socket = NonBlockingSocket();
        int sent;
        SocketError error;
        try
        {
            sent = socket.Send(buffer, offset, count, SocketFlags.None, out error);
        }
        catch (ObjectDisposedException)
        {
            sent = 0;
            error = SocketError.OperationAborted;
        }

        if (error == SocketError.Success && sent == count)
        {
            CompleteSendOnLoop(SocketError.Success);
            return;
        }

        if (error is SocketError.Success or SocketError.WouldBlock)
        {
            // The kernel took part or none of it: the rest waits for room, asynchronously.
            LoopSocketArgs args = Loop.SendArgs.Rent(this);
            args.SetBuffer(buffer, offset + sent, count - sent);
            StartSend(args);
            return;
        }

        CompleteSendOnLoop(error);
    }

    /// <summary>Reports a send that finished inside <see cref="Send"/> as the loop's next item.</summary>
    private void CompleteSendOnLoop(SocketError error)
    {
        _inlineSendResult = error;
        Loop.Post(this);
    }

    /// <summary>Reports on the loop a send that finished inside <see cref="Send"/>.</summary>
    void ILoopWork.Execute()
    {
        Debug.Assert(Loop.InLoop && SendPending);
        SendPending = false;
        Handler.OnSend(this, Closed ? SocketError.OperationAborted : _inlineSendResult);
    }

    private void StartSend(LoopSocketArgs args)
    {
        bool pending;
        try
        {
            pending = Socket!.SendAsync(args);
        }
        catch (ObjectDisposedException)
        {
            args.SocketError = SocketError.OperationAborted;
            pending = false;
        }

        if (!pending)
        {
            Loop.Post(args);
        }
    }

    /// <summary>Connects a new socket to <paramref name="endPoint"/>; TCP sockets get TCP_NODELAY and <paramref name="keepalive"/>.</summary>
    public void Connect(EndPoint endPoint, TcpKeepalive? keepalive = null)
    {
        Debug.Assert(Loop.InLoop && Socket is null);
        Socket = endPoint is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        keepalive?.Apply(Socket);
        _receiveArgs.Operation = ChannelOperation.Connect;
        _receiveArgs.RemoteEndPoint = endPoint;
        ReceivePending = true;
        bool pending;
        try
        {
            pending = Socket.ConnectAsync(_receiveArgs);
        }
        catch (SocketException e)
        {
            _receiveArgs.SocketError = e.SocketErrorCode;
            pending = false;
        }

        if (!pending)
        {
            Loop.Post(_receiveArgs);
        }
    }

    /// <summary>Runs a finished operation on the loop.</summary>
    internal void Complete(LoopSocketArgs args)
    {
        Debug.Assert(Loop.InLoop);
        SocketError error = args.SocketError;
        switch (args.Operation)
        {
            case ChannelOperation.Connect:
                ReceivePending = false;
                args.Operation = ChannelOperation.Receive;
                args.RemoteEndPoint = null;
                Handler.OnConnect(this, Closed ? SocketError.OperationAborted : error);
                break;
            case ChannelOperation.Receive:
                ReceivePending = false;
                if (Closed)
                {
                    Handler.OnReceive(this, 0, SocketError.OperationAborted);
                    return;
                }

                if (_probing && error == SocketError.Success)
                {
                    // Readable (or at end of stream): take a buffer and read what is there now.
                    _probing = false;
                    Buffer = Loop.Buffers.Rent();
                    Start = 0;
                    End = Parked;
                    _parked.AsSpan(0, Parked).CopyTo(Buffer);
                    Parked = 0;
                    if (ReadNow())
                    {
                        return;
                    }

                    // The report was stale: its bytes were read before (under load the runtime's readiness
                    // report can trail the read that took them). Wait without the buffer again.
                    if (++_emptyWakes <= MaxEmptyWakes)
                    {
                        Receive();
                        return;
                    }

                    _receiveArgs.SetBuffer(Buffer, End, Buffer.Length - End);
                    StartReceive();
                    return;
                }

                int bytes = error == SocketError.Success ? args.BytesTransferred : 0;
                End += bytes;
                Handler.OnReceive(this, bytes, error);
                break;
            case ChannelOperation.Send:
                if (error == SocketError.Success && !Closed && args.Offset + args.BytesTransferred < _sendEnd)
                {
                    // A short write: send the rest from where the kernel stopped.
                    int next = args.Offset + args.BytesTransferred;
                    args.SetBuffer(next, _sendEnd - next);
                    StartSend(args);
                    return;
                }

                SendPending = false;
                args.SetBuffer(null, 0, 0);
                if (error == SocketError.Success)
                {
                    Loop.SendArgs.Return(args);
                }
                else
                {
                    args.Dispose();
                }

                Handler.OnSend(this, Closed ? SocketError.OperationAborted : error);
                break;
        }
    }

    /// <summary>
    /// After a readiness report, reads what the socket holds without waiting (the socket is non-blocking
    /// for synchronous calls) and hands it to the handler: bytes, end of stream or an error. False when
    /// there was nothing to read, and nothing was handed on.
    /// </summary>
    private bool ReadNow()
    {
        Socket socket = NonBlockingSocket();
        int bytes = socket.Receive(Buffer!, End, Buffer!.Length - End, SocketFlags.None, out SocketError error);
        if (error == SocketError.WouldBlock)
        {
            return false;
        }

        _emptyWakes = 0;
        bytes = error == SocketError.Success ? bytes : 0;
        End += bytes;
        Handler.OnReceive(this, bytes, error);
        return true;
    }

    /// <summary>The socket, switched to non-blocking for synchronous calls the first time (asynchronous ones never block).</summary>
    private Socket NonBlockingSocket()
    {
        Socket socket = Socket!;
        if (socket.Blocking)
        {
            socket.Blocking = false;
        }

        return socket;
    }

    /// <inheritdoc/>
    public override IDisposable? DetachForCancel() => TakeSocket();

    /// <summary>Frees everything once closed and quiescent.</summary>
    public override void Dispose()
    {
        Debug.Assert(Closed && Quiescent);
        ReleaseBuffer();
        _receiveArgs.Dispose();
    }
}
