using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace FastPgProxy.Auth;

/// <summary>Where a <see cref="ScramServer"/> exchange stands.</summary>
internal enum ScramServerState
{
    /// <summary>Waiting for client-first-message (the SASLInitialResponse data).</summary>
    AwaitingClientFirst,

    /// <summary>server-first-message was produced; waiting for client-final-message (SASLResponse).</summary>
    AwaitingClientFinal,

    /// <summary>The proof was right; server-final-message was produced and <see cref="ScramServer.ClientKey"/> is known.</summary>
    Succeeded,

    /// <summary>The proof was wrong: answer 28P01, password authentication failed.</summary>
    ProofRejected,

    /// <summary>A message was malformed or broke the protocol: answer 08P01, protocol violation.</summary>
    Malformed,

    /// <summary>
    /// The client's channel binding does not fit this connection: it said <c>y</c> (it supports binding and
    /// believes the server does not) while SCRAM-SHA-256-PLUS was offered, which is a downgrade, or its
    /// binding data is not the hash of the proxy's certificate, which is a man in the middle. Answer 28000,
    /// invalid authorization specification, as PostgreSQL does.
    /// </summary>
    ChannelBindingRejected,
}

/// <summary>
/// The server side of one SCRAM-SHA-256 exchange (RFC 5802, RFC 7677) as PostgreSQL runs it (protocol 53.3):
/// the proxy checks a client against a <see cref="ScramVerifier"/>. It sees only SCRAM message bodies; the
/// session frames them in AuthenticationSASLContinue, AuthenticationSASLFinal and the password messages.
/// </summary>
/// <remarks>
/// <para>
/// Channel binding follows PostgreSQL's auth-scram.c. Given the tls-server-end-point data of the proxy's own
/// certificate (a TLS connection, see <see cref="ChannelBinding"/>), the exchange offers SCRAM-SHA-256-PLUS
/// and then SCRAM-SHA-256. A client that selects PLUS must send the gs2 header <c>p=tls-server-end-point,,</c>
/// and in client-final-message <c>c=</c> base64 of that header and the data. A client that selects
/// SCRAM-SHA-256 may send <c>n,,</c> but not <c>y,,</c>: that says it could bind but saw no PLUS offered, so
/// someone removed it (RFC 5802 section 6). Without binding data (a plain connection) only SCRAM-SHA-256 is
/// offered, <c>n,,</c> and <c>y,,</c> are both fine, and <c>p=</c> is a protocol violation.
/// </para>
/// <para>
/// An authorization identity is rejected. The user name in client-first-message is ignored, as PostgreSQL
/// ignores it: the startup packet names the user. One instance serves one exchange and is not thread-safe;
/// it belongs to the session's loop.
/// </para>
/// </remarks>
internal sealed class ScramServer
{
    private readonly ScramVerifier _verifier;
    private readonly string _serverNonce;
    private readonly byte[]? _channelBinding;
    private bool _plusSelected;
    private byte[] _gs2Header = [];
    private byte[] _clientFirstBare = [];
    private byte[] _serverFirst = [];
    private byte[] _nonce = [];
    private byte[]? _clientKey;

    /// <summary>
    /// Starts an exchange that checks the client against <paramref name="verifier"/>. <paramref name="channelBinding"/>
    /// is the tls-server-end-point data of the proxy's own certificate on a TLS connection
    /// (<see cref="ChannelBinding.TryComputeTlsServerEndPoint"/>), which offers SCRAM-SHA-256-PLUS; null on a
    /// plain connection, or when the certificate has no binding data.
    /// </summary>
    public ScramServer(ScramVerifier verifier, byte[]? channelBinding = null)
        : this(verifier, Scram.NewNonce(), channelBinding)
    {
    }

    /// <summary>Starts an exchange with a chosen server nonce part, for known-answer tests only.</summary>
    internal ScramServer(ScramVerifier verifier, string serverNonce, byte[]? channelBinding = null)
    {
        ArgumentNullException.ThrowIfNull(verifier);
        ArgumentNullException.ThrowIfNull(serverNonce);
        if (!Scram.IsValidNonce(serverNonce))
        {
            throw new ArgumentException("A nonce is printable ASCII without commas.", nameof(serverNonce));
        }

        if (channelBinding is { Length: 0 })
        {
            throw new ArgumentException("Channel binding data is a certificate hash, never empty.", nameof(channelBinding));
        }

        _verifier = verifier;
        _serverNonce = serverNonce;
        _channelBinding = channelBinding;
    }

