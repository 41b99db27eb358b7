using System.Diagnostics.CodeAnalysis;
using System.Security.Cryptography;
using System.Text;
using FastPgProxy.Protocol;

namespace FastPgProxy.Auth;

/// <summary>
/// The gs2-cbind-flag a SCRAM client sends (RFC 5802 section 7), which also fixes the mechanism it selects.
/// <see cref="ScramClient.TrySelectMechanism"/> picks it as libpq does.
/// </summary>
internal enum Gs2CbindFlag
{
    /// <summary><c>n</c>, mechanism SCRAM-SHA-256: the client has no channel binding data (a plain connection).</summary>
    NoBinding,

    /// <summary>
    /// <c>y</c>, mechanism SCRAM-SHA-256: the client has binding data but the server did not offer
    /// SCRAM-SHA-256-PLUS. A server that does support it refuses the login, so a man in the middle cannot
    /// downgrade the exchange by removing PLUS from the list.
    /// </summary>
    BindingNotOffered,

    /// <summary><c>p=tls-server-end-point</c>, mechanism SCRAM-SHA-256-PLUS: the proof covers the server's certificate hash.</summary>
    TlsServerEndPoint,
}

/// <summary>
/// The client side of one SCRAM-SHA-256 exchange (RFC 5802, RFC 7677) as libpq runs it: the proxy logs in
/// to PostgreSQL. It produces and reads only SCRAM message bodies; the session frames them in
/// SASLInitialResponse and SASLResponse and takes them out of AuthenticationSASLContinue and
/// AuthenticationSASLFinal.
/// </summary>
/// <remarks>
/// Two modes. With the password, the keys are derived from the salt and iteration count the server sends.
/// With a ClientKey and ServerKey (pass-through, as <see cref="ScramServer.ClientKey"/> recovers them from a
/// client the proxy authenticated against a verifier), the proof is ClientKey XOR HMAC(H(ClientKey),
/// AuthMessage) and the server's signature is checked with the given ServerKey; the server's salt and
/// iteration count are not used, so this works only when the server holds the same verifier (the same salt,
/// iterations and password) as the auth_file.
/// <para>
/// With <see cref="Gs2CbindFlag.TlsServerEndPoint"/> the exchange is SCRAM-SHA-256-PLUS: client-final-message
/// carries <c>c=</c> base64(<c>p=tls-server-end-point,,</c> + the tls-server-end-point data of the server's
/// certificate), so the proof only checks out at a server that holds that certificate. One instance serves
/// one exchange and is not thread-safe.
/// </para>
/// </remarks>
internal sealed class ScramClient
{
    private readonly byte[]? _preparedPassword;
    private readonly string _clientNonce;
    private readonly string _userName;
    private readonly byte[]? _clientKey;
    private readonly byte[]? _serverKey;
    private readonly Gs2CbindFlag _cbindFlag;
    private readonly byte[]? _channelBinding;
    private byte[] _clientFirstBare = [];
    private byte[] _expectedServerSignature = [];
    private Step _step;

    /// <summary>
    /// Starts an exchange that logs in with <paramref name="password"/> (prepared by <see cref="SaslPrep"/>).
    /// <paramref name="cbindFlag"/> comes from <see cref="TrySelectMechanism"/>; <paramref name="channelBinding"/>,
    /// the tls-server-end-point data of the server's certificate, is required for
    /// <see cref="Gs2CbindFlag.TlsServerEndPoint"/> and not used otherwise.
    /// </summary>
    public ScramClient(string password, Gs2CbindFlag cbindFlag = Gs2CbindFlag.NoBinding, byte[]? channelBinding = null)
        : this(password, string.Empty, Scram.NewNonce(), cbindFlag, channelBinding)
    {
    }

