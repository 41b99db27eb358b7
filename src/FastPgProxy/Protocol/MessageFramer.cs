using System.Diagnostics;
using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace FastPgProxy.Protocol;

/// <summary>Why <see cref="MessageFramer.Scan"/> stopped.</summary>
internal enum FrameStatus
{
    /// <summary>Every byte given was accounted for, or the next header or inspected message is incomplete.</summary>
    NeedMore,
    /// <summary>A complete message the caller asked to see starts right after the pass-through run.</summary>
    Inspect,
    /// <summary>A length word below 4 or above the limit: the stream cannot be framed.</summary>
    Invalid,
    /// <summary>
    /// A message whose type is outside the <see cref="MessageFramer.AllowedSet"/> starts right after the
    /// pass-through run (only its header need be there); nothing of it was counted or passed.
    /// </summary>
    Foreign,
    /// <summary>
    /// A message of an <see cref="MessageFramer.OversizedSet"/> type too long to inspect starts right after
    /// the pass-through run (its header is there, and counted); the caller forwards its head its own way and
    /// then calls <see cref="MessageFramer.StreamRest"/>.
    /// </summary>
    Oversized,
}

/// <summary>
/// Frames a stream of typed protocol messages (type byte, int32 length that counts itself, body) in place.
/// Messages whose type is not in the inspect set are forwarded without being buffered whole: the framer
/// remembers how many bytes of the current one remain, so a 10 MB DataRow streams through a 32 KiB buffer.
/// </summary>
/// <remarks>
/// The framer never consumes part of an inspected message: it stops before it and reports
/// <see cref="FrameStatus.NeedMore"/> until the whole message is buffered (protocol 55.2: a message is
/// acted on only once complete). An inspected message longer than <c>maxInspectLength</c> is forwarded as
/// pass-through instead, because no message the proxy acts on can legitimately be that long.
/// </remarks>
internal struct MessageFramer
{
    /// <summary>Size of the header: type byte and length word.</summary>
    public const int HeaderLength = sizeof(byte) /* type */ + sizeof(int) /* length, counting itself */;

    /// <summary>The largest length word accepted, as PostgreSQL's PQ_LARGE_MESSAGE_LIMIT (1 GB - 1).</summary>
    public const int MaxMessageLength = 0x3FFF_FFFF;

    private long _passThroughRemaining;
    private MessageTypeSet _countSet;
    private MessageTypeSet _oversizedSet;
    private MessageTypeSet _allowedSet;
    private bool _restrictTypes;
    private bool _wholeMessages;
    private int _counted;
    private byte _lastType;
    private byte _previousType;

    /// <summary>
    /// The only types the stream may carry (a client's messages after login): a header of any other type
    /// stops the scan with <see cref="FrameStatus.Foreign"/>, so it is never passed on. Unset, every type passes.
    /// </summary>
    public MessageTypeSet AllowedSet
    {
        readonly get => _allowedSet;
        set
        {
            _allowedSet = value;
            _restrictTypes = true;
        }
    }

    /// <summary>
    /// Whether a message that fits in <c>maxInspectLength</c> is passed on only once it is all there, as
    /// inspected ones are. Client to backend, this keeps half a message off a pooled backend: only a
    /// message longer than a buffer streams, and then the client owns the backend until it ends.
    /// </summary>
    public bool WholeMessages
    {
        readonly get => _wholeMessages;
        set => _wholeMessages = value;
    }

    /// <summary>
    /// Inspected types whose messages, when longer than the inspect limit, are reported as
    /// <see cref="FrameStatus.Oversized"/> instead of streamed (the proxy renames the statement of a large Bind).
    /// </summary>
    public MessageTypeSet OversizedSet
    {
        readonly get => _oversizedSet;
        set => _oversizedSet = value;
    }

    /// <summary>
    /// After <see cref="FrameStatus.Oversized"/>: the caller has taken <paramref name="consumed"/> bytes of
    /// the message (its head, at least the header); the rest of its <paramref name="messageLength"/> bytes
    /// is pass-through.
    /// </summary>
    public void StreamRest(int messageLength, int consumed)
    {
        Debug.Assert(_passThroughRemaining == 0 && consumed >= HeaderLength && consumed <= messageLength);
        _passThroughRemaining = messageLength - consumed;
    }

    /// <summary>Types to count as their headers go by, inspected or not (for example the messages that each earn a ReadyForQuery).</summary>
    public MessageTypeSet CountSet
    {
        readonly get => _countSet;
        set => _countSet = value;
    }

    /// <summary>Type of the last message whose header was read.</summary>
    public readonly byte LastType => _lastType;

