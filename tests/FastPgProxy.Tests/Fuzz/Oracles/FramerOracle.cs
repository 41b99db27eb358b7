using FastPgProxy.Protocol;

namespace FastPgProxy.Tests.Fuzz;

/// <summary>A set of message types as the tests think of it: an explicit list, or every byte.</summary>
internal sealed record TypeSet(bool All, byte[] Types)
{
    public static TypeSet None { get; } = new(false, []);

    public static TypeSet Every { get; } = new(true, []);

    public static TypeSet Of(string types) => new(false, types.Select(c => (byte)c).ToArray());

    /// <summary>The reference membership: <see cref="MessageTypeSet"/> documents that bytes above 127 belong only to All.</summary>
    public bool Contains(byte type) => All || (type < 128 && Array.IndexOf(Types, type) >= 0);

    public MessageTypeSet ToMessageTypeSet()
    {
        if (All)
        {
            return MessageTypeSet.All;
        }

        MessageTypeSet set = MessageTypeSet.None;
        foreach (byte type in Types)
        {
            set = set.With(type);
        }

        return set;
    }

    public override string ToString() => All ? "All" : "{" + string.Join(",", Types.Select(t => t is >= 32 and < 127 ? ((char)t).ToString() : "0x" + t.ToString("X2", System.Globalization.CultureInfo.InvariantCulture))) + "}";
}

/// <summary>How the relay is simulated: which types it inspects, reports oversized and counts, how bytes arrive.</summary>
internal sealed record FramerSetup(TypeSet Inspect, TypeSet Oversized, TypeSet Count, int MaxInspect, int[] Chunks, int[] Heads)
{
    /// <summary>The relay's receive window: one pooled buffer.</summary>
    public const int Window = 32 * 1024;

    private static readonly TypeSet[] InspectPresets =
    [
        TypeSet.None, TypeSet.Of("XQP"), TypeSet.Of("ZSE"), TypeSet.Of("ZSE123"), TypeSet.Every, TypeSet.Of("QPBDEHSCFX"),
    ];

    private static readonly TypeSet[] OversizedPresets = [TypeSet.None, TypeSet.Of("QFBP"), TypeSet.Of("S"), TypeSet.Every];

    private static readonly TypeSet[] CountPresets = [TypeSet.Of("QSF"), TypeSet.None, TypeSet.Every, TypeSet.Of("Z")];

    private static readonly int[] MaxInspectPresets = [Window, Window, 1024, 64, 5, Window - 1];

    /// <summary>
    /// Builds a setup from a few bytes (the fuzzer's input starts with them): presets for the sets and the limit,
    /// then receive sizes and head sizes.
    /// </summary>
    public static FramerSetup FromBytes(byte[] b)
    {
        byte At(int i) => i < b.Length ? b[i] : (byte)0;
        int[] chunks = [1 + At(4) * 131 % Window, 1 + At(5), 1 + At(6) * 7, Window];
        int[] heads = [At(7), At(8) * 257];
        return new FramerSetup(
            InspectPresets[At(0) % InspectPresets.Length],
            OversizedPresets[At(1) % OversizedPresets.Length],
            CountPresets[At(2) % CountPresets.Length],
            MaxInspectPresets[At(3) % MaxInspectPresets.Length],
            chunks,
            heads);
    }

    public override string ToString() =>
        $"inspect {Inspect}, oversized {Oversized}, count {Count}, max {MaxInspect}, chunks [{string.Join(",", Chunks)}], heads [{string.Join(",", Heads)}]";
}

/// <summary>One message as the reference framer walks it: offset in the stream, type, whole length (type byte included).</summary>
internal readonly record struct WalkedMessage(int Offset, byte Type, long Total);

/// <summary>What the framer reported, as absolute stream offsets.</summary>
internal readonly record struct FrameEvent(FrameStatus Status, int Offset, byte Type, long Length);

/// <summary>
/// Checks <see cref="MessageFramer"/> against a slow reference that walks a stream header by header. The framer
/// is driven the way <c>ClientSession.Relay</c> drives it: a 32 KiB window that keeps what was not consumed and is
/// compacted when full, runs of pass-through bytes consumed as reported, inspected messages consumed whole, the
/// head of an oversized message consumed before <see cref="MessageFramer.StreamRest"/>.
/// </summary>
internal static class FramerOracle
{
    /// <summary>The reference: walks headers one by one until an invalid length word or the end of the stream.</summary>
    internal sealed class Walk
    {
        public List<WalkedMessage> Messages { get; } = [];

        /// <summary>Offset of the header whose length word is below 4 or above the limit; -1 when none.</summary>
        public int InvalidAt { get; set; } = -1;

