using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;

namespace FastPgProxy.Net;

/// <summary>
/// A <see cref="Channel"/> over TLS: an <see cref="SslStream"/> on the socket, with the same contract as
/// <see cref="SocketChannel"/>. The stream's asynchronous operations run on the runtime's socket threads;
/// their completions are posted to the loop, so no loop thread ever waits on a handshake, a decryption or a
/// write. The handshake is started by <see cref="AuthenticateAsServer"/> or <see cref="AuthenticateAsClient"/>
/// and reported by <see cref="IChannelHandler.OnConnect"/>; receives and sends start after it.
/// </summary>
/// <remarks>
/// Idle without a buffer works as on the plain channel, with a zero-byte read of the TLS stream (the stream
/// waits for the socket without a buffer of its own and reports that bytes are there); a window holding part
/// of a message keeps its buffer (nothing is parked aside).
/// </remarks>
[SuppressMessage("Reliability", "CA2012", Justification = "Each operation's ValueTask is kept in a field and consumed exactly once, by its completion on the loop.")]
internal sealed class TlsChannel : ClientChannel
{
    private readonly SslStream _ssl;
    private readonly SocketStream _stream;
    private readonly LoopCompletion _readDone;
    private readonly LoopCompletion _writeDone;
    private readonly LoopCompletion _handshakeDone;
    private ValueTask<int> _read;
    private ValueTask _write;
    private Task? _handshake;
    private bool _handshakePending;
    private bool _waitingForBytes;
    private bool _detached;

    /// <summary>Wraps <paramref name="socket"/>, whose first bytes are <paramref name="prefix"/> (read before TLS began; may be null).</summary>
    public TlsChannel(EventLoop loop, Socket socket, byte[]? prefix, IChannelHandler handler)
        : base(loop, handler)
    {
        Socket = socket;
        _stream = new SocketStream(socket, prefix) { YieldAfterRead = true };
        _ssl = new SslStream(_stream, leaveInnerStreamOpen: false);
        _readDone = new LoopCompletion(this, CompleteRead);
        _writeDone = new LoopCompletion(this, CompleteWrite);
        _handshakeDone = new LoopCompletion(this, CompleteHandshake);
    }

    /// <summary>The TLS stream: protocol, cipher, certificates and ALPN once the handshake is done. Loop only.</summary>
    public SslStream Ssl => _ssl;

    /// <summary>Why the last operation failed, for logs; null when none did.</summary>
    public string? FailureReason { get; private set; }

    /// <inheritdoc/>
    public override bool Quiescent => !ReceivePending && !SendPending && !_handshakePending;

    /// <summary>Starts the server side of the handshake; <see cref="IChannelHandler.OnConnect"/> reports it.</summary>
    public void AuthenticateAsServer(SslServerAuthenticationOptions options) =>
        StartHandshake(() => _ssl.AuthenticateAsServerAsync(options));

    /// <summary>Starts the client side of the handshake; <see cref="IChannelHandler.OnConnect"/> reports it.</summary>
    public void AuthenticateAsClient(SslClientAuthenticationOptions options) =>
        StartHandshake(() => _ssl.AuthenticateAsClientAsync(options));

    private void StartHandshake(Func<Task> handshake)
    {
        Debug.Assert(Loop.InLoop && !_handshakePending);
        _handshakePending = true;

        // On the thread pool from the first byte: key exchange and signing never run on a loop thread.
        _handshake = Task.Run(handshake);
        _handshake.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(_handshakeDone.Post);
    }

    private void CompleteHandshake()
    {
        _handshakePending = false;
        _stream.YieldAfterRead = false;
        SocketError error = SocketError.Success;
        try
        {
            _handshake!.GetAwaiter().GetResult();
        }
        catch (Exception e)
        {
            error = Fail(e);
        }

        _handshake = null;
        Handler.OnConnect(this, Closed ? SocketError.OperationAborted : error);
    }

    /// <inheritdoc/>
    public override void Receive()
    {
        Debug.Assert(Loop.InLoop && !ReceivePending && !_handshakePending);
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
        else if (End == Buffer!.Length)
        {
            Buffer.AsSpan(Start, End - Start).CopyTo(Buffer);
            End -= Start;
            Start = 0;
        }

        ReceivePending = true;
        if (Buffer is null && IdleWithoutBuffer)
        {
            // Wait for bytes without a buffer: the stream reports them with a zero-byte result.
            _waitingForBytes = true;
            StartRead(Memory<byte>.Empty);
            return;
        }

        Buffer ??= Loop.Buffers.Rent();
        StartRead(Buffer.AsMemory(End));
    }

