using System.Buffers.Binary;
using FastPgProxy.Protocol;

namespace FastPgProxy.Auth;

/// <summary>
/// A login and message reads over a <see cref="Stream"/>, for the short conversations the proxy holds in a
/// task on the thread pool rather than on a loop: a signal to a peer instance, an auth_query lookup. The
/// StartupMessage carries only the parameters the caller names; the authentication exchange is
/// <see cref="PasswordLogin"/>'s, as on a backend.
/// </summary>
internal static class StreamLogin
{
    /// <summary>
    /// Sends a protocol 3.0 StartupMessage with <paramref name="parameters"/>, answers the authentication
    /// requests, and reads up to ReadyForQuery. <paramref name="who"/> names the other side in errors
    /// ("the peer", "the server"). Throws <see cref="LoginRefusedException"/> when the login is refused.
    /// </summary>
    public static async Task LogInAsync(
        Stream stream, PasswordLogin login, IReadOnlyList<KeyValuePair<string, string>> parameters, string who, int maxMessageLength, CancellationToken cancellation)
    {
        byte[] output = new byte[Math.Max(1024, StartupLength(parameters))];
        var writer = new PgWriter(output);
        writer.BeginStartupPacket();
        writer.WriteInt32(StartupCodes.Protocol30);
        foreach (KeyValuePair<string, string> parameter in parameters)
        {
            writer.WriteCString(parameter.Key);
            writer.WriteCString(parameter.Value);
        }

        writer.WriteByte(0);
        writer.EndMessage();
        await stream.WriteAsync(output.AsMemory(0, writer.Position), cancellation).ConfigureAwait(false);
        while (true)
        {
            (byte type, byte[] body) = await ReadMessageAsync(stream, who, maxMessageLength, cancellation).ConfigureAwait(false);
            switch ((BackendMessage)type)
            {
                case BackendMessage.Authentication:
                    writer = new PgWriter(output);
                    LoginStep step = login.Respond(body, ref writer, out string? error);
                    if (step == LoginStep.Failed)
                    {
                        throw new LoginRefusedException(error!, null);
                    }

                    if (step == LoginStep.Answer)
                    {
                        await stream.WriteAsync(output.AsMemory(0, writer.Position), cancellation).ConfigureAwait(false);
                    }

                    break;
                case BackendMessage.ErrorResponse:
                    throw new LoginRefusedException($"{who} refused the login: {ErrorFields.MessageOf(body)}", ErrorFields.SqlStateOfFields(body));
                case BackendMessage.ReadyForQuery:
                    return;
            }
        }
    }

    /// <summary>
    /// One backend message: its type and body. A length below 4 or above <paramref name="maxMessageLength"/>
    /// is a broken peer (<see cref="LoginRefusedException"/>).
    /// </summary>
    public static async Task<(byte Type, byte[] Body)> ReadMessageAsync(Stream stream, string who, int maxMessageLength, CancellationToken cancellation)
    {
        byte[] header = new byte[MessageFramer.HeaderLength];
        await stream.ReadExactlyAsync(header, cancellation).ConfigureAwait(false);
        int length = BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(1));
        if (length < sizeof(int) || length > maxMessageLength)
        {
            throw new LoginRefusedException($"{who} sent a message of length {length}", null);
        }

        byte[] body = new byte[length - sizeof(int)];
        await stream.ReadExactlyAsync(body, cancellation).ConfigureAwait(false);
        return (header[0], body);
    }

    /// <summary>Sends Terminate (55.2.4), the polite end of a conversation.</summary>
    public static ValueTask TerminateAsync(Stream stream, CancellationToken cancellation) =>
        stream.WriteAsync(new byte[] { (byte)FrontendMessage.Terminate, 0, 0, 0, sizeof(int) }, cancellation);

    private static int StartupLength(IReadOnlyList<KeyValuePair<string, string>> parameters)
    {
        int length = sizeof(int) + sizeof(int) + 1; // length, protocol version, the final zero byte
        foreach (KeyValuePair<string, string> parameter in parameters)
        {
            // UTF-8 takes at most three bytes per UTF-16 unit; one zero byte ends each string.
            length += (3 * parameter.Key.Length) + 1 + (3 * parameter.Value.Length) + 1;
        }

        return length;
    }
}

/// <summary>
/// The other side of a <see cref="StreamLogin"/> conversation answered, but not as hoped: a refused login or
/// command, or a broken reply. <see cref="SqlState"/> is its ErrorResponse's SQLSTATE when it sent one.
/// </summary>
internal sealed class LoginRefusedException(string message, string? sqlState) : Exception(message)
{
    /// <summary>The SQLSTATE of the ErrorResponse that refused, when there was one.</summary>
    public string? SqlState { get; } = sqlState;
}
