using System.Diagnostics.CodeAnalysis;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using FastPgProxy.Net;
using FastPgProxy.Protocol;

namespace FastPgProxy.Benchmarks;

/// <summary>
/// What the channel contract costs the relay. One relay pass over a backend's window is driven as
/// the Relay does it: PumpServer (nothing outstanding, the window, framing, the send to the client
/// out of the backend's window), the send's completion, then OnServerRunSent (consume the run, the checks
/// of TryReleaseServer and ClientMidMessage). The channels are <see cref="BenchChannel"/>s: the window,
/// flags and Consume are <see cref="Channel"/>'s own code, and only the socket work of Send is left out.
/// The same calls are made through (a) the sealed class, (b) <see cref="Channel"/>, the contract,
/// (c) <see cref="IBenchChannel"/>, the same contract as an interface, (d) a type parameter bound to the
/// class (generic code shared by every reference type) and (e) a type parameter bound to a struct that
/// wraps the class (code of its own). Category <c>Calls</c> sends the whole window unframed, leaving the
/// channel calls alone; <c>Relay</c> frames the window with <see cref="MessageFramer"/>. Times are per
/// pass. Budget: 0 B allocated. Min is shown next to Mean because other work on a shared machine only
/// ever adds time.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(ShortJobConfig))]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
[MinColumn]
public class ChannelBenchmarks
{
    private const int WindowSize = 32 * 1024;

    // Passes per invocation: one pass alone is a few nanoseconds, near the harness's resolution.
    private const int Passes = 64;

    private static readonly MessageTypeSet s_serverInspect = MessageTypeSet.None
        .With((byte)BackendMessage.ReadyForQuery)
        .With((byte)BackendMessage.ParameterStatus)
        .With((byte)BackendMessage.ErrorResponse);

    private EventLoop? _loop;
    private byte[] _response = [];

    // The same two channels, held as each form holds them.
    private BenchChannel _server = null!;
    private BenchChannel _client = null!;
    private Channel _serverContract = null!;
    private Channel _clientContract = null!;
    private IBenchChannel _serverInterface = null!;
    private IBenchChannel _clientInterface = null!;
    private ChannelRef _serverRef;
    private ChannelRef _clientRef;

    private MessageFramer _framer;
    private TransactionStatus _transactionStatus;
    private int _released;

    /// <summary>Puts a pgbench -S response in the backend channel's window and checks every form against the expected pass.</summary>
    [GlobalSetup]
    public void Setup()
    {
        _loop = new EventLoop(0, WindowSize);
        var handler = new NoHandler();
        _server = new BenchChannel(_loop, handler) { IdleWithoutBuffer = true };
        _client = new BenchChannel(_loop, handler) { IdleWithoutBuffer = true };
        _serverContract = _server;
        _clientContract = _client;
        _serverInterface = _server;
        _clientInterface = _client;
        _serverRef = new ChannelRef(_server);
        _clientRef = new ChannelRef(_client);
        _response = WireStreams.PgbenchSelectResponse();
        _server.Restore(_response);

        int expected = _response.Length * Passes;
        Check(nameof(SealedCalls), SealedCalls(), expected);
        Check(nameof(ContractCalls), ContractCalls(), expected);
        Check(nameof(InterfaceCalls), InterfaceCalls(), expected);
        Check(nameof(GenericClassCalls), GenericClassCalls(), expected);
        Check(nameof(GenericStructCalls), GenericStructCalls(), expected);
        Check(nameof(SealedRelay), SealedRelay(), expected);
        Check(nameof(ContractRelay), ContractRelay(), expected);
        Check(nameof(InterfaceRelay), InterfaceRelay(), expected);
        Check(nameof(GenericClassRelay), GenericClassRelay(), expected);
        Check(nameof(GenericStructRelay), GenericStructRelay(), expected);
    }

    /// <summary>Returns the window's buffer and frees the loop.</summary>
    [GlobalCleanup]
    public void Cleanup()
    {
        _server.ReleaseBuffer();
        _loop?.Dispose();
    }

    /// <summary>(a) The sealed class.</summary>
    [Benchmark(Baseline = true, OperationsPerInvoke = Passes)]
    [BenchmarkCategory("Calls")]
    public int SealedCalls() => LoopSealed(frame: false);

    /// <summary>(b) <see cref="Channel"/>.</summary>
    [Benchmark(OperationsPerInvoke = Passes)]
    [BenchmarkCategory("Calls")]
    public int ContractCalls() => LoopContract(frame: false);

    /// <summary>(c) <see cref="IBenchChannel"/>.</summary>
    [Benchmark(OperationsPerInvoke = Passes)]
    [BenchmarkCategory("Calls")]
    public int InterfaceCalls() => LoopInterface(frame: false);

    /// <summary>(d) Generic code over the class.</summary>
    [Benchmark(OperationsPerInvoke = Passes)]
    [BenchmarkCategory("Calls")]
    public int GenericClassCalls() => LoopGeneric(_server, _client, frame: false);

