using System.Net;
using FastPgProxy.Auth;
using Xunit;

namespace FastPgProxy.Tests.Auth;

/// <summary>The auth_hba_file parser and matcher, without sockets: PostgreSQL's pg_hba.conf format as PgBouncer reads it.</summary>
public sealed class HbaRulesTests
{
    private static readonly IPAddress Loopback = IPAddress.Parse("127.0.0.1");

    private static HbaRules Parse(string text) => HbaRules.Parse(text, "hba.conf", Path.GetTempPath());

    private static string? MethodFor(HbaRules rules, string address, string database, string user, bool ssl = false, HbaConnectionType type = HbaConnectionType.Host) =>
        rules.Match(type, ssl, IPAddress.Parse(address), database, user)?.Method.ToString();

    private static string ParseError(string text)
    {
        Assert.False(HbaRules.TryParse(text, "hba.conf", Path.GetTempPath(), out _, out string? error));
        return error;
    }

    [Fact]
    public void The_first_matching_line_wins()
    {
        HbaRules rules = Parse("""
            # comment line

            host  app   alice  127.0.0.1/32  reject   # trailing comment
            host  all   all    127.0.0.0/8   md5
            host  all   all    0.0.0.0/0     scram-sha-256
            """);

        Assert.Equal("Reject", MethodFor(rules, "127.0.0.1", "app", "alice"));
        Assert.Equal("Md5", MethodFor(rules, "127.0.0.1", "app", "bob"));
        Assert.Equal("Md5", MethodFor(rules, "127.1.2.3", "other", "alice"));
        Assert.Equal("ScramSha256", MethodFor(rules, "10.1.2.3", "app", "alice"));
        Assert.Equal([3, 4, 5], rules.Rules.Select(r => r.Line));
    }

    [Fact]
    public void No_matching_line_means_no_rule()
    {
        HbaRules rules = Parse("host app alice 10.0.0.0/8 trust\n");
        Assert.Null(MethodFor(rules, "127.0.0.1", "app", "alice"));
        Assert.Null(MethodFor(rules, "10.0.0.1", "app", "bob"));
        Assert.Null(MethodFor(rules, "10.0.0.1", "other", "alice"));
        Assert.Equal("Trust", MethodFor(rules, "10.200.0.1", "app", "alice"));
    }

    [Theory]
    [InlineData("192.168.1.0/24", "192.168.1.77", true)]
    [InlineData("192.168.1.0/24", "192.168.2.1", false)]
    [InlineData("192.168.1.5/24", "192.168.1.77", true)] // host bits of the line's address do not count, as in PostgreSQL
    [InlineData("10.0.0.0/9", "10.127.255.255", true)]
    [InlineData("10.0.0.0/9", "10.128.0.0", false)]
    [InlineData("0.0.0.0/0", "203.0.113.9", true)]
    [InlineData("127.0.0.1/32", "127.0.0.2", false)]
    [InlineData("::1/128", "::1", true)]
    [InlineData("fe80::/10", "fe80::1234", true)]
    [InlineData("fe80::/10", "fec0::1", false)]
    [InlineData("127.0.0.1/32", "::1", false)]
    [InlineData("127.0.0.1/32", "::ffff:127.0.0.1", true)] // an IPv4 client on a dual-stack listener
    public void A_cidr_address_matches_the_addresses_under_its_mask(string cidr, string client, bool matches)
    {
        HbaRules rules = Parse($"host all all {cidr} trust\n");
        Assert.Equal(matches, MethodFor(rules, client, "db", "u") is not null);
    }

    [Fact]
    public void An_address_and_a_mask_work_as_a_cidr_does()
    {
        HbaRules rules = Parse("host all all 192.168.0.0 255.255.0.0 md5\nhost all all ::1 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff trust\n");
        Assert.Equal("Md5", MethodFor(rules, "192.168.44.1", "db", "u"));
        Assert.Null(MethodFor(rules, "192.169.0.1", "db", "u"));
        Assert.Equal("Trust", MethodFor(rules, "::1", "db", "u"));
    }

    [Fact]
    public void All_as_the_address_matches_every_tcp_client()
    {
        HbaRules rules = Parse("host all all all md5\n");
        Assert.Equal("Md5", MethodFor(rules, "198.51.100.1", "db", "u"));
        Assert.Equal("Md5", MethodFor(rules, "2001:db8::1", "db", "u"));
    }

    [Fact]
    public void Hostssl_and_hostnossl_match_by_encryption_and_local_only_unix_sockets()
    {
        HbaRules rules = Parse("""
            local     all all           peer
            hostssl   all all 0.0.0.0/0 cert
            hostnossl all all 0.0.0.0/0 md5
            """);

        Assert.Equal("Cert", MethodFor(rules, "127.0.0.1", "db", "u", ssl: true));
        Assert.Equal("Md5", MethodFor(rules, "127.0.0.1", "db", "u", ssl: false));
        Assert.Equal("Peer", MethodFor(rules, "127.0.0.1", "db", "u", type: HbaConnectionType.Local));
        Assert.Null(Parse("local all all trust\n").Match(HbaConnectionType.Host, false, Loopback, "db", "u"));
        Assert.Null(Parse("host all all all trust\n").Match(HbaConnectionType.Local, false, null, "db", "u"));
    }

