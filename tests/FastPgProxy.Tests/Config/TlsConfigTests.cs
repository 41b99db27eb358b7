using FastPgProxy.Config;
using Xunit;

namespace FastPgProxy.Tests.Config;

/// <summary>The client_tls_* and server_tls_* keys and auth_type cert as the config loader reads and checks them.</summary>
public class TlsConfigTests
{
    private const string Databases = "[databases]\n* = host=h\n";

    [Fact]
    public void Defaults_are_PgBouncers_client_disable_and_server_prefer()
    {
        ProxyOptions o = ConfigLoader.Parse("[fastpgproxy]\nauth_type = trust\n" + Databases, "x.ini");

        Assert.Equal(TlsMode.Disable, o.ClientTls.Mode);
        Assert.Equal(TlsMode.Prefer, o.ServerTls.Mode);
        Assert.Equal(("secure", "default"), (o.ClientTls.Protocols, o.ClientTls.Ciphers));
        Assert.Equal(("secure", "default"), (o.ServerTls.Protocols, o.ServerTls.Ciphers));
        Assert.Null(o.ClientTls.CertFile);
    }

    [Fact]
    public void All_twelve_keys_parse()
    {
        const string text = """
            [pgbouncer]
            auth_type = cert
            client_tls_sslmode = verify-full
            client_tls_key_file = /etc/fpp/server.key
            client_tls_cert_file = /etc/fpp/server.crt
            client_tls_ca_file = /etc/fpp/clients-ca.crt
            client_tls_protocols = tlsv1.3
            client_tls_ciphers = TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256
            server_tls_sslmode = verify-ca
            server_tls_key_file = /etc/fpp/client.key
            server_tls_cert_file = /etc/fpp/client.crt
            server_tls_ca_file = /etc/fpp/pg-ca.crt
            server_tls_protocols = secure,!tlsv1.2
            server_tls_ciphers = default

            [databases]
            * = host=h
            """;
        ProxyOptions o = ConfigLoader.Parse(text, "x.ini");

        Assert.Equal(AuthType.Cert, o.AuthType);
        Assert.Equal(TlsMode.VerifyFull, o.ClientTls.Mode);
        Assert.Equal("/etc/fpp/server.key", o.ClientTls.KeyFile);
        Assert.Equal("/etc/fpp/server.crt", o.ClientTls.CertFile);
        Assert.Equal("/etc/fpp/clients-ca.crt", o.ClientTls.CaFile);
        Assert.Equal("tlsv1.3", o.ClientTls.Protocols);
        Assert.Equal("TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256", o.ClientTls.Ciphers);
        Assert.Equal(TlsMode.VerifyCa, o.ServerTls.Mode);
        Assert.Equal("/etc/fpp/client.key", o.ServerTls.KeyFile);
        Assert.Equal("/etc/fpp/client.crt", o.ServerTls.CertFile);
        Assert.Equal("/etc/fpp/pg-ca.crt", o.ServerTls.CaFile);
        Assert.Equal("secure,!tlsv1.2", o.ServerTls.Protocols);
        Assert.Equal("default", o.ServerTls.Ciphers);
    }

    [Theory]
    [InlineData("disable", "Disable")]
    [InlineData("allow", "Allow")]
    [InlineData("prefer", "Prefer")]
    [InlineData("require", "Require")]
    [InlineData("verify-ca", "VerifyCa")]
    [InlineData("verify-full", "VerifyFull")]
    [InlineData("Verify-Full", "VerifyFull")]
    public void Every_sslmode_parses_on_both_sides(string value, string mode)
    {
        TlsMode expected = Enum.Parse<TlsMode>(mode);
        ProxyOptions o = ConfigLoader.Parse($"[fastpgproxy]\nauth_type = trust\nclient_tls_sslmode = {value}\nserver_tls_sslmode = {value}\n" + Databases, "x.ini");

        Assert.Equal(expected, o.ClientTls.Mode);
        Assert.Equal(expected, o.ServerTls.Mode);
        Assert.Equal(value.ToLowerInvariant(), TlsSettings.Name(expected));
    }

    [Fact]
    public void An_empty_file_setting_means_none()
    {
        ProxyOptions o = ConfigLoader.Parse("[fastpgproxy]\nauth_type = trust\nclient_tls_ca_file =\nserver_tls_cert_file = \"\"\n" + Databases, "x.ini");

        Assert.Null(o.ClientTls.CaFile);
        Assert.Null(o.ServerTls.CertFile);
    }

    [Theory]
    [InlineData("client_tls_sslmode = sometimes", "x.ini:3: client_tls_sslmode: invalid value 'sometimes'")]
    [InlineData("server_tls_sslmode = on", "x.ini:3: server_tls_sslmode: invalid value 'on'")]
    [InlineData("client_tls_protocols = tlsv1.4", "x.ini:3: client_tls_protocols: unknown protocol 'tlsv1.4'")]
    [InlineData("server_tls_protocols = sslv3", "x.ini:3: server_tls_protocols: unknown protocol 'sslv3'")]
    [InlineData("client_tls_protocols = tlsv1.1", "x.ini:3: client_tls_protocols: no protocol left")]
    [InlineData("server_tls_protocols = all,!tlsv1.2,!tlsv1.3", "x.ini:3: server_tls_protocols: no protocol left")]
    [InlineData("client_tls_ciphers = HIGH:!aNULL", "x.ini:3: client_tls_ciphers: 'HIGH' is not an IANA cipher suite name")]
    [InlineData("server_tls_ciphers = TLS_NOT_A_SUITE", "x.ini:3: server_tls_ciphers: 'TLS_NOT_A_SUITE' is not an IANA cipher suite name")]
    public void Bad_values_are_errors_naming_file_line_and_key(string line, string expected)
    {
        var e = Assert.Throws<ConfigException>(() => ConfigLoader.Parse($"[fastpgproxy]\nauth_type = trust\n{line}\n" + Databases, "x.ini"));

        Assert.StartsWith(expected, e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("disable")]
    [InlineData("prefer")]
    [InlineData("require")]
    public void Auth_type_cert_without_verify_ca_or_verify_full_is_an_error(string mode)
    {
        var e = Assert.Throws<ConfigException>(() => ConfigLoader.Parse($"[fastpgproxy]\nauth_type = cert\nclient_tls_sslmode = {mode}\n" + Databases, "x.ini"));

        Assert.StartsWith("x.ini: auth_type cert needs client_tls_sslmode verify-ca or verify-full", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("verify-ca")]
    [InlineData("verify-full")]
    public void Auth_type_cert_needs_no_auth_file(string mode)
    {
        ProxyOptions o = ConfigLoader.Parse($"[fastpgproxy]\nauth_type = cert\nclient_tls_sslmode = {mode}\n" + Databases, "x.ini");

        Assert.Equal(AuthType.Cert, o.AuthType);
        Assert.Null(o.AuthFile);
    }
}