    private void StartRead(Memory<byte> target)
    {
        try
        {
            _read = _ssl.ReadAsync(target);
        }
        catch (Exception e)
        {
            _read = ValueTask.FromException<int>(e);
        }

        if (_read.IsCompleted)
        {
            // Finished at once: run it as the loop's next item, never inside Receive.
            Loop.Post(_readDone);
        }
        else
        {
            _read.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(_readDone.Post);
        }
    }

    private void CompleteRead()
    {
        int bytes;
        SocketError error = SocketError.Success;
        try
        {
            bytes = _read.GetAwaiter().GetResult();
        }
        catch (Exception e)
        {
            bytes = 0;
            error = Fail(e);
        }

        _read = default;
        if (Closed)
        {
            ReceivePending = false;
            Handler.OnReceive(this, 0, SocketError.OperationAborted);
            return;
        }

        if (_waitingForBytes)
        {
            _waitingForBytes = false;
            if (error == SocketError.Success)
            {
                // Bytes (or the end of the stream) are there: read them into a buffer now.
                Buffer = Loop.Buffers.Rent();
                Start = End = 0;
                StartRead(Buffer);
                return;
            }
        }

        ReceivePending = false;
        End += bytes;
        Handler.OnReceive(this, bytes, error);
    }

    /// <inheritdoc/>
    public override void Send(byte[] buffer, int offset, int count)
    {
        Debug.Assert(Loop.InLoop && !SendPending && !_handshakePending);
        SendPending = true;
        try
        {
            _write = Closed ? ValueTask.FromException(new ObjectDisposedException(nameof(TlsChannel))) : _ssl.WriteAsync(buffer.AsMemory(offset, count));
        }
        catch (Exception e)
        {
            _write = ValueTask.FromException(e);
        }

        if (_write.IsCompleted)
        {
            Loop.Post(_writeDone);
        }
        else
        {
            _write.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(_writeDone.Post);
        }
    }

    private void CompleteWrite()
    {
        SocketError error = SocketError.Success;
        try
        {
            _write.GetAwaiter().GetResult();
        }
        catch (Exception e)
        {
            error = Fail(e);
        }

        _write = default;
        SendPending = false;
        Handler.OnSend(this, Closed ? SocketError.OperationAborted : error);
    }

    /// <summary>Maps a failure of the stream to a socket error, keeping its words for the log.</summary>
    private SocketError Fail(Exception e)
    {
        FailureReason ??= e is AuthenticationException && e.InnerException is { } inner ? $"{e.Message} {inner.Message}" : e.Message;
        return e switch
        {
            SocketException s => s.SocketErrorCode,
            IOException { InnerException: SocketException s } => s.SocketErrorCode,
            ObjectDisposedException or OperationCanceledException => SocketError.OperationAborted,
            AuthenticationException => SocketError.ConnectionAborted,
            _ => SocketError.SocketError,
        };
    }

    /// <inheritdoc/>
    public override IDisposable? DetachForCancel()
    {
        Socket? socket = TakeSocket();
        _detached = true;
        return socket is null ? null : new TlsCancelConnection(_ssl, socket);
    }

    /// <inheritdoc/>
    public override void Dispose()
    {
        Debug.Assert(Closed && Quiescent);
        ReleaseBuffer();
        if (!_detached)
        {
            _ssl.Dispose();
        }
    }

    /// <summary>A completion of the stream, posted to the channel's loop (made once per channel: posting allocates nothing).</summary>
    private sealed class LoopCompletion : ILoopWork
    {
        private readonly TlsChannel _channel;
        private readonly Action _complete;

        public LoopCompletion(TlsChannel channel, Action complete)
        {
            _channel = channel;
            _complete = complete;
            Post = () => _channel.Loop.Post(this);
        }

        /// <summary>Posts the completion to the channel's current loop; given to the stream's awaiters.</summary>
        public Action Post { get; }

        public void Execute() => _complete();
    }

    /// <summary>
    /// A TLS cancel connection handed to the cancel path: closed, once PostgreSQL has acted, with TLS's
    /// close_notify first, as PostgreSQL closes one, so that the client reads a clean end of stream.
    /// </summary>
    private sealed class TlsCancelConnection(SslStream ssl, Socket socket) : IDisposable
    {
        public void Dispose() => _ = CloseAsync();

        private async Task CloseAsync()
        {
            try
            {
                await ssl.ShutdownAsync().WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException or TimeoutException or SocketException)
            {
                // The client went first: closing is all that is left.
            }
            finally
            {
                socket.Dispose();
                await ssl.DisposeAsync().ConfigureAwait(false);
            }
        }
    }
}
