using System.Globalization;
using System.Net.Sockets;
using System.Text;
using FastPgProxy.Config;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using Xunit;
using Xunit.Abstractions;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// Start-up parameters spelt otherwise than PostgreSQL reports them (client_encoding=utf8, DateStyle=ISO,
/// TimeZone=utc, as pgJDBC and libpq send): the login reports PostgreSQL's own values, and a transaction
/// pool sets them on a backend once, not before every transaction.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class ParameterSyncTests(PostgresFixture fixture, ITestOutputHelper output)
{
    private const string User = PostgresServer.TrustUser;

    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    // What pgJDBC sends at start-up (extra_float_digits is not tracked; it is listed in
    // ignore_startup_parameters, as PgBouncer users do), with libpq's lower-case encoding name.
    private static readonly (string Name, string Value)[] JdbcLike =
        [("client_encoding", "utf8"), ("DateStyle", "ISO"), ("TimeZone", "utc"), ("extra_float_digits", "2")];

    private static readonly string[] Spelt = ["client_encoding", "DateStyle", "TimeZone"];

    private readonly PostgresServer _pg = fixture.Server;

    /// <summary>
    /// The SETs are counted by PostgreSQL itself: pg_stat_statements on a server of the test's own, where
    /// nothing else runs, counts every statement of a multi-statement Simple Query (the proxy's sync) as a
    /// call of its own. Two clients share two backends over 20 autocommit queries each; each parameter may
    /// be set at most once per backend.
    /// </summary>
    [Fact]
    public async Task Transaction_mode_sets_differently_spelt_start_up_values_at_most_once_per_backend()
    {
        const int poolSize = 2;
        const int queries = 20;
        using PostgresServer pg = PostgresServer.StartWithSettings("shared_preload_libraries = 'pg_stat_statements'");
        await pg.ExecuteNonQueryAsync("CREATE EXTENSION pg_stat_statements");
        await using ProxyHarness proxy = ProxyHarness.Start(pg, PoolMode.Transaction, poolSize, o => o.IgnoreStartupParameters.Add("extra_float_digits"));
        await pg.ExecuteNonQueryAsync("SELECT pg_stat_statements_reset()");

        using Socket a = await LoginAsync(proxy, JdbcLike);
        using Socket b = await LoginAsync(proxy, [("client_encoding", "UTF8"), .. JdbcLike[1..]]);
        for (int i = 0; i < queries; i++)
        {
            foreach (Socket client in (Socket[])[a, b])
            {
                await client.SendAsync(RawProtocol.Query($"SELECT {i.ToString(CultureInfo.InvariantCulture)} + 0"));
                List<(byte Type, byte[] Body)> reply = await RawProtocol.ReadUntilReadyAsync(client, Patience);
                Assert.DoesNotContain(reply, m => m.Type == (byte)'E');
            }
        }

        Dictionary<string, long> sets = await CountSetsAsync(pg);
        output.WriteLine($"SET/RESET statements over {2 * queries} autocommit queries: "
            + string.Join(", ", Spelt.Select(n => $"{n} {sets.GetValueOrDefault(n.ToLowerInvariant())}")));
        foreach (string name in Spelt)
        {
            Assert.True(sets.GetValueOrDefault(name.ToLowerInvariant()) <= poolSize, $"{name} was set {sets.GetValueOrDefault(name.ToLowerInvariant())} times on {poolSize} backends");
        }
    }

    /// <summary>
    /// The ParameterStatus values a client sees at login are the ones PostgreSQL reports for the same
    /// start-up packet (UTF8, not utf8: psycopg's test_encoding_env_var), in both pool modes.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Login_reports_the_values_PostgreSQL_reports_for_the_clients_start_up_parameters(bool transactionMode)
    {
        PoolMode mode = transactionMode ? PoolMode.Transaction : PoolMode.Session;
        (string Name, string Value)[] startup = JdbcLike[..3];
        Dictionary<string, string> direct;
        using (var socket = new Socket(SocketType.Stream, ProtocolType.Tcp))
        {
            await socket.ConnectAsync(_pg.Host, _pg.Port);
            direct = await ReadLoginAsync(socket, startup);
        }

        Assert.Equal("UTF8", direct["client_encoding"]);
        await using ProxyHarness proxy = ProxyHarness.Start(_pg, mode, poolSize: 2);

        // A first client logs in with PostgreSQL's own spellings, so that the pool knows its backends'
        // values before the client under test comes (transaction mode then logs clients in without one).
        using (Socket first = await LoginAsync(proxy, [("client_encoding", "UTF8")]))
        {
            await first.SendAsync(RawProtocol.Query("SELECT 1 + 0"));
            await RawProtocol.ReadUntilReadyAsync(first, Patience);
        }

        using Socket client = await proxy.ConnectRawAsync();
        Dictionary<string, string> viaProxy = await ReadLoginAsync(client, startup);
        foreach (string name in Spelt)
        {
            Assert.Equal(direct[name], viaProxy[name]);
        }

        await client.SendAsync(RawProtocol.Query("SELECT current_setting('client_encoding') || '/' || current_setting('DateStyle') || '/' || current_setting('TimeZone')"));
        List<(byte Type, byte[] Body)> reply = await RawProtocol.ReadUntilReadyAsync(client, Patience);
        (byte _, byte[] row) = Assert.Single(reply, m => m.Type == (byte)'D');
        Assert.EndsWith($"{direct["client_encoding"]}/{direct["DateStyle"]}/{direct["TimeZone"]}", Encoding.UTF8.GetString(row), StringComparison.Ordinal);
    }

    private static async Task<Socket> LoginAsync(ProxyHarness proxy, (string Name, string Value)[] parameters)
    {
        Socket socket = await proxy.ConnectRawAsync();
        socket.NoDelay = true;
        await ReadLoginAsync(socket, parameters);
        return socket;
    }

    /// <summary>Logs in as the trust user with <paramref name="parameters"/>; the ParameterStatus values received.</summary>
    private static async Task<Dictionary<string, string>> ReadLoginAsync(Socket socket, (string Name, string Value)[] parameters)
    {
        await socket.SendAsync(RawProtocol.Startup([("user", User), ("database", PostgresServer.Database), .. parameters]));
        var reported = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach ((byte type, byte[] body) in await RawProtocol.ReadUntilReadyAsync(socket, Patience))
        {
            Assert.NotEqual((byte)'E', type);
            if (type == (byte)'S')
            {
                string[] parts = Encoding.UTF8.GetString(body).Split('\0');
                reported[parts[0]] = parts[1];
            }
        }

        return reported;
    }

    /// <summary>Calls of SET and RESET statements by parameter name (lower case), from pg_stat_statements.</summary>
    private static async Task<Dictionary<string, long>> CountSetsAsync(PostgresServer pg)
    {
        await using var connection = new NpgsqlConnection(pg.ConnectionString());
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(
            @"SELECT lower(substring(query FROM '(?i)^\s*(?:re)?set\s+(\w+)')) AS name, sum(calls)::bigint
              FROM pg_stat_statements WHERE query ~* '^\s*(re)?set\s' GROUP BY 1", connection);
        var counts = new Dictionary<string, long>();
        await using NpgsqlDataReader reader = await command.ExecuteReaderAsync();
        while (await reader.ReadAsync())
        {
            counts[reader.GetString(0)] = reader.GetInt64(1);
        }

        return counts;
    }
}
