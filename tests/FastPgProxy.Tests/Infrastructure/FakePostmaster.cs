using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>
/// A small stand-in for a PostgreSQL 18 server, for what the real PostgreSQL 15 of the other tests cannot
/// show: protocol 3.2 and its 32-byte cancel keys, or a server's odd NegotiateProtocolVersion. It listens on a
/// free port of 127.0.0.1 and speaks just enough of the protocol for the proxy's backends:
/// <list type="bullet">
/// <item>a StartupMessage of any 3.x version is recorded (<see cref="StartupVersions"/>) and answered as
/// PostgreSQL 18 answers a trust login: <see cref="Negotiate"/> first when set, AuthenticationOk, a few
/// ParameterStatus, BackendKeyData with a fresh pid and <see cref="KeyLength"/> random bytes (32 by
/// default, as PostgreSQL 18 gives a 3.2 client), ReadyForQuery;</item>
/// <item>a Simple Query is answered with one row (SELECT) or its CommandComplete; a query that contains
/// <c>pg_sleep</c> is held until a CancelRequest with that backend's pid and key arrives, then answered
/// 57014, as PostgreSQL does;</item>
/// <item>a CancelRequest on a new connection is recorded whatever it holds (<see cref="Cancels"/>), acted
/// on when it matches, and the connection closed without a word.</item>
/// </list>
/// Written for the tests only; it trusts its peer (the proxy) and checks little.
/// </summary>
internal sealed class FakePostmaster : IAsyncDisposable
{
    private const int CancelRequestCode = 80877102;
    private const int SslRequestCode = 80877103;
    private const int GssEncRequestCode = 80877104;

    private readonly TcpListener _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentDictionary<int, Backend> _backends = new();
    private readonly ConcurrentBag<Task> _connections = new();
    private readonly Task _acceptLoop;
    private int _nextPid = 40_000;

    private FakePostmaster()
    {
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start();
        _acceptLoop = Task.Run(AcceptLoopAsync);
    }

    /// <summary>Starts a fake server on a free port of 127.0.0.1.</summary>
    public static FakePostmaster Start() => new();

    /// <summary>The port it listens on.</summary>
    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    /// <summary>Length of the cancel key each backend gets; 32 (PostgreSQL 18 to a 3.2 client) unless set before logins.</summary>
    public int KeyLength { get; set; } = 32;

    /// <summary>
    /// When set, the body of a NegotiateProtocolVersion sent in front of AuthenticationOk (as PostgreSQL 15
    /// answers a 3.2 request with its 3.0); see <see cref="NegotiateBody"/>.
    /// </summary>
    public byte[]? Negotiate { get; set; }

    /// <summary>Sends <see cref="Negotiate"/> after AuthenticationOk instead, where no server sends it.</summary>
    public bool NegotiateLate { get; set; }

    /// <summary>The protocol version word of every StartupMessage received, in order.</summary>
    public ConcurrentQueue<int> StartupVersions { get; } = new();

    /// <summary>Every CancelRequest received: the pid and the whole key, whatever their length.</summary>
    public ConcurrentQueue<(int Pid, byte[] Key)> Cancels { get; } = new();

    /// <summary>The backends logged in so far, by pid, with the key each was given.</summary>
    public IReadOnlyDictionary<int, Backend> Backends => _backends;

    /// <summary>A NegotiateProtocolVersion body: the version word, the option count and the option names.</summary>
    public static byte[] NegotiateBody(int version, params string[] options)
    {
        var body = new List<byte>();
        var word = new byte[sizeof(int)];
        BinaryPrimitives.WriteInt32BigEndian(word, version);
        body.AddRange(word);
        BinaryPrimitives.WriteInt32BigEndian(word, options.Length);
        body.AddRange(word);
        foreach (string option in options)
        {
            body.AddRange(Encoding.UTF8.GetBytes(option));
            body.Add(0);
        }

        return body.ToArray();
    }

