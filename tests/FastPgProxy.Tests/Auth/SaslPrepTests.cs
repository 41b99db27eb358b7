using System.Text;
using FastPgProxy.Auth;
using Xunit;

namespace FastPgProxy.Tests.Auth;

public class SaslPrepTests
{
    private static string Prepared(string password) => Encoding.UTF8.GetString(SaslPrep.Prepare(password));

    [Theory]
    [InlineData("pencil")]
    [InlineData("with space")]
    [InlineData("tab\tand\u0007bell")] // PostgreSQL passes ASCII through untouched, controls included
    [InlineData("")]
    public void Ascii_is_used_as_is(string password)
    {
        Assert.Equal(password, Prepared(password));
    }

    [Fact]
    public void Non_ascii_space_maps_to_space()
    {
        Assert.Equal("pass word", Prepared("pass\u00A0word"));
        Assert.Equal("pass word", Prepared("pass\u3000word"));
    }

    [Fact]
    public void Commonly_mapped_to_nothing_is_dropped()
    {
        Assert.Equal("password", Prepared("pass\u00ADword"));
        Assert.Equal("pässword", Prepared("päss\uFE0Fword"));
    }

    [Fact]
    public void Composed_non_ascii_is_kept()
    {
        Assert.Equal("pässwörd", Prepared("pässwörd"));
        Assert.Equal("пароль密码", Prepared("пароль密码"));
    }

    [Theory]
    [InlineData("p\u00E4ss\u0007")] // ASCII control next to non-ASCII
    [InlineData("p\u00E4ss\uE000")] // private use
    [InlineData("p\u00E4ss\u200E")] // left-to-right mark
    [InlineData("p\u00E4ss\uFFFE")] // non-character
    public void Prohibited_output_falls_back_to_raw_bytes(string password)
    {
        Assert.False(SaslPrep.TryPrepare(password, out _));
        Assert.Equal(Encoding.UTF8.GetBytes(password), SaslPrep.Prepare(password));
    }

    [Fact]
    public void Lone_surrogate_falls_back_to_raw_bytes()
    {
        Assert.False(SaslPrep.TryPrepare("p\uD800ss", out _));
        Assert.Equal(Encoding.UTF8.GetBytes("p\uD800ss"), SaslPrep.Prepare("p\uD800ss"));
    }
}
