using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;

namespace FastPgProxy.Protocol;

/// <summary>
/// Reads the bodies of the messages a client answers an authentication request with (55.7): PasswordMessage,
/// SASLInitialResponse and SASLResponse all have type byte <c>p</c>; which one it is depends on the request.
/// </summary>
internal static class PasswordMessages
{
    /// <summary>The password (or MD5 response) of a PasswordMessage: its text up to the terminating NUL, or the whole body without one.</summary>
    public static ReadOnlySpan<byte> ReadPassword(ReadOnlySpan<byte> body)
    {
        int end = body.IndexOf((byte)0);
        return end >= 0 ? body.Slice(0, end) : body;
    }

    /// <summary>
    /// Reads a SASLInitialResponse (mechanism name, NUL, int32 length, data) and requires the mechanism to be
    /// one of <paramref name="offered"/>, the list the proxy sent in AuthenticationSASL (see
    /// <see cref="SaslMechanismList"/>). Checks in PostgreSQL's order: the name and length word must be there,
    /// then the mechanism must be offered, then the length must be that of the rest of the body. On false,
    /// <paramref name="error"/> is the message of the 08P01 FATAL.
    /// </summary>
    public static bool TryReadSaslInitialResponse(
        ReadOnlySpan<byte> body,
        ReadOnlySpan<byte> offered,
        out ReadOnlySpan<byte> mechanism,
        out ReadOnlySpan<byte> data,
        [NotNullWhen(false)] out string? error)
    {
        mechanism = default;
        data = default;
        int nameEnd = body.IndexOf((byte)0);
        if (nameEnd < 0 || body.Length < nameEnd + 1 + sizeof(int))
        {
            error = "malformed SASLInitialResponse message";
            return false;
        }

        if (!SaslMechanismList.Contains(offered, body.Slice(0, nameEnd)))
        {
            error = "client selected an invalid SASL authentication mechanism";
            return false;
        }

        int dataLength = BinaryPrimitives.ReadInt32BigEndian(body.Slice(nameEnd + 1));
        ReadOnlySpan<byte> rest = body.Slice(nameEnd + 1 + sizeof(int));
        if (dataLength != rest.Length)
        {
            error = "malformed SASLInitialResponse message";
            return false;
        }

        mechanism = body.Slice(0, nameEnd);
        data = rest;
        error = null;
        return true;
    }
}
