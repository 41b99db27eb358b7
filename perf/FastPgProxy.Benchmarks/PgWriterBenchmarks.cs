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

    /// <summary>BackendKeyData followed by ReadyForQuery (idle); returns the bytes written.</summary>
    [Benchmark]
    public int BackendKeyDataAndReadyForQuery()
    {
        var writer = new PgWriter(_buffer);
        writer.WriteBackendKeyData(processId: 4_242, secretKey: 0x5EC2_E7A1);
        writer.WriteReadyForQuery(TransactionStatus.Idle);
        return writer.Position;
    }
}
