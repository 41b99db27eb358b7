using System.Buffers.Binary;
using System.Text;
using FastPgProxy.Cancellation;
using FastPgProxy.Protocol;
using Xunit;

namespace FastPgProxy.Tests.Protocol;

/// <summary>Protocol version negotiation both ways, and the cancel key comparison, without sockets.</summary>
public class ProtocolNegotiationTests
{
    private const int V30 = 3 << 16, V31 = (3 << 16) | 1, V32 = (3 << 16) | 2, V33 = (3 << 16) | 3, V39999 = (3 << 16) | 9999;

    private static byte[] Body(int version, int count, params string[] names)
    {
        var body = new List<byte>(new byte[2 * sizeof(int)]);
        BinaryPrimitives.WriteInt32BigEndian(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(body), version);
        BinaryPrimitives.WriteInt32BigEndian(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(body)[sizeof(int)..], count);
        foreach (string name in names)
        {
            body.AddRange(Encoding.UTF8.GetBytes(name));
            body.Add(0);
        }

        return body.ToArray();
    }

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
    public void A_server_that_negotiates_3_0_is_taken()
    {
        Assert.True(ProtocolNegotiation.TryReadServerAnswer(Body(V30, 0), V32, out int version, out string? error), error);
        Assert.Equal(V30, version);
    }

    [Theory]
    [InlineData(2 << 16, 0, "pre-3.0")]
    [InlineData(0, 0, "pre-3.0")]
    [InlineData(-1, 0, "pre-3.0")]
    [InlineData(V31, 0, "non-existent 3.1")]
    [InlineData(V33, 0, "higher-numbered")]
    [InlineData(4 << 16, 0, "higher-numbered")]
    [InlineData(V32, 0, "no changes")]
    [InlineData(V30, -1, "negative number")]
    public void A_server_answer_libpq_would_refuse_is_refused(int offered, int count, string reason)
    {
        Assert.False(ProtocolNegotiation.TryReadServerAnswer(Body(offered, count), V32, out int version, out string? error));
        Assert.Equal(0, version);
        Assert.Contains(reason, error, StringComparison.Ordinal);
    }

    [Fact]
    public void A_server_may_not_name_options_the_proxy_never_sent()
    {
        Assert.False(ProtocolNegotiation.TryReadServerAnswer(Body(V30, 2, "_pq_.a", "b"), V32, out _, out string? error));
        Assert.Contains("not requested (\"_pq_.a\")", error, StringComparison.Ordinal);
        Assert.False(ProtocolNegotiation.TryReadServerAnswer(Body(V32, 1, "_pq_.a"), V32, out _, out _));
    }

    [Theory]
    [InlineData(new byte[0])]
    [InlineData(new byte[] { 0, 3, 0, 0 })]
    [InlineData(new byte[] { 0, 3, 0, 0, 0, 0, 0 })]
    [InlineData(new byte[] { 0, 3, 0, 0, 0, 0, 0, 0, 0 })] // a byte after no options
    [InlineData(new byte[] { 0, 3, 0, 0, 0, 0, 0, 1, 0x5F })] // an option name without its NUL
    [InlineData(new byte[] { 0, 3, 0, 0, 0, 0, 0, 2, 0x5F, 0 })] // fewer names than counted
    [InlineData(new byte[] { 0, 3, 0, 0, 0x7F, 0xFF, 0xFF, 0xFF, 0 })]
    public void A_malformed_answer_is_refused_as_malformed(byte[] body)
    {
        Assert.False(ProtocolNegotiation.TryReadServerAnswer(body, V32, out int version, out string? error));
        Assert.Equal(0, version);
        Assert.Contains("malformed", error, StringComparison.Ordinal);
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
