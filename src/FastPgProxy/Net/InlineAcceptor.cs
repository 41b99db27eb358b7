using System.Net.Sockets;
using System.Threading.Tasks.Sources;

namespace FastPgProxy.Net;

/// <summary>
/// Accepts connections on one listening socket with one reusable <see cref="SocketAsyncEventArgs"/>, and
/// resumes the awaiting accept loop on the thread that finished the accept: with inline socket
/// completions that is the runtime's socket thread, so a new connection is admitted and reaches its loop
/// without the hop through the thread pool that <see cref="Socket.AcceptAsync(CancellationToken)"/>'s
/// continuation takes (a worker wake-up per connection). One accept at a time.
/// </summary>
internal sealed class InlineAcceptor : SocketAsyncEventArgs, IValueTaskSource<Socket>
{
    private readonly Socket _listener;
    private ManualResetValueTaskSourceCore<Socket> _core;

    /// <summary>Creates the acceptor of <paramref name="listener"/>.</summary>
    public InlineAcceptor(Socket listener)
        : base(unsafeSuppressExecutionContextFlow: true) => _listener = listener;

    /// <summary>
    /// The next accepted connection. A failed accept ends in a <see cref="SocketException"/> with the
    /// error, a closed listener in <see cref="SocketError.OperationAborted"/> or an
    /// <see cref="ObjectDisposedException"/>.
    /// </summary>
    public ValueTask<Socket> AcceptAsync()
    {
        AcceptSocket = null;
        _core.Reset();
        if (_listener.AcceptAsync(this))
        {
            return new ValueTask<Socket>(this, _core.Version);
        }

        // Finished at once (a connection was waiting, or the accept failed): no continuation to resume.
        return SocketError == SocketError.Success
            ? new ValueTask<Socket>(TakeSocket())
            : ValueTask.FromException<Socket>(new SocketException((int)SocketError));
    }

    /// <inheritdoc/>
    protected override void OnCompleted(SocketAsyncEventArgs e)
    {
        // The continuation runs here, on the completing thread (RunContinuationsAsynchronously is false).
        if (SocketError == SocketError.Success)
        {
            _core.SetResult(TakeSocket());
        }
        else
        {
            _core.SetException(new SocketException((int)SocketError));
        }
    }

    private Socket TakeSocket()
    {
        Socket socket = AcceptSocket!;
        AcceptSocket = null;
        return socket;
    }

    /// <inheritdoc/>
    public Socket GetResult(short token) => _core.GetResult(token);

    /// <inheritdoc/>
    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    /// <inheritdoc/>
    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
