using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Sockets;

namespace FastPgProxy.Auth;

/// <summary>
/// Open auth_query connections kept between lookups, per target (server, database, auth_user), as
/// PgBouncer keeps its auth_user connection in a pool: a login that needs a lookup then costs one round
/// trip, not a new PostgreSQL connection. A connection is kept only after a lookup that read its answer
/// to ReadyForQuery; one idle longer than server_idle_timeout is closed when next found; at most
/// <see cref="MaxIdlePerTarget"/> wait per target. Any thread.
/// </summary>
internal sealed class AuthLookupPool : IDisposable
{
    /// <summary>Idle connections kept per target; more are closed when handed back.</summary>
    public const int MaxIdlePerTarget = 4;

    private readonly ConcurrentDictionary<string, ConcurrentQueue<AuthConnection>> _idle = new(StringComparer.Ordinal);
    private int _disposed;

    /// <summary>Connections opened for lookups so far (SHOW-style counter, tests).</summary>
    public long Opened => Volatile.Read(ref _opened);

    private long _opened;

    /// <summary>The key of a lookup target: the server, the database and the user the connection is logged in as.</summary>
    public static string KeyOf(AuthLookupTarget target) =>
        string.Join('\0', target.Database.Host, target.Database.Port, target.DatabaseName, target.Credentials.User);

    /// <summary>An idle connection for <paramref name="key"/> used within <paramref name="maxIdle"/> (zero: any); null when none.</summary>
    public AuthConnection? TryTake(string key, TimeSpan maxIdle)
    {
        if (!_idle.TryGetValue(key, out ConcurrentQueue<AuthConnection>? queue))
        {
            return null;
        }

        while (queue.TryDequeue(out AuthConnection? connection))
        {
            if (maxIdle <= TimeSpan.Zero || Stopwatch.GetElapsedTime(connection.IdleSince) <= maxIdle)
            {
                return connection;
            }

            connection.Dispose();
        }

        return null;
    }

    /// <summary>Counts a connection just opened and logged in.</summary>
    public void OnOpened() => Interlocked.Increment(ref _opened);

    /// <summary>Keeps <paramref name="connection"/>, at ReadyForQuery, for the next lookup of <paramref name="key"/>; closes it when the pool is full or gone.</summary>
    public void Return(string key, AuthConnection connection)
    {
        ConcurrentQueue<AuthConnection> queue = _idle.GetOrAdd(key, static _ => new ConcurrentQueue<AuthConnection>());
        if (Volatile.Read(ref _disposed) != 0 || queue.Count >= MaxIdlePerTarget)
        {
            connection.Dispose();
            return;
        }

        connection.IdleSince = Stopwatch.GetTimestamp();
        queue.Enqueue(connection);

        // A stop may have drained the queues between the check and the enqueue.
        if (Volatile.Read(ref _disposed) != 0 && queue.TryDequeue(out AuthConnection? late))
        {
            late.Dispose();
        }
    }

    /// <summary>Closes every idle connection; connections handed back later are closed at once.</summary>
    public void Dispose()
    {
        Volatile.Write(ref _disposed, 1);
        foreach (ConcurrentQueue<AuthConnection> queue in _idle.Values)
        {
            while (queue.TryDequeue(out AuthConnection? connection))
            {
                connection.Dispose();
            }
        }
    }
}

/// <summary>A logged-in auth_query connection: its socket and the stream over it (TLS or plain).</summary>
internal sealed class AuthConnection(Socket socket, Stream stream) : IDisposable
{
    /// <summary>The stream lookups write to and read from.</summary>
    public Stream Stream { get; } = stream;

    /// <summary>When it was last handed back (Stopwatch ticks).</summary>
    public long IdleSince { get; set; }

    /// <summary>Closes the stream and the socket.</summary>
    public void Dispose()
    {
        Stream.Dispose();
        socket.Dispose();
    }
}
