using System.Buffers.Binary;
using System.Net.Security;
using System.Net.Sockets;
using System.Text;
using FastPgProxy.Admin;
using FastPgProxy.Auth;
using FastPgProxy.Hosting;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;

namespace FastPgProxy.Cancellation;

/// <summary>
/// Sends a <see cref="PeerSignal"/> to the instance that owns the session: a new connection (TLS when
/// <c>server_tls_sslmode</c> asks for it, as for a backend), a login to the owner's console as the
/// <c>user=</c> of its <c>[peers]</c> line, one <c>PEER</c> command, its one-row answer, Terminate. A task on
/// the thread pool; no loop waits. Bounded by <c>cancel_timeout</c> (plus a termination's own timeout) and
/// by the peer's forwarding slots, shared with forwarded cancels.
/// </summary>
internal static class PeerSignalSender
{
    // The owner's replies are a login and one row: anything longer is not a FastPgProxy console.
    private const int MaxMessageLength = 64 * 1024;

    // How errors name the other side.
    private const string Peer = "the peer";

    /// <summary>
    /// Sends <paramref name="signal"/> to <paramref name="peer"/> and returns what the owner did, or
    /// <see cref="PeerSignalOutcome.Unreachable"/> (logged) when it could not be asked. Never throws.
    /// </summary>
    public static async Task<PeerSignalOutcome> SendAsync(ProxyServer proxy, PeerLink peer, PeerSignal signal)
    {
        if (peer.Options.User is not { } user)
        {
            Log.Warning($"{Describe(signal)} for peer {peer.Options.Id}: its [peers] line has no user=, so this instance cannot log in to it");
            peer.OnSignalNotSent();
            return PeerSignalOutcome.Unreachable;
        }

        int limit = peer.SlotLimit(proxy.Options);
        if (!peer.TryEnter(limit))
        {
            Log.Warning($"{Describe(signal)} for peer {peer.Options.Id} dropped: {limit} forwards to it already on their way");
            peer.OnSignalNotSent();
            return PeerSignalOutcome.Unreachable;
        }

        PeerSignalOutcome outcome = PeerSignalOutcome.Unreachable;
        using CancellationTokenSource cts = CancelForwarder.Deadline(proxy.Options.CancelTimeout + TimeSpan.FromMilliseconds(signal.TimeoutMs));
        try
        {
            using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            await using Stream stream = await PeerDirectory.OpenAsync(proxy, peer, socket, cts.Token).ConfigureAwait(false);
            var credentials = new ServerCredentials { User = user, Password = peer.Options.Password };
            byte[]? binding = stream is SslStream { RemoteCertificate: { } certificate } && ChannelBinding.TryComputeTlsServerEndPoint(certificate, out byte[]? data) ? data : null;
            KeyValuePair<string, string>[] startup =
            [
                new("user", user),
                new("database", "fastpgproxy"),
                new("application_name", PeerSignal.ApplicationNamePrefix + proxy.Peers.SelfId.ToString(System.Globalization.CultureInfo.InvariantCulture)),
            ];
            await StreamLogin.LogInAsync(stream, new PasswordLogin(credentials, binding), startup, Peer, MaxMessageLength, cts.Token).ConfigureAwait(false);
            outcome = await AskAsync(stream, signal, cts.Token).ConfigureAwait(false);
            await StreamLogin.TerminateAsync(stream, cts.Token).ConfigureAwait(false);
            Log.Write(LogLevel.Info, $"{Describe(signal)} forwarded to peer {peer.Options.Id}: {PeerSignal.Spell(outcome)}");
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException or IOException or System.Security.Authentication.AuthenticationException or LoginRefusedException)
        {
            Log.Warning($"{Describe(signal)} for peer {peer.Options.Id} ({peer.Options.Host}:{peer.Options.Port}) failed: {e.Message}");
        }
        finally
        {
            peer.ExitSignal(outcome != PeerSignalOutcome.Unreachable);
        }

        return outcome;
    }

    private static string Describe(PeerSignal signal) => $"{signal.Kind} of session {signal.SessionId} (asked by {signal.User})";

    /// <summary>Sends the PEER command and reads its one-row answer up to ReadyForQuery.</summary>
    private static async Task<PeerSignalOutcome> AskAsync(Stream stream, PeerSignal signal, CancellationToken cancellation)
    {
        byte[] command = Encoding.UTF8.GetBytes(signal.ToCommand());
        byte[] output = new byte[command.Length + 16];
        var writer = new PgWriter(output);
        writer.BeginMessage((byte)FrontendMessage.Query);
        writer.WriteCString(command);
        writer.EndMessage();
        await stream.WriteAsync(output.AsMemory(0, writer.Position), cancellation).ConfigureAwait(false);
        PeerSignalOutcome? outcome = null;
        string? refusal = null;
        while (true)
        {
            (byte type, byte[] body) = await StreamLogin.ReadMessageAsync(stream, Peer, MaxMessageLength, cancellation).ConfigureAwait(false);
            switch ((BackendMessage)type)
            {
                case BackendMessage.DataRow when body.Length >= sizeof(short) + sizeof(int):
                    int length = BinaryPrimitives.ReadInt32BigEndian(body.AsSpan(sizeof(short)));
                    if (length >= 0 && length <= body.Length - sizeof(short) - sizeof(int))
                    {
                        outcome = PeerSignal.Read(body.AsSpan(sizeof(short) + sizeof(int), length));
                    }

                    break;
                case BackendMessage.ErrorResponse:
                    refusal = ErrorFields.MessageOf(body);
                    break;
                case BackendMessage.ReadyForQuery:
                    return outcome ?? throw new LoginRefusedException(refusal is null ? "the peer sent no outcome" : $"the peer refused the signal: {refusal}", null);
            }
        }
    }
}