        /// <summary>Offset of a trailing incomplete header (fewer than 5 bytes left); -1 when none.</summary>
        public int TailAt { get; set; } = -1;

        /// <summary>Every offset where a message starts or ends, and where the walk stopped.</summary>
        public HashSet<long> Boundaries { get; } = [];
    }

    public static Walk WalkStream(byte[] stream)
    {
        var walk = new Walk();
        long offset = 0;
        walk.Boundaries.Add(0);
        while (offset < stream.Length)
        {
            if (stream.Length - offset < 5)
            {
                walk.TailAt = (int)offset;
                break;
            }

            int o = (int)offset;
            long length = ((long)stream[o + 1] << 24) | ((long)stream[o + 2] << 16) | ((long)stream[o + 3] << 8) | stream[o + 4];
            if (length >= 0x8000_0000L)
            {
                length -= 0x1_0000_0000L; // the length word is signed
            }

            if (length < 4 || length > 0x3FFF_FFFF)
            {
                walk.InvalidAt = o;
                break;
            }

            walk.Messages.Add(new WalkedMessage(o, stream[o], length + 1));
            offset += length + 1;
            walk.Boundaries.Add(offset);
        }

        return walk;
    }

    /// <summary>What a correct framer must report for the stream, and how far the relay gets.</summary>
    public static (List<FrameEvent> Events, int Consumed) Expect(byte[] stream, Walk walk, FramerSetup setup)
    {
        var events = new List<FrameEvent>();
        foreach (WalkedMessage m in walk.Messages)
        {
            bool inspected = setup.Inspect.Contains(m.Type);
            if (inspected && m.Total > setup.MaxInspect && setup.Oversized.Contains(m.Type))
            {
                events.Add(new FrameEvent(FrameStatus.Oversized, m.Offset, m.Type, m.Total));
            }
            else if (inspected && m.Total <= setup.MaxInspect)
            {
                if (m.Offset + m.Total > stream.Length)
                {
                    // An incomplete inspected message is never consumed.
                    return (events, m.Offset);
                }

                events.Add(new FrameEvent(FrameStatus.Inspect, m.Offset, m.Type, m.Total));
            }
        }

        if (walk.InvalidAt >= 0)
        {
            events.Add(new FrameEvent(FrameStatus.Invalid, walk.InvalidAt, 0, 0));
            return (events, walk.InvalidAt);
        }

        return (events, walk.TailAt >= 0 ? walk.TailAt : stream.Length);
    }

    /// <summary>Runs the relay simulation and throws <see cref="PropertyViolationException"/> on any difference from the reference.</summary>
    public static void Check(byte[] stream, FramerSetup setup)
    {
        Walk walk = WalkStream(stream);
        (List<FrameEvent> expected, int expectedConsumed) = Expect(stream, walk, setup);
        (List<FrameEvent> actual, int consumed) = Relay(stream, setup, walk);
        Property.RequireEqual(expected.Count, actual.Count, $"number of reported messages ({setup})");
        for (int i = 0; i < expected.Count; i++)
        {
            Property.RequireEqual(expected[i], actual[i], $"report {i} ({setup})");
        }

        Property.RequireEqual(expectedConsumed, consumed, $"bytes consumed ({setup})");
    }

