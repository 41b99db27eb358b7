using System.Net.Sockets;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using Npgsql;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>An in-process proxy in front of the fixture's PostgreSQL, on a free port.</summary>
internal sealed class ProxyHarness : IAsyncDisposable
{
    private readonly string? _tempDir;

    private ProxyHarness(ProxyServer server, string? tempDir)
    {
        Server = server;
        _tempDir = tempDir;
    }

    public ProxyServer Server { get; }

    public int Port => Server.LocalEndPoint.Port;

    /// <summary>Starts a proxy; <paramref name="userList"/> lines become the auth_file.</summary>
    public static ProxyHarness Start(PostgresServer pg, Action<ProxyOptions>? configure = null, string? userList = null)
    {
        var options = new ProxyOptions { ListenAddress = "127.0.0.1", ListenPort = 0, AuthType = AuthType.Trust, LoopThreads = 2, DefaultPoolSize = 100 };
        options.Databases.Add(new DatabaseOptions { Name = "*", Host = pg.Host, Port = pg.Port });
        string? dir = null;
        if (userList is not null)
        {
            dir = Directory.CreateTempSubdirectory("fpp-proxy-").FullName;
            options.AuthFile = Path.Combine(dir, "userlist.txt");
            File.WriteAllText(options.AuthFile, userList);
        }

        configure?.Invoke(options);
        var server = new ProxyServer(options);
        server.Start();
        return new ProxyHarness(server, dir);
    }

    public string ConnectionString(string user = PostgresServer.Superuser, string? password = null, string database = PostgresServer.Database, bool pooling = false)
    {
        var b = new NpgsqlConnectionStringBuilder
        {
            Host = "127.0.0.1",
            Port = Port,
            Username = user,
            Password = password,
            Database = database,
            Pooling = pooling,
            Timeout = 15,
            CommandTimeout = 60,
            CancellationTimeout = 10_000,
        };
        return b.ConnectionString;
    }

    public async Task<NpgsqlConnection> OpenAsync(string user = PostgresServer.Superuser, string? password = null, string database = PostgresServer.Database)
    {
        var connection = new NpgsqlConnection(ConnectionString(user, password, database));
        await connection.OpenAsync();
        return connection;
    }

    /// <summary>A raw TCP connection to the proxy for hand-made packets.</summary>
    public async Task<Socket> ConnectRawAsync()
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync("127.0.0.1", Port);
        return socket;
    }

    public async ValueTask DisposeAsync()
    {
        await Server.StopAsync(TimeSpan.FromSeconds(5));
        if (_tempDir is not null)
        {
            Directory.Delete(_tempDir, recursive: true);
        }
    }
}
