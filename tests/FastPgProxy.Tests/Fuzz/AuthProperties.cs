using System.Buffers.Binary;
using System.Text;
using CsCheck;
using FastPgProxy.Auth;
using Xunit;

namespace FastPgProxy.Tests.Fuzz;

/// <summary>SCRAM client-first and client-final in <see cref="ScramServer"/>, SASLInitialResponse, PasswordMessage and MD5 (see <see cref="AuthOracle"/>).</summary>
public class AuthProperties
{
    // Printable ASCII without the comma (RFC 5802 printable).
    private static readonly Gen<string> Nonce = Gen.Char['\u0021', '\u007e'].Where(c => c != ',').Array[1, 40].Select(c => new string(c));

    // saslname: any text, with ',' and '=' escaped as =2C and =3D.
    private static readonly Gen<string> UserName = Gen.Frequency(
        (3, Gen.Char["abcdefghijklmnopqrstuvwxyz,=_ "].Array[0, 12].Select(c => new string(c))),
        (1, Gen.Char['\u00a0', '\u30ff'].Array[0, 6].Select(c => new string(c))))
        .Select(u => u.Replace("=", "=3D", StringComparison.Ordinal).Replace(",", "=2C", StringComparison.Ordinal));

    // Extensions: a letter, '=', a value without commas (PostgreSQL ignores them; 'p' can only be the proof).
    private static readonly Gen<string> Extension = Gen.Select(
        Gen.Char["abdefghijklmoqstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"], Gen.Char["abc=xyz0123456789+/"].Array[0, 8],
        (name, value) => $",{name}={new string(value)}");

    internal static readonly Gen<(byte[] First, byte[] Final)> ValidExchange = Gen.Select(
        Gen.OneOf('n', 'y'), UserName, Nonce, Extension.Array[0, 2], Extension.Array[0, 2],
        (flag, user, nonce, firstExtensions, finalExtensions) =>
        {
            string gs2 = $"{flag},,";
            byte[] first = Encoding.UTF8.GetBytes($"{gs2}n={user},r={nonce}{string.Concat(firstExtensions)}");
            string binding = Convert.ToBase64String(Encoding.ASCII.GetBytes(gs2));
            byte[] final = Encoding.ASCII.GetBytes($"c={binding},r={nonce}{AuthOracle.ServerNonce}{string.Concat(finalExtensions)},p=!");
            return (first, final);
        });

    private static readonly byte[][] ScramTokens = [.. new[] { ",", "=", "n,,", "y,,", "p,,", "a=", "m=", "r=", "c=", "p=", "c=biws", "=2C", "==", "!" }.Select(Encoding.ASCII.GetBytes)];

    [Fact]
    public void Scram_exchanges_with_the_right_password_succeed_and_read_what_was_sent()
    {
        ValidExchange.Sample(
            (first, final) => Property.RequireEqual(ScramServerState.Succeeded, AuthOracle.CheckExchange(first, final), "outcome"),
            iter: FuzzSettings.Iterations(2_000));
    }

    [Fact]
    public void Scram_exchanges_with_a_wrong_proof_are_rejected_as_a_wrong_password()
    {
        Gen.Select(ValidExchange, Gen.Byte.Array[32]).Sample(
            (exchange, proof) =>
            {
                byte[] final = [.. exchange.Final.AsSpan(0, exchange.Final.Length - 1), .. Encoding.ASCII.GetBytes(Convert.ToBase64String(proof))];
                Property.RequireEqual(ScramServerState.ProofRejected, AuthOracle.CheckExchange(exchange.First, final), "outcome");
            },
            iter: FuzzSettings.Iterations(2_000));
    }

    [Fact]
    public void Mutated_scram_messages_parse_like_the_reference_and_never_throw()
    {
        Gen.Select(ValidExchange, Gen.Bool).SelectMany(t => Gen.Select(
            t.Item2 ? Mutation.Mutated(Gen.Const(t.Item1.First), ScramTokens) : Gen.Const(t.Item1.First),
            t.Item2 ? Gen.Const(t.Item1.Final) : Mutation.Mutated(Gen.Const(t.Item1.Final), ScramTokens)))
            .Sample((first, final) => { AuthOracle.CheckExchange(first, final); }, iter: FuzzSettings.Iterations(6_000));
    }

    [Fact]
    public void Sasl_initial_responses_parse_like_the_reference_and_never_throw()
    {
        Gen<byte[]> valid = Gen.Select(Gen.Frequency((4, Gen.Const(AuthOracle.Mechanism)), (1, Gen.Byte.Array[0, 16])), Gen.Byte.Array[0, 100], (mechanism, data) =>
        {
            var body = new byte[mechanism.Length + 1 + 4 + data.Length];
            mechanism.CopyTo(body, 0);
            BinaryPrimitives.WriteInt32BigEndian(body.AsSpan(mechanism.Length + 1), data.Length);
            data.CopyTo(body, mechanism.Length + 5);
            return body;
        });
        Gen.Frequency((2, valid), (3, Mutation.Mutated(valid)), (1, Gen.Byte.Array[0, 40]))
            .Sample(AuthOracle.CheckSaslInitialResponse, iter: FuzzSettings.Iterations(6_000));
    }

    [Fact]
    public void Md5_password_messages_pass_exactly_when_the_answer_is_right()
    {
        Gen<string> word = Gen.Char["abcdefghijklmnopqrstuvwxyzABC0123456789 é"].Array[0, 16].Select(c => new string(c));
        Gen.Select(word, word, Gen.Byte.Array[4], Gen.Int[0, 3]).Sample(
            (user, password, salt, how) =>
            {
                byte[] right = AuthOracle.Md5Response(user, password, salt);
                byte[] body = how switch
                {
                    0 => [.. right, 0],
                    1 => right, // without its NUL
                    2 => [.. right.AsSpan(0, 34), (byte)'0', 0],
                    _ => [.. right, 0, .. "junk"u8],
                };
                AuthOracle.CheckPasswordMessage(user, password, salt, body);
            },
            iter: FuzzSettings.Iterations(2_000));
        Gen.Select(Gen.Byte.Array[0, 50], Gen.Byte.Array[0, 6]).Sample(
            (body, salt) => AuthOracle.CheckPasswordMessage("user", "secret", salt, body),
            iter: FuzzSettings.Iterations(2_000));
    }
}
