using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using FastPgProxy.Hosting;
using FastPgProxy.Net;
using FastPgProxy.Protocol;
using FastPgProxy.Tls;

namespace FastPgProxy.Sessions;

/// <summary>
/// TLS to the client: after SSLRequest's <c>S</c>, or from the first byte (direct TLS), the plain channel
/// gives its socket to a <see cref="TlsChannel"/>, whose handshake runs off the loop and reports back to
/// <see cref="OnConnect"/>; the login then reads the start-up packet inside TLS. client_login_timeout
/// covers the handshake: closing the session closes the socket under it.
/// </summary>
internal sealed partial class ClientSession
{
    private ClientTls? _tls;
    private bool _directTls;

    // From StartTls until the handshake's outcome: nothing may be sent (a FATAL then only closes).
    private bool _tlsHandshaking;

    /// <summary>Whether the client's connection is TLS (handshake done).</summary>
    internal bool IsTls { get; private set; }

    /// <summary>The TLS version in use, as OpenSSL names it (<c>TLSv1.3</c>); null on a plain connection.</summary>
    internal string? TlsVersion { get; private set; }

    /// <summary>The cipher suite in use (IANA name); null on a plain connection.</summary>
    internal string? TlsCipher { get; private set; }

    /// <summary>The certificate the client presented, checked against the CA when client_tls_sslmode is verify-ca or verify-full; null when none.</summary>
    internal X509Certificate2? ClientCertificate { get; private set; }

    /// <summary>The TLS context the connection was made with (its certificate is the channel binding's); null on a plain connection.</summary>
    internal ClientTls? Tls => IsTls ? _tls : null;

    /// <summary>
    /// Replaces the plain channel with a TLS one on the same socket and starts the server handshake;
    /// <paramref name="prefix"/> holds the bytes of a direct TLS ClientHello already read.
    /// </summary>
    internal void StartTls(ClientTls tls, byte[]? prefix, bool direct)
    {
        _tls = tls;
        _directTls = direct;
        ClientChannel plain = _client;
        var socket = (Socket)plain.DetachForCancel()!;
        plain.Dispose();
        var channel = new TlsChannel(Loop, socket, prefix, this) { IdleWithoutBuffer = true };
        _client = channel;
        _tlsHandshaking = true;
        channel.AuthenticateAsServer(tls.Options());
    }

    /// <summary>The TLS handshake finished (the only connect a client channel reports).</summary>
    public void OnConnect(Channel channel, SocketError error)
    {
        _tlsHandshaking = false;
        if (State == SessionState.Closed)
        {
            TryFinish();
            return;
        }

        var tlsChannel = (TlsChannel)channel;
        if (error != SocketError.Success)
        {
            _proxy.Stats.OnLoginFailed();
            Log.Info($"client {ClientName}: TLS handshake failed: {tlsChannel.FailureReason ?? error.ToString()}");
            Close();
            return;
        }

        SslStream ssl = tlsChannel.Ssl;
        IsTls = true;
        TlsVersion = TlsNames.Protocol(ssl.SslProtocol);
        TlsCipher = ssl.NegotiatedCipherSuite.ToString();
        ClientCertificate = ssl.RemoteCertificate as X509Certificate2;
        if (_directTls && ssl.NegotiatedApplicationProtocol != ClientTls.PostgresAlpn)
        {
            // PostgreSQL 17 refuses direct TLS without ALPN postgresql: a plain HTTPS client must not get in.
            Fatal(SqlState.ProtocolViolation, "received direct SSL connection request without ALPN protocol negotiation extension");
            return;
        }

        _login!.Continue();
    }
}
