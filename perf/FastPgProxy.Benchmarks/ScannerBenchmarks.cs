using System.Diagnostics.CodeAnalysis;
using BenchmarkDotNet.Attributes;
using FastPgProxy.Interception;
using FastPgProxy.Protocol;

namespace FastPgProxy.Benchmarks;

/// <summary>
/// <see cref="QueryScanner.TryMatch"/> on the SQL text of Query and Parse messages: an ordinary query it
/// must reject at its first byte that cannot match, and each recognised form; plus the whole answer to
/// <c>SELECT pg_backend_pid()</c> (scan, column name, RowDescription, DataRow, CommandComplete,
/// ReadyForQuery). The scanner runs on every Query and Parse a client sends. Budget: 0 B allocated per
/// operation.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(ShortJobConfig))]
public class ScannerBenchmarks
{
    /// <summary>A 100-byte ordinary query, as an application sends it; the scanner stops at "abalance".</summary>
    private static ReadOnlySpan<byte> OrdinarySql =>
        "SELECT abalance, bid, filler FROM pgbench_accounts WHERE aid = $1 AND bid = $2 ORDER BY aid LIMIT 1;"u8;

    private static ReadOnlySpan<byte> BackendPidSql => "SELECT pg_backend_pid()"u8;

    private static ReadOnlySpan<byte> CancelLiteralSql => "SELECT pg_cancel_backend(12345)"u8;

    private static ReadOnlySpan<byte> CancelParameterSql =>
        "/* app: billing */ SELECT pg_catalog.pg_cancel_backend($1::bigint) AS \"Who\"; -- from the console"u8;

    private static ReadOnlySpan<byte> TerminateTimeoutSql => "SELECT pg_terminate_backend(12345, 500)"u8;

    // RowDescription with a 63-byte name, DataRow, CommandComplete and ReadyForQuery fit many times over.
    private readonly byte[] _reply = new byte[512];

    private byte[] _ordinary = [];
    private byte[] _backendPid = [];
    private byte[] _cancelLiteral = [];
    private byte[] _cancelParameter = [];
    private byte[] _terminateTimeout = [];

    /// <summary>Copies the statements to arrays and checks what each benchmark must see.</summary>
    [GlobalSetup]
    public void Setup()
    {
        _ordinary = OrdinarySql.ToArray();
        _backendPid = BackendPidSql.ToArray();
        _cancelLiteral = CancelLiteralSql.ToArray();
        _cancelParameter = CancelParameterSql.ToArray();
        _terminateTimeout = TerminateTimeoutSql.ToArray();

        Check(_ordinary.Length == 100, "the ordinary query is 100 bytes");
        Check(!OrdinarySelect(), "the ordinary query does not match");
        Check(BackendPid() == (int)InterceptedFunction.BackendPid, "pg_backend_pid() matches");
        Check(CancelLiteral() == 12345, "pg_cancel_backend(12345) matches");
        Check(CancelParameterCastAliasComments() == 1, "pg_cancel_backend($1::bigint) AS \"Who\" matches");
        Check(TerminateWithTimeout() == 500, "pg_terminate_backend(12345, 500) matches");
        Check(AnswerBackendPid() > 0, "the pg_backend_pid() answer is written");
    }

    /// <summary>A 100-byte SELECT that is not intercepted.</summary>
    [Benchmark(Baseline = true)]
    public bool OrdinarySelect() => QueryScanner.TryMatch(_ordinary, out _);

    /// <summary><c>SELECT pg_backend_pid()</c>; returns the function.</summary>
    [Benchmark]
    public int BackendPid()
        => QueryScanner.TryMatch(_backendPid, out InterceptedCall call) ? (int)call.Function : -1;

    /// <summary><c>SELECT pg_cancel_backend(12345)</c>; returns the pid.</summary>
    [Benchmark]
    public long CancelLiteral()
        => QueryScanner.TryMatch(_cancelLiteral, out InterceptedCall call) ? call.Argument.Value : -1;

    /// <summary>A comment, <c>pg_catalog.</c>, <c>$1::bigint</c>, a quoted alias, <c>;</c> and a line comment; returns the parameter number.</summary>
    [Benchmark]
    public int CancelParameterCastAliasComments()
        => QueryScanner.TryMatch(_cancelParameter, out InterceptedCall call) ? call.Argument.ParameterIndex : -1;

    /// <summary><c>SELECT pg_terminate_backend(12345, 500)</c>; returns the timeout.</summary>
    [Benchmark]
    public long TerminateWithTimeout()
        => QueryScanner.TryMatch(_terminateTimeout, out InterceptedCall call) ? call.Timeout.Value : -1;

    /// <summary>
    /// Everything the proxy does to answer <c>SELECT pg_backend_pid()</c> itself: scan, column name, and
    /// the four reply messages; returns the bytes written.
    /// </summary>
    [Benchmark]
    public int AnswerBackendPid()
    {
        if (!QueryScanner.TryMatch(_backendPid, out InterceptedCall call))
        {
            return -1;
        }

        Span<byte> name = stackalloc byte[QueryScanner.MaxIdentifierLength];
        int nameLength = call.CopyColumnName(_backendPid, name);
        var writer = new PgWriter(_reply);
        InterceptReplies.WriteRowDescription(ref writer, name.Slice(0, nameLength), TypeOids.Int4, InterceptReplies.TextFormat);
        InterceptReplies.WriteDataRowInt4(ref writer, 4_242, InterceptReplies.TextFormat);
        InterceptReplies.WriteCommandComplete(ref writer, InterceptReplies.SelectOneTag);
        writer.WriteReadyForQuery(TransactionStatus.Idle);
        return writer.Position;
    }

    private static void Check(bool condition, string what)
    {
        if (!condition)
        {
            ThrowSetup(what);
        }
    }

    [DoesNotReturn]
    private static void ThrowSetup(string what) => throw new InvalidOperationException("setup check failed: " + what);
}