    /// <summary>
    /// The mechanisms to offer in AuthenticationSASL, in PostgreSQL's order and wire form (each name
    /// NUL-terminated, see <see cref="Protocol.SaslMechanismList"/>): SCRAM-SHA-256-PLUS then SCRAM-SHA-256
    /// with channel binding data, SCRAM-SHA-256 alone without.
    /// </summary>
    public ReadOnlySpan<byte> Mechanisms
        => _channelBinding is null ? "SCRAM-SHA-256\0"u8 : "SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0"u8;

    /// <summary>True when <see cref="Mechanisms"/> offers SCRAM-SHA-256-PLUS (the exchange has channel binding data).</summary>
    public bool OffersChannelBinding => _channelBinding is not null;

    /// <summary>
    /// PostgreSQL's DETAIL for the last failure, when it has one (the channel binding negotiation error);
    /// otherwise null. The error text of a failed call is the message.
    /// </summary>
    public string? ErrorDetail { get; private set; }

    /// <summary>Where the exchange stands; after a failed call it tells a wrong password from a protocol violation.</summary>
    public ScramServerState State { get; private set; }

    /// <summary>The verifier the client is checked against.</summary>
    public ScramVerifier Verifier => _verifier;

    /// <summary>
    /// The client's ClientKey, recovered as ClientProof XOR HMAC(StoredKey, AuthMessage) once the proof checked
    /// out. With it and <see cref="ScramVerifier.ServerKey"/> a <see cref="ScramClient"/> can log in to a
    /// PostgreSQL server holding the same verifier without knowing the password (PgBouncer does the same).
    /// </summary>
    /// <exception cref="InvalidOperationException">The exchange has not succeeded.</exception>
    public ReadOnlySpan<byte> ClientKey
        => _clientKey ?? throw new InvalidOperationException("The ClientKey is known only after a successful exchange.");

    /// <summary>
    /// Reads client-first-message as from a client that selected SCRAM-SHA-256, as
    /// <see cref="TryHandleClientFirst(ReadOnlySpan{byte}, ReadOnlySpan{byte}, out byte[], out string?)"/>.
    /// </summary>
    public bool TryHandleClientFirst(ReadOnlySpan<byte> clientFirstMessage, out byte[] serverFirstMessage, [NotNullWhen(false)] out string? error)
        => TryHandleClientFirst(Scram.MechanismNameUtf8, clientFirstMessage, out serverFirstMessage, out error);

    /// <summary>
    /// Takes the <paramref name="mechanism"/> the client selected in SASLInitialResponse, reads its
    /// client-first-message (<c>gs2-header client-first-message-bare</c>) and produces server-first-message
    /// (<c>r=&lt;client nonce&gt;&lt;server nonce&gt;,s=&lt;salt&gt;,i=&lt;iterations&gt;</c>). On false,
    /// <see cref="State"/> is <see cref="ScramServerState.ChannelBindingRejected"/> for the downgrade (gs2 flag
    /// <c>y</c> while PLUS was offered) and <see cref="ScramServerState.Malformed"/> for a mechanism that was not
    /// offered, a gs2 header that does not fit the mechanism, a channel binding type other than
    /// tls-server-end-point, an authorization identity, a mandatory extension or a malformed message.
    /// </summary>
    public bool TryHandleClientFirst(
        ReadOnlySpan<byte> mechanism, ReadOnlySpan<byte> clientFirstMessage, out byte[] serverFirstMessage, [NotNullWhen(false)] out string? error)
    {
        serverFirstMessage = [];
        if (State != ScramServerState.AwaitingClientFirst)
        {
            error = "unexpected SCRAM client-first-message";
            return false;
        }

        // PostgreSQL's scram_init: PLUS only when it was offered; anything else is a protocol violation.
        if (_channelBinding is not null && mechanism.SequenceEqual(Scram.PlusMechanismNameUtf8))
        {
            _plusSelected = true;
        }
        else if (!mechanism.SequenceEqual(Scram.MechanismNameUtf8))
        {
            State = ScramServerState.Malformed;
            error = "client selected an invalid SASL authentication mechanism";
            return false;
        }

        if (!TryReadClientFirst(clientFirstMessage, out error))
        {
            return false;
        }

        // The nonce is validated printable ASCII, so the message is ASCII throughout.
        _serverFirst = Encoding.ASCII.GetBytes(string.Create(
            CultureInfo.InvariantCulture,
            $"r={Encoding.ASCII.GetString(_nonce)},s={Convert.ToBase64String(_verifier.Salt)},i={_verifier.Iterations}"));
        serverFirstMessage = _serverFirst;
        State = ScramServerState.AwaitingClientFinal;
        return true;
    }

