namespace FastPgProxy.Config;

/// <summary>One line of the <c>[peers]</c> section: another instance of the same cluster, by its <c>peer_id</c>.</summary>
internal sealed class PeerOptions
{
    /// <summary>The peer's <c>peer_id</c>, 1 to 16383.</summary>
    public required int Id { get; init; }

    /// <summary>Where the peer listens. Default 127.0.0.1.</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>The peer's port. Default 6432.</summary>
    public int Port { get; init; } = 6432;

    /// <summary>Most cancels forwarded to this peer at once; null means <c>max_cancel_connections</c> (PgBouncer's <c>pool_size</c> of a peer).</summary>
    public int? PoolSize { get; init; }

    /// <summary>
    /// Who this instance logs in to the peer as, to signal a session that lives there (pg_cancel_backend,
    /// pg_terminate_backend, KILL): a user in the peer's <c>peer_users</c>. Null: such signals answer as
    /// for an unknown pid.
    /// </summary>
    public string? User { get; init; }

    /// <summary>The password for <see cref="User"/> (for SCRAM, md5 or a cleartext request); null with <c>auth_type = cert</c> or trust.</summary>
    public string? Password { get; init; }
}
