using System;
using System.IO;
using FastPgProxy.Auth;
using Xunit;

namespace FastPgProxy.Tests.Auth;

public sealed class UserListTests : IDisposable
{
    private const string Verifier =
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

    private readonly string _directory = Path.Combine(Path.GetTempPath(), "fastpgproxy-auth-" + Guid.NewGuid().ToString("N"));

    public UserListTests() => Directory.CreateDirectory(_directory);

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private string WriteFile(string text)
    {
        var path = Path.Combine(_directory, "userlist.txt");
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void Loads_a_good_file()
    {
        var path = WriteFile(
            "; PgBouncer auth_file\n"
            + "# another comment\n"
            + "\n"
            + "\"alice\" \"wonderland\"\n"
            + "   \t\n"
            + "  \"bob\"\t\"md53858f62230ac3c915f300c664312c63f\"\n"
            + "\"carol\" \"" + Verifier + "\"");

        Assert.True(UserList.TryLoad(path, out var list, out var error), error);
        Assert.Equal(3, list.Count);

        Assert.True(list.TryGet("alice", out var alice));
        Assert.Equal(SecretKind.Plain, alice.Kind);
        Assert.Equal("wonderland", alice.Password);

        Assert.True(list.TryGet("bob", out var bob));
        Assert.Equal(SecretKind.Md5, bob.Kind);
        Assert.Null(bob.Password);

        Assert.True(list.TryGet("carol", out var carol));
        Assert.Equal(SecretKind.ScramSha256, carol.Kind);
        Assert.Equal(Verifier, carol.Raw);
    }

    [Fact]
    public void User_names_are_case_sensitive()
    {
        var list = UserList.Parse("\"Alice\" \"x\"\n", "test");

        Assert.True(list.TryGet("Alice", out _));
        Assert.False(list.TryGet("alice", out _));
    }

    [Fact]
    public void Doubled_quotes_are_literal_quotes()
    {
        var list = UserList.Parse("\"o\"\"brien\" \"pa\"\"ss \"\"word\"\"\"", "test");

        Assert.True(list.TryGet("o\"brien", out var secret));
        Assert.Equal("pa\"ss \"word\"", secret.Password);
    }

    [Fact]
    public void Crlf_line_endings_and_byte_order_mark_are_accepted()
    {
        var list = UserList.Parse("\uFEFF\"a\" \"1\"\r\n; note\r\n\"b\" \"2\"\r\n", "test");

        Assert.Equal(2, list.Count);
        Assert.True(list.TryGet("b", out var b));
        Assert.Equal("2", b.Password);
    }

    [Fact]
    public void Further_quoted_fields_are_ignored()
    {
        var list = UserList.Parse("\"a\" \"1\" \"\" \"2024-01-01\"\n", "test");

        Assert.True(list.TryGet("a", out var a));
        Assert.Equal("1", a.Password);
    }

    [Fact]
    public void Later_line_for_the_same_user_wins()
    {
        var list = UserList.Parse("\"a\" \"old\"\n\"a\" \"new\"\n", "test");

        Assert.Equal(1, list.Count);
        Assert.True(list.TryGet("a", out var a));
        Assert.Equal("new", a.Password);
    }

    [Fact]
    public void Empty_secret_is_a_user_without_password()
    {
        var list = UserList.Parse("\"trusted\" \"\"\n", "test");

        Assert.True(list.TryGet("trusted", out var secret));
        Assert.Equal(SecretKind.Plain, secret.Kind);
        Assert.Equal(string.Empty, secret.Password);
        Assert.False(secret.TryGetScramVerifier(out _));
    }

    [Fact]
    public void Empty_file_has_no_users()
    {
        Assert.True(UserList.TryLoad(WriteFile(string.Empty), out var list, out _));
        Assert.Equal(0, list.Count);
    }

    [Fact]
    public void Malformed_line_error_names_file_and_line()
    {
        var path = WriteFile("\"a\" \"1\"\n; comment\nalice wonderland\n\"b\" \"2\"\n");

        Assert.False(UserList.TryLoad(path, out var list, out var error));
        Assert.Null(list);
        Assert.Equal(path + ":3: expected \"user\" \"secret\"", error);
    }

    [Theory]
    [InlineData("\"alice\"", "expected \"user\" \"secret\"")]
    [InlineData("\"alice\" ", "expected \"user\" \"secret\"")]
    [InlineData("\"alice\" wonderland", "expected \"user\" \"secret\"")]
    [InlineData("\"alice\"\"wonderland\"", "expected \"user\" \"secret\"")]
    [InlineData("\"alice\" \"wonderland\" extra", "expected \"user\" \"secret\"")]
    [InlineData("\"alice\" \"wonderland\"x", "expected \"user\" \"secret\"")]
    [InlineData("\"alice\" \"wonderland", "unterminated quoted string")]
    [InlineData("\"alice", "unterminated quoted string")]
    [InlineData("\"\" \"secret\"", "empty user name")]
    [InlineData("\"alice\" \"SCRAM-SHA-256$4096:c2FsdA==$bad\"", "malformed SCRAM-SHA-256 secret for user \"alice\"")]
    public void Malformed_lines_are_rejected(string line, string reason)
    {
        var exception = Assert.Throws<FormatException>(() => UserList.Parse("# header\n" + line + "\n", "/etc/x/userlist.txt"));

        Assert.Equal("/etc/x/userlist.txt:2: " + reason, exception.Message);
    }

    [Fact]
    public void Missing_file_error_names_the_file()
    {
        var path = Path.Combine(_directory, "absent.txt");

        Assert.False(UserList.TryLoad(path, out var list, out var error));
        Assert.Null(list);
        Assert.Equal(path + ": file not found", error);
    }

    [Fact]
    public void Missing_directory_error_names_the_file()
    {
        var path = Path.Combine(_directory, "absent", "userlist.txt");

        Assert.False(UserList.TryLoad(path, out _, out var error));
        Assert.StartsWith(path + ":", error, StringComparison.Ordinal);
    }
}
