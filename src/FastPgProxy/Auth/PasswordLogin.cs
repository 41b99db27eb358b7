using System.Buffers.Binary;
using System.Text;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;

namespace FastPgProxy.Auth;

/// <summary>What a login does after one authentication request of the server's.</summary>
internal enum LoginStep
{
    /// <summary>An answer was written; send it.</summary>
    Answer,
    /// <summary>Nothing to send; read on (AuthenticationOk arrived, or SCRAM's server-final verified).</summary>
    Continue,
    /// <summary>The login cannot go on; the error says why.</summary>
    Failed,
}

/// <summary>
/// The client side of a login's authentication requests (55.3): cleartext, md5 and SCRAM-SHA-256 (PLUS
/// over TLS when offered), with a password or the SCRAM keys learnt from a client. One per login; used by
/// backend connections and by the connections this instance opens to its peers.
/// </summary>
internal sealed class PasswordLogin
{
    private readonly ServerCredentials _credentials;
    private readonly byte[]? _channelBinding;
    private ScramClient? _scram;

    /// <summary>A login as <paramref name="credentials"/>; <paramref name="channelBinding"/> is the server certificate's tls-server-end-point data over TLS.</summary>
    public PasswordLogin(ServerCredentials credentials, byte[]? channelBinding)
    {
        _credentials = credentials;
        _channelBinding = channelBinding;
    }

    /// <summary>
    /// Answers the AuthenticationRequest whose body is <paramref name="body"/> into <paramref name="writer"/>.
    /// <paramref name="error"/> says why when the result is <see cref="LoginStep.Failed"/>.
    /// </summary>
    public LoginStep Respond(ReadOnlySpan<byte> body, ref PgWriter writer, out string? error)
    {
        error = null;
        if (body.Length < sizeof(int))
        {
            return Fail("server sent an invalid authentication request", out error);
        }

        var request = (AuthRequest)BinaryPrimitives.ReadInt32BigEndian(body);
        ReadOnlySpan<byte> payload = body.Slice(sizeof(int));
        switch (request)
        {
            case AuthRequest.Ok:
                return LoginStep.Continue;
            case AuthRequest.CleartextPassword:
                if (_credentials.Password is null)
                {
                    return Fail($"server asked for a cleartext password for user \"{_credentials.User}\" and the proxy has none (auth_file holds a hash)", out error);
                }

                writer.WritePassword(Encoding.UTF8.GetBytes(_credentials.Password));
                return LoginStep.Answer;
            case AuthRequest.Md5Password:
                string? hash = _credentials.Md5Hash ?? (_credentials.Password is null ? null : Md5Auth.HashPassword(_credentials.User, _credentials.Password));
                if (hash is null || payload.Length < Md5Auth.SaltLength)
                {
                    return Fail($"server asked for an md5 password for user \"{_credentials.User}\" and the proxy has none usable", out error);
                }

                Span<byte> response = stackalloc byte[Md5Auth.ResponseLength];
                Md5Auth.ComputeResponse(Encoding.ASCII.GetBytes(hash), payload.Slice(0, Md5Auth.SaltLength), response);
                writer.WritePassword(response);
                return LoginStep.Answer;
            case AuthRequest.Sasl:
                if (!ScramClient.TrySelectMechanism(payload, _channelBinding is not null, out Gs2CbindFlag cbindFlag))
                {
                    return Fail("server offered no supported SASL mechanism (SCRAM-SHA-256)", out error);
                }

                if (_credentials.Password is not null)
                {
                    _scram = new ScramClient(_credentials.Password, cbindFlag, _channelBinding);
                }
                else if (_credentials.ScramClientKey is not null && _credentials.ScramServerKey is not null)
                {
                    _scram = new ScramClient(_credentials.ScramClientKey, _credentials.ScramServerKey, cbindFlag, _channelBinding);
                }
                else
                {
                    return Fail($"server asked for SCRAM for user \"{_credentials.User}\" and the proxy has no password or SCRAM keys for it", out error);
                }

                writer.WriteSaslInitialResponse(_scram.Mechanism, _scram.CreateClientFirst());
                return LoginStep.Answer;
            case AuthRequest.SaslContinue:
                if (_scram is null || !_scram.TryHandleServerFirst(payload, out byte[]? clientFinal, out _))
                {
                    return Fail($"SCRAM login to server failed: {(_scram is null ? "unexpected SASLContinue" : "bad server-first-message")}", out error);
                }

                writer.WriteSaslResponse(clientFinal);
                return LoginStep.Answer;
            case AuthRequest.SaslFinal:
                if (_scram is null || !_scram.TryVerifyServerFinal(payload, out _))
                {
                    return Fail("SCRAM login to server failed: the server's signature did not verify", out error);
                }

                _scram = null;
                return LoginStep.Continue;
            default:
                return Fail($"server asked for an unsupported authentication method ({(int)request})", out error);
        }
    }

    private static LoginStep Fail(string reason, out string error)
    {
        error = reason;
        return LoginStep.Failed;
    }
}
