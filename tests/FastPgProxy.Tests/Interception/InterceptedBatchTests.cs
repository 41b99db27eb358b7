using FastPgProxy.Interception;
using FastPgProxy.Tests.EndToEnd;
using Xunit;

namespace FastPgProxy.Tests.Interception;

/// <summary><see cref="InterceptedBatch.Measure"/>: which batches at the start of a client's window the proxy answers itself.</summary>
public class InterceptedBatchTests
{
    private const int Int4 = 23;
    private const int Int8 = 20;

    [Fact]
    public void An_intercepted_query_is_measured_alone()
    {
        byte[] query = RawProtocol.Query("select pg_backend_pid()");
        byte[] window = [.. query, .. RawProtocol.Query("select 1")];

        Assert.Equal(query.Length, InterceptedBatch.Measure(window));
    }

    [Theory]
    [InlineData("select 1")]
    [InlineData("select pg_cancel_backend($1)")]
    [InlineData("select pg_cancel_backend(3000000000)")]
    [InlineData("select pg_cancel_backend(7::bigint)")]
    public void Other_queries_are_not_intercepted(string sql)
    {
        Assert.Equal(0, InterceptedBatch.Measure(RawProtocol.Query(sql)));
    }

    [Fact]
    public void A_query_with_bytes_after_its_text_is_left_to_postgres()
    {
        byte[] query = RawProtocol.Message('Q', [.. RawProtocol.CString("select pg_backend_pid()"), (byte)'x']);

        Assert.Equal(0, InterceptedBatch.Measure(query));
    }

    [Fact]
    public void A_one_off_unnamed_statement_is_measured_up_to_its_sync()
    {
        byte[] batch = OneOff(RawProtocol.Parse("", "select pg_terminate_backend($1, $2)", Int4, Int8));
        byte[] window = [.. batch, .. RawProtocol.Query("select 1")];

        Assert.Equal(batch.Length, InterceptedBatch.Measure(window));
    }

    [Fact]
    public void An_incomplete_batch_is_not_measured()
    {
        byte[] batch = OneOff(RawProtocol.Parse("", "select pg_backend_pid()"));

        Assert.Equal(0, InterceptedBatch.Measure(batch.AsSpan(0, batch.Length - 1)));
        Assert.Equal(0, InterceptedBatch.Measure(batch.AsSpan(0, batch.Length - RawProtocol.Sync().Length)));
    }

    [Fact]
    public void Batches_that_postgres_must_see_are_not_intercepted()
    {
        // A named statement, a statement bound in a later round trip, a pid parameter declared int8.
        Assert.Equal(0, InterceptedBatch.Measure(OneOff(RawProtocol.Parse("s1", "select pg_backend_pid()"))));
        Assert.Equal(0, InterceptedBatch.Measure([.. RawProtocol.Parse("", "select pg_backend_pid()"), .. RawProtocol.Sync()]));
        Assert.Equal(0, InterceptedBatch.Measure(OneOff(RawProtocol.Parse("", "select pg_cancel_backend($1)", Int8))));
    }

    [Fact]
    public void Measuring_allocates_nothing()
    {
        byte[][] windows =
        [
            RawProtocol.Query("SELECT abalance FROM pgbench_accounts WHERE aid = 1"),
            RawProtocol.Query("select pg_backend_pid()"),
            OneOff(RawProtocol.Parse("", "select pg_cancel_backend($1)", Int4)),
            OneOff(RawProtocol.Parse("", "SELECT abalance FROM pgbench_accounts WHERE aid = $1", Int4)),
        ];
        int measured = 0;
        foreach (byte[] window in windows)
        {
            measured += InterceptedBatch.Measure(window) > 0 ? 1 : 0;
        }

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int round = 0; round < 100; round++)
        {
            foreach (byte[] window in windows)
            {
                measured += InterceptedBatch.Measure(window) > 0 ? 1 : 0;
            }
        }

        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        Assert.Equal(2 * 101, measured);
    }

    /// <summary>The batch a driver sends for a one-off command: Parse, Bind, Describe, Execute, Sync, unnamed throughout.</summary>
    private static byte[] OneOff(byte[] parse)
    {
        byte[]?[] values = ["7"u8.ToArray(), "0"u8.ToArray()];
        return
        [
            .. parse,
            .. RawProtocol.Bind("", "", [], values, []),
            .. RawProtocol.Describe('P', ""),
            .. RawProtocol.Execute(""),
            .. RawProtocol.Sync(),
        ];
    }
}
