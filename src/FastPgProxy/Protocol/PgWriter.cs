using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;

namespace FastPgProxy.Protocol;

/// <summary>
/// Writes protocol messages into a caller-owned span. Each message is begun, filled and ended; the
/// length word is back-filled at the end so callers never add up lengths by hand.
/// </summary>
internal ref struct PgWriter
{
    private readonly Span<byte> _buffer;
    private int _position;
    private int _messageStart;

    /// <summary>Creates a writer over <paramref name="buffer"/>, starting at offset 0.</summary>
    public PgWriter(Span<byte> buffer)
    {
        _buffer = buffer;
        _position = 0;
        _messageStart = -1;
    }

    /// <summary>Bytes written so far.</summary>
    public readonly int Position => _position;

    /// <summary>Bytes still free.</summary>
    public readonly int Remaining => _buffer.Length - _position;

    /// <summary>Starts a typed message: the type byte and room for the length word.</summary>
    public void BeginMessage(byte type)
    {
        Debug.Assert(_messageStart < 0, "messages do not nest");
        _buffer[_position++] = type;
        _messageStart = _position;
        _position += sizeof(int);
    }

    /// <summary>Starts an untyped start-up packet (StartupMessage, CancelRequest): the length word only.</summary>
    public void BeginStartupPacket()
    {
        Debug.Assert(_messageStart < 0, "messages do not nest");
        _messageStart = _position;
        _position += sizeof(int);
    }

    /// <summary>Back-fills the length word of the message begun last; it counts itself but not the type byte.</summary>
    public void EndMessage()
    {
        BinaryPrimitives.WriteInt32BigEndian(_buffer.Slice(_messageStart), _position - _messageStart);
        _messageStart = -1;
    }

    /// <summary>Writes one byte.</summary>
    public void WriteByte(byte value) => _buffer[_position++] = value;

    /// <summary>Writes a big-endian int16.</summary>
    public void WriteInt16(short value)
    {
        BinaryPrimitives.WriteInt16BigEndian(_buffer.Slice(_position), value);
        _position += sizeof(short);
    }

    /// <summary>Writes a big-endian int32.</summary>
    public void WriteInt32(int value)
    {
        BinaryPrimitives.WriteInt32BigEndian(_buffer.Slice(_position), value);
        _position += sizeof(int);
    }

    /// <summary>Writes raw bytes.</summary>
    public void WriteBytes(scoped ReadOnlySpan<byte> value)
    {
        value.CopyTo(_buffer.Slice(_position));
        _position += value.Length;
    }

    /// <summary>Writes a NUL-terminated string from UTF-8 bytes.</summary>
    public void WriteCString(scoped ReadOnlySpan<byte> value)
    {
        WriteBytes(value);
        _buffer[_position++] = 0;
    }

    /// <summary>Writes a NUL-terminated string, UTF-8 encoded; off the hot path (errors, start-up).</summary>
    public void WriteCString(string value)
    {
        _position += Encoding.UTF8.GetBytes(value, _buffer.Slice(_position));
        _buffer[_position++] = 0;
    }

    /// <summary>ErrorResponse or NoticeResponse with severity, SQLSTATE, message and optional detail and hint (55.8).</summary>
    public void WriteError(BackendMessage type, string severity, string sqlState, string message, string? detail = null, string? hint = null)
    {
        BeginMessage((byte)type);
        WriteField((byte)'S', severity);
        WriteField((byte)'V', severity);
        WriteField((byte)'C', sqlState);
        WriteField((byte)'M', message);
        if (detail is not null)
        {
            WriteField((byte)'D', detail);
        }

        if (hint is not null)
        {
            WriteField((byte)'H', hint);
        }

        WriteByte(0);
        EndMessage();
    }

    private void WriteField(byte code, string value)
    {
        WriteByte(code);
        WriteCString(value);
    }

    /// <summary>Authentication request with no payload (Ok, CleartextPassword).</summary>
    public void WriteAuthentication(AuthRequest request)
    {
        BeginMessage((byte)BackendMessage.Authentication);
        WriteInt32((int)request);
        EndMessage();
    }

    /// <summary>Authentication request followed by a payload (MD5 salt, SASL data).</summary>
    public void WriteAuthentication(AuthRequest request, scoped ReadOnlySpan<byte> payload)
    {
        BeginMessage((byte)BackendMessage.Authentication);
        WriteInt32((int)request);
        WriteBytes(payload);
        EndMessage();
    }

    /// <summary>
    /// AuthenticationSASL offering <paramref name="mechanisms"/>: the names in order of preference, each
    /// already NUL-terminated (see <see cref="SaslMechanismList"/>); the list's closing NUL is written here.
    /// </summary>
    public void WriteAuthenticationSasl(scoped ReadOnlySpan<byte> mechanisms)
    {
        Debug.Assert(!mechanisms.IsEmpty && mechanisms[^1] == 0, "every mechanism name ends with its NUL");
        BeginMessage((byte)BackendMessage.Authentication);
        WriteInt32((int)AuthRequest.Sasl);
        WriteBytes(mechanisms);
        WriteByte(0);
        EndMessage();
    }

    /// <summary>BackendKeyData: the pid and the secret key, 4 bytes for protocol 3.0, 4 to 256 for 3.2.</summary>
    public void WriteBackendKeyData(int processId, scoped ReadOnlySpan<byte> secretKey)
    {
        Debug.Assert(secretKey.Length is >= StartupCodes.MinCancelKeyLength and <= StartupCodes.MaxCancelKeyLength);
        BeginMessage((byte)BackendMessage.BackendKeyData);
        WriteInt32(processId);
        WriteBytes(secretKey);
        EndMessage();
    }

    /// <summary>ReadyForQuery with the given transaction status.</summary>
    public void WriteReadyForQuery(TransactionStatus status)
    {
        BeginMessage((byte)BackendMessage.ReadyForQuery);
        WriteByte((byte)status);
        EndMessage();
    }

    /// <summary>CancelRequest (an untyped packet) carrying a backend's own pid and key.</summary>
    public void WriteCancelRequest(int processId, scoped ReadOnlySpan<byte> secretKey)
    {
        BeginStartupPacket();
        WriteInt32(StartupCodes.CancelRequestCode);
        WriteInt32(processId);
        WriteBytes(secretKey);
        EndMessage();
    }

    /// <summary>PasswordMessage with a NUL-terminated password or MD5 response.</summary>
    public void WritePassword(scoped ReadOnlySpan<byte> password)
    {
        BeginMessage((byte)FrontendMessage.Password);
        WriteCString(password);
        EndMessage();
    }

    /// <summary>SASLInitialResponse selecting <paramref name="mechanism"/> (SCRAM-SHA-256 or SCRAM-SHA-256-PLUS) with the client-first message.</summary>
    public void WriteSaslInitialResponse(scoped ReadOnlySpan<byte> mechanism, scoped ReadOnlySpan<byte> clientFirst)
    {
        BeginMessage((byte)FrontendMessage.Password);
        WriteCString(mechanism);
        WriteInt32(clientFirst.Length);
        WriteBytes(clientFirst);
        EndMessage();
    }

    /// <summary>SASLResponse carrying the client-final message.</summary>
    public void WriteSaslResponse(scoped ReadOnlySpan<byte> data)
    {
        BeginMessage((byte)FrontendMessage.Password);
        WriteBytes(data);
        EndMessage();
    }
}