    /// <summary>
    /// Reads client-final-message (<c>c=&lt;binding&gt;,r=&lt;nonce&gt;[,extensions],p=&lt;proof&gt;</c>), checks the
    /// proof in constant time and produces server-final-message (<c>v=&lt;server signature&gt;</c>). On false,
    /// <see cref="State"/> is <see cref="ScramServerState.ProofRejected"/> for a wrong password,
    /// <see cref="ScramServerState.ChannelBindingRejected"/> when SCRAM-SHA-256-PLUS was selected and <c>c=</c>
    /// does not carry the proxy's certificate hash, and <see cref="ScramServerState.Malformed"/> for anything else.
    /// </summary>
    public bool TryHandleClientFinal(ReadOnlySpan<byte> clientFinalMessage, out byte[] serverFinalMessage, [NotNullWhen(false)] out string? error)
    {
        serverFinalMessage = [];
        if (State != ScramServerState.AwaitingClientFinal)
        {
            error = "unexpected SCRAM client-final-message";
            return false;
        }

        if (!TryReadClientFinal(clientFinalMessage, out var withoutProofLength, out var proof, out error))
        {
            return false;
        }

        var authMessage = Scram.AuthMessage(_clientFirstBare, _serverFirst, clientFinalMessage[..withoutProofLength]);
        Span<byte> clientSignature = stackalloc byte[Scram.KeyLength];
        HMACSHA256.HashData(_verifier.StoredKey, authMessage, clientSignature);
        var clientKey = new byte[Scram.KeyLength];
        Scram.Xor(proof, clientSignature, clientKey);
        Span<byte> storedKey = stackalloc byte[Scram.KeyLength];
        SHA256.HashData(clientKey, storedKey);
        if (!CryptographicOperations.FixedTimeEquals(storedKey, _verifier.StoredKey))
        {
            CryptographicOperations.ZeroMemory(clientKey);
            State = ScramServerState.ProofRejected;
            error = "SCRAM client proof does not match";
            return false;
        }

        Span<byte> serverSignature = stackalloc byte[Scram.KeyLength];
        HMACSHA256.HashData(_verifier.ServerKey, authMessage, serverSignature);
        serverFinalMessage = Encoding.ASCII.GetBytes("v=" + Convert.ToBase64String(serverSignature));
        _clientKey = clientKey;
        State = ScramServerState.Succeeded;
        error = null;
        return true;
    }

    /// <summary>
    /// Parses client-first-message as PostgreSQL's <c>read_client_first_message</c> does and keeps the gs2
    /// header, client-first-message-bare and the combined nonce. On false, <see cref="State"/> says why.
    /// </summary>
    private bool TryReadClientFirst(ReadOnlySpan<byte> message, [NotNullWhen(false)] out string? error)
    {
        // gs2-header = gs2-cbind-flag "," [ authzid ] ","   with   gs2-cbind-flag = ("p=" cb-name) / "n" / "y"
        if (message.IsEmpty)
        {
            return Reject("malformed SCRAM message (empty client-first-message)", out error);
        }

        int position; // just past the comma that ends gs2-cbind-flag
        switch (message[0])
        {
            case (byte)'n': // the client does not support channel binding, or chose not to use it
            case (byte)'y': // the client supports it but believes the server does not
                if (_plusSelected)
                {
                    return Reject(
                        "malformed SCRAM message (the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data)",
                        out error);
                }

                if (message[0] == (byte)'y' && _channelBinding is not null)
                {
                    // PLUS was offered, so the client saw a list without it: someone in between removed it.
                    State = ScramServerState.ChannelBindingRejected;
                    ErrorDetail = "The client supports SCRAM channel binding but thinks the server does not.  However, this server does support channel binding.";
                    error = "SCRAM channel binding negotiation error";
                    return false;
                }

                if (message.Length < 2 || message[1] != (byte)',')
                {
                    return Reject("malformed SCRAM message (comma expected after the channel-binding flag)", out error);
                }

                position = 2;
                break;
            case (byte)'p': // the client requires channel binding, of the type named after "p="
                if (!_plusSelected)
                {
                    return Reject(
                        "malformed SCRAM message (the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data)",
                        out error);
                }

                var flag = new ScramAttributeReader(message);
                if (!flag.TryRead((byte)'p', out var type))
                {
                    return Reject("malformed SCRAM message (expected character \"=\" for attribute \"p\")", out error);
                }

                if (!Ascii.Equals(type, ChannelBinding.TlsServerEndPointType))
                {
                    return Reject($"unsupported SCRAM channel-binding type \"{Sanitize(type)}\"", out error);
                }

                position = flag.AtEnd ? message.Length : flag.Position + 1;
                break;
            default:
                return Reject("malformed SCRAM message (unexpected channel-binding flag in client-first-message)", out error);
        }

        if (position < message.Length && message[position] == (byte)'a')
        {
            return Reject("the client uses an authorization identity, which is not supported", out error);
        }

        if (position >= message.Length || message[position] != (byte)',')
        {
            return Reject("malformed SCRAM message (comma expected after the gs2 header)", out error);
        }

        int gs2HeaderLength = position + 1;
        var bare = message[gs2HeaderLength..];

        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        var reader = new ScramAttributeReader(bare);
        if (!reader.TryRead(out var name, out _) || name != (byte)'n')
        {
            return Reject(
                name == (byte)'m'
                    ? "the client requires an unsupported SCRAM extension"
                    : "malformed SCRAM message (username attribute expected in client-first-message)",
                out error);
        }

        if (!reader.TryRead((byte)'r', out var clientNonce) || !Scram.IsValidNonce(clientNonce))
        {
            return Reject("malformed SCRAM message (nonce attribute expected in client-first-message)", out error);
        }

        while (!reader.AtEnd)
        {
            if (!reader.TryRead(out _, out _))
            {
                return Reject("malformed SCRAM message (garbage at end of client-first-message)", out error);
            }
        }

        _gs2Header = message[..gs2HeaderLength].ToArray();
        _clientFirstBare = bare.ToArray();
        _nonce = [.. clientNonce, .. Encoding.ASCII.GetBytes(_serverNonce)];
        error = null;
        return true;
    }

