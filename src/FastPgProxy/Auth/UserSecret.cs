using System.Diagnostics.CodeAnalysis;
using System.Threading;

namespace FastPgProxy.Auth;

/// <summary>How an auth_file secret is stored, told apart as PostgreSQL's <c>get_password_type</c> does.</summary>
internal enum SecretKind
{
    /// <summary>The password itself.</summary>
    Plain,

    /// <summary><c>"md5" + hex(md5(password + user))</c>: 35 characters, the hex in lower case.</summary>
    Md5,

    /// <summary>A SCRAM-SHA-256 verifier in PostgreSQL's text form (see <see cref="ScramVerifier"/>).</summary>
    ScramSha256,
}

/// <summary>The secret of one auth_file user, classified and, for SCRAM, parsed.</summary>
/// <remarks>
/// An empty secret is kept as <see cref="SecretKind.Plain"/> with an empty password: the user exists (which is
/// all <c>auth_type = trust</c> needs) but has no password, so every password method fails, as PostgreSQL
/// fails them for a role whose password is null.
/// </remarks>
internal sealed class UserSecret
{
    /// <summary>Length of an MD5 secret: <c>"md5"</c> and 32 hex digits (PostgreSQL's MD5_PASSWD_LEN).</summary>
    public const int Md5SecretLength = 3 + 32;

    private ScramVerifier? _scramVerifier;

    private UserSecret(string raw, SecretKind kind, ScramVerifier? scramVerifier)
    {
        Raw = raw;
        Kind = kind;
        _scramVerifier = scramVerifier;
    }

    /// <summary>How the secret is stored.</summary>
    public SecretKind Kind { get; }

    /// <summary>The secret exactly as the auth_file holds it.</summary>
    public string Raw { get; }

    /// <summary>The password for a <see cref="SecretKind.Plain"/> secret; null otherwise.</summary>
    public string? Password => Kind == SecretKind.Plain ? Raw : null;

    /// <summary>
    /// Classifies <paramref name="raw"/>. False only for text that starts like a SCRAM-SHA-256 verifier but
    /// does not parse as one (PostgreSQL would take it as a plain password; here it is a load error, because
    /// it is almost certainly a damaged verifier).
    /// </summary>
    public static bool TryCreate(string raw, [NotNullWhen(true)] out UserSecret? secret)
    {
        ArgumentNullException.ThrowIfNull(raw);
        secret = null;
        if (IsMd5Secret(raw))
        {
            secret = new UserSecret(raw, SecretKind.Md5, null);
        }
        else if (raw.StartsWith(ScramVerifier.Prefix, StringComparison.Ordinal))
        {
            if (!ScramVerifier.TryParse(raw, out var verifier))
            {
                return false;
            }

            secret = new UserSecret(raw, SecretKind.ScramSha256, verifier);
        }
        else
        {
            secret = new UserSecret(raw, SecretKind.Plain, null);
        }

        return true;
    }

    /// <summary>Classifies <paramref name="raw"/>; throws <see cref="FormatException"/> where <see cref="TryCreate"/> fails.</summary>
    public static UserSecret Create(string raw)
        => TryCreate(raw, out var secret) ? secret : throw new FormatException("malformed SCRAM-SHA-256 secret");

    /// <summary>
    /// The SCRAM-SHA-256 verifier: the parsed one for a <see cref="SecretKind.ScramSha256"/> secret, or for a
    /// non-empty <see cref="SecretKind.Plain"/> one a verifier derived with a random salt and
    /// <see cref="Scram.DefaultIterations"/>. The derivation (one PBKDF2 run, about a millisecond) happens on
    /// the first call and is cached; concurrent first calls may both derive, and all callers get the one
    /// that was published first. False for <see cref="SecretKind.Md5"/> and for an empty password.
    /// </summary>
    public bool TryGetScramVerifier([NotNullWhen(true)] out ScramVerifier? verifier)
    {
        verifier = Volatile.Read(ref _scramVerifier);
        if (verifier is not null)
        {
            return true;
        }

        if (Kind != SecretKind.Plain || Raw.Length == 0)
        {
            return false;
        }

        var derived = ScramVerifier.FromPassword(Raw);
        verifier = Interlocked.CompareExchange(ref _scramVerifier, derived, null) ?? derived;
        return true;
    }

    private static bool IsMd5Secret(string raw)
    {
        if (raw.Length != Md5SecretLength || !raw.StartsWith("md5", StringComparison.Ordinal))
        {
            return false;
        }

        foreach (var c in raw.AsSpan(3))
        {
            if (c is not ((>= '0' and <= '9') or (>= 'a' and <= 'f')))
            {
                return false;
            }
        }

        return true;
    }
}
