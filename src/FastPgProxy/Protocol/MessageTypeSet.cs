using System.Runtime.CompilerServices;

namespace FastPgProxy.Protocol;

/// <summary>A set of message type bytes (0..127), two words wide, so membership is one shift and one mask.</summary>
internal readonly struct MessageTypeSet
{
    private readonly ulong _low;
    private readonly ulong _high;

    private MessageTypeSet(ulong low, ulong high)
    {
        _low = low;
        _high = high;
    }

    /// <summary>The empty set: every message passes through.</summary>
    public static MessageTypeSet None => default;

    /// <summary>Every type: each message is handed to the caller.</summary>
    public static MessageTypeSet All => new(ulong.MaxValue, ulong.MaxValue);

    /// <summary>Returns a set that also holds <paramref name="type"/>.</summary>
    public MessageTypeSet With(byte type)
    {
        if (type >= 128)
        {
            return this;
        }

        return type < 64 ? new(_low | (1UL << type), _high) : new(_low, _high | (1UL << (type - 64)));
    }

    /// <summary>Whether <paramref name="type"/> is in the set; bytes above 127 belong only to <see cref="All"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool Contains(byte type) => type < 64
        ? (_low & (1UL << type)) != 0
        : type < 128 ? (_high & (1UL << (type - 64))) != 0 : _high == ulong.MaxValue;
}
