using System.Buffers.Binary;

namespace FastPgProxy.Tools.SendCancel;

/// <summary>
/// The two start-up packets the tool sends (protocol section 55.7): CancelRequest and SSLRequest. Neither
/// has a type byte; each begins with an int32 length that counts itself, then an int32 request code.
/// </summary>
internal static class CancelPacket
{
    /// <summary>The CancelRequest code, 1234 in the high 16 bits and 5678 in the low 16.</summary>
    public const int CancelRequestCode = 80877102;

    /// <summary>The SSLRequest code, 1234 in the high 16 bits and 5679 in the low 16.</summary>
    public const int SslRequestCode = 80877103;

    /// <summary>The shortest cancel key: the 4 bytes of protocol 3.0.</summary>
    public const int MinKeyLength = 4;

    /// <summary>The longest cancel key protocol 3.2 allows (PostgreSQL 18 itself sends 32).</summary>
    public const int MaxKeyLength = 256;

    /// <summary>Length of an SSLRequest: int32 length + int32 code.</summary>
    public const int SslRequestLength =
        sizeof(int)   // length
        + sizeof(int); // request code

    /// <summary>Length of a CancelRequest carrying a key of <paramref name="keyLength"/> bytes.</summary>
    public static int CancelRequestLength(int keyLength) =>
        sizeof(int)    // length
        + sizeof(int)  // request code
        + sizeof(int)  // process id
        + keyLength;   // secret key, as BackendKeyData gave it

    /// <summary>
    /// A CancelRequest for <paramref name="processId"/> with <paramref name="key"/> copied whole (4 to 256
    /// bytes; the caller checked the length).
    /// </summary>
    public static byte[] CancelRequest(int processId, ReadOnlySpan<byte> key)
    {
        if (key.Length is < MinKeyLength or > MaxKeyLength)
        {
            throw new ArgumentOutOfRangeException(nameof(key), key.Length, $"a cancel key is {MinKeyLength} to {MaxKeyLength} bytes");
        }

        var packet = new byte[CancelRequestLength(key.Length)];
        Span<byte> p = packet;
        BinaryPrimitives.WriteInt32BigEndian(p, packet.Length);
        BinaryPrimitives.WriteInt32BigEndian(p[sizeof(int)..], CancelRequestCode);
        BinaryPrimitives.WriteInt32BigEndian(p[(2 * sizeof(int))..], processId);
        key.CopyTo(p[(3 * sizeof(int))..]);
        return packet;
    }

    /// <summary>The 4-byte key of protocol 3.0: <paramref name="key"/> big-endian, as BackendKeyData carries it.</summary>
    public static byte[] Key(int key)
    {
        var bytes = new byte[sizeof(int)];
        BinaryPrimitives.WriteInt32BigEndian(bytes, key);
        return bytes;
    }

    /// <summary>An SSLRequest.</summary>
    public static byte[] SslRequest()
    {
        var packet = new byte[SslRequestLength];
        BinaryPrimitives.WriteInt32BigEndian(packet, SslRequestLength);
        BinaryPrimitives.WriteInt32BigEndian(packet.AsSpan(sizeof(int)), SslRequestCode);
        return packet;
    }
}
