using System.Buffers.Binary;
using System.Diagnostics;
using System.Security.Cryptography;

namespace FastPgProxy.Net;

/// <summary>
/// Cryptographically strong random bytes for one loop's logins (cancel keys, session ids, MD5 salts):
/// drawn from <see cref="RandomNumberGenerator"/> a block at a time and handed out once each, so a login
/// costs a copy instead of a call into the system's generator per value (each call takes its locks and
/// state lookups, several microseconds). A byte handed out is wiped from the block. Owner only.
/// </summary>
internal sealed class LoopRandom
{
    // Enough for about 25 logins with 3.2 keys (32 bytes of key, 4 of session id, 4 of salt).
    private const int BlockSize = 1024;

    private readonly byte[] _block = new byte[BlockSize];
    private int _next = BlockSize;

    /// <summary>Fills <paramref name="destination"/> with random bytes.</summary>
    public void Fill(Span<byte> destination)
    {
        if (destination.Length > BlockSize)
        {
            RandomNumberGenerator.Fill(destination);
            return;
        }

        while (!destination.IsEmpty)
        {
            if (_next == BlockSize)
            {
                RandomNumberGenerator.Fill(_block);
                _next = 0;
            }

            int take = Math.Min(destination.Length, BlockSize - _next);
            Span<byte> bytes = _block.AsSpan(_next, take);
            bytes.CopyTo(destination);
            bytes.Clear();
            _next += take;
            destination = destination[take..];
        }
    }

    /// <summary>A uniformly distributed integer in [<paramref name="fromInclusive"/>, <paramref name="toExclusive"/>).</summary>
    public int NextInt32(int fromInclusive, int toExclusive)
    {
        Debug.Assert(fromInclusive < toExclusive);
        uint range = (uint)(toExclusive - fromInclusive);

        // Rejection sampling: of the 2^32 values, the top (2^32 mod range) would favour the low results.
        uint limit = uint.MaxValue - (uint)((((ulong)uint.MaxValue) + 1) % range);
        Span<byte> raw = stackalloc byte[sizeof(uint)];
        while (true)
        {
            Fill(raw);
            uint value = BinaryPrimitives.ReadUInt32LittleEndian(raw);
            if (value <= limit)
            {
                return (int)(fromInclusive + (value % range));
            }
        }
    }
}
