using System.Diagnostics.CodeAnalysis;
using System.Security.Cryptography;
using System.Text;

namespace FastPgProxy.Auth;

/// <summary>
/// PostgreSQL's MD5 password authentication (protocol 53.2, AuthenticationMD5Password): the client answers
/// the 4-byte salt with <c>"md5" + hex(md5(hex(md5(password + user)) + salt))</c>.
/// </summary>
[SuppressMessage("Security", "CA5351:Do Not Use Broken Cryptographic Algorithms",
    Justification = "MD5 is what the PostgreSQL protocol's md5 method is defined with.")]
internal static class Md5Auth
{
    /// <summary>Length of the salt in AuthenticationMD5Password.</summary>
    public const int SaltLength = 4;

    /// <summary>Length of the response in PasswordMessage, without its terminating NUL.</summary>
    public const int ResponseLength = 3 /* "md5" */ + 32 /* hex of a 16-byte MD5 digest */;

    private const int HexLength = 32;

    /// <summary>The stored form of a password, <c>"md5" + hex(md5(password + user))</c> (PostgreSQL's <c>pg_md5_encrypt</c>).</summary>
    public static string HashPassword(string user, string password)
    {
        ArgumentNullException.ThrowIfNull(user);
        ArgumentNullException.ThrowIfNull(password);
        var input = Encoding.UTF8.GetBytes(password + user);
        return "md5" + Convert.ToHexStringLower(MD5.HashData(input));
    }

    /// <summary>
    /// Writes the PasswordMessage answer to a salt: <c>"md5" + hex(md5(hash hex + salt))</c> as
    /// <see cref="ResponseLength"/> ASCII bytes.
    /// </summary>
    /// <param name="md5HashAscii">The stored form from <see cref="HashPassword"/>, as ASCII bytes.</param>
    /// <param name="salt4">The <see cref="SaltLength"/> salt bytes from AuthenticationMD5Password.</param>
    /// <param name="destination35">At least <see cref="ResponseLength"/> bytes.</param>
    public static void ComputeResponse(ReadOnlySpan<byte> md5HashAscii, ReadOnlySpan<byte> salt4, Span<byte> destination35)
    {
        if (md5HashAscii.Length != ResponseLength || !md5HashAscii.StartsWith("md5"u8))
        {
            ThrowArgument("Expected the 35-byte \"md5...\" hash.", nameof(md5HashAscii));
        }

        if (salt4.Length != SaltLength)
        {
            ThrowArgument("Expected a 4-byte salt.", nameof(salt4));
        }

        if (destination35.Length < ResponseLength)
        {
            ThrowArgument("The destination needs 35 bytes.", nameof(destination35));
        }

        Span<byte> input = stackalloc byte[HexLength + SaltLength];
        md5HashAscii[3..].CopyTo(input);
        salt4.CopyTo(input[HexLength..]);
        Span<byte> digest = stackalloc byte[MD5.HashSizeInBytes];
        MD5.HashData(input, digest);

        "md5"u8.CopyTo(destination35);
        var hex = destination35[3..ResponseLength];
        var digits = "0123456789abcdef"u8;
        for (var i = 0; i < digest.Length; i++)
        {
            hex[2 * i] = digits[digest[i] >> 4];
            hex[(2 * i) + 1] = digits[digest[i] & 0xF];
        }
    }

    /// <summary>
    /// Checks a client's PasswordMessage answer (without the terminating NUL) in constant time. Works from a
    /// <see cref="SecretKind.Plain"/> or <see cref="SecretKind.Md5"/> secret; false for a SCRAM verifier, which
    /// cannot answer an MD5 challenge, and for an empty password. <paramref name="user"/> must be the name the
    /// MD5 secret was made with, which is the login name of the startup packet.
    /// </summary>
    public static bool Verify(UserSecret secret, string user, ReadOnlySpan<byte> salt4, ReadOnlySpan<byte> clientResponse)
    {
        ArgumentNullException.ThrowIfNull(secret);
        ArgumentNullException.ThrowIfNull(user);
        if (salt4.Length != SaltLength || clientResponse.Length != ResponseLength)
        {
            return false;
        }

        Span<byte> hash = stackalloc byte[ResponseLength];
        switch (secret.Kind)
        {
            case SecretKind.Md5:
                Encoding.ASCII.GetBytes(secret.Raw, hash);
                break;
            case SecretKind.Plain when secret.Raw.Length > 0:
                Encoding.ASCII.GetBytes(HashPassword(user, secret.Raw), hash);
                break;
            default:
                return false;
        }

        Span<byte> expected = stackalloc byte[ResponseLength];
        ComputeResponse(hash, salt4, expected);
        return CryptographicOperations.FixedTimeEquals(expected, clientResponse);
    }

    [DoesNotReturn]
    private static void ThrowArgument(string message, string paramName) => throw new ArgumentException(message, paramName);
}
