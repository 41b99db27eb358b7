namespace FastPgProxy.Protocol;

/// <summary>
/// Protocol version negotiation (55.2.1; NegotiateProtocolVersion in 55.7) with a client, as PostgreSQL 18
/// does it: any 3.x request is taken, a minor version above 3.2 (or a <c>_pq_.</c> option) gets
/// NegotiateProtocolVersion naming the lower of the request and 3.2, and the client's cancel key is 32
/// bytes from 3.2 on, 4 below.
/// </summary>
internal static class ProtocolNegotiation
{
    /// <summary>The versions the proxy speaks, in the words of PostgreSQL's "unsupported frontend protocol" error.</summary>
    public const string SupportedRange = "3.0 to 3.2";

    /// <summary>
    /// The version a client's session runs for a 3.x <paramref name="requested"/>: the request, or 3.2 when
    /// it asked for newer (PostgreSQL's <c>FrontendProtocol = Min(proto, PG_PROTOCOL_LATEST)</c>). A 3.1
    /// request is taken as 3.1 without NegotiateProtocolVersion, as PostgreSQL 18 does.
    /// </summary>
    public static int Effective(int requested) => Math.Min(requested, StartupCodes.Protocol32);

    /// <summary>
    /// Whether a client's 3.x StartupMessage is answered with NegotiateProtocolVersion: it asked for a minor
    /// version above 3.2's, or sent <c>_pq_.</c> options (the proxy knows none).
    /// </summary>
    public static bool NeedsAnswer(int requested, bool unrecognizedOptions) =>
        requested > StartupCodes.Protocol32 || unrecognizedOptions;

    /// <summary>
    /// The length of the cancel key given to a client that asked for <paramref name="requested"/>: 32 bytes
    /// from 3.2 on, 4 below, as PostgreSQL 18 decides (<c>proto &gt;= PG_PROTOCOL(3, 2)</c>), so a 3.0 client
    /// gets the key it can read.
    /// </summary>
    public static int CancelKeyLength(int requested) =>
        requested >= StartupCodes.Protocol32 ? StartupCodes.LongCancelKeyLength : StartupCodes.ShortCancelKeyLength;
}
