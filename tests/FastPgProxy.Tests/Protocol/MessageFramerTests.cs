using System.Buffers.Binary;
using FastPgProxy.Protocol;
using Xunit;

namespace FastPgProxy.Tests.Protocol;

public class MessageFramerTests
{
    private static readonly MessageTypeSet Inspect = MessageTypeSet.None.With((byte)'Z').With((byte)'S').With((byte)'E');

    private static byte[] Message(char type, int bodyLength, byte fill = 0x41)
    {
        var m = new byte[1 + 4 + bodyLength];
        m[0] = (byte)type;
        BinaryPrimitives.WriteInt32BigEndian(m.AsSpan(1), 4 + bodyLength);
        m.AsSpan(5).Fill(fill);
        return m;
    }

    private static byte[] Stream()
    {
        var parts = new List<byte[]>
        {
            Message('1', 0), Message('2', 0), Message('T', 30), Message('D', 20), Message('D', 5000, 0x42),
            Message('S', 25), Message('C', 9), Message('Z', 1, (byte)'I'), Message('D', 200_000, 0x43),
            Message('E', 60), Message('Z', 1, (byte)'E'), Message('N', 70), Message('A', 12), Message('Z', 1, (byte)'T'),
        };
        return parts.SelectMany(p => p).ToArray();
    }

    /// <summary>
    /// Drives the framer the way the relay does: a bounded receive window, runs forwarded from the window,
    /// inspected messages noted, remainder kept, window compacted when full.
    /// </summary>
    private static (byte[] Forwarded, List<string> Inspected) Relay(byte[] input, IEnumerable<int> chunkSizes, int capacity)
    {
        var framer = new MessageFramer();
        var buffer = new byte[capacity];
        int start = 0, end = 0, fed = 0;
        var output = new List<byte>();
        var inspected = new List<string>();
        using IEnumerator<int> chunks = chunkSizes.GetEnumerator();
        while (true)
        {
            // Process everything buffered.
            while (true)
            {
                Span<byte> window = buffer.AsSpan(start, end - start);
                int run = 0;
                FrameStatus status;
                while (true)
                {
                    status = framer.Scan(window.Slice(run), Inspect, capacity, out int pass, out int length);
                    run += pass;
                    if (status != FrameStatus.Inspect)
                    {
                        break;
                    }

                    inspected.Add($"{(char)window[run]}:{Convert.ToHexString(window.Slice(run, length))}");
                    run += length;
                }

                Assert.NotEqual(FrameStatus.Invalid, status);
                output.AddRange(window.Slice(0, run).ToArray());
                start += run;
                if (run == 0)
                {
                    break;
                }
            }

            if (fed == input.Length)
            {
                Assert.Equal(start, end);
                return (output.ToArray(), inspected);
            }

            if (start == end)
            {
                start = end = 0;
            }
            else if (end == capacity)
            {
                buffer.AsSpan(start, end - start).CopyTo(buffer);
                end -= start;
                start = 0;
            }

            int size = chunks.MoveNext() ? chunks.Current : int.MaxValue;
            int n = Math.Min(Math.Min(size, capacity - end), input.Length - fed);
            Assert.True(n > 0, "the window must always have room");
            input.AsSpan(fed, n).CopyTo(buffer.AsSpan(end));
            end += n;
            fed += n;
        }
    }

    [Fact]
    public void Stream_split_at_every_offset_frames_identically()
    {
        byte[] input = Stream();
        (byte[] whole, List<string> expected) = Relay(input, Enumerable.Repeat(int.MaxValue, 1000), 1 << 20);
        Assert.Equal(input, whole);
        Assert.Equal(5, expected.Count);

        for (int split = 1; split < input.Length; split += split < 6000 ? 1 : 997)
        {
            (byte[] forwarded, List<string> inspected) = Relay(input, [split, int.MaxValue], 1 << 20);
            Assert.Equal(input, forwarded);
            Assert.Equal(expected, inspected);
        }
    }

