using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>Logins through a proxy that must succeed or fail, for the authentication tests (<c>using static</c>).</summary>
public static class LoginAsserts
{
    /// <summary>Logs in as <paramref name="user"/> and checks the backend's current_user: <paramref name="expectedRole"/>, or the user itself.</summary>
    internal static async Task AssertLogsInAsync(ProxyHarness proxy, string user, string? password, string? expectedRole = null)
    {
        await using NpgsqlConnection c = await proxy.OpenAsync(user, password);
        await using var cmd = new NpgsqlCommand("SELECT current_user", c);
        Assert.Equal(expectedRole ?? user, await cmd.ExecuteScalarAsync());
    }

    /// <summary>A login as <paramref name="user"/> fails with <paramref name="sqlState"/>; returns the error for its message.</summary>
    internal static async Task<PostgresException> AssertLoginFailsAsync(ProxyHarness proxy, string user, string? password, string sqlState)
    {
        PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => proxy.OpenAsync(user, password));
        Assert.Equal(sqlState, e.SqlState);
        return e;
    }
}