    [Fact]
    public void Name_lists_keywords_and_quoted_names()
    {
        HbaRules rules = Parse("""
            host app,"all",reports  alice,bob  all  scram-sha-256
            host sameuser           all        all  trust
            host replication        all        all  md5
            host "Mixed Case"       "sameuser" all  md5
            """);

        Assert.Equal("ScramSha256", MethodFor(rules, "127.0.0.1", "reports", "bob"));
        Assert.Equal("ScramSha256", MethodFor(rules, "127.0.0.1", "all", "alice")); // a quoted keyword is a name
        Assert.Equal("Trust", MethodFor(rules, "127.0.0.1", "carol", "carol"));
        Assert.Null(MethodFor(rules, "127.0.0.1", "replication", "dave")); // replication never matches an ordinary connection
        Assert.Equal("Md5", MethodFor(rules, "127.0.0.1", "Mixed Case", "sameuser"));
        Assert.Null(MethodFor(rules, "127.0.0.1", "mixed case", "sameuser")); // names are case-sensitive
    }

    [Fact]
    public void A_list_may_continue_after_a_comma_and_a_blank()
    {
        HbaRules rules = Parse("host app, reports alice ,bob all md5\n");
        Assert.Equal("Md5", MethodFor(rules, "127.0.0.1", "reports", "bob"));
        Assert.Equal("Md5", MethodFor(rules, "127.0.0.1", "app", "alice"));
    }

    [Fact]
    public void At_file_names_are_read_next_to_the_hba_file()
    {
        string dir = Directory.CreateTempSubdirectory("fpp-hba-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "admins.txt"), "# admins\nalice, bob\ncarol\n");
            string hbaPath = Path.Combine(dir, "hba.conf");
            File.WriteAllText(hbaPath, "host all @admins.txt all trust\nhost all all all reject\n");
            Assert.True(HbaRules.TryLoad(hbaPath, out HbaRules? rules, out string? error), error);
            Assert.Equal("Trust", MethodFor(rules, "127.0.0.1", "db", "carol"));
            Assert.Equal("Reject", MethodFor(rules, "127.0.0.1", "db", "dave"));

            File.WriteAllText(hbaPath, "\nhost all @missing.txt all trust\n");
            Assert.False(HbaRules.TryLoad(hbaPath, out _, out error));
            Assert.Equal($"{hbaPath}:2: {Path.Combine(dir, "missing.txt")}: file not found", error);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Theory]
    [InlineData("hosts all all all md5", "hba.conf:1: invalid connection type \"hosts\" (local, host, hostssl or hostnossl)")]
    [InlineData("host all all", "hba.conf:1: expected TYPE DATABASE USER ADDRESS METHOD")]
    [InlineData("host all all 127.0.0.1/32", "hba.conf:1: end of line before the authentication method")]
    [InlineData("host all all 127.0.0.1/33 md5", "hba.conf:1: invalid CIDR mask in address \"127.0.0.1/33\"")]
    [InlineData("host all all 127.0.0.1 md5", "hba.conf:1: IP address \"127.0.0.1\" needs a CIDR mask or a mask of the same family after it")]
    [InlineData("host all all db.example.com md5", "hba.conf:1: invalid IP address \"db.example.com\" (host names, samehost and samenet are not supported)")]
    [InlineData("host all all samenet md5", "hba.conf:1: invalid IP address \"samenet\" (host names, samehost and samenet are not supported)")]
    [InlineData("host all all all md6", "hba.conf:1: invalid authentication method \"md6\"")]
    [InlineData("host all all all password", "hba.conf:1: authentication method \"password\" is not supported (trust, reject, md5, scram-sha-256, cert, or peer on local lines)")]
    [InlineData("host all all all ldap ldapserver=x", "hba.conf:1: authentication method \"ldap\" is not supported (trust, reject, md5, scram-sha-256, cert, or peer on local lines)")]
    [InlineData("host all all all peer", "hba.conf:1: peer authentication is only supported on local sockets")]
    [InlineData("host all all all cert map=users", "hba.conf:1: authentication options are not supported: \"map=users\"")]
    [InlineData("host all +admins all md5", "hba.conf:1: group membership (\"+admins\") is not supported")]
    [InlineData("host samerole all all md5", "hba.conf:1: samerole is not supported")]
    [InlineData("host \"app all all md5", "hba.conf:1: unterminated quoted string")]
    [InlineData("host app, all", "hba.conf:1: expected TYPE DATABASE USER ADDRESS METHOD")]
    [InlineData("# fine\nhost all all all trust\nlocal all all", "hba.conf:3: end of line before the authentication method")]
    public void A_bad_line_is_an_error_naming_file_and_line(string text, string expected)
    {
        Assert.Equal(expected, ParseError(text));
    }

    [Fact]
    public void An_empty_file_refuses_everyone()
    {
        HbaRules rules = Parse("# nothing\n\n");
        Assert.Empty(rules.Rules);
        Assert.Null(rules.Match(HbaConnectionType.Host, false, Loopback, "db", "u"));
    }
}
