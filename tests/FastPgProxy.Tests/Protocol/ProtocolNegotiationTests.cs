using FastPgProxy.Cancellation;
using FastPgProxy.Protocol;
using Xunit;

namespace FastPgProxy.Tests.Protocol;

/// <summary>Protocol version negotiation with a client, and the cancel key comparison, without sockets.</summary>
public class ProtocolNegotiationTests
{
    private const int V30 = 3 << 16, V31 = (3 << 16) | 1, V32 = (3 << 16) | 2, V33 = (3 << 16) | 3, V39999 = (3 << 16) | 9999;

    [Theory]
    [InlineData(V30, false, false, V30, 4)]
    [InlineData(V30, true, true, V30, 4)]
    [InlineData(V31, false, false, V31, 4)]
    [InlineData(V32, false, false, V32, 32)]
    [InlineData(V32, true, true, V32, 32)]
    [InlineData(V33, false, true, V32, 32)]
    [InlineData(V39999, false, true, V32, 32)]
    [InlineData(V39999, true, true, V32, 32)]
    public void A_client_request_is_answered_as_PostgreSQL_18_answers_it(int requested, bool options, bool negotiates, int effective, int keyLength)
    {
        Assert.Equal(negotiates, ProtocolNegotiation.NeedsAnswer(requested, options));
        Assert.Equal(effective, ProtocolNegotiation.Effective(requested));
        Assert.Equal(keyLength, ProtocolNegotiation.CancelKeyLength(requested));
    }

    [Fact]
    public void Only_a_key_of_the_issued_length_and_bytes_matches()
    {
        byte[] issued = Enumerable.Range(1, 32).Select(i => (byte)i).ToArray();
        Assert.True(CancelRequestCheck.KeyMatches(issued, [.. issued]));
        for (int bit = 0; bit < issued.Length * 8; bit++)
        {
            byte[] flipped = [.. issued];
            flipped[bit / 8] ^= (byte)(1 << (bit % 8));
            Assert.False(CancelRequestCheck.KeyMatches(issued, flipped));
        }

        Assert.False(CancelRequestCheck.KeyMatches(issued, issued.AsSpan(0, 4)));
        Assert.False(CancelRequestCheck.KeyMatches(issued, issued.AsSpan(0, 31)));
        Assert.False(CancelRequestCheck.KeyMatches(issued, [.. issued, 0]));
        Assert.False(CancelRequestCheck.KeyMatches(issued.AsSpan(0, 4), issued));
        Assert.False(CancelRequestCheck.KeyMatches(issued, new byte[300]));
        Assert.False(CancelRequestCheck.KeyMatches([], new byte[4]));

        // Before a key is issued (a session not named yet) nothing matches, not even nothing.
        Assert.False(CancelRequestCheck.KeyMatches([], []));
    }
}