    /// <summary>(e) Generic code over a struct wrapping the class.</summary>
    [Benchmark(OperationsPerInvoke = Passes)]
    [BenchmarkCategory("Calls")]
    public int GenericStructCalls() => LoopGeneric(_serverRef, _clientRef, frame: false);

    /// <summary>(a) The sealed class, framing.</summary>
    [Benchmark(Baseline = true, OperationsPerInvoke = Passes)]
    [BenchmarkCategory("Relay")]
    public int SealedRelay() => LoopSealed(frame: true);

    /// <summary>(b) <see cref="Channel"/>, framing.</summary>
    [Benchmark(OperationsPerInvoke = Passes)]
    [BenchmarkCategory("Relay")]
    public int ContractRelay() => LoopContract(frame: true);

    /// <summary>(c) <see cref="IBenchChannel"/>, framing.</summary>
    [Benchmark(OperationsPerInvoke = Passes)]
    [BenchmarkCategory("Relay")]
    public int InterfaceRelay() => LoopInterface(frame: true);

    /// <summary>(d) Generic code over the class, framing.</summary>
    [Benchmark(OperationsPerInvoke = Passes)]
    [BenchmarkCategory("Relay")]
    public int GenericClassRelay() => LoopGeneric(_server, _client, frame: true);

    /// <summary>(e) Generic code over a struct wrapping the class, framing.</summary>
    [Benchmark(OperationsPerInvoke = Passes)]
    [BenchmarkCategory("Relay")]
    public int GenericStructRelay() => LoopGeneric(_serverRef, _clientRef, frame: true);

    // Each loop makes the passes with the channels held in one form; between the two halves of a pass the
    // send completes (in the proxy: on the loop, through the handler), and after a pass the window is
    // filled again. Those two steps are outside the contract and the same for every form.

    private int LoopSealed(bool frame)
    {
        int total = 0;
        for (int i = 0; i < Passes; i++)
        {
            int run = PumpSealed(_server, _client, frame);
            _client.CompleteSend();
            SentSealed(_server, _client, run);
            _server.Rewind();
            total += run;
        }

        return total;
    }

    private int LoopContract(bool frame)
    {
        int total = 0;
        for (int i = 0; i < Passes; i++)
        {
            int run = PumpContract(_serverContract, _clientContract, frame);
            _client.CompleteSend();
            SentContract(_serverContract, _clientContract, run);
            _server.Rewind();
            total += run;
        }

        return total;
    }

    private int LoopInterface(bool frame)
    {
        int total = 0;
        for (int i = 0; i < Passes; i++)
        {
            int run = PumpInterface(_serverInterface, _clientInterface, frame);
            _client.CompleteSend();
            SentInterface(_serverInterface, _clientInterface, run);
            _server.Rewind();
            total += run;
        }

        return total;
    }

    private int LoopGeneric<TChannel>(TChannel server, TChannel client, bool frame)
        where TChannel : IBenchChannel
    {
        int total = 0;
        for (int i = 0; i < Passes; i++)
        {
            int run = PumpGeneric(server, client, frame);
            _client.CompleteSend();
            SentGeneric(server, client, run);
            _server.Rewind();
            total += run;
        }

        return total;
    }

    // The Pump* and Sent* methods have the same bodies; only the channels' static type differs. Not
    // inlined, like PumpServer and OnServerRunSent, so the loops around them cannot hoist their loads.

    // PumpServer: nothing outstanding, frame the window, send the run to the client out of it.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private int PumpSealed(BenchChannel server, BenchChannel client, bool frame)
    {
        if (client.SendPending || server.ReceivePending)
        {
            return -1;
        }

        Span<byte> window = server.Window;
        int run = frame ? Frame(window) : window.Length;
        client.Send(server.Buffer!, server.Start, run);
        return run;
    }

