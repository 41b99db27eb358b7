using BenchmarkDotNet.Attributes;
using FastPgProxy.Protocol;

namespace FastPgProxy.Benchmarks;

/// <summary>
/// The messages the proxy writes itself at the end of every client login, into a buffer it already
/// owns. Budget: 0 B allocated per operation.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(ShortJobConfig))]
public class PgWriterBenchmarks
{
    private const int BackendKeyDataLength = sizeof(byte) /* type */ + sizeof(int) /* length */ + sizeof(int) /* pid */ + sizeof(int) /* key */;
    private const int ReadyForQueryLength = sizeof(byte) /* type */ + sizeof(int) /* length */ + sizeof(byte) /* status */;

    private readonly byte[] _buffer = new byte[BackendKeyDataLength + ReadyForQueryLength];

    // A protocol 3.0 key (4 bytes); a 3.2 client's is 32.
    private readonly byte[] _key = [0x5E, 0xC2, 0xE7, 0xA1];

    /// <summary>BackendKeyData followed by ReadyForQuery (idle); returns the bytes written.</summary>
    [Benchmark]
    public int BackendKeyDataAndReadyForQuery()
    {
        var writer = new PgWriter(_buffer);
        writer.WriteBackendKeyData(processId: 4_242, secretKey: _key);
        writer.WriteReadyForQuery(TransactionStatus.Idle);
        return writer.Position;
    }
}
