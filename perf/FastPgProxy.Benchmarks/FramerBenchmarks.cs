using System.Diagnostics.CodeAnalysis;
using BenchmarkDotNet.Attributes;
using FastPgProxy.Protocol;

namespace FastPgProxy.Benchmarks;

/// <summary>
/// <see cref="MessageFramer.Scan"/> driven the way the Relay drives it: the bytes of a
/// receive window are scanned, an inspected message is handled and scanning continues right after it,
/// and at NeedMore the run is forwarded and the window refilled. Budget: 0 B allocated per operation.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(ShortJobConfig))]
public class FramerBenchmarks
{
    /// <summary>Receive buffer size of the proxy's loops (ProxyServer.BufferSize), also the inspect limit.</summary>
    private const int WindowSize = 32 * 1024;

    // RowDescription, DataRow, CommandComplete, ReadyForQuery.
    private const int PgbenchResponseMessages = 4;

    private const int SmallRows = 100;

    private const int LargeValueLength = 1024 * 1024;

    // Backend messages the relay looks into: ReadyForQuery, ParameterStatus, ErrorResponse
    // (Relay.s_serverInspect).
    private static readonly MessageTypeSet s_serverInspect = MessageTypeSet.None
        .With((byte)BackendMessage.ReadyForQuery)
        .With((byte)BackendMessage.ParameterStatus)
        .With((byte)BackendMessage.ErrorResponse);

    // Client messages the relay acts on: Terminate only (Relay.s_clientInspect).
    private static readonly MessageTypeSet s_clientInspect = MessageTypeSet.None
        .With((byte)FrontendMessage.Terminate);

    private byte[] _pgbenchResponse = [];
    private byte[] _smallRowsResponse = [];
    private byte[] _largeRowResponse = [];
    private byte[] _bindExecuteSync = [];
    private byte[] _simpleQuery = [];

    // What the handlers of inspected messages record, as the relay records them on the session.
    private TransactionStatus _transactionStatus;
    private int _inspected;

    /// <summary>Builds the streams and checks that each benchmark frames all of its stream.</summary>
    [GlobalSetup]
    public void Setup()
    {
        _pgbenchResponse = WireStreams.PgbenchSelectResponse();
        _smallRowsResponse = WireStreams.SmallRowsResponse(SmallRows);
        _largeRowResponse = WireStreams.LargeRowResponse(LargeValueLength);
        _bindExecuteSync = WireStreams.BindExecuteSync();
        _simpleQuery = WireStreams.SimpleQuery();

        Check(nameof(PgbenchSelectResponse), PgbenchSelectResponse(), _pgbenchResponse.Length, expectInspected: 1);
        Check(nameof(SmallDataRows), SmallDataRows(), _smallRowsResponse.Length, expectInspected: 1);
        Check(nameof(LargeDataRowStreamed), LargeDataRowStreamed(), _largeRowResponse.Length, expectInspected: 1);
        Check(nameof(ClientBindExecuteSync), ClientBindExecuteSync(), _bindExecuteSync.Length, expectInspected: 0);
        Check(nameof(ClientSimpleQuery), ClientSimpleQuery(), _simpleQuery.Length, expectInspected: 0);
    }

    /// <summary>(a) One pgbench -S response, framed with the server inspect set; time per run.</summary>
    [Benchmark]
    public int PgbenchSelectResponse() => Relay(_pgbenchResponse, s_serverInspect);

    /// <summary>(a) The same work, reported per message (four per run).</summary>
    [Benchmark(OperationsPerInvoke = PgbenchResponseMessages)]
    public int PgbenchSelectResponsePerMessage() => Relay(_pgbenchResponse, s_serverInspect);

    /// <summary>(b) RowDescription, 100 small DataRows, CommandComplete, ReadyForQuery.</summary>
    [Benchmark]
    public int SmallDataRows() => Relay(_smallRowsResponse, s_serverInspect);

    /// <summary>(c) A 1 MiB DataRow (with its RowDescription, CommandComplete, ReadyForQuery) through a 32 KiB window.</summary>
    [Benchmark]
    public int LargeDataRowStreamed() => Relay(_largeRowResponse, s_serverInspect);

    /// <summary>(d) Bind, Execute, Sync from a client, framed with the client inspect set.</summary>
    [Benchmark]
    public int ClientBindExecuteSync() => Relay(_bindExecuteSync, s_clientInspect);

    /// <summary>(d) A Simple Query from a client, framed with the client inspect set.</summary>
    [Benchmark]
    public int ClientSimpleQuery() => Relay(_simpleQuery, s_clientInspect);

    /// <summary>
    /// Feeds <paramref name="stream"/> through a <see cref="WindowSize"/> receive buffer: each window is
    /// what is left unforwarded plus newly received bytes, up to the buffer's size. Returns the bytes
    /// forwarded, which is the whole stream when it frames cleanly.
    /// </summary>
    private int Relay(ReadOnlySpan<byte> stream, MessageTypeSet inspect)
    {
        MessageFramer framer = default;
        int forwarded = 0;
        while (forwarded < stream.Length)
        {
            int received = Math.Min(stream.Length - forwarded, WindowSize);
            int run = Pump(ref framer, stream.Slice(forwarded, received), inspect);
            if (run == 0)
            {
                // A window that yields nothing can only be a truncated stream; Setup rejects that.
                break;
            }

            forwarded += run;
        }

        return forwarded;
    }

    // One pass of Relay.PumpServer over a window: the length of the run it would send.
    private int Pump(ref MessageFramer framer, ReadOnlySpan<byte> window, MessageTypeSet inspect)
    {
        int run = 0;
        while (true)
        {
            FrameStatus status = framer.Scan(window.Slice(run), inspect, WindowSize, out int passThrough, out int length);
            run += passThrough;
            if (status == FrameStatus.Inspect)
            {
                OnInspected(window.Slice(run, length));
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

    // The allocation-free part of Relay.OnServerMessage: ReadyForQuery's transaction status.
    private void OnInspected(ReadOnlySpan<byte> message)
    {
        _inspected++;
        if (message[0] == (byte)BackendMessage.ReadyForQuery && message.Length == MessageFramer.HeaderLength + sizeof(byte))
        {
            _transactionStatus = (TransactionStatus)message[MessageFramer.HeaderLength];
        }
    }

    private void Check(string benchmark, int forwarded, int expected, int expectInspected)
    {
        int inspected = _inspected;
        TransactionStatus status = _transactionStatus;
        _inspected = 0;
        _transactionStatus = default;
        if (forwarded != expected || inspected != expectInspected || (expectInspected > 0 && status != TransactionStatus.Idle))
        {
            throw new InvalidOperationException(
                $"{benchmark}: forwarded {forwarded} of {expected} bytes, inspected {inspected} messages (expected {expectInspected}), status {status}");
        }
    }

    [DoesNotReturn]
    private static void ThrowInvalid() => throw new InvalidOperationException("the framer rejected a message length");
}
