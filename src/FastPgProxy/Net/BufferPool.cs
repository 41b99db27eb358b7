using System.Diagnostics;

namespace FastPgProxy.Net;

/// <summary>
/// Fixed-size buffers for one loop, allocated on the pinned object heap so the kernel-facing socket code
/// never has to pin them and the GC never moves them. Not thread-safe: only the owning loop rents and
/// returns. A buffer has one owner at a time and is returned exactly once.
/// </summary>
internal sealed class BufferPool
{
    private readonly Stack<byte[]> _free = new();
    private readonly int _maxRetained;
    private long _inUse;
    private long _allocated;

    /// <summary>Creates an empty pool of <paramref name="bufferSize"/>-byte buffers.</summary>
    public BufferPool(int bufferSize, int maxRetained)
    {
        BufferSize = bufferSize;
        _maxRetained = maxRetained;
    }

    /// <summary>Size of every buffer.</summary>
    public int BufferSize { get; }

    /// <summary>Buffers rented and not yet returned.</summary>
    public long InUse => Volatile.Read(ref _inUse);

    /// <summary>Buffers ever allocated by this pool.</summary>
    public long Allocated => Volatile.Read(ref _allocated);

    /// <summary>Takes a buffer.</summary>
    public byte[] Rent()
    {
        Volatile.Write(ref _inUse, _inUse + 1);
        if (_free.TryPop(out byte[]? buffer))
        {
            return buffer;
        }

        Volatile.Write(ref _allocated, _allocated + 1);
        return GC.AllocateUninitializedArray<byte>(BufferSize, pinned: true);
    }

    /// <summary>Gives a buffer back; past the retention bound it is left to the GC.</summary>
    public void Return(byte[] buffer)
    {
        Debug.Assert(buffer.Length == BufferSize);
        Volatile.Write(ref _inUse, _inUse - 1);
        if (_free.Count < _maxRetained)
        {
            _free.Push(buffer);
        }
    }
}