    /// <summary>Waits until some backend holds a query containing <paramref name="marker"/>; returns that backend.</summary>
    public async Task<Backend> WaitForHeldQueryAsync(string marker, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        while (true)
        {
            foreach (Backend backend in _backends.Values)
            {
                if (backend.HeldQuery is { } sql && sql.Contains(marker, StringComparison.Ordinal))
                {
                    return backend;
                }
            }

            await Task.Delay(10, cts.Token);
        }
    }

    /// <summary>Waits until at least <paramref name="count"/> CancelRequests have arrived.</summary>
    public async Task WaitForCancelsAsync(int count, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        while (Cancels.Count < count)
        {
            await Task.Delay(10, cts.Token);
        }
    }

    /// <summary>Stops listening and closes every connection.</summary>
    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _listener.Stop();
        try
        {
            await _acceptLoop.WaitAsync(TimeSpan.FromSeconds(10));
            await Task.WhenAll(_connections).WaitAsync(TimeSpan.FromSeconds(10));
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException or IOException)
        {
            // Connections end by being closed under their reads.
        }

        _stop.Dispose();
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await _listener.AcceptSocketAsync(_stop.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }

            _connections.Add(Task.Run(() => ServeAsync(socket)));
        }
    }

    private async Task ServeAsync(Socket socket)
    {
        using (socket)
        {
            try
            {
                await ServeStartupAsync(socket);
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException or IOException or EndOfStreamException)
            {
                // The proxy closed the connection, or the fake is stopping.
            }
        }
    }

    private async Task ServeStartupAsync(Socket socket)
    {
        while (true)
        {
            var lengthWord = new byte[sizeof(int)];
            await ReadExactlyAsync(socket, lengthWord);
            int length = BinaryPrimitives.ReadInt32BigEndian(lengthWord);
            if (length < 8 || length > 10_000)
            {
                return;
            }

            var packet = new byte[length - sizeof(int)];
            await ReadExactlyAsync(socket, packet);
            int code = BinaryPrimitives.ReadInt32BigEndian(packet);
            switch (code)
            {
                case CancelRequestCode:
                    OnCancelRequest(packet);
                    return;
                case SslRequestCode:
                case GssEncRequestCode:
                    await socket.SendAsync(new[] { (byte)'N' }, SocketFlags.None, _stop.Token);
                    continue;
            }

            StartupVersions.Enqueue(code);
            await ServeSessionAsync(socket);
            return;
        }
    }

    private void OnCancelRequest(byte[] packet)
    {
        // Code word, pid, then the key: whatever is left of the packet.
        int pid = packet.Length >= 8 ? BinaryPrimitives.ReadInt32BigEndian(packet.AsSpan(4)) : 0;
        byte[] key = packet.Length > 8 ? packet[8..] : [];
        Cancels.Enqueue((pid, key));
        if (_backends.TryGetValue(pid, out Backend? backend) && key.AsSpan().SequenceEqual(backend.Key))
        {
            backend.TryCancel();
        }
    }

    private async Task ServeSessionAsync(Socket socket)
    {
        var backend = new Backend(Interlocked.Increment(ref _nextPid), RandomNumberGenerator.GetBytes(KeyLength));
        var output = new List<byte>();
        if (Negotiate is { } negotiate && !NegotiateLate)
        {
            AddMessage(output, 'v', negotiate);
        }

        AddMessage(output, 'R', [0, 0, 0, 0]);
        if (Negotiate is { } late && NegotiateLate)
        {
            AddMessage(output, 'v', late);
        }
        foreach ((string name, string value) in new[]
        {
            ("server_version", "18.0"), ("server_encoding", "UTF8"), ("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"), ("standard_conforming_strings", "on"), ("TimeZone", "UTC"), ("application_name", ""),
        })
        {
            AddMessage(output, 'S', [.. CString(name), .. CString(value)]);
        }

        var pidWord = new byte[sizeof(int)];
        BinaryPrimitives.WriteInt32BigEndian(pidWord, backend.Pid);
        AddMessage(output, 'K', [.. pidWord, .. backend.Key]);
        AddReady(output);
        _backends[backend.Pid] = backend;
        await socket.SendAsync(output.ToArray(), SocketFlags.None, _stop.Token);

        while (true)
        {
            var header = new byte[1 + sizeof(int)];
            await ReadExactlyAsync(socket, header);
            var body = new byte[BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(1)) - sizeof(int)];
            await ReadExactlyAsync(socket, body);
            output.Clear();
            switch ((char)header[0])
            {
                case 'X':
                    return;
                case 'Q':
                    string sql = Encoding.UTF8.GetString(body, 0, Math.Max(0, body.Length - 1));
                    if (sql.Contains("pg_sleep", StringComparison.Ordinal))
                    {
                        try
                        {
                            await backend.Hold(sql).WaitAsync(_stop.Token);
                        }
                        finally
                        {
                            backend.Release();
                        }

                        AddMessage(output, 'E', [.. Field('S', "ERROR"), .. Field('V', "ERROR"), .. Field('C', "57014"), .. Field('M', "canceling statement due to user request"), 0]);
                    }
                    else if (sql.TrimStart().StartsWith("SELECT", StringComparison.OrdinalIgnoreCase))
                    {
                        // One text column "?column?" of type int4 (OID 23), one row "1".
                        byte[] column = [.. CString("?column?"), 0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0];
                        AddMessage(output, 'T', [0, 1, .. column]);
                        AddMessage(output, 'D', [0, 1, 0, 0, 0, 1, (byte)'1']);
                        AddMessage(output, 'C', CString("SELECT 1"));
                    }
                    else
                    {
                        AddMessage(output, 'C', CString(sql.Trim().TrimEnd(';').ToUpperInvariant()));
                    }

                    AddReady(output);
                    break;
                case 'S':
                    AddReady(output);
                    break;
                default:
                    continue;
            }

            await socket.SendAsync(output.ToArray(), SocketFlags.None, _stop.Token);
        }
    }

    private static void AddReady(List<byte> output) => AddMessage(output, 'Z', [(byte)'I']);

    private static void AddMessage(List<byte> output, char type, byte[] body)
    {
        output.Add((byte)type);
        var length = new byte[sizeof(int)];
        BinaryPrimitives.WriteInt32BigEndian(length, sizeof(int) + body.Length);
        output.AddRange(length);
        output.AddRange(body);
    }

    private static byte[] CString(string value) => [.. Encoding.UTF8.GetBytes(value), 0];

    private static byte[] Field(char code, string value) => [(byte)code, .. CString(value)];

    private async Task ReadExactlyAsync(Socket socket, byte[] buffer)
    {
        int read = 0;
        while (read < buffer.Length)
        {
            int n = await socket.ReceiveAsync(buffer.AsMemory(read), SocketFlags.None, _stop.Token);
            if (n == 0)
            {
                throw new EndOfStreamException();
            }

            read += n;
        }
    }

    /// <summary>One backend of the fake: its pid, its cancel key, and the query it holds, if any.</summary>
    internal sealed class Backend(int pid, byte[] key)
    {
        private readonly Lock _gate = new();
        private TaskCompletionSource? _held;
        private string? _heldQuery;

        /// <summary>The pid of its BackendKeyData.</summary>
        public int Pid { get; } = pid;

        /// <summary>The key of its BackendKeyData.</summary>
        public byte[] Key { get; } = key;

        /// <summary>The query held until a cancel (one containing <c>pg_sleep</c>); null when none.</summary>
        public string? HeldQuery
        {
            get
            {
                lock (_gate)
                {
                    return _heldQuery;
                }
            }
        }

        /// <summary>Holds <paramref name="sql"/>; the task completes when a matching cancel arrives.</summary>
        public Task Hold(string sql)
        {
            lock (_gate)
            {
                _heldQuery = sql;
                _held = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                return _held.Task;
            }
        }

        /// <summary>The held query has been answered.</summary>
        public void Release()
        {
            lock (_gate)
            {
                _heldQuery = null;
                _held = null;
            }
        }

        /// <summary>A cancel for this backend: ends the held query; like PostgreSQL, does nothing when none runs.</summary>
        public void TryCancel()
        {
            lock (_gate)
            {
                _held?.TrySetResult();
            }
        }
    }
}
