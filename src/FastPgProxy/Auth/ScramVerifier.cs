using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Security.Cryptography;

namespace FastPgProxy.Auth;

/// <summary>
/// A SCRAM-SHA-256 verifier: what a server stores instead of the password (RFC 5802 section 3), in
/// PostgreSQL's text form <c>SCRAM-SHA-256$&lt;iterations&gt;:&lt;salt&gt;$&lt;StoredKey&gt;:&lt;ServerKey&gt;</c>
/// (the format of <c>pg_authid.rolpassword</c>, each binary field base64).
/// </summary>
internal sealed class ScramVerifier
{
    /// <summary>The text every verifier in PostgreSQL's format starts with.</summary>
    public const string Prefix = Scram.MechanismName + "$";

    private readonly byte[] _salt;
    private readonly byte[] _storedKey;
    private readonly byte[] _serverKey;

    private ScramVerifier(int iterations, byte[] salt, byte[] storedKey, byte[] serverKey)
    {
        Iterations = iterations;
        _salt = salt;
        _storedKey = storedKey;
        _serverKey = serverKey;
    }

    /// <summary>The PBKDF2 iteration count (<c>i=</c> in server-first-message).</summary>
    public int Iterations { get; }

    /// <summary>The salt (<c>s=</c> in server-first-message).</summary>
    public ReadOnlySpan<byte> Salt => _salt;

    /// <summary>StoredKey := H(ClientKey); checks a client's proof.</summary>
    public ReadOnlySpan<byte> StoredKey => _storedKey;

    /// <summary>ServerKey := HMAC(SaltedPassword, "Server Key"); signs the server-final-message.</summary>
    public ReadOnlySpan<byte> ServerKey => _serverKey;

    /// <summary>
    /// Derives a verifier for <paramref name="password"/> with a fresh random
    /// <see cref="Scram.DefaultSaltLength"/>-byte salt, as PostgreSQL's <c>pg_be_scram_build_secret</c>.
    /// </summary>
    public static ScramVerifier FromPassword(string password, int iterations = Scram.DefaultIterations)
    {
        Span<byte> salt = stackalloc byte[Scram.DefaultSaltLength];
        RandomNumberGenerator.Fill(salt);
        return FromPassword(password, salt, iterations);
    }

    /// <summary>Derives the verifier for <paramref name="password"/> with the given salt and iteration count.</summary>
    public static ScramVerifier FromPassword(string password, ReadOnlySpan<byte> salt, int iterations)
    {
        ArgumentNullException.ThrowIfNull(password);
        ArgumentOutOfRangeException.ThrowIfLessThan(iterations, 1);
        if (salt.IsEmpty)
        {
            throw new ArgumentException("The salt must not be empty.", nameof(salt));
        }

        var prepared = SaslPrep.Prepare(password);
        var saltedPassword = Scram.SaltedPassword(prepared, salt, iterations);
        var clientKey = Scram.ClientKey(saltedPassword);
        var verifier = new ScramVerifier(iterations, salt.ToArray(), Scram.StoredKey(clientKey), Scram.ServerKey(saltedPassword));
        CryptographicOperations.ZeroMemory(prepared);
        CryptographicOperations.ZeroMemory(saltedPassword);
        CryptographicOperations.ZeroMemory(clientKey);
        return verifier;
    }

    /// <summary>
    /// Parses PostgreSQL's text form. False unless <paramref name="text"/> has all four fields, a positive
    /// iteration count, a non-empty salt and two <see cref="Scram.KeyLength"/>-byte keys, all strict base64.
    /// </summary>
    public static bool TryParse(string text, [NotNullWhen(true)] out ScramVerifier? verifier)
    {
        ArgumentNullException.ThrowIfNull(text);
        verifier = null;
        if (!text.StartsWith(Prefix, StringComparison.Ordinal))
        {
            return false;
        }

        var rest = text.AsSpan(Prefix.Length);
        var dollar = rest.IndexOf('$');
        if (dollar < 0)
        {
            return false;
        }

        var iterationsAndSalt = rest[..dollar];
        var keys = rest[(dollar + 1)..];
        var colon = iterationsAndSalt.IndexOf(':');
        var keyColon = keys.IndexOf(':');
        if (colon < 0 || keyColon < 0
            || !int.TryParse(iterationsAndSalt[..colon], NumberStyles.None, CultureInfo.InvariantCulture, out var iterations)
            || iterations < 1
            || !Scram.TryDecodeBase64(iterationsAndSalt[(colon + 1)..], out var salt) || salt.Length == 0
            || !Scram.TryDecodeBase64(keys[..keyColon], out var storedKey) || storedKey.Length != Scram.KeyLength
            || !Scram.TryDecodeBase64(keys[(keyColon + 1)..], out var serverKey) || serverKey.Length != Scram.KeyLength)
        {
            return false;
        }

        verifier = new ScramVerifier(iterations, salt, storedKey, serverKey);
        return true;
    }

    /// <summary>
    /// The verifier in PostgreSQL's text form, as <c>pg_authid.rolpassword</c> holds it and as an auth_file
    /// line can carry it. This is a secret: whoever has it can impersonate the server to a client.
    /// </summary>
    public string ToPostgresFormat()
        => string.Create(
            CultureInfo.InvariantCulture,
            $"{Prefix}{Iterations}:{Convert.ToBase64String(_salt)}${Convert.ToBase64String(_storedKey)}:{Convert.ToBase64String(_serverKey)}");
}
