using System.Diagnostics;

namespace FastPgProxy.Net;

/// <summary>
/// Send arguments of one loop, lent to a <see cref="SocketChannel"/> for the length of one send (with its
/// short-write continuations), so that an idle connection holds arguments only for its zero-byte receive:
/// a <see cref="LoopSocketArgs"/> with the runtime's state behind it is some 300 bytes, and most clients
/// of a pooler idle. Not thread-safe: only the owning loop rents and returns. Arguments whose operation
/// failed are disposed, not returned.
/// </summary>
internal sealed class SendArgsPool
{
    private readonly Stack<LoopSocketArgs> _free = new();
    private readonly int _maxRetained;

    /// <summary>Creates an empty pool that keeps at most <paramref name="maxRetained"/> free arguments.</summary>
    public SendArgsPool(int maxRetained) => _maxRetained = maxRetained;

    /// <summary>Free arguments kept for the next sends.</summary>
    public int Free => _free.Count;

    /// <summary>Arguments for one send of <paramref name="channel"/>: a free one, or new ones when none is free.</summary>
    public LoopSocketArgs Rent(SocketChannel channel)
    {
        if (_free.TryPop(out LoopSocketArgs? args))
        {
            args.Channel = channel;
            return args;
        }

        return new LoopSocketArgs(channel) { Operation = ChannelOperation.Send };
    }

    /// <summary>Takes back arguments whose send finished and whose buffer was cleared; past the retention bound they are disposed.</summary>
    public void Return(LoopSocketArgs args)
    {
        Debug.Assert(args.Buffer is null && args.Operation == ChannelOperation.Send);
        if (_free.Count < _maxRetained)
        {
            args.Channel = null!;
            _free.Push(args);
        }
        else
        {
            args.Dispose();
        }
    }
}
