using System;
using System.Linq;
using System.Security.Cryptography;
using System.Text;
using FastPgProxy.Auth;
using FastPgProxy.Protocol;
using Xunit;

namespace FastPgProxy.Tests.Auth;

/// <summary>
/// SCRAM-SHA-256-PLUS with tls-server-end-point: <see cref="ScramServer"/> and <see cref="ScramClient"/> against
/// each other and against hand-made messages, with PostgreSQL's outcomes (auth-scram.c) for the downgrade and
/// mismatch cases.
/// </summary>
public class ScramChannelBindingTests
{
    private const string Password = "correct horse";
    private const string ClientNonce = "fyko+d2lbbFgONRv9qkxdawL";
    private const string ServerNonce = "3rfcNHYJY1ZVvWVs7j";
    private const string Plus = "SCRAM-SHA-256-PLUS";
    private const string Plain = "SCRAM-SHA-256";

    private static readonly ScramVerifier Verifier = ScramVerifier.FromPassword(Password, iterations: 16);

    /// <summary>Stands for the SHA-256 hash of the proxy's certificate.</summary>
    private static readonly byte[] Binding = SHA256.HashData("the proxy's certificate"u8);

    /// <summary>The hash of some other certificate: what a client talking TLS to a man in the middle computes.</summary>
    private static readonly byte[] OtherBinding = SHA256.HashData("someone else's certificate"u8);

    private static byte[] A(string text) => Encoding.ASCII.GetBytes(text);

    private static string S(ReadOnlySpan<byte> bytes) => Encoding.ASCII.GetString(bytes);

    /// <summary>An AuthenticationSASL mechanism list as it is on the wire: NUL after each name and after the list.</summary>
    private static byte[] List(params string[] names) => [.. names.SelectMany(n => A(n + "\0")), 0];

    /// <summary>Runs an exchange; null on success, else the step that failed and the server's error.</summary>
    private static string? Exchange(ScramClient client, ScramServer server)
    {
        if (!server.TryHandleClientFirst(client.Mechanism, client.CreateClientFirst(), out var serverFirst, out var error))
        {
            return "client-first: " + error;
        }

        if (!client.TryHandleServerFirst(serverFirst, out var clientFinal, out error))
        {
            return "server-first: " + error;
        }

        if (!server.TryHandleClientFinal(clientFinal, out var serverFinal, out error))
        {
            return "client-final: " + error;
        }

        return client.TryVerifyServerFinal(serverFinal, out error) ? null : "server-final: " + error;
    }

    /// <summary>A client that answers <paramref name="server"/>'s offer as the proxy's backend login does.</summary>
    private static ScramClient ClientFor(ScramServer server, byte[]? channelBinding)
    {
        Assert.True(ScramClient.TrySelectMechanism([.. server.Mechanisms, 0], channelBinding is not null, out var flag));
        return new ScramClient(Password, flag, channelBinding);
    }

    [Fact]
    public void Server_with_binding_offers_plus_first()
    {
        var server = new ScramServer(Verifier, Binding);

        Assert.Equal(Plus + "\0" + Plain + "\0", S(server.Mechanisms));
        Assert.True(server.OffersChannelBinding);
    }

    [Fact]
    public void Server_without_binding_offers_scram_sha_256_only()
    {
        var server = new ScramServer(Verifier);

        Assert.Equal(Plain + "\0", S(server.Mechanisms));
        Assert.False(server.OffersChannelBinding);
    }

    [Fact]
    public void Empty_binding_data_is_refused()
    {
        Assert.Throws<ArgumentException>(() => new ScramServer(Verifier, Array.Empty<byte>()));
        Assert.Throws<ArgumentException>(() => new ScramClient(Password, Gs2CbindFlag.TlsServerEndPoint, null));
        Assert.Throws<ArgumentException>(() => new ScramClient(Password, Gs2CbindFlag.TlsServerEndPoint, []));
    }

    [Fact]
    public void Plus_exchange_with_the_same_certificate_succeeds()
    {
        var server = new ScramServer(Verifier, Binding);
        var client = ClientFor(server, Binding);

        Assert.Equal(Gs2CbindFlag.TlsServerEndPoint, client.CbindFlag);
        Assert.Equal(Plus, S(client.Mechanism));
        Assert.Null(Exchange(client, server));
        Assert.Equal(ScramServerState.Succeeded, server.State);
    }

    [Fact]
    public void Plain_exchange_without_binding_succeeds()
    {
        var server = new ScramServer(Verifier);
        var client = ClientFor(server, null);

        Assert.Equal(Gs2CbindFlag.NoBinding, client.CbindFlag);
        Assert.Equal(Plain, S(client.Mechanism));
        Assert.Null(Exchange(client, server));
    }