    // OnServerRunSent: consume the run; TryReleaseServer's and ClientMidMessage's checks.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void SentSealed(BenchChannel server, BenchChannel client, int run)
    {
        server.Consume(run);
        if (server.Buffered == 0 && !server.SendPending && !client.ReceivePending && client.Parked == 0)
        {
            _released++;
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private int PumpContract(Channel server, Channel client, bool frame)
    {
        if (client.SendPending || server.ReceivePending)
        {
            return -1;
        }

        Span<byte> window = server.Window;
        int run = frame ? Frame(window) : window.Length;
        client.Send(server.Buffer!, server.Start, run);
        return run;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void SentContract(Channel server, Channel client, int run)
    {
        server.Consume(run);
        if (server.Buffered == 0 && !server.SendPending && !client.ReceivePending && client.Parked == 0)
        {
            _released++;
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private int PumpInterface(IBenchChannel server, IBenchChannel client, bool frame)
    {
        if (client.SendPending || server.ReceivePending)
        {
            return -1;
        }

        Span<byte> window = server.Window;
        int run = frame ? Frame(window) : window.Length;
        client.Send(server.Buffer!, server.Start, run);
        return run;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void SentInterface(IBenchChannel server, IBenchChannel client, int run)
    {
        server.Consume(run);
        if (server.Buffered == 0 && !server.SendPending && !client.ReceivePending && client.Parked == 0)
        {
            _released++;
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private int PumpGeneric<TChannel>(TChannel server, TChannel client, bool frame)
        where TChannel : IBenchChannel
    {
        if (client.SendPending || server.ReceivePending)
        {
            return -1;
        }

        Span<byte> window = server.Window;
        int run = frame ? Frame(window) : window.Length;
        client.Send(server.Buffer!, server.Start, run);
        return run;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void SentGeneric<TChannel>(TChannel server, TChannel client, int run)
        where TChannel : IBenchChannel
    {
        server.Consume(run);
        if (server.Buffered == 0 && !server.SendPending && !client.ReceivePending && client.Parked == 0)
        {
            _released++;
        }
    }

    // PumpServer's framing loop: the run to send, noting ReadyForQuery's status.
    private int Frame(ReadOnlySpan<byte> window)
    {
        int run = 0;
        while (true)
        {
            FrameStatus status = _framer.Scan(window.Slice(run), s_serverInspect, WindowSize, out int passThrough, out int length);
            run += passThrough;
            if (status == FrameStatus.Inspect)
            {
                ReadOnlySpan<byte> message = window.Slice(run, length);
                if (message[0] == (byte)BackendMessage.ReadyForQuery && length == MessageFramer.HeaderLength + sizeof(byte))
                {
                    _transactionStatus = (TransactionStatus)message[MessageFramer.HeaderLength];
                }

                run += length;
                continue;
            }

            if (status == FrameStatus.Invalid)
            {
                ThrowInvalid();
            }

            return run;
        }
    }

    private void Check(string benchmark, int forwarded, int expected)
    {
        bool sent = _client.SentBuffer == _server.Buffer && _client.SentOffset == 0 && _client.SentCount == _response.Length;
        bool framed = !benchmark.EndsWith("Relay", StringComparison.Ordinal) || _transactionStatus == TransactionStatus.Idle;
        if (forwarded != expected || !sent || !framed || _released != Passes || !_framer.AtBoundary || _server.Buffered != _response.Length)
        {
            throw new InvalidOperationException(
                $"{benchmark}: forwarded {forwarded} of {expected} bytes, send ({_client.SentOffset}, {_client.SentCount}), status {_transactionStatus}, released {_released}");
        }

        _client.CompleteSend();
        _client.ForgetSend();
        _released = 0;
        _transactionStatus = default;
    }

    [DoesNotReturn]
    private static void ThrowInvalid() => throw new InvalidOperationException("the framer rejected a message length");

    /// <summary>The contract as an interface, for comparison: the members the relay calls, as <see cref="Channel"/> has them.</summary>
    private interface IBenchChannel
    {
        byte[]? Buffer { get; }

        int Start { get; }

        int Buffered { get; }

        int Parked { get; }

        Span<byte> Window { get; }

        bool ReceivePending { get; }

        bool SendPending { get; }

        void Consume(int count);

        void Send(byte[] buffer, int offset, int count);
    }

    /// <summary>
    /// A channel without a socket: <see cref="Channel"/>'s window and flags, a send that only records its
    /// arguments until <see cref="CompleteSend"/>, and a window that <see cref="Rewind"/> fills again.
    /// Implements <see cref="IBenchChannel"/> with the members it inherits.
    /// </summary>
    private sealed class BenchChannel(EventLoop loop, IChannelHandler handler) : ClientChannel(loop, handler), IBenchChannel
    {
        public byte[]? SentBuffer { get; private set; }

        public int SentOffset { get; private set; }

        public int SentCount { get; private set; }

        public override void Send(byte[] buffer, int offset, int count)
        {
            SendPending = true;
            SentBuffer = buffer;
            SentOffset = offset;
            SentCount = count;
        }

        public void CompleteSend() => SendPending = false;

        public void ForgetSend()
        {
            SentBuffer = null;
            SentOffset = SentCount = 0;
        }

        public void Rewind() => Start = 0;

        public override void Receive() => throw new NotSupportedException("no socket");

        public override void Close() => Closed = true;

        public override void Dispose() => ReleaseBuffer();

        public override IDisposable? DetachForCancel() => null;
    }

    /// <summary>The class behind a struct, so that generic code over it is compiled for it alone.</summary>
    private readonly struct ChannelRef(BenchChannel channel) : IBenchChannel
    {
        public byte[]? Buffer => channel.Buffer;

        public int Start => channel.Start;

        public int Buffered => channel.Buffered;

        public int Parked => channel.Parked;

        public Span<byte> Window => channel.Window;

        public bool ReceivePending => channel.ReceivePending;

        public bool SendPending => channel.SendPending;

        public void Consume(int count) => channel.Consume(count);

        public void Send(byte[] buffer, int offset, int count) => channel.Send(buffer, offset, count);
    }

    /// <summary>Completions never come: the channels have no socket.</summary>
    private sealed class NoHandler : IChannelHandler
    {
        public void OnReceive(Channel channel, int bytes, SocketError error)
        {
        }

        public void OnSend(Channel channel, SocketError error)
        {
        }

        public void OnConnect(Channel channel, SocketError error)
        {
        }
    }
}
