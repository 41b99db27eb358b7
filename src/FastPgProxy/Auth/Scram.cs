using System.Buffers;
using System.Buffers.Text;
using System.Diagnostics.CodeAnalysis;
using System.Security.Cryptography;
using System.Text;

namespace FastPgProxy.Auth;

/// <summary>
/// SCRAM-SHA-256 constants and key derivations shared by <see cref="ScramServer"/>, <see cref="ScramClient"/>
/// and <see cref="ScramVerifier"/> (RFC 5802 section 3, RFC 7677).
/// </summary>
internal static class Scram
{
    /// <summary>The SASL mechanism name sent in AuthenticationSASL and SASLInitialResponse.</summary>
    public const string MechanismName = "SCRAM-SHA-256";

    /// <summary><see cref="MechanismName"/> as the bytes on the wire.</summary>
    public static ReadOnlySpan<byte> MechanismNameUtf8 => "SCRAM-SHA-256"u8;

    /// <summary>
    /// The SASL mechanism name of SCRAM-SHA-256 with channel binding (RFC 5802 section 4: the <c>-PLUS</c>
    /// variant), which PostgreSQL offers over TLS only.
    /// </summary>
    public static ReadOnlySpan<byte> PlusMechanismNameUtf8 => "SCRAM-SHA-256-PLUS"u8;

    /// <summary>
    /// The gs2 header of a client that binds to the TLS channel with <c>tls-server-end-point</c>, the only
    /// channel binding type PostgreSQL supports: <c>gs2-cbind-flag "," [authzid] ","</c> with no authzid.
    /// </summary>
    public static ReadOnlySpan<byte> TlsServerEndPointGs2Header => "p=tls-server-end-point,,"u8;

    /// <summary>Length of SHA-256 output, and so of every SCRAM key, signature and proof.</summary>
    public const int KeyLength = 32;

    /// <summary>Random bytes in a nonce before base64, as PostgreSQL's SCRAM_RAW_NONCE_LEN.</summary>
    public const int NonceByteCount = 18;

    /// <summary>Salt length of a new verifier, as PostgreSQL's SCRAM_DEFAULT_SALT_LEN.</summary>
    public const int DefaultSaltLength = 16;

    /// <summary>Iteration count of a new verifier, as PostgreSQL's default <c>scram_iterations</c>.</summary>
    public const int DefaultIterations = 4096;

    /// <summary>
    /// The largest iteration count the client side accepts from a server. Each iteration is an HMAC on the
    /// event loop, so a hostile or misconfigured server must not be able to ask for minutes of work.
    /// </summary>
    public const int MaxClientIterations = 10_000_000;

    /// <summary>SaltedPassword := Hi(Normalize(password), salt, i), which is PBKDF2 with HMAC-SHA-256.</summary>
    public static byte[] SaltedPassword(ReadOnlySpan<byte> preparedPassword, ReadOnlySpan<byte> salt, int iterations)
        => Rfc2898DeriveBytes.Pbkdf2(preparedPassword, salt, iterations, HashAlgorithmName.SHA256, KeyLength);

    /// <summary>ClientKey := HMAC(SaltedPassword, "Client Key").</summary>
    public static byte[] ClientKey(ReadOnlySpan<byte> saltedPassword)
        => HMACSHA256.HashData(saltedPassword, "Client Key"u8);

    /// <summary>ServerKey := HMAC(SaltedPassword, "Server Key").</summary>
    public static byte[] ServerKey(ReadOnlySpan<byte> saltedPassword)
        => HMACSHA256.HashData(saltedPassword, "Server Key"u8);

    /// <summary>StoredKey := H(ClientKey).</summary>
    public static byte[] StoredKey(ReadOnlySpan<byte> clientKey) => SHA256.HashData(clientKey);

    /// <summary>
    /// AuthMessage := client-first-message-bare + "," + server-first-message + "," +
    /// client-final-message-without-proof (RFC 5802 section 3).
    /// </summary>
    public static byte[] AuthMessage(
        ReadOnlySpan<byte> clientFirstBare, ReadOnlySpan<byte> serverFirst, ReadOnlySpan<byte> clientFinalWithoutProof)
    {
        var message = new byte[clientFirstBare.Length + 1 + serverFirst.Length + 1 + clientFinalWithoutProof.Length];
        var rest = message.AsSpan();
        clientFirstBare.CopyTo(rest);
        rest = rest[clientFirstBare.Length..];
        rest[0] = (byte)',';
        serverFirst.CopyTo(rest[1..]);
        rest = rest[(1 + serverFirst.Length)..];
        rest[0] = (byte)',';
        clientFinalWithoutProof.CopyTo(rest[1..]);
        return message;
    }

    /// <summary>
    /// Writes <c>left XOR right</c> to <paramref name="destination"/>: ClientProof from ClientKey and
    /// ClientSignature, and back.
    /// </summary>
    public static void Xor(ReadOnlySpan<byte> left, ReadOnlySpan<byte> right, Span<byte> destination)
    {
        for (var i = 0; i < destination.Length; i++)
        {
            destination[i] = (byte)(left[i] ^ right[i]);
        }
    }

