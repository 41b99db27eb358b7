using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.Text;

namespace FastPgProxy.Protocol;

/// <summary>
/// Protocol version negotiation (55.2.1; NegotiateProtocolVersion in 55.7), both ways, as PostgreSQL 18 and
/// its libpq do it. Towards a client the proxy answers as PostgreSQL 18: any 3.x request is taken, a minor
/// version above 3.2 (or a <c>_pq_.</c> option) gets NegotiateProtocolVersion naming the lower of the
/// request and 3.2, and the client's cancel key is 32 bytes from 3.2 on, 4 below. Towards PostgreSQL the
/// proxy asks for 3.2 and, as libpq does, takes a server's NegotiateProtocolVersion down to 3.0.
/// </summary>
internal static class ProtocolNegotiation
{
    /// <summary>The versions the proxy speaks, in the words of PostgreSQL's "unsupported frontend protocol" error.</summary>
    public const string SupportedRange = "3.0 to 3.2";

    /// <summary>The version the proxy asks PostgreSQL for.</summary>
    public const int Requested = StartupCodes.Protocol32;

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

    /// <summary>
    /// Reads the body of PostgreSQL's NegotiateProtocolVersion (int32 newest version it supports, int32
    /// count, then that many NUL-terminated option names) answering the proxy's request for
    /// <paramref name="requested"/>, and checks it as libpq does: a version from 3.0 up to the request and
    /// never the reserved 3.1; no option names, since the proxy asks for none; and a change of some kind.
    /// Returns the version the login goes on in, or false with the reason.
    /// </summary>
    public static bool TryReadServerAnswer(ReadOnlySpan<byte> body, int requested, out int version, [NotNullWhen(false)] out string? error)
    {
        version = 0;
        error = null;
        if (body.Length < sizeof(int) /* version */ + sizeof(int) /* count */)
        {
            error = "server sent a malformed NegotiateProtocolVersion message";
            return false;
        }

        int offered = BinaryPrimitives.ReadInt32BigEndian(body);
        int count = BinaryPrimitives.ReadInt32BigEndian(body.Slice(sizeof(int)));
        ReadOnlySpan<byte> names = body.Slice(sizeof(int) + sizeof(int));
        ReadOnlySpan<byte> firstName = default;
        for (int i = 0; i < count; i++)
        {
            int end = names.IndexOf((byte)0);
            if (end < 0)
            {
                error = "server sent a malformed NegotiateProtocolVersion message";
                return false;
            }

            if (i == 0)
            {
                firstName = names.Slice(0, end);
            }

            names = names.Slice(end + 1);
        }

        if (!names.IsEmpty)
        {
            error = "server sent a malformed NegotiateProtocolVersion message";
            return false;
        }

        if (offered > requested)
        {
            error = "received invalid protocol negotiation message: server requested downgrade to a higher-numbered version";
        }
        else if (offered < StartupCodes.Protocol30)
        {
            error = "received invalid protocol negotiation message: server requested downgrade to pre-3.0 protocol version";
        }
        else if (offered == StartupCodes.Protocol31Reserved)
        {
            error = "received invalid protocol negotiation message: server requested downgrade to non-existent 3.1 protocol version";
        }
        else if (count < 0)
        {
            error = "received invalid protocol negotiation message: server reported negative number of unsupported parameters";
        }
        else if (count > 0)
        {
            error = $"received invalid protocol negotiation message: server reported an unsupported parameter that was not requested (\"{Encoding.UTF8.GetString(firstName)}\")";
        }
        else if (offered == requested)
        {
            error = "received invalid protocol negotiation message: server negotiated but asks for no changes";
        }

        if (error is not null)
        {
            return false;
        }

        version = offered;
        return true;
    }
}