    [Fact]
    public void Client_with_binding_says_y_to_a_server_without_plus_and_succeeds()
    {
        var server = new ScramServer(Verifier);
        var client = ClientFor(server, Binding);

        Assert.Equal(Gs2CbindFlag.BindingNotOffered, client.CbindFlag);
        Assert.Equal(Plain, S(client.Mechanism));
        Assert.Null(Exchange(client, server));
    }

    [Fact]
    public void Client_without_binding_says_n_to_a_server_with_plus_and_succeeds()
    {
        var server = new ScramServer(Verifier, Binding);
        var client = ClientFor(server, null);

        Assert.Equal(Gs2CbindFlag.NoBinding, client.CbindFlag);
        Assert.Null(Exchange(client, server));
    }

    [Fact]
    public void Pass_through_keys_work_with_plus()
    {
        var salted = Scram.SaltedPassword(SaslPrep.Prepare(Password), Verifier.Salt, Verifier.Iterations);
        var server = new ScramServer(Verifier, Binding);
        var client = new ScramClient(Scram.ClientKey(salted), Scram.ServerKey(salted), Gs2CbindFlag.TlsServerEndPoint, Binding);

        Assert.Null(Exchange(client, server));
    }

    [Fact]
    public void Plus_messages_carry_the_gs2_header_and_the_certificate_hash()
    {
        var client = new ScramClient(Password, string.Empty, ClientNonce, Gs2CbindFlag.TlsServerEndPoint, Binding);
        var server = new ScramServer(Verifier, ServerNonce, Binding);

        var clientFirst = client.CreateClientFirst();
        Assert.Equal("p=tls-server-end-point,,n=,r=" + ClientNonce, S(clientFirst));
        Assert.True(server.TryHandleClientFirst(A(Plus), clientFirst, out var serverFirst, out var error), error);
        Assert.True(client.TryHandleServerFirst(serverFirst, out var clientFinal, out error), error);

        // c= is base64 of the gs2 header followed by the binding data, computed here byte by byte.
        var expected = "c=" + Convert.ToBase64String([.. A("p=tls-server-end-point,,"), .. Binding]) + ",r=" + ClientNonce + ServerNonce + ",p=";
        Assert.StartsWith(expected, S(clientFinal), StringComparison.Ordinal);
        Assert.True(server.TryHandleClientFinal(clientFinal, out _, out error), error);
    }

    [Theory]
    [InlineData(nameof(Gs2CbindFlag.NoBinding), "c=biws,")]
    [InlineData(nameof(Gs2CbindFlag.BindingNotOffered), "c=eSws,")]
    public void Plain_client_final_carries_base64_of_its_gs2_header(string flag, string prefix)
    {
        var client = new ScramClient(Password, string.Empty, ClientNonce, Enum.Parse<Gs2CbindFlag>(flag), Binding);
        var server = new ScramServer(Verifier, ServerNonce);

        Assert.True(server.TryHandleClientFirst(client.CreateClientFirst(), out var serverFirst, out _));
        Assert.True(client.TryHandleServerFirst(serverFirst, out var clientFinal, out _));
        Assert.StartsWith(prefix, S(clientFinal), StringComparison.Ordinal);
    }

    [Fact]
    public void Y_flag_while_plus_was_offered_is_a_downgrade()
    {
        var server = new ScramServer(Verifier, Binding);
        var client = new ScramClient(Password, Gs2CbindFlag.BindingNotOffered, Binding);

        Assert.False(server.TryHandleClientFirst(A(Plain), client.CreateClientFirst(), out var serverFirst, out var error));
        Assert.Empty(serverFirst);
        Assert.Equal(ScramServerState.ChannelBindingRejected, server.State);
        Assert.Equal("SCRAM channel binding negotiation error", error);
        Assert.Equal(
            "The client supports SCRAM channel binding but thinks the server does not.  However, this server does support channel binding.",
            server.ErrorDetail);
    }

    [Fact]
    public void Binding_data_of_another_certificate_is_refused()
    {
        var server = new ScramServer(Verifier, Binding);
        var client = new ScramClient(Password, Gs2CbindFlag.TlsServerEndPoint, OtherBinding);

        Assert.True(server.TryHandleClientFirst(A(Plus), client.CreateClientFirst(), out var serverFirst, out _));
        Assert.True(client.TryHandleServerFirst(serverFirst, out var clientFinal, out _));
        Assert.False(server.TryHandleClientFinal(clientFinal, out var serverFinal, out var error));
        Assert.Empty(serverFinal);
        Assert.Equal(ScramServerState.ChannelBindingRejected, server.State);
        Assert.Equal("SCRAM channel binding check failed", error);
        Assert.Null(server.ErrorDetail);
    }