    /// <summary>Type of the message before <see cref="LastType"/>; 0 at the start of the stream.</summary>
    public readonly byte PreviousType => _previousType;

    /// <summary>Returns how many headers of <see cref="CountSet"/> types went by since the last call, and starts again from zero.</summary>
    public int TakeCounted()
    {
        int counted = _counted;
        _counted = 0;
        return counted;
    }

    /// <summary>Bytes of a pass-through message still to come; 0 at a message boundary.</summary>
    public readonly long PassThroughRemaining => _passThroughRemaining;

    /// <summary>Whether the framer sits between two messages.</summary>
    public readonly bool AtBoundary => _passThroughRemaining == 0;

    /// <summary>Forgets any partial message, for a stream that starts afresh.</summary>
    public void Reset()
    {
        _passThroughRemaining = 0;
        _counted = 0;
        _lastType = 0;
        _previousType = 0;
    }

    /// <summary>
    /// Scans <paramref name="data"/> from its start. <paramref name="passThrough"/> receives the number of
    /// leading bytes that may be forwarded untouched (whole messages not inspected, and any part of an
    /// uninspected message). On <see cref="FrameStatus.Inspect"/>, <paramref name="messageLength"/> is the
    /// whole length (type byte included) of the complete message starting at <paramref name="passThrough"/>;
    /// the caller handles it and calls again past it.
    /// </summary>
    public FrameStatus Scan(ReadOnlySpan<byte> data, MessageTypeSet inspect, int maxInspectLength, out int passThrough, out int messageLength)
    {
        messageLength = 0;
        int pos = 0;
        if (_passThroughRemaining > 0)
        {
            if (_passThroughRemaining >= data.Length)
            {
                _passThroughRemaining -= data.Length;
                passThrough = data.Length;
                return FrameStatus.NeedMore;
            }

            pos = (int)_passThroughRemaining;
            _passThroughRemaining = 0;
        }

        while (true)
        {
            if (data.Length - pos < HeaderLength)
            {
                passThrough = pos;
                return FrameStatus.NeedMore;
            }

            byte type = data[pos];
            int length = BinaryPrimitives.ReadInt32BigEndian(data.Slice(pos + 1));
            if (length < sizeof(int) || length > MaxMessageLength)
            {
                passThrough = pos;
                return FrameStatus.Invalid;
            }

            if (_restrictTypes && !_allowedSet.Contains(type))
            {
                passThrough = pos;
                return FrameStatus.Foreign;
            }

            int total = length + 1;
            if (total > maxInspectLength && _oversizedSet.Contains(type) && inspect.Contains(type))
            {
                passThrough = pos;
                messageLength = total;
                Count(type);
                return FrameStatus.Oversized;
            }

            if (inspect.Contains(type) && total <= maxInspectLength)
            {
                passThrough = pos;
                if (data.Length - pos < total)
                {
                    return FrameStatus.NeedMore;
                }

                messageLength = total;
                Count(type);
                return FrameStatus.Inspect;
            }

            int available = data.Length - pos;
            if (total > available && _wholeMessages && total <= maxInspectLength)
            {
                passThrough = pos;
                return FrameStatus.NeedMore;
            }

            Count(type);
            if (total > available)
            {
                _passThroughRemaining = total - available;
                passThrough = data.Length;
                return FrameStatus.NeedMore;
            }

            pos += total;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Count(byte type)
    {
        _previousType = _lastType;
        _lastType = type;
        if (_countSet.Contains(type))
        {
            _counted++;
        }
    }

    /// <summary>Reads the length word of the message at the start of <paramref name="message"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int ReadLength(ReadOnlySpan<byte> message) => BinaryPrimitives.ReadInt32BigEndian(message.Slice(1));

    /// <summary>
    /// The whole length (type byte included) of the message at the start of <paramref name="window"/> when
    /// all of it is there and its length word is sane; 0 otherwise.
    /// </summary>
    public static int WholeLength(ReadOnlySpan<byte> window)
    {
        if (window.Length < HeaderLength)
        {
            return 0;
        }

        int total = ReadLength(window) + 1;
        return total < HeaderLength || total > window.Length ? 0 : total;
    }

    /// <summary>The NUL-terminated string <paramref name="data"/> starts with, without the NUL; empty when there is no NUL.</summary>
    public static ReadOnlySpan<byte> ReadCString(ReadOnlySpan<byte> data)
    {
        int end = data.IndexOf((byte)0);
        return end < 0 ? ReadOnlySpan<byte>.Empty : data.Slice(0, end);
    }
}