    /// <summary>
    /// Starts a pass-through exchange with a client's <paramref name="clientKey"/> and the verifier's
    /// <paramref name="serverKey"/>, each <see cref="Scram.KeyLength"/> bytes (see the remarks); the channel
    /// binding arguments are those of <see cref="ScramClient(string, Gs2CbindFlag, byte[])"/>.
    /// </summary>
    public ScramClient(
        ReadOnlySpan<byte> clientKey, ReadOnlySpan<byte> serverKey, Gs2CbindFlag cbindFlag = Gs2CbindFlag.NoBinding, byte[]? channelBinding = null)
    {
        if (clientKey.Length != Scram.KeyLength)
        {
            throw new ArgumentException("A ClientKey is 32 bytes.", nameof(clientKey));
        }

        if (serverKey.Length != Scram.KeyLength)
        {
            throw new ArgumentException("A ServerKey is 32 bytes.", nameof(serverKey));
        }

        _clientKey = clientKey.ToArray();
        _serverKey = serverKey.ToArray();
        _clientNonce = Scram.NewNonce();
        _userName = string.Empty;
        (_cbindFlag, _channelBinding) = CheckBinding(cbindFlag, channelBinding);
    }

    /// <summary>
    /// Starts a password exchange with a chosen user name and nonce, for known-answer tests only.
    /// PostgreSQL ignores the user name in client-first-message; real exchanges send it empty.
    /// </summary>
    internal ScramClient(
        string password, string userName, string clientNonce, Gs2CbindFlag cbindFlag = Gs2CbindFlag.NoBinding, byte[]? channelBinding = null)
    {
        ArgumentNullException.ThrowIfNull(password);
        ArgumentNullException.ThrowIfNull(userName);
        ArgumentNullException.ThrowIfNull(clientNonce);
        if (!Scram.IsValidNonce(clientNonce))
        {
            throw new ArgumentException("A nonce is printable ASCII without commas.", nameof(clientNonce));
        }

        _preparedPassword = SaslPrep.Prepare(password);
        _userName = userName;
        _clientNonce = clientNonce;
        (_cbindFlag, _channelBinding) = CheckBinding(cbindFlag, channelBinding);
    }

    /// <summary>The mechanism to name in SASLInitialResponse: SCRAM-SHA-256-PLUS when binding, else SCRAM-SHA-256.</summary>
    public ReadOnlySpan<byte> Mechanism
        => _cbindFlag == Gs2CbindFlag.TlsServerEndPoint ? Scram.PlusMechanismNameUtf8 : Scram.MechanismNameUtf8;

    /// <summary>The gs2-cbind-flag this exchange sends.</summary>
    public Gs2CbindFlag CbindFlag => _cbindFlag;

    /// <summary>
    /// Chooses, as libpq does, how to answer an AuthenticationSASL whose mechanism list (protocol 55.7, see
    /// <see cref="SaslMechanismList"/>) is <paramref name="mechanisms"/>. With channel binding data (a TLS
    /// connection whose server certificate gave tls-server-end-point data): SCRAM-SHA-256-PLUS when offered,
    /// else SCRAM-SHA-256 with flag <c>y</c>. Without: SCRAM-SHA-256 with flag <c>n</c>. False when the list
    /// has no mechanism the client can use.
    /// </summary>
    public static bool TrySelectMechanism(ReadOnlySpan<byte> mechanisms, bool channelBindingAvailable, out Gs2CbindFlag cbindFlag)
    {
        if (channelBindingAvailable && SaslMechanismList.Contains(mechanisms, Scram.PlusMechanismNameUtf8))
        {
            cbindFlag = Gs2CbindFlag.TlsServerEndPoint;
            return true;
        }

        cbindFlag = channelBindingAvailable ? Gs2CbindFlag.BindingNotOffered : Gs2CbindFlag.NoBinding;
        return SaslMechanismList.Contains(mechanisms, Scram.MechanismNameUtf8);
    }

    private static (Gs2CbindFlag, byte[]?) CheckBinding(Gs2CbindFlag cbindFlag, byte[]? channelBinding)
    {
        if (cbindFlag == Gs2CbindFlag.TlsServerEndPoint)
        {
            if (channelBinding is null || channelBinding.Length == 0)
            {
                throw new ArgumentException("SCRAM-SHA-256-PLUS needs the server certificate's tls-server-end-point data.", nameof(channelBinding));
            }

            return (cbindFlag, channelBinding);
        }

        if (!Enum.IsDefined(cbindFlag))
        {
            throw new ArgumentOutOfRangeException(nameof(cbindFlag));
        }

        return (cbindFlag, null);
    }