    [Fact]
    public void Byte_by_byte_through_a_small_window_frames_identically()
    {
        byte[] input = Stream();
        (byte[] _, List<string> expected) = Relay(input, Enumerable.Repeat(int.MaxValue, 1000), 1 << 20);
        (byte[] forwarded, List<string> inspected) = Relay(input, Enumerable.Repeat(1, input.Length), 128);
        Assert.Equal(input, forwarded);
        Assert.Equal(expected, inspected);
    }

    [Fact]
    public void Random_chunks_frame_identically()
    {
        byte[] input = Stream();
        (byte[] _, List<string> expected) = Relay(input, Enumerable.Repeat(int.MaxValue, 1000), 1 << 20);
        var random = new Random(1234);
        for (int i = 0; i < 50; i++)
        {
            var sizes = Enumerable.Range(0, 100_000).Select(_ => random.Next(1, 700)).ToArray();
            (byte[] forwarded, List<string> inspected) = Relay(input, sizes, 1024);
            Assert.Equal(input, forwarded);
            Assert.Equal(expected, inspected);
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    [InlineData(-1)]
    [InlineData(0x4000_0000)]
    public void Length_word_below_4_or_above_limit_is_invalid(int length)
    {
        var data = new byte[16];
        data[0] = (byte)'Q';
        BinaryPrimitives.WriteInt32BigEndian(data.AsSpan(1), length);
        var framer = new MessageFramer();
        Assert.Equal(FrameStatus.Invalid, framer.Scan(data, MessageTypeSet.None, 1024, out int pass, out _));
        Assert.Equal(0, pass);
    }

    [Fact]
    public void Inspected_message_longer_than_limit_passes_through()
    {
        byte[] big = Message('S', 5000);
        var framer = new MessageFramer();
        FrameStatus status = framer.Scan(big.AsSpan(0, 100), Inspect, 1024, out int pass, out _);
        Assert.Equal(FrameStatus.NeedMore, status);
        Assert.Equal(100, pass);
        Assert.Equal(big.Length - 100, framer.PassThroughRemaining);
    }

    [Fact]
    public void Incomplete_inspected_message_is_never_consumed()
    {
        byte[] z = Message('Z', 1, (byte)'I');
        var framer = new MessageFramer();
        Assert.Equal(FrameStatus.NeedMore, framer.Scan(z.AsSpan(0, 5), Inspect, 1024, out int pass, out _));
        Assert.Equal(0, pass);
        Assert.Equal(FrameStatus.Inspect, framer.Scan(z, Inspect, 1024, out pass, out int length));
        Assert.Equal(0, pass);
        Assert.Equal(6, length);
    }

    [Fact]
    public void Oversized_message_of_a_reported_type_stops_before_it_then_streams_the_rest()
    {
        byte[] z = Message('Z', 1, (byte)'I');
        byte[] big = Message('S', 5000);
        byte[] data = [.. z, .. big, .. z];
        var framer = new MessageFramer { OversizedSet = MessageTypeSet.None.With((byte)'S') };

        // The Z before it is inspected as usual.
        Assert.Equal(FrameStatus.Inspect, framer.Scan(data, Inspect, 1024, out int pass, out int length));
        Assert.Equal((0, 6), (pass, length));

        // The large S is reported at its start, whole length given, nothing consumed.
        Assert.Equal(FrameStatus.Oversized, framer.Scan(data.AsSpan(6, 100), Inspect, 1024, out pass, out length));
        Assert.Equal((0, big.Length), (pass, length));
        Assert.Equal((byte)'S', framer.LastType);

        // The caller takes 20 bytes of its head; the rest streams, and the framing goes on after it.
        framer.StreamRest(big.Length, 20);
        Assert.Equal(FrameStatus.NeedMore, framer.Scan(data.AsSpan(6 + 20, 1000), Inspect, 1024, out pass, out _));
        Assert.Equal(1000, pass);
        Assert.Equal(FrameStatus.Inspect, framer.Scan(data.AsSpan(6 + 20 + 1000), Inspect, 1024, out pass, out length));
        Assert.Equal((big.Length - 1020, 6), (pass, length));

        // Without OversizedSet the same message streams at once.
        var plain = new MessageFramer();
        Assert.Equal(FrameStatus.NeedMore, plain.Scan(big.AsSpan(0, 100), Inspect, 1024, out pass, out _));
        Assert.Equal(100, pass);
    }
}