    /// <summary>
    /// Parses client-final-message as PostgreSQL's <c>read_client_final_message</c> does. On false,
    /// <see cref="State"/> says why.
    /// </summary>
    private bool TryReadClientFinal(
        ReadOnlySpan<byte> message, out int withoutProofLength, [NotNullWhen(true)] out byte[]? proof, [NotNullWhen(false)] out string? error)
    {
        withoutProofLength = 0;
        proof = null;
        var reader = new ScramAttributeReader(message);
        if (!reader.TryRead((byte)'c', out var binding))
        {
            return Reject("malformed SCRAM message (channel-binding attribute expected in client-final-message)", out error);
        }

        // c= is base64(cbind-input), cbind-input = gs2-header [cbind-data], the data there exactly for "p"
        // (RFC 5802 section 7). Like PostgreSQL, compare the text: there is one right encoding.
        string expected = Convert.ToBase64String(_plusSelected ? [.. _gs2Header, .. _channelBinding!] : _gs2Header);
        if (!Ascii.Equals(binding, expected))
        {
            if (_plusSelected)
            {
                // The client hashed another certificate than ours: it talks TLS with someone else.
                State = ScramServerState.ChannelBindingRejected;
                error = "SCRAM channel binding check failed";
                return false;
            }

            return Reject("unexpected SCRAM channel-binding attribute in client-final-message", out error);
        }

        if (!reader.TryRead((byte)'r', out var nonce))
        {
            return Reject("malformed SCRAM message (nonce attribute expected in client-final-message)", out error);
        }

        if (!nonce.SequenceEqual(_nonce))
        {
            return Reject("unexpected SCRAM nonce in client-final-message", out error);
        }

        // Extensions may come before the proof, which must be the last attribute.
        while (true)
        {
            var beforeAttribute = reader.Position;
            if (!reader.TryRead(out var name, out var value))
            {
                return Reject("malformed SCRAM message (proof attribute expected in client-final-message)", out error);
            }

            if (name != (byte)'p')
            {
                continue;
            }

            if (!Scram.TryDecodeBase64(value, out proof) || proof.Length != Scram.KeyLength)
            {
                proof = null;
                return Reject("malformed SCRAM message (malformed proof in client-final-message)", out error);
            }

            if (!reader.AtEnd)
            {
                proof = null;
                return Reject("malformed SCRAM message (garbage at end of client-final-message)", out error);
            }

            withoutProofLength = beforeAttribute;
            error = null;
            return true;
        }
    }

    /// <summary>Ends the exchange as a protocol violation (<see cref="ScramServerState.Malformed"/>) with <paramref name="message"/>.</summary>
    private bool Reject(string message, out string error)
    {
        State = ScramServerState.Malformed;
        error = message;
        return false;
    }

    /// <summary>
    /// Client text fit for an error message, as PostgreSQL's <c>sanitize_str</c>: at most 30 characters, and
    /// anything but printable ASCII as <c>?</c>.
    /// </summary>
    private static string Sanitize(ReadOnlySpan<byte> text)
    {
        const int MaxLength = 30;
        text = text[..Math.Min(text.Length, MaxLength)];
        Span<char> chars = stackalloc char[MaxLength];
        for (var i = 0; i < text.Length; i++)
        {
            chars[i] = text[i] is >= 0x21 and <= 0x7E ? (char)text[i] : '?';
        }

        return new string(chars[..text.Length]);
    }
}