    /// <summary>The gs2 header for <see cref="CbindFlag"/>: <c>n,,</c>, <c>y,,</c> or <c>p=tls-server-end-point,,</c>.</summary>
    private ReadOnlySpan<byte> Gs2Header => _cbindFlag switch
    {
        Gs2CbindFlag.TlsServerEndPoint => Scram.TlsServerEndPointGs2Header,
        Gs2CbindFlag.BindingNotOffered => "y,,"u8,
        _ => "n,,"u8,
    };

    private enum Step
    {
        Start,
        AwaitingServerFirst,
        AwaitingServerFinal,
        Done,
    }

    /// <summary>
    /// client-first-message: <c>&lt;gs2 header&gt;n=,r=&lt;nonce&gt;</c>. The gs2 header is <c>n,,</c>, <c>y,,</c>
    /// or <c>p=tls-server-end-point,,</c> by <see cref="CbindFlag"/>, and the user name is empty because
    /// PostgreSQL takes it from the startup packet.
    /// </summary>
    /// <exception cref="InvalidOperationException">Called twice.</exception>
    public byte[] CreateClientFirst()
    {
        if (_step != Step.Start)
        {
            throw new InvalidOperationException("client-first-message was already created.");
        }

        // saslname escapes ',' and '=' (RFC 5802 section 5.1).
        var userName = _userName.Replace("=", "=3D", StringComparison.Ordinal).Replace(",", "=2C", StringComparison.Ordinal);
        _clientFirstBare = Encoding.UTF8.GetBytes($"n={userName},r={_clientNonce}");
        _step = Step.AwaitingServerFirst;
        return [.. Gs2Header, .. _clientFirstBare];
    }

    /// <summary>
    /// Reads server-first-message (<c>r=&lt;nonce&gt;,s=&lt;salt&gt;,i=&lt;iterations&gt;</c>) and produces
    /// client-final-message (<c>c=&lt;binding&gt;,r=&lt;nonce&gt;,p=&lt;proof&gt;</c>). False when the server's nonce does not
    /// extend ours, the salt is not base64, the iteration count is below 1 or above
    /// <see cref="Scram.MaxClientIterations"/>, or the message is otherwise malformed.
    /// </summary>
    public bool TryHandleServerFirst(ReadOnlySpan<byte> serverFirst, out byte[] clientFinal, [NotNullWhen(false)] out string? error)
    {
        clientFinal = [];
        if (_step != Step.AwaitingServerFirst)
        {
            error = "unexpected SCRAM server-first-message";
            return false;
        }

        _step = Step.Done; // any failure ends the exchange
        if (!TryReadServerFirst(serverFirst, out var nonce, out var salt, out var iterations, out error))
        {
            return false;
        }

        byte[] clientKey, serverKey;
        if (_preparedPassword is not null)
        {
            var saltedPassword = Scram.SaltedPassword(_preparedPassword, salt, iterations);
            clientKey = Scram.ClientKey(saltedPassword);
            serverKey = Scram.ServerKey(saltedPassword);
            CryptographicOperations.ZeroMemory(saltedPassword);
        }
        else
        {
            // Pass-through: the keys were given, and the salt and iteration count are not needed.
            clientKey = _clientKey!;
            serverKey = _serverKey!;
        }

        // c= is base64(cbind-input), cbind-input = gs2-header [cbind-data] (RFC 5802 section 7): "biws" for
        // "n,,", "eSws" for "y,,", and with PLUS the header followed by the certificate hash.
        string binding = Convert.ToBase64String(_channelBinding is null ? Gs2Header : [.. Gs2Header, .. _channelBinding]);
        byte[] withoutProof = [.. "c="u8, .. Encoding.ASCII.GetBytes(binding), .. ",r="u8, .. nonce];
        var authMessage = Scram.AuthMessage(_clientFirstBare, serverFirst, withoutProof);

        Span<byte> storedKey = stackalloc byte[Scram.KeyLength];
        SHA256.HashData(clientKey, storedKey);
        Span<byte> clientSignature = stackalloc byte[Scram.KeyLength];
        HMACSHA256.HashData(storedKey, authMessage, clientSignature);
        Span<byte> proof = stackalloc byte[Scram.KeyLength];
        Scram.Xor(clientKey, clientSignature, proof);

        _expectedServerSignature = HMACSHA256.HashData(serverKey, authMessage);
        clientFinal = [.. withoutProof, .. Encoding.ASCII.GetBytes(",p=" + Convert.ToBase64String(proof))];
        _step = Step.AwaitingServerFinal;
        return true;
    }