    /// <summary>Drives the framer like the relay and checks every call's invariants on the way.</summary>
    private static (List<FrameEvent> Events, int Consumed) Relay(byte[] stream, FramerSetup setup, Walk walk)
    {
        var framer = new MessageFramer { CountSet = setup.Count.ToMessageTypeSet(), OversizedSet = setup.Oversized.ToMessageTypeSet() };
        MessageTypeSet inspect = setup.Inspect.ToMessageTypeSet();
        var buffer = new byte[FramerSetup.Window];
        var events = new List<FrameEvent>();
        int start = 0, end = 0, fed = 0, consumed = 0, counted = 0, chunk = 0, head = 0;
        long steps = 0, stepLimit = (4L * stream.Length) + 1000;
        while (true)
        {
            Property.Require(++steps <= stepLimit, $"the relay made no progress after {steps} rounds ({setup})");
            Span<byte> window = buffer.AsSpan(start, end - start);
            int run = 0;
            bool invalid = false;
            while (true)
            {
                Property.Require(++steps <= stepLimit, $"the framer made no progress after {steps} calls ({setup})");
                ReadOnlySpan<byte> data = window.Slice(run);
                FrameStatus status = framer.Scan(data, inspect, setup.MaxInspect, out int pass, out int length);
                Property.Require(pass >= 0 && pass <= data.Length, $"pass-through {pass} outside 0..{data.Length}");
                int at = consumed + run + pass;
                counted += framer.TakeCounted();
                CheckStep(stream, walk, setup, framer, status, data.Length - pass, at, length, counted);
                run += pass;
                if (status == FrameStatus.Inspect)
                {
                    events.Add(new FrameEvent(status, at, stream[at], length));
                    run += length;
                    continue;
                }

                if (status == FrameStatus.Oversized)
                {
                    events.Add(new FrameEvent(status, at, stream[at], length));
                    int available = data.Length - pass;
                    int most = Math.Min(length, available);
                    int taken = MessageFramer.HeaderLength + (setup.Heads[head++ % setup.Heads.Length] % (most - MessageFramer.HeaderLength + 1));
                    framer.StreamRest(length, taken);
                    run += taken;
                    continue;
                }

                if (status == FrameStatus.Invalid)
                {
                    events.Add(new FrameEvent(status, at, 0, 0));
                    invalid = true;
                }

                break;
            }

            start += run;
            consumed += run;
            if (invalid)
            {
                return (events, consumed);
            }

            if (run > 0 && start < end)
            {
                // The run was sent; the relay frames what is left before it receives again.
                continue;
            }

            if (fed == stream.Length)
            {
                return (events, consumed);
            }

            if (start == end)
            {
                start = end = 0;
            }
            else if (end == buffer.Length)
            {
                buffer.AsSpan(start, end - start).CopyTo(buffer);
                end -= start;
                start = 0;
            }

            int size = setup.Chunks[chunk++ % setup.Chunks.Length];
            int n = Math.Min(Math.Min(size, buffer.Length - end), stream.Length - fed);
            Property.Require(n > 0, $"the window is full and the framer consumes nothing ({setup})");
            stream.AsSpan(fed, n).CopyTo(buffer.AsSpan(end));
            end += n;
            fed += n;
        }
    }

    /// <summary>The invariants of one <see cref="MessageFramer.Scan"/> call, against the reference walk.</summary>
    private static void CheckStep(byte[] stream, Walk walk, FramerSetup setup, MessageFramer framer, FrameStatus status, int left, int at, int length, int counted)
    {
        switch (status)
        {
            case FrameStatus.Inspect:
                Property.Require(length >= MessageFramer.HeaderLength && length <= left, $"inspected length {length} with {left} bytes left");
                Property.Require(length <= setup.MaxInspect, $"inspected length {length} over the limit {setup.MaxInspect}");
                Property.Require(setup.Inspect.Contains(stream[at]), $"type 0x{stream[at]:X2} reported but not inspected");
                break;
            case FrameStatus.Oversized:
                Property.Require(left >= MessageFramer.HeaderLength, $"oversized reported with {left} bytes of it");
                Property.Require(length > setup.MaxInspect, $"oversized length {length} within the limit");
                Property.Require(setup.Oversized.Contains(stream[at]) && setup.Inspect.Contains(stream[at]), $"type 0x{stream[at]:X2} reported oversized");
                break;
            case FrameStatus.Invalid:
                Property.RequireEqual(walk.InvalidAt, at, "offset of the invalid length word");
                return;
        }

        if (status is FrameStatus.Inspect or FrameStatus.Oversized)
        {
            // The reported message is one the reference found, with its length.
            int index = walk.Messages.FindIndex(m => m.Offset == at);
            Property.Require(index >= 0, $"message reported at {at}, which is not a message boundary");
            Property.RequireEqual(walk.Messages[index].Total, (long)length, $"length of the message at {at}");
        }

        if (framer.AtBoundary)
        {
            Property.Require(walk.Boundaries.Contains(at), $"framer between messages at {at}, which is not a boundary");
        }
        else
        {
            Property.Require(status == FrameStatus.NeedMore && left == 0, $"framer inside a message after {status} with {left} bytes unread");
            Property.Require(walk.Boundaries.Contains(at + framer.PassThroughRemaining), $"message streaming at {at} ends at {at + framer.PassThroughRemaining}, which is not a boundary");
        }

        // Headers read so far: every message that starts before the stop, and the reported one.
        int read = 0, countable = 0;
        byte last = 0;
        foreach (WalkedMessage m in walk.Messages)
        {
            bool headerRead = m.Offset < at || (m.Offset == at && status is FrameStatus.Inspect or FrameStatus.Oversized);
            if (!headerRead)
            {
                break;
            }

            read++;
            last = m.Type;
            countable += setup.Count.Contains(m.Type) ? 1 : 0;
        }

        Property.RequireEqual(countable, counted, $"counted headers after {read} messages, stopped at {at} with {status}");
        if (read > 0)
        {
            Property.RequireEqual(last, framer.LastType, $"type of the last header read at {at}");
        }
    }
}