    /// <summary>A fresh nonce: <see cref="NonceByteCount"/> bytes from the system CSPRNG, base64.</summary>
    public static string NewNonce()
    {
        Span<byte> raw = stackalloc byte[NonceByteCount];
        RandomNumberGenerator.Fill(raw);
        return Convert.ToBase64String(raw);
    }

    /// <summary>
    /// True when <paramref name="nonce"/> is a non-empty run of printable ASCII other than comma
    /// (RFC 5802 section 7: <c>printable = %x21-2B / %x2D-7E</c>).
    /// </summary>
    public static bool IsValidNonce(ReadOnlySpan<byte> nonce)
    {
        if (nonce.IsEmpty)
        {
            return false;
        }

        foreach (var b in nonce)
        {
            if (b is < 0x21 or > 0x7E or (byte)',')
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>True when <paramref name="nonce"/> is a valid nonce by <see cref="IsValidNonce(ReadOnlySpan{byte})"/>.</summary>
    public static bool IsValidNonce(string nonce)
        => Ascii.IsValid(nonce) && IsValidNonce(Encoding.ASCII.GetBytes(nonce));

    /// <summary>
    /// Decodes strict base64 (RFC 4648 alphabet with padding, no whitespace, which
    /// <see cref="Base64.DecodeFromUtf8"/> would otherwise skip).
    /// </summary>
    public static bool TryDecodeBase64(ReadOnlySpan<byte> utf8, [NotNullWhen(true)] out byte[]? bytes)
    {
        bytes = null;
        foreach (var b in utf8)
        {
            if (!IsBase64Char(b))
            {
                return false;
            }
        }

        var decoded = new byte[Base64.GetMaxDecodedFromUtf8Length(utf8.Length)];
        if (Base64.DecodeFromUtf8(utf8, decoded, out _, out var written) != OperationStatus.Done)
        {
            return false;
        }

        bytes = decoded.AsSpan(0, written).ToArray();
        return true;
    }

    /// <summary>Decodes strict base64 text, as <see cref="TryDecodeBase64(ReadOnlySpan{byte}, out byte[])"/>.</summary>
    public static bool TryDecodeBase64(ReadOnlySpan<char> text, [NotNullWhen(true)] out byte[]? bytes)
    {
        bytes = null;
        Span<byte> utf8 = text.Length <= 256 ? stackalloc byte[text.Length] : new byte[text.Length];
        for (var i = 0; i < text.Length; i++)
        {
            if (text[i] > 0x7F)
            {
                return false;
            }

            utf8[i] = (byte)text[i];
        }

        return TryDecodeBase64(utf8, out bytes);
    }

    private static bool IsBase64Char(byte b)
        => b is (>= (byte)'A' and <= (byte)'Z') or (>= (byte)'a' and <= (byte)'z') or (>= (byte)'0' and <= (byte)'9')
            or (byte)'+' or (byte)'/' or (byte)'=';
}

/// <summary>
/// Reads the comma-separated <c>x=value</c> attributes of a SCRAM message in order (RFC 5802 section 5.1).
/// Values are returned as slices of the message; nothing is copied.
/// </summary>
internal ref struct ScramAttributeReader
{
    private readonly ReadOnlySpan<byte> _message;
    private int _position;

    /// <summary>Starts reading at the first attribute of <paramref name="message"/>.</summary>
    public ScramAttributeReader(ReadOnlySpan<byte> message)
    {
        _message = message;
        _position = 0;
    }

    /// <summary>Offset just past the last attribute read: at its terminating comma, or the end.</summary>
    public readonly int Position => _position;

    /// <summary>True once every byte of the message has been read.</summary>
    public readonly bool AtEnd => _position == _message.Length;

    /// <summary>
    /// Reads the next attribute. False at the end of the message or when the next bytes are not
    /// <c>[,]ALPHA "=" value</c>; <see cref="AtEnd"/> tells the two apart.
    /// </summary>
    public bool TryRead(out byte name, out ReadOnlySpan<byte> value)
    {
        name = 0;
        value = default;
        var rest = _message[_position..];
        var start = _position;
        if (start > 0)
        {
            // Every attribute after the first is preceded by the comma that ended the one before.
            if (rest.IsEmpty || rest[0] != (byte)',')
            {
                return false;
            }

            rest = rest[1..];
            start++;
        }

        if (rest.Length < 2 || !IsAsciiLetter(rest[0]) || rest[1] != (byte)'=')
        {
            return false;
        }

        name = rest[0];
        rest = rest[2..];
        var length = rest.IndexOf((byte)',');
        if (length < 0)
        {
            length = rest.Length;
        }

        value = rest[..length];
        _position = start + 2 + length;
        return true;
    }

    /// <summary>Reads the next attribute and requires it to be named <paramref name="expected"/>.</summary>
    public bool TryRead(byte expected, out ReadOnlySpan<byte> value)
        => TryRead(out var name, out value) && name == expected;

    private static bool IsAsciiLetter(byte b) => (uint)((b | 0x20) - 'a') <= 'z' - 'a';
}