    [Theory]
    [InlineData("c=biws")] // the plain header's binding after selecting PLUS
    [InlineData("c=")]
    [InlineData("c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws")] // the PLUS header without the data
    public void Plus_client_final_without_the_right_binding_is_refused(string binding)
    {
        var server = new ScramServer(Verifier, ServerNonce, Binding);
        Assert.True(server.TryHandleClientFirst(A(Plus), A("p=tls-server-end-point,,n=,r=" + ClientNonce), out _, out _));

        var final = A(binding + ",r=" + ClientNonce + ServerNonce + ",p=" + Convert.ToBase64String(new byte[32]));
        Assert.False(server.TryHandleClientFinal(final, out _, out var error));
        Assert.Equal(ScramServerState.ChannelBindingRejected, server.State);
        Assert.Equal("SCRAM channel binding check failed", error);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void P_flag_with_the_plain_mechanism_is_a_protocol_violation(bool plusOffered)
    {
        var server = new ScramServer(Verifier, plusOffered ? Binding : null);
        var client = new ScramClient(Password, Gs2CbindFlag.TlsServerEndPoint, Binding);

        Assert.False(server.TryHandleClientFirst(A(Plain), client.CreateClientFirst(), out _, out var error));
        Assert.Equal(ScramServerState.Malformed, server.State);
        Assert.Equal(
            "malformed SCRAM message (the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data)",
            error);
    }

    [Theory]
    [InlineData("n,,n=,r=" + ClientNonce)]
    [InlineData("y,,n=,r=" + ClientNonce)]
    public void Plus_mechanism_without_binding_data_is_a_protocol_violation(string clientFirst)
    {
        var server = new ScramServer(Verifier, Binding);

        Assert.False(server.TryHandleClientFirst(A(Plus), A(clientFirst), out _, out var error));
        Assert.Equal(ScramServerState.Malformed, server.State);
        Assert.Equal(
            "malformed SCRAM message (the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data)",
            error);
    }

    [Fact]
    public void Plus_mechanism_not_offered_is_an_invalid_mechanism()
    {
        var server = new ScramServer(Verifier);

        Assert.False(server.TryHandleClientFirst(A(Plus), A("p=tls-server-end-point,,n=,r=" + ClientNonce), out _, out var error));
        Assert.Equal(ScramServerState.Malformed, server.State);
        Assert.Equal("client selected an invalid SASL authentication mechanism", error);
    }

    [Fact]
    public void Unknown_mechanism_is_an_invalid_mechanism()
    {
        var server = new ScramServer(Verifier, Binding);

        Assert.False(server.TryHandleClientFirst(A("SCRAM-SHA-1"), A("n,,n=,r=" + ClientNonce), out _, out var error));
        Assert.Equal("client selected an invalid SASL authentication mechanism", error);
    }

    [Theory]
    [InlineData("p=tls-unique,,n=,r=" + ClientNonce, "unsupported SCRAM channel-binding type \"tls-unique\"")]
    [InlineData("p=,,n=,r=" + ClientNonce, "unsupported SCRAM channel-binding type \"\"")]
    [InlineData("p=tls-server-end-point-and-then-some-more,,n=,r=x", "unsupported SCRAM channel-binding type \"tls-server-end-point-and-then-\"")]
    [InlineData("p=tls\u0001server end,,n=,r=x", "unsupported SCRAM channel-binding type \"tls?server?end\"")]
    [InlineData("p,,n=,r=" + ClientNonce, "malformed SCRAM message (expected character \"=\" for attribute \"p\")")]
    [InlineData("p=tls-server-end-point", "malformed SCRAM message (comma expected after the gs2 header)")]
    [InlineData("p=tls-server-end-point,", "malformed SCRAM message (comma expected after the gs2 header)")]
    [InlineData("p=tls-server-end-point,x,n=,r=x", "malformed SCRAM message (comma expected after the gs2 header)")]
    [InlineData("p=tls-server-end-point,a=alice,n=,r=x", "the client uses an authorization identity, which is not supported")]
    public void Bad_plus_gs2_headers_are_protocol_violations(string clientFirst, string expected)
    {
        var server = new ScramServer(Verifier, Binding);

        Assert.False(server.TryHandleClientFirst(A(Plus), A(clientFirst), out _, out var error));
        Assert.Equal(ScramServerState.Malformed, server.State);
        Assert.Equal(expected, error);
    }

    [Theory]
    [InlineData("n,,", "c=eSws")]
    [InlineData("y,,", "c=biws")]
    [InlineData("n,,", "c=biws=")]
    [InlineData("n,,", "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws")]
    public void Plain_client_final_with_another_gs2_header_is_a_protocol_violation(string gs2Header, string binding)
    {
        var server = new ScramServer(Verifier, ServerNonce);
        Assert.True(server.TryHandleClientFirst(A(gs2Header + "n=,r=" + ClientNonce), out _, out _));

        var final = A(binding + ",r=" + ClientNonce + ServerNonce + ",p=" + Convert.ToBase64String(new byte[32]));
        Assert.False(server.TryHandleClientFinal(final, out _, out var error));
        Assert.Equal(ScramServerState.Malformed, server.State);
        Assert.Equal("unexpected SCRAM channel-binding attribute in client-final-message", error);
    }

    [Fact]
    public void Wrong_password_with_plus_is_still_a_wrong_password()
    {
        var server = new ScramServer(Verifier, Binding);
        var client = new ScramClient("wrong", Gs2CbindFlag.TlsServerEndPoint, Binding);

        Assert.StartsWith("client-final", Exchange(client, server), StringComparison.Ordinal);
        Assert.Equal(ScramServerState.ProofRejected, server.State);
    }

    [Theory]
    [InlineData(true, new[] { Plus, Plain }, true, nameof(Gs2CbindFlag.TlsServerEndPoint))]
    [InlineData(false, new[] { Plus, Plain }, true, nameof(Gs2CbindFlag.NoBinding))]
    [InlineData(true, new[] { Plain }, true, nameof(Gs2CbindFlag.BindingNotOffered))]
    [InlineData(false, new[] { Plain }, true, nameof(Gs2CbindFlag.NoBinding))]
    [InlineData(true, new[] { Plain, Plus }, true, nameof(Gs2CbindFlag.TlsServerEndPoint))]
    [InlineData(true, new[] { Plus }, true, nameof(Gs2CbindFlag.TlsServerEndPoint))]
    [InlineData(false, new[] { Plus }, false, nameof(Gs2CbindFlag.NoBinding))]
    [InlineData(true, new[] { "OAUTHBEARER" }, false, nameof(Gs2CbindFlag.BindingNotOffered))]
    [InlineData(false, new string[0], false, nameof(Gs2CbindFlag.NoBinding))]
    public void Client_selects_the_mechanism_as_libpq(bool haveBinding, string[] offered, bool ok, string expected)
    {
        Assert.Equal(ok, ScramClient.TrySelectMechanism(List(offered), haveBinding, out var flag));
        Assert.Equal(Enum.Parse<Gs2CbindFlag>(expected), flag);
    }

    [Fact]
    public void Selection_ignores_a_name_without_its_nul()
    {
        Assert.False(ScramClient.TrySelectMechanism(A(Plain), false, out _));
        Assert.True(ScramClient.TrySelectMechanism(A(Plain + "\0" + Plus), true, out var flag));
        Assert.Equal(Gs2CbindFlag.BindingNotOffered, flag);
    }

    [Fact]
    public void Sasl_initial_response_may_select_any_offered_mechanism()
    {
        var server = new ScramServer(Verifier, Binding);
        byte[] body = [.. A(Plus + "\0"), 0, 0, 0, 3, .. A("abc")];

        Assert.True(PasswordMessages.TryReadSaslInitialResponse(body, server.Mechanisms, out var mechanism, out var data, out var error), error);
        Assert.Equal(Plus, S(mechanism));
        Assert.Equal("abc", S(data));

        Assert.False(PasswordMessages.TryReadSaslInitialResponse(body, new ScramServer(Verifier).Mechanisms, out _, out _, out error));
        Assert.Equal("client selected an invalid SASL authentication mechanism", error);
    }

    [Fact]
    public void Writer_lists_the_mechanisms_and_names_the_selected_one()
    {
        var buffer = new byte[256];
        var writer = new PgWriter(buffer);
        writer.WriteAuthenticationSasl(new ScramServer(Verifier, Binding).Mechanisms);
        byte[] expected = [(byte)'R', 0, 0, 0, 42, 0, 0, 0, 10, .. A(Plus + "\0" + Plain + "\0\0")];
        Assert.Equal(expected, buffer[..writer.Position]);

        writer = new PgWriter(buffer);
        writer.WriteSaslInitialResponse(A(Plus), A("p=x"));
        expected = [(byte)'p', 0, 0, 0, 30, .. A(Plus + "\0"), 0, 0, 0, 3, .. A("p=x")];
        Assert.Equal(expected, buffer[..writer.Position]);
    }
}
