namespace FastPgProxy.Pooling;

/// <summary>What the proxy logs in to PostgreSQL with.</summary>
internal sealed class ServerCredentials
{
    /// <summary>Role name on the server.</summary>
    public required string User { get; init; }

    /// <summary>Plaintext password, when known.</summary>
    public string? Password { get; init; }

    /// <summary>PostgreSQL's md5 hash ("md5" + hex), usable for md5 logins without the plaintext.</summary>
    public string? Md5Hash { get; init; }

    /// <summary>SCRAM keys learnt from the client's own SCRAM exchange, for a verifier-only auth_file entry.</summary>
    public byte[]? ScramClientKey { get; init; }

    /// <summary>The verifier's ServerKey that goes with <see cref="ScramClientKey"/>.</summary>
    public byte[]? ScramServerKey { get; init; }
}
