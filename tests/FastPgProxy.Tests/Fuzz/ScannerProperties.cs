using System.Text;
using CsCheck;
using Xunit;

namespace FastPgProxy.Tests.Fuzz;

/// <summary>
/// <see cref="FastPgProxy.Interception.QueryScanner"/> against <see cref="ScannerReference"/>: generated calls are
/// accepted and read exactly; near misses, mutations and random SQL are read as the reference reads them, and
/// whatever is rejected is left as it was (see <see cref="ScannerOracle"/>).
/// </summary>
public class ScannerProperties
{
    [Fact]
    public void Generated_calls_are_accepted_and_read_exactly()
    {
        SqlGen.Accepted.Sample(
            sql =>
            {
                byte[] bytes = sql.Bytes;
                ExpectedCall? actual = ScannerOracle.Scan(bytes);
                Property.Require(actual is not null, $"the scanner rejected {sql.Call}: {ScannerOracle.Show(bytes)}");
                Property.RequireEqual(sql.Call, actual, $"reading of {ScannerOracle.Show(bytes)}");
                Property.RequireEqual(sql.Call, ScannerReference.Match(bytes), $"the reference's reading of {ScannerOracle.Show(bytes)}");
            },
            iter: FuzzSettings.Iterations(20_000),
            print: sql => ScannerOracle.Show(sql.Bytes));
    }

    [Fact]
    public void Near_misses_are_read_as_the_reference_reads_them()
    {
        SqlGen.NearMiss.Sample(
            sql => { ScannerOracle.Check(Encoding.UTF8.GetBytes(sql)); },
            iter: FuzzSettings.Iterations(20_000),
            print: sql => ScannerOracle.Show(Encoding.UTF8.GetBytes(sql)));
    }

    [Fact]
    public void Mutated_calls_are_read_as_the_reference_reads_them()
    {
        Mutation.Mutated(SqlGen.Accepted.Select(s => s.Bytes), SqlGen.Tokens).Sample(
            sql => { ScannerOracle.Check(sql); },
            iter: FuzzSettings.Iterations(40_000),
            print: ScannerOracle.Show);
    }

    [Fact]
    public void Token_soup_is_read_as_the_reference_reads_it()
    {
        // Sequences of the grammar's own tokens, run together or apart, hit its corners far more often than random bytes.
        byte[] select = "select"u8.ToArray();
        Gen<byte[]> token = Gen.Frequency((1, Gen.Const(select)), (6, Gen.OneOf(SqlGen.Tokens)));
        Gen<byte[]> separator = Gen.Frequency((2, Gen.Const(Array.Empty<byte>())), (2, Gen.Const(" "u8.ToArray())), (1, Gen.OneOf(SqlGen.Tokens)));
        Gen.Select(token, separator).Array[1, 14]
            .Select(parts => parts.SelectMany(p => p.Item1.Concat(p.Item2)).ToArray())
            .Sample(sql => { ScannerOracle.Check(sql); }, iter: FuzzSettings.Iterations(40_000), print: ScannerOracle.Show);
    }

    [Fact]
    public void Random_bytes_are_read_as_the_reference_reads_them()
    {
        Gen.Byte.Array[0, 60].Sample(sql => { ScannerOracle.Check(sql); }, iter: FuzzSettings.Iterations(20_000), print: ScannerOracle.Show);
    }
}
