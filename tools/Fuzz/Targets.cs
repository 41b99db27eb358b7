using System.Buffers.Binary;
using System.Text;
using FastPgProxy.Tests.Fuzz;

namespace FastPgProxy.Tools.Fuzz;

/// <summary>
/// The fuzz targets: each takes any bytes, runs the code under test against the oracles the property tests use
/// (tests/FastPgProxy.Tests/Fuzz/Oracles) and throws on any property violation or unexpected exception.
/// </summary>
internal static class Targets
{
    /// <summary>Bytes of a framer input that choose the relay's setup (see <see cref="FramerSetup.FromBytes"/>); the rest is the stream.</summary>
    public const int FramerSetupBytes = 9;

    public static readonly IReadOnlyDictionary<string, Action<byte[]>> All = new Dictionary<string, Action<byte[]>>(StringComparer.Ordinal)
    {
        ["framer"] = Framer,
        ["startup"] = Startup,
        ["scram"] = Scram,
        ["scanner"] = Scanner,
    };

    /// <summary>MessageFramer through the relay's window against the header-by-header reference.</summary>
    public static void Framer(byte[] input)
    {
        int split = Math.Min(FramerSetupBytes, input.Length);
        FramerOracle.Check(input[split..], FramerSetup.FromBytes(input[..split]));
    }

    /// <summary>Start-up packet header, StartupMessage parameters and CancelRequest, on the packet and on the raw bytes.</summary>
    public static void Startup(byte[] input)
    {
        StartupOracle.Check(input);
        StartupOracle.CheckParameters(input);
        StartupOracle.CheckCancel(input);
    }

    private static readonly byte[] Md5Salt = [0x01, 0x02, 0x03, 0x04];

    /// <summary>
    /// A SCRAM exchange (client-first, NUL, client-final; <c>p=!</c> stands for the right proof), and the same
    /// bytes as a SASLInitialResponse and as a PasswordMessage answering an MD5 challenge.
    /// </summary>
    public static void Scram(byte[] input)
    {
        int nul = Array.IndexOf(input, (byte)0);
        byte[] first = nul < 0 ? input : input[..nul];
        byte[] final = nul < 0 ? [] : input[(nul + 1)..];
        AuthOracle.CheckExchange(first, final);
        AuthOracle.CheckSaslInitialResponse(input);
        AuthOracle.CheckPasswordMessage("user", "secret", Md5Salt, input);
    }

    /// <summary>QueryScanner against the tokenizer-based reference.</summary>
    public static void Scanner(byte[] input) => ScannerOracle.Check(input);

    /// <summary>Starting inputs for each target: valid messages a mutation can work from.</summary>
    public static IEnumerable<byte[]> Seeds(string target) => target switch
    {
        "framer" => FramerSeeds(),
        "startup" => StartupSeeds(),
        "scram" => ScramSeeds(),
        _ => ScannerSeeds(),
    };

    private static byte[] Message(char type, int bodyLength, byte fill = 0x41)
    {
        var m = new byte[5 + bodyLength];
        m[0] = (byte)type;
        BinaryPrimitives.WriteInt32BigEndian(m.AsSpan(1), 4 + bodyLength);
        m.AsSpan(5).Fill(fill);
        return m;
    }

    private static IEnumerable<byte[]> FramerSeeds()
    {
        byte[] small = [.. Message('1', 0), .. Message('T', 30), .. Message('D', 20), .. Message('S', 25), .. Message('C', 9), .. Message('Z', 1, (byte)'I')];
        byte[] client = [.. Message('Q', 12), .. Message('P', 40), .. Message('B', 20), .. Message('E', 9), .. Message('S', 0), .. Message('X', 0)];
        byte[] large = [.. Message('D', 40_000), .. Message('Z', 1, (byte)'T'), .. Message('Q', 32_763), .. Message('B', 32_764)];
        yield return [0, 0, 0, 0, 0, 0, 0, 0, 0, .. small];
        yield return [2, 0, 0, 0, 7, 1, 3, 5, 9, .. small];
        yield return [1, 1, 0, 0, 200, 16, 50, 0, 0, .. client];
        yield return [1, 1, 0, 2, 3, 4, 5, 6, 7, .. client];
        yield return [4, 3, 2, 0, 255, 255, 255, 100, 100, .. large];
        yield return [5, 1, 0, 0, 1, 0, 0, 1, 1, .. Message('Q', 4), 0x51, 0, 0, 0, 3];
    }

    private static byte[] Startup(int code, params string[] pairs)
    {
        var body = new List<byte>();
        foreach (string s in pairs)
        {
            body.AddRange(Encoding.UTF8.GetBytes(s));
            body.Add(0);
        }

        body.Add(0);
        var packet = new byte[8 + body.Count];
        BinaryPrimitives.WriteInt32BigEndian(packet, packet.Length);
        BinaryPrimitives.WriteInt32BigEndian(packet.AsSpan(4), code);
        body.CopyTo(packet, 8);
        return packet;
    }

    private static IEnumerable<byte[]> StartupSeeds()
    {
        yield return Startup(3 << 16, "user", "alice", "database", "db", "application_name", "psql");
        yield return Startup((3 << 16) | 2, "user", "bob", "_pq_.x", "1");
        yield return Startup(80877103);
        yield return [0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 42, 1, 2, 3, 4];
        yield return [0, 0, 0, 44, 4, 210, 22, 46, 0, 0, 0, 42, .. Enumerable.Range(0, 32).Select(i => (byte)i)];
    }

    private static IEnumerable<byte[]> ScramSeeds()
    {
        yield return Encoding.ASCII.GetBytes($"n,,n=,r=fyko+d2lbbFgONRv9qkxdawL\0c=biws,r=fyko+d2lbbFgONRv9qkxdawL{AuthOracle.ServerNonce},p=!");
        yield return Encoding.ASCII.GetBytes($"y,,n=user,r=abc,x=1\0c=eSws,r=abc{AuthOracle.ServerNonce},e=2,p=!");
        yield return Encoding.ASCII.GetBytes($"n,,n=u,r=abc\0c=biws,r=abc{AuthOracle.ServerNonce},p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        yield return [.. "SCRAM-SHA-256"u8, 0, 0, 0, 0, 12, .. "n,,n=,r=abcd"u8];
        yield return [.. AuthOracle.Md5Response("user", "secret", Md5Salt), 0];
    }

    private static readonly string[] ScannerSeedTexts =
    [
        "select pg_backend_pid()",
        "SELECT pg_cancel_backend(-5::int) AS \"x\";",
        "/* c */ select pg_catalog.pg_terminate_backend(($1)::int8, 500) t -- x",
        "select pg_terminate_backend(+2147483647, null::bigint);;",
        "select pg_backend_pid() from t",
        "select 'pg_backend_pid()'",
    ];

    private static IEnumerable<byte[]> ScannerSeeds() => ScannerSeedTexts.Select(Encoding.UTF8.GetBytes);
}
