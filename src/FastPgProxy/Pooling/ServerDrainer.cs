using System.Diagnostics;
using System.Net.Sockets;
using FastPgProxy.Hosting;
using FastPgProxy.Net;
using FastPgProxy.Protocol;

namespace FastPgProxy.Pooling;

/// <summary>
/// Makes a backend clean after its client went away mid-query (cancel_on_disconnect), was terminated, or
/// timed out idle in a transaction: closes an open extended-protocol batch with Sync, fails a COPY IN,
/// reads and discards every reply until the ReadyForQuerys still owed have arrived, rolls back an open
/// transaction, and hands the backend back to its pool. Anything unexpected, or server_reset_timeout
/// passing, closes the backend instead. Loop-owned, like the backend.
/// </summary>
internal sealed class ServerDrainer : IChannelHandler, ILoopTimer, IInternalQueryListener
{
    private static readonly byte[] s_sync = [(byte)'S', 0, 0, 0, 4];
    private static readonly byte[] s_copyFail = BuildCopyFail();

    private readonly ServerPool _pool;
    private readonly ServerConnection _server;
    private readonly bool _reset;
    private MessageFramer _framer;
    private int _expected;
    private bool _done;

    /// <summary>Takes over <paramref name="server"/>; <paramref name="framer"/> is the relay's framer state for the server's stream.</summary>
    public ServerDrainer(ServerPool pool, ServerConnection server, int expectedReadyForQuery, MessageFramer framer, bool reset)
    {
        _pool = pool;
        _server = server;
        _expected = expectedReadyForQuery;
        _framer = framer;
        _reset = reset;
    }

    /// <summary>Starts draining; <paramref name="closeBatch"/> sends a Sync first for a batch the client left open.</summary>
    public void Start(bool closeBatch)
    {
        Channel channel = _server.Channel;
        channel.SetHandler(this);
        channel.Loop.Schedule(this, Stopwatch.GetTimestamp() + (long)(_pool.ResetTimeout.TotalSeconds * Stopwatch.Frequency));
        Log.Debug($"server {_server.Id}: draining ({_expected} ReadyForQuery owed)");
        if (closeBatch)
        {
            _expected++;
            channel.Send(s_sync, 0, s_sync.Length);
            return;
        }

        if (_expected <= 0)
        {
            // Nothing owed (idle in a transaction): straight to the rollback.
            Finish();
            return;
        }

        if (!channel.ReceivePending)
        {
            Process();
        }
    }

    /// <inheritdoc/>
    public void OnSend(Channel channel, SocketError error)
    {
        if (_done)
        {
            DisposeIfClosed();
            return;
        }

        if (error != SocketError.Success)
        {
            Fail("send failed");
            return;
        }

        if (!channel.ReceivePending)
        {
            Process();
        }
    }

    /// <inheritdoc/>
    public void OnReceive(Channel channel, int bytes, SocketError error)
    {
        if (_done)
        {
            DisposeIfClosed();
            return;
        }

        if (bytes == 0)
        {
            Fail("backend closed while draining");
            return;
        }

        Process();
    }

    /// <inheritdoc/>
    public void OnConnect(Channel channel, SocketError error) => DisposeIfClosed();

    private void DisposeIfClosed()
    {
        if (_server.State == ServerState.Closed)
        {
            _server.DisposeWhenQuiescent();
        }
    }

    private void Process()
    {
        Channel channel = _server.Channel;
        while (true)
        {
            FrameStatus status = _framer.Scan(channel.Window, MessageTypeSet.All, channel.Loop.Buffers.BufferSize, out int passThrough, out int length);
            channel.Consume(passThrough);
            if (status == FrameStatus.Invalid)
            {
                Fail("invalid message while draining");
                return;
            }

            if (status == FrameStatus.NeedMore)
            {
                channel.Receive();
                return;
            }

            ReadOnlySpan<byte> message = channel.Window.Slice(0, length);
            byte type = message[0];
            if (type == (byte)BackendMessage.ReadyForQuery)
            {
                _server.TransactionStatus = (TransactionStatus)message[MessageFramer.HeaderLength];
                _server.ReadyCount++;
                _expected--;
            }
            else if (type == (byte)BackendMessage.ParameterStatus)
            {
                _server.OnParameterStatus(message);
            }

            channel.Consume(length);
            if (type == (byte)'G')
            {
                // COPY FROM STDIN the client will never finish: fail it; PostgreSQL then answers ErrorResponse and ReadyForQuery.
                channel.Send(s_copyFail, 0, s_copyFail.Length);
                return;
            }

            if (type == (byte)'W')
            {
                Fail("backend in COPY BOTH");
                return;
            }

            if (_expected <= 0)
            {
                Finish();
                return;
            }
        }
    }

    private void Finish()
    {
        if (_server.Channel.Buffered > 0 || !_framer.AtBoundary)
        {
            Fail("backend sent more than it owed");
            return;
        }

        if (_server.TransactionStatus != TransactionStatus.Idle)
        {
            _server.RunInternalQuery("ROLLBACK", this);
            return;
        }

        Complete();
    }

    /// <inheritdoc/>
    public void OnInternalQueryDone(ServerConnection server, bool ok)
    {
        if (!ok || server.TransactionStatus != TransactionStatus.Idle)
        {
            Fail("rollback failed");
            return;
        }

        Complete();
    }

    private void Complete()
    {
        _done = true;
        Log.Debug($"server {_server.Id}: drained clean");
        _pool.Release(_server, clean: true, _reset);
    }

    /// <inheritdoc/>
    public void OnTimer(long dueTimestamp)
    {
        if (!_done)
        {
            Fail("not clean within server_reset_timeout");
        }
    }

    private void Fail(string reason)
    {
        if (_done)
        {
            return;
        }

        _done = true;
        Log.Write(LogLevel.Info, $"server {_server.Id} (pid {_server.BackendPid}): closed after drain: {reason}");
        _pool.Release(_server, clean: false, reset: false);
    }

    private static byte[] BuildCopyFail()
    {
        byte[] buffer = new byte[64];
        var writer = new PgWriter(buffer);
        writer.BeginMessage((byte)'f');
        writer.WriteCString("client disconnected");
        writer.EndMessage();
        return buffer.AsSpan(0, writer.Position).ToArray();
    }
}
