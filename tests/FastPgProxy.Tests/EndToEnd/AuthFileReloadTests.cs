using FastPgProxy.Config;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// RELOAD (and SIGHUP) read the auth_file again, as PgBouncer's do: a user added to it logs in without a
/// restart, and a file that no longer parses fails the RELOAD with the key named and changes nothing. A
/// relative auth_file is taken from the config file's folder.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class AuthFileReloadTests(PostgresFixture fixture) : IDisposable
{
    private readonly PostgresServer _pg = fixture.Server;
    private readonly string _dir = Directory.CreateTempSubdirectory("fpp-authfile-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string ConnectionString(ProxyHarness proxy, string user, string password, string database = PostgresServer.Database) =>
        new NpgsqlConnectionStringBuilder { Host = "127.0.0.1", Port = proxy.Port, Username = user, Password = password, Database = database, Pooling = false }.ConnectionString;

    private static async Task LogInAsync(ProxyHarness proxy, string user, string password)
    {
        await using var connection = new NpgsqlConnection(ConnectionString(proxy, user, password));
        await connection.OpenAsync();
        await using var query = new NpgsqlCommand("SELECT current_user", connection);
        Assert.Equal(PostgresServer.Superuser, await query.ExecuteScalarAsync());
    }

    [Fact]
    public async Task Reload_reads_the_auth_file_again_and_a_broken_one_changes_nothing()
    {
        string users = Path.Combine(_dir, "userlist.txt");
        await File.WriteAllTextAsync(users, "\"alice\" \"alice-pw\"\n");
        string path = Path.Combine(_dir, "fastpgproxy.ini");
        await File.WriteAllTextAsync(path, $"""
            [databases]
            {PostgresServer.Database} = host={_pg.Host} port={_pg.Port} user={PostgresServer.Superuser}
            [fastpgproxy]
            listen_port = 0
            unix_socket_dir =
            auth_type = md5
            auth_file = userlist.txt
            admin_users = alice
            """);
        ProxyOptions options = ConfigLoader.Load(path);
        Assert.Equal(users, options.AuthFile);
        await using ProxyHarness proxy = ProxyHarness.Start(options);

        await LogInAsync(proxy, "alice", "alice-pw");
        PostgresException unknown = await Assert.ThrowsAsync<PostgresException>(() => LogInAsync(proxy, "bob", "bob-pw"));
        Assert.Equal("28P01", unknown.SqlState);

        await using var console = new NpgsqlConnection(ConnectionString(proxy, "alice", "alice-pw", "fastpgproxy") + ";Server Compatibility Mode=NoTypeLoading;Include Error Detail=true");
        await console.OpenAsync();
        await File.WriteAllTextAsync(users, "\"alice\" \"alice-pw\"\n\"bob\" \"bob-pw\"\n");
        await using (var reload = new NpgsqlCommand("RELOAD", console))
        {
            await reload.ExecuteNonQueryAsync();
        }

        await LogInAsync(proxy, "bob", "bob-pw");

        await File.WriteAllTextAsync(users, "\"alice\" \"alice-pw\"\n\"carol\n");
        await using (var reload = new NpgsqlCommand("RELOAD", console))
        {
            PostgresException broken = await Assert.ThrowsAsync<PostgresException>(() => reload.ExecuteNonQueryAsync());
            Assert.Contains($"{path}: auth_file: {users}:2:", broken.MessageText, StringComparison.Ordinal);
            Assert.Equal("Nothing was changed.", broken.Detail);
        }

        await LogInAsync(proxy, "bob", "bob-pw");
    }

    [Fact]
    public void A_missing_auth_file_names_the_config_file_and_the_key()
    {
        string path = Path.Combine(_dir, "fastpgproxy.ini");
        File.WriteAllText(path, "[databases]\n[fastpgproxy]\nlisten_port = 0\nunix_socket_dir =\nauth_file = /nonexistent/userlist.txt\n");
        ConfigException e = Assert.Throws<ConfigException>(() => new FastPgProxy.Hosting.ProxyServer(ConfigLoader.Load(path)));
        Assert.Equal($"{path}: auth_file: /nonexistent/userlist.txt: file not found", e.Message);
    }
}
