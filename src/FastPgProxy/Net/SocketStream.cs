using System.Net.Sockets;

namespace FastPgProxy.Net;

/// <summary>
/// The stream under a <see cref="TlsChannel"/>'s <see cref="System.Net.Security.SslStream"/>: the socket's
/// bytes, after a few that were read before TLS began (the start of a direct TLS ClientHello, which the
/// session read as the first packet). Asynchronous only; the socket's own awaitable operations allocate
/// nothing. It does not own the socket: the channel closes it, or gives it to the cancel path.
/// </summary>
internal sealed class SocketStream : Stream
{
    private readonly Socket _socket;
    private byte[]? _prefix;
    private int _prefixStart;

    /// <summary>Reads <paramref name="prefix"/> first (may be null), then <paramref name="socket"/>.</summary>
    public SocketStream(Socket socket, byte[]? prefix)
    {
        _socket = socket;
        _prefix = prefix is { Length: > 0 } ? prefix : null;
    }

    /// <summary>
    /// While set (during a handshake), whatever runs after a read (key exchange, signing) is moved to the
    /// thread pool, off the socket thread that completed the read, which may be running a loop inline.
    /// </summary>
    public bool YieldAfterRead { get; set; }

    /// <inheritdoc/>
    public override bool CanRead => true;

    /// <inheritdoc/>
    public override bool CanWrite => true;

    /// <inheritdoc/>
    public override bool CanSeek => false;

    /// <inheritdoc/>
    public override long Length => throw new NotSupportedException();

    /// <inheritdoc/>
    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    /// <inheritdoc/>
    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_prefix is { } prefix)
        {
            if (buffer.IsEmpty)
            {
                return ValueTask.FromResult(0);
            }

            int count = Math.Min(buffer.Length, prefix.Length - _prefixStart);
            prefix.AsSpan(_prefixStart, count).CopyTo(buffer.Span);
            _prefixStart += count;
            if (_prefixStart == prefix.Length)
            {
                _prefix = null;
            }

            return ValueTask.FromResult(count);
        }

        return YieldAfterRead ? ReadThenYieldAsync(buffer, cancellationToken) : _socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken);
    }

    private async ValueTask<int> ReadThenYieldAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        int bytes = await _socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken).ConfigureAwait(false);
        await Task.Yield();
        return bytes;
    }

    /// <inheritdoc/>
    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ValueTask<int> send = _socket.SendAsync(buffer, SocketFlags.None, cancellationToken);
        if (!send.IsCompletedSuccessfully)
        {
            return WriteRestAsync(buffer, send.AsTask(), cancellationToken);
        }

        int sent = send.Result;
        return sent == buffer.Length ? default : WriteRestAsync(buffer.Slice(sent), null, cancellationToken);
    }

    private async ValueTask WriteRestAsync(ReadOnlyMemory<byte> buffer, Task<int>? first, CancellationToken cancellationToken)
    {
        if (first is not null)
        {
            buffer = buffer.Slice(await first.ConfigureAwait(false));
        }

        while (!buffer.IsEmpty)
        {
            int sent = await _socket.SendAsync(buffer, SocketFlags.None, cancellationToken).ConfigureAwait(false);
            buffer = buffer.Slice(sent);
        }
    }

    /// <inheritdoc/>
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <inheritdoc/>
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <inheritdoc/>
    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <inheritdoc/>
    public override void Flush()
    {
    }

    /// <summary>Not used: the TLS channel never reads synchronously.</summary>
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("SocketStream is asynchronous only");

    /// <summary>Not used: the TLS channel never writes synchronously.</summary>
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("SocketStream is asynchronous only");

    /// <inheritdoc/>
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    /// <inheritdoc/>
    public override void SetLength(long value) => throw new NotSupportedException();
}
