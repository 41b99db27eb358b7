using FastPgProxy.Net;
using Xunit;

namespace FastPgProxy.Tests.Net;

/// <summary>A loop's random bytes: never handed out twice, across block refills, and integers uniform in their range.</summary>
public class LoopRandomTests
{
    [Fact]
    public void Keys_drawn_across_many_blocks_are_all_distinct()
    {
        // 32-byte keys (protocol 3.2) and 4-byte values interleaved, as logins draw them: 200 blocks' worth.
        var random = new LoopRandom();
        var keys = new HashSet<string>(StringComparer.Ordinal);
        Span<byte> small = stackalloc byte[4];
        for (int i = 0; i < 6000; i++)
        {
            byte[] key = new byte[32];
            random.Fill(key);
            Assert.True(keys.Add(Convert.ToHexString(key)), $"key {i} repeats an earlier one");
            random.Fill(small);
        }
    }

    [Fact]
    public void Bytes_look_uniform()
    {
        var random = new LoopRandom();
        var counts = new int[256];
        byte[] chunk = new byte[100];
        for (int i = 0; i < 2560; i++)
        {
            random.Fill(chunk);
            foreach (byte b in chunk)
            {
                counts[b]++;
            }
        }

        // 256,000 bytes: 1,000 expected per value; a fair generator stays far inside these bounds.
        Assert.All(counts, c => Assert.InRange(c, 800, 1200));
    }

    [Fact]
    public void A_request_longer_than_a_block_is_filled_whole()
    {
        var random = new LoopRandom();
        byte[] big = new byte[5000];
        random.Fill(big);
        Assert.True(big.Count(b => b == 0) < 100, "most of a 5,000-byte request stayed zero");
    }

    [Theory]
    [InlineData(1, int.MaxValue)]
    [InlineData(0, 131071)]
    [InlineData(0, 3)]
    [InlineData(-5, -2)]
    public void Integers_stay_in_their_range_and_reach_both_ends_of_a_small_one(int from, int to)
    {
        var random = new LoopRandom();
        var seen = new HashSet<int>();
        for (int i = 0; i < 3000; i++)
        {
            int value = random.NextInt32(from, to);
            Assert.InRange(value, from, to - 1);
            seen.Add(value);
        }

        if ((long)to - from <= 3)
        {
            Assert.Equal(to - from, seen.Count);
        }
    }
}