    /// <summary>
    /// Reads server-final-message: true when <c>v=</c> carries the expected server signature (compared in
    /// constant time); false, with the server's text, for <c>e=</c>, or for a wrong signature or malformed message.
    /// </summary>
    public bool TryVerifyServerFinal(ReadOnlySpan<byte> serverFinal, [NotNullWhen(false)] out string? error)
    {
        if (_step != Step.AwaitingServerFinal)
        {
            error = "unexpected SCRAM server-final-message";
            return false;
        }

        _step = Step.Done;
        var reader = new ScramAttributeReader(serverFinal);
        if (!reader.TryRead(out var name, out var value))
        {
            error = "malformed SCRAM message (server-final-message)";
            return false;
        }

        if (name == (byte)'e')
        {
            error = "SCRAM authentication failed: " + Encoding.UTF8.GetString(value);
            return false;
        }

        if (name != (byte)'v' || !Scram.TryDecodeBase64(value, out var signature))
        {
            error = "malformed SCRAM message (server signature expected in server-final-message)";
            return false;
        }

        if (!CryptographicOperations.FixedTimeEquals(signature, _expectedServerSignature))
        {
            error = "incorrect server signature";
            return false;
        }

        error = null;
        return true;
    }

    /// <summary>
    /// Parses server-first-message = [reserved-mext ","] nonce "," salt "," iteration-count ["," extensions]
    /// (RFC 5802 section 7).
    /// </summary>
    private bool TryReadServerFirst(
        ReadOnlySpan<byte> message,
        out ReadOnlySpan<byte> nonce,
        [NotNullWhen(true)] out byte[]? salt,
        out int iterations,
        [NotNullWhen(false)] out string? error)
    {
        salt = null;
        iterations = 0;
        var reader = new ScramAttributeReader(message);
        if (!reader.TryRead(out var name, out nonce) || name != (byte)'r')
        {
            error = name == (byte)'m'
                ? "the server requires an unsupported SCRAM extension"
                : "malformed SCRAM message (nonce expected in server-first-message)";
            return false;
        }

        // The server's nonce is ours with its own part appended (RFC 5802 section 5.1, r=).
        if (!Scram.IsValidNonce(nonce) || nonce.Length <= _clientNonce.Length
            || !Ascii.Equals(nonce[.._clientNonce.Length], _clientNonce))
        {
            error = "invalid SCRAM response (nonce mismatch)";
            return false;
        }

        if (!reader.TryRead((byte)'s', out var saltText) || !Scram.TryDecodeBase64(saltText, out salt) || salt.Length == 0)
        {
            salt = null;
            error = "malformed SCRAM message (invalid salt in server-first-message)";
            return false;
        }

        if (!reader.TryRead((byte)'i', out var iterationText))
        {
            salt = null;
            error = "malformed SCRAM message (iteration count expected in server-first-message)";
            return false;
        }

        if (!TryParseIterations(iterationText, out iterations, out error))
        {
            salt = null;
            return false;
        }

        while (!reader.AtEnd)
        {
            if (!reader.TryRead(out _, out _))
            {
                salt = null;
                error = "malformed SCRAM message (garbage at end of server-first-message)";
                return false;
            }
        }

        error = null;
        return true;
    }

    private static bool TryParseIterations(ReadOnlySpan<byte> text, out int iterations, [NotNullWhen(false)] out string? error)
    {
        iterations = 0;
        error = null;
        if (text.IsEmpty)
        {
            error = "malformed SCRAM message (empty iteration count)";
            return false;
        }

        long value = 0;
        foreach (var digit in text)
        {
            if (digit is < (byte)'0' or > (byte)'9')
            {
                error = "malformed SCRAM message (invalid iteration count)";
                return false;
            }

            value = (value * 10) + (digit - '0');
            if (value > Scram.MaxClientIterations)
            {
                error = $"SCRAM iteration count is larger than {Scram.MaxClientIterations}";
                return false;
            }
        }

        if (value < 1)
        {
            error = "SCRAM iteration count must be at least 1";
            return false;
        }

        iterations = (int)value;
        return true;
    }
}
