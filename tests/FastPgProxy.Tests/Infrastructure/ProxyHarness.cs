using System.Net.Sockets;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using Npgsql;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>
/// An in-process proxy on a free port of 127.0.0.1, started from typed options: the one way the end-to-end
/// tests run the proxy in-process. <see cref="Options"/> gives the options every test starts from; the
/// <c>Start</c> overloads change them, write the auth_file from typed users, start the server, and
/// <see cref="DisposeAsync"/> stops it and deletes the auth_file again.
/// </summary>
internal sealed class ProxyHarness : IAsyncDisposable
{
    private readonly string? _tempDir;

    private ProxyHarness(ProxyServer server, string? tempDir)
    {
        Server = server;
        _tempDir = tempDir;
    }

    /// <summary>The running server, for the pools, sessions and counters tests look at.</summary>
    public ProxyServer Server { get; }

    /// <summary>The port the proxy listens on (picked by the kernel).</summary>
    public int Port => Server.Port;

    /// <summary>
    /// The options every in-process proxy starts from: 127.0.0.1 on a free port, no Unix socket, trust, two loop threads, no connection logging,
    /// default_pool_size 100 and one <c>*</c> database entry: <see cref="Database"/> for <paramref name="pg"/>,
    /// or, without a server, an entry with the default host and port for tests that never log in.
    /// </summary>
    public static ProxyOptions Options(PostgresServer? pg = null)
    {
        var options = new ProxyOptions
        {
            ListenAddress = "127.0.0.1", ListenPort = 0, UnixSocketDir = null, AuthType = AuthType.Trust, LoopThreads = 2, DefaultPoolSize = 100,

            // A line per login, per close and per error sent would bury the test output; the executable's tests cover them.
            LogConnections = false, LogDisconnections = false, LogPoolerErrors = false,
        };
        options.Databases.Add(pg is null ? new DatabaseOptions { Name = "*" } : Database(pg));
        return options;
    }

    /// <summary>
    /// The <c>*</c> database entry for <paramref name="pg"/>; <paramref name="user"/> and
    /// <paramref name="password"/>, when given, are what the proxy logs in to PostgreSQL with.
    /// </summary>
    public static DatabaseOptions Database(PostgresServer pg, string? user = null, string? password = null) =>
        new() { Name = "*", Host = pg.Host, Port = pg.Port, User = user, Password = password };

    /// <summary>
    /// Starts a proxy with <paramref name="options"/>; with <paramref name="users"/>, a temporary auth_file
    /// holding one <c>"user" "secret"</c> line per user becomes its <see cref="ProxyOptions.AuthFile"/>.
    /// </summary>
    public static ProxyHarness Start(ProxyOptions options, IReadOnlyList<(string User, string Secret)>? users = null)
    {
        string? dir = null;
        if (users is not null)
        {
            dir = Directory.CreateTempSubdirectory("fpp-proxy-").FullName;
            options.AuthFile = Path.Combine(dir, "userlist.txt");
            File.WriteAllText(options.AuthFile, string.Concat(users.Select(u => $"\"{u.User}\" \"{u.Secret}\"\n")));
        }

        try
        {
            var server = new ProxyServer(options);
            server.Start();
            return new ProxyHarness(server, dir);
        }
        catch
        {
            if (dir is not null)
            {
                Directory.Delete(dir, recursive: true);
            }

            throw;
        }
    }

    /// <summary>
    /// Starts a proxy in front of <paramref name="pg"/> with <see cref="Options"/> as
    /// <paramref name="configure"/> changes them; <paramref name="users"/> become the auth_file.
    /// </summary>
    public static ProxyHarness Start(PostgresServer pg, Action<ProxyOptions>? configure = null, IReadOnlyList<(string User, string Secret)>? users = null)
    {
        ProxyOptions options = Options(pg);
        configure?.Invoke(options);
        return Start(options, users);
    }

    /// <summary>
    /// Starts one instance per peer id in front of <paramref name="pg"/>, on ports picked now, each with a
    /// [peers] section naming every instance (each line as <paramref name="peerLine"/> shapes it), then as
    /// <paramref name="configure"/> changes instance i's options; <paramref name="users"/> become each one's auth_file.
    /// </summary>
    public static List<ProxyHarness> StartCluster(
        PostgresServer pg,
        int[] peerIds,
        Func<PeerOptions, PeerOptions>? peerLine = null,
        Action<int, ProxyOptions>? configure = null,
        IReadOnlyList<(string User, string Secret)>? users = null)
    {
        int[] ports = peerIds.Select(_ => NetUtil.GetFreeTcpPort()).ToArray();
        var cluster = new List<ProxyHarness>();
        for (int i = 0; i < peerIds.Length; i++)
        {
            int index = i;
            cluster.Add(Start(pg, o =>
            {
                o.ListenPort = ports[index];
                o.PeerId = peerIds[index];
                for (int j = 0; j < peerIds.Length; j++)
                {
                    var line = new PeerOptions { Id = peerIds[j], Host = "127.0.0.1", Port = ports[j] };
                    o.Peers.Add(peerLine?.Invoke(line) ?? line);
                }

                configure?.Invoke(index, o);
            }, users));
        }

        return cluster;
    }

    /// <summary>
    /// Starts a proxy in front of <paramref name="pg"/> with <paramref name="poolMode"/> and
    /// <paramref name="poolSize"/> (default_pool_size), then as <paramref name="configure"/> changes the options.
    /// </summary>
    public static ProxyHarness Start(PostgresServer pg, PoolMode poolMode, int poolSize, Action<ProxyOptions>? configure = null) =>
        Start(pg, o =>
        {
            o.PoolMode = poolMode;
            o.DefaultPoolSize = poolSize;
            configure?.Invoke(o);
        });

    /// <summary>An Npgsql connection string to the proxy, without client-side pooling unless asked for.</summary>
    public string ConnectionString(string user = PostgresServer.Superuser, string? password = null, string database = PostgresServer.Database, bool pooling = false) =>
        ConnectionString("127.0.0.1", Port, user, password, database, pooling);

    /// <summary>The connection string the tests use for anything that fronts PostgreSQL at <paramref name="host"/>:<paramref name="port"/> (a proxy, or a balancer in front of proxies).</summary>
    public static string ConnectionString(string host, int port, string user, string? password, string database, bool pooling)
    {
        var b = new NpgsqlConnectionStringBuilder
        {
            Host = host,
            Port = port,
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

    /// <summary>Opens an Npgsql connection through the proxy.</summary>
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

    /// <summary>Stops the proxy (five seconds' grace) and deletes the auth_file.</summary>
    public async ValueTask DisposeAsync()
    {
        await Server.StopAsync(TimeSpan.FromSeconds(5));
        if (_tempDir is not null)
        {
            Directory.Delete(_tempDir, recursive: true);
        }
    }
}
