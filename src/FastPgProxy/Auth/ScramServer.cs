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
}

/// <summary>
/// The server side of one SCRAM-SHA-256 exchange (RFC 5802, RFC 7677) as PostgreSQL runs it (protocol 53.3):
/// the proxy checks a client against a <see cref="ScramVerifier"/>. It sees only SCRAM message bodies; the
/// session frames them in AuthenticationSASLContinue, AuthenticationSASLFinal and the password messages.
/// </summary>
/// <remarks>
/// Channel binding is not offered (only SCRAM-SHA-256 is advertised, not SCRAM-SHA-256-PLUS), so the gs2
/// header must be <c>n,,</c> or <c>y,,</c>; <c>p=</c> and an authorization identity are rejected. The user
/// name in client-first-message is ignored, as PostgreSQL ignores it: the startup packet names the user.
/// One instance serves one exchange and is not thread-safe; it belongs to the session's loop.
/// </remarks>
internal sealed class ScramServer
{
    private readonly ScramVerifier _verifier;
    private readonly string _serverNonce;
    private byte[] _gs2Header = [];
    private byte[] _clientFirstBare = [];
    private byte[] _serverFirst = [];
    private byte[] _nonce = [];
    private byte[]? _clientKey;

    /// <summary>Starts an exchange that checks the client against <paramref name="verifier"/>.</summary>
    public ScramServer(ScramVerifier verifier)
        : this(verifier, Scram.NewNonce())
    {
    }

    /// <summary>Starts an exchange with a chosen server nonce part, for known-answer tests only.</summary>
    internal ScramServer(ScramVerifier verifier, string serverNonce)
    {
        ArgumentNullException.ThrowIfNull(verifier);
        ArgumentNullException.ThrowIfNull(serverNonce);
        if (!Scram.IsValidNonce(serverNonce))
        {
            throw new ArgumentException("A nonce is printable ASCII without commas.", nameof(serverNonce));
        }

        _verifier = verifier;
        _serverNonce = serverNonce;
    }

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
    /// Reads client-first-message (<c>gs2-header client-first-message-bare</c>) and produces
    /// server-first-message (<c>r=&lt;client nonce&gt;&lt;server nonce&gt;,s=&lt;salt&gt;,i=&lt;iterations&gt;</c>).
    /// False, with <see cref="State"/> <see cref="ScramServerState.Malformed"/>, for a malformed message or one
    /// asking for channel binding, an authorization identity or a mandatory extension.
    /// </summary>
    public bool TryHandleClientFirst(ReadOnlySpan<byte> clientFirstMessage, out byte[] serverFirstMessage, [NotNullWhen(false)] out string? error)
    {
        serverFirstMessage = [];
        if (State != ScramServerState.AwaitingClientFirst)
        {
            error = "unexpected SCRAM client-first-message";
            return false;
        }

        if (!TryReadClientFirst(clientFirstMessage, out error))
        {
            State = ScramServerState.Malformed;
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
    /// <see cref="State"/> is <see cref="ScramServerState.ProofRejected"/> for a wrong password and
    /// <see cref="ScramServerState.Malformed"/> for anything else.
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
            State = ScramServerState.Malformed;
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
    /// header, client-first-message-bare and the combined nonce.
    /// </summary>
    private bool TryReadClientFirst(ReadOnlySpan<byte> message, [NotNullWhen(false)] out string? error)
    {
        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        if (message.IsEmpty)
        {
            error = "malformed SCRAM message (empty client-first-message)";
            return false;
        }

        switch (message[0])
        {
            case (byte)'n': // the client does not support channel binding
            case (byte)'y': // the client supports it but believes the server does not, which is true
                break;
            case (byte)'p':
                error = "the client selected channel binding (SCRAM-SHA-256-PLUS), which is not offered";
                return false;
            default:
                error = "malformed SCRAM message (unexpected channel-binding flag in client-first-message)";
                return false;
        }

        if (message.Length < 2 || message[1] != (byte)',')
        {
            error = "malformed SCRAM message (comma expected after the channel-binding flag)";
            return false;
        }

        if (message.Length > 2 && message[2] == (byte)'a')
        {
            error = "the client uses an authorization identity, which is not supported";
            return false;
        }

        if (message.Length < 3 || message[2] != (byte)',')
        {
            error = "malformed SCRAM message (comma expected after the gs2 header)";
            return false;
        }

        const int Gs2HeaderLength = 3;
        var bare = message[Gs2HeaderLength..];

        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        var reader = new ScramAttributeReader(bare);
        if (!reader.TryRead(out var name, out _) || name != (byte)'n')
        {
            error = name == (byte)'m'
                ? "the client requires an unsupported SCRAM extension"
                : "malformed SCRAM message (username attribute expected in client-first-message)";
            return false;
        }

        if (!reader.TryRead((byte)'r', out var clientNonce) || !Scram.IsValidNonce(clientNonce))
        {
            error = "malformed SCRAM message (nonce attribute expected in client-first-message)";
            return false;
        }

        while (!reader.AtEnd)
        {
            if (!reader.TryRead(out _, out _))
            {
                error = "malformed SCRAM message (garbage at end of client-first-message)";
                return false;
            }
        }

        _gs2Header = message[..Gs2HeaderLength].ToArray();
        _clientFirstBare = bare.ToArray();
        _nonce = [.. clientNonce, .. Encoding.ASCII.GetBytes(_serverNonce)];
        error = null;
        return true;
    }

    /// <summary>Parses client-final-message as PostgreSQL's <c>read_client_final_message</c> does.</summary>
    private bool TryReadClientFinal(
        ReadOnlySpan<byte> message, out int withoutProofLength, [NotNullWhen(true)] out byte[]? proof, [NotNullWhen(false)] out string? error)
    {
        withoutProofLength = 0;
        proof = null;
        var reader = new ScramAttributeReader(message);

        // c= carries base64(gs2-header) when there is no channel binding data (RFC 5802 section 7).
        if (!reader.TryRead((byte)'c', out var binding) || !Scram.TryDecodeBase64(binding, out var header))
        {
            error = "malformed SCRAM message (channel-binding attribute expected in client-final-message)";
            return false;
        }

        if (!header.AsSpan().SequenceEqual(_gs2Header))
        {
            error = "SCRAM channel binding check failed";
            return false;
        }

        if (!reader.TryRead((byte)'r', out var nonce))
        {
            error = "malformed SCRAM message (nonce attribute expected in client-final-message)";
            return false;
        }

        if (!nonce.SequenceEqual(_nonce))
        {
            error = "unexpected SCRAM nonce in client-final-message";
            return false;
        }

        // Extensions may come before the proof, which must be the last attribute.
        while (true)
        {
            var beforeAttribute = reader.Position;
            if (!reader.TryRead(out var name, out var value))
            {
                error = "malformed SCRAM message (proof attribute expected in client-final-message)";
                return false;
            }

            if (name != (byte)'p')
            {
                continue;
            }

            if (!Scram.TryDecodeBase64(value, out proof) || proof.Length != Scram.KeyLength)
            {
                proof = null;
                error = "malformed SCRAM message (malformed proof in client-final-message)";
                return false;
            }

            if (!reader.AtEnd)
            {
                proof = null;
                error = "malformed SCRAM message (garbage at end of client-final-message)";
                return false;
            }

            withoutProofLength = beforeAttribute;
            error = null;
            return true;
        }
    }
}
