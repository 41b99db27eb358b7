using System;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Net;
using System.Net.Sockets;
using System.Threading;
using System.Threading.Tasks;
using FastPgProxy.Protocol;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>
/// A TCP relay on a free port of 127.0.0.1 that forwards every connection it accepts to a target,
/// both ways and byte for byte, and records how each connection began: the first eight bytes the
/// client sent, which tell an SSLRequest, a CancelRequest, a GSSENCRequest and a StartupMessage
/// apart (protocol 55.2.1, 55.7), or a direct TLS ClientHello. Put it between a proxy and
/// PostgreSQL to see on the wire what the proxy opens its backend and cancel connections with.
/// </summary>
/// <remarks>
/// The relay connects to the target before it reads from the client, and forwards bytes as they
/// come: recording never holds data back. A connection is recorded once its client has sent eight
/// bytes, or has closed or failed sooner; a connection whose target refuses it is closed and not
/// recorded.
/// </remarks>
public sealed class RecordingRelay : IAsyncDisposable
{
    /// <summary>How long <see cref="WaitForConnectionsAsync"/> waits unless told otherwise.</summary>
    public static readonly TimeSpan DefaultWaitTimeout = TimeSpan.FromSeconds(30);

    private const int BufferSize = 16 * 1024;

    private static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(15);

    private static readonly TimeSpan DisposeTimeout = TimeSpan.FromSeconds(10);

    private readonly Socket _listener;
    private readonly CancellationTokenSource _stopping = new();
    private readonly ConcurrentDictionary<int, Task> _connections = new();
    private readonly ConcurrentDictionary<Socket, byte> _sockets = new();
    private readonly List<RelayedConnection> _records = [];
    private readonly List<(int Count, TaskCompletionSource Done)> _waiters = [];
    private readonly Lock _lock = new();
    private Task _acceptLoop = Task.CompletedTask;
    private int _accepted;
    private int _disposed;

    private RecordingRelay(Socket listener, string targetHost, int targetPort)
    {
        _listener = listener;
        TargetHost = targetHost;
        TargetPort = targetPort;
        Port = ((IPEndPoint)listener.LocalEndPoint!).Port;
    }

    /// <summary>Address the relay listens on: <c>127.0.0.1</c>.</summary>
    public string Host { get; } = "127.0.0.1";

    /// <summary>Port the relay listens on (picked by the kernel).</summary>
    public int Port { get; }

    /// <summary>Host every accepted connection is forwarded to.</summary>
    public string TargetHost { get; }

    /// <summary>Port every accepted connection is forwarded to.</summary>
    public int TargetPort { get; }

    /// <summary>A snapshot of the connections recorded so far, in the order they were recorded.</summary>
    public IReadOnlyList<RelayedConnection> Connections
    {
        get
        {
            lock (_lock)
            {
                return [.. _records];
            }
        }
    }

    /// <summary>Starts a relay to <paramref name="targetHost"/>:<paramref name="targetPort"/>.</summary>
    /// <param name="targetHost">Host to forward to, such as <see cref="PostgresServer.Host"/>.</param>
    /// <param name="targetPort">Port to forward to.</param>
    /// <returns>The listening relay; dispose it to close the listener and every relayed connection.</returns>
    public static RecordingRelay Start(string targetHost, int targetPort)
    {
        ArgumentException.ThrowIfNullOrEmpty(targetHost);
        var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen(128);
        }
        catch
        {
            listener.Dispose();
            throw;
        }

        var relay = new RecordingRelay(listener, targetHost, targetPort);
        relay._acceptLoop = relay.AcceptLoopAsync();
        return relay;
    }

    /// <summary>
    /// Waits until at least <paramref name="count"/> connections have been recorded.
    /// </summary>
    /// <param name="count">Number of recorded connections to wait for.</param>
    /// <param name="timeout">Limit; null means <see cref="DefaultWaitTimeout"/>.</param>
    /// <returns>A snapshot of the recorded connections, at least <paramref name="count"/> of them.</returns>
    /// <exception cref="TimeoutException">Fewer were recorded in time; the message lists those that were.</exception>
    public async Task<IReadOnlyList<RelayedConnection>> WaitForConnectionsAsync(int count, TimeSpan? timeout = null)
    {
        TaskCompletionSource done;
        lock (_lock)
        {
            if (_records.Count >= count)
            {
                return [.. _records];
            }

            done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiters.Add((count, done));
        }

        TimeSpan limit = timeout ?? DefaultWaitTimeout;
        try
        {
            await done.Task.WaitAsync(limit).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            lock (_lock)
            {
                _waiters.RemoveAll(waiter => waiter.Done == done);
            }

            IReadOnlyList<RelayedConnection> seen = Connections;
            throw new TimeoutException(
                $"The relay recorded {seen.Count} of {count} connections within {limit.TotalSeconds:0.#} s: "
                + (seen.Count == 0 ? "(none)" : string.Join(", ", seen)));
        }

        return Connections;
    }

    /// <summary>Stops accepting, closes every relayed connection and waits for them to finish. Never throws.</summary>
    /// <returns>A task that completes when the relay is down.</returns>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await _stopping.CancelAsync().ConfigureAwait(false);
        _listener.Dispose();
        foreach (Socket socket in _sockets.Keys)
        {
            socket.Dispose();
        }

        try
        {
            await Task.WhenAll([_acceptLoop, .. _connections.Values]).WaitAsync(DisposeTimeout).ConfigureAwait(false);
        }
        catch (Exception)
        {
            // Everything is closed; a straggler is not worth failing a test for.
        }

        _stopping.Dispose();
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stopping.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptAsync(_stopping.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }

            int number = Interlocked.Increment(ref _accepted);
            _connections[number] = RelayAsync(number, client);
        }
    }

    private async Task RelayAsync(int number, Socket client)
    {
        Track(client);
        var target = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        Track(target);
        try
        {
            client.NoDelay = true;
            target.NoDelay = true;
            try
            {
                using var connectLimit = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
                connectLimit.CancelAfter(ConnectTimeout);
                await target.ConnectAsync(TargetHost, TargetPort, connectLimit.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }

            // Each direction passes the end of its stream on with a half close, so a peer that
            // closes after its last message still gets the other side's answer.
            await Task.WhenAll(
                PumpAsync(client, target, number, record: true),
                PumpAsync(target, client, number, record: false)).ConfigureAwait(false);
        }
        finally
        {
            Untrack(client);
            Untrack(target);
            _connections.TryRemove(number, out _);
        }
    }

    private async Task PumpAsync(Socket from, Socket to, int number, bool record)
    {
        byte[] buffer = new byte[BufferSize];
        byte[] head = new byte[RelayedConnection.HeadLength];
        int headLength = 0;
        bool recorded = !record;
        try
        {
            while (true)
            {
                int received = await from.ReceiveAsync(buffer, SocketFlags.None, _stopping.Token).ConfigureAwait(false);
                if (received == 0)
                {
                    break;
                }

                if (!recorded)
                {
                    int take = Math.Min(received, head.Length - headLength);
                    buffer.AsSpan(0, take).CopyTo(head.AsSpan(headLength));
                    headLength += take;
                    if (headLength == head.Length)
                    {
                        recorded = true;
                        Record(new RelayedConnection(number, head));
                    }
                }

                for (int sent = 0; sent < received;)
                {
                    sent += await to.SendAsync(buffer.AsMemory(sent, received - sent), SocketFlags.None, _stopping.Token).ConfigureAwait(false);
                }
            }

            to.Shutdown(SocketShutdown.Send);
        }
        catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
        {
            // One side reset or the relay is stopping: take the connection down both ways.
            from.Dispose();
            to.Dispose();
        }
        finally
        {
            if (!recorded)
            {
                Record(new RelayedConnection(number, head[..headLength]));
            }
        }
    }

    private void Record(RelayedConnection connection)
    {
        List<TaskCompletionSource> ready = [];
        lock (_lock)
        {
            _records.Add(connection);
            for (int i = _waiters.Count - 1; i >= 0; i--)
            {
                if (_waiters[i].Count <= _records.Count)
                {
                    ready.Add(_waiters[i].Done);
                    _waiters.RemoveAt(i);
                }
            }
        }

        foreach (TaskCompletionSource done in ready)
        {
            done.TrySetResult();
        }
    }

    private void Track(Socket socket)
    {
        _sockets[socket] = 0;

        // Disposed in between: DisposeAsync may have swept the set before this socket joined it.
        if (Volatile.Read(ref _disposed) != 0)
        {
            socket.Dispose();
        }
    }

    private void Untrack(Socket socket)
    {
        _sockets.TryRemove(socket, out _);
        socket.Dispose();
    }
}

/// <summary>How one connection through a <see cref="RecordingRelay"/> began.</summary>
/// <param name="Number">The connection's place in accept order, from 1.</param>
/// <param name="FirstBytes">
/// The first <see cref="HeadLength"/> bytes the client sent, or fewer when it closed or failed sooner.
/// </param>
public sealed record RelayedConnection(int Number, byte[] FirstBytes)
{
    /// <summary>Bytes recorded per connection: a start-up packet's length word and code word.</summary>
    public const int HeadLength = sizeof(int) /* length */ + sizeof(int) /* request code or protocol version */;

    /// <summary>First byte of a TLS record carrying a handshake message (RFC 8446 5.1): a direct ClientHello.</summary>
    public const byte TlsHandshakeRecord = 0x16;

    /// <summary>True when the client opened with a TLS record (a direct TLS ClientHello) instead of a PostgreSQL packet.</summary>
    public bool StartsWithTlsHandshake => FirstBytes.Length > 0 && FirstBytes[0] == TlsHandshakeRecord;

    /// <summary>
    /// The int32 at bytes 4..8 of the first packet: 80877103 SSLRequest, 80877102 CancelRequest,
    /// 80877104 GSSENCRequest, or a StartupMessage's protocol version (196608 for 3.0); null for a
    /// direct TLS ClientHello or when the client sent fewer than eight bytes.
    /// </summary>
    public int? RequestCode => FirstBytes.Length == HeadLength && !StartsWithTlsHandshake
        ? BinaryPrimitives.ReadInt32BigEndian(FirstBytes.AsSpan(sizeof(int)))
        : null;

    /// <summary>True when the first packet is a StartupMessage (any protocol 3.x version, 3.0 and 3.2 included).</summary>
    public bool IsStartupMessage => RequestCode is int code && code >> 16 == StartupCodes.Protocol30 >> 16;

    /// <summary>Describes the first packet, for assertion messages.</summary>
    /// <returns>For example <c>#2 CancelRequest (80877102)</c>.</returns>
    public override string ToString()
    {
        string kind = RequestCode switch
        {
            StartupCodes.SslRequestCode => "SSLRequest",
            StartupCodes.CancelRequestCode => "CancelRequest",
            StartupCodes.GssEncRequestCode => "GSSENCRequest",
            _ when IsStartupMessage => "StartupMessage",
            null when StartsWithTlsHandshake => "TLS ClientHello",
            null => $"{FirstBytes.Length} bytes only",
            _ => "unknown",
        };
        string code = RequestCode is int value ? $" ({value.ToString(CultureInfo.InvariantCulture)})" : string.Empty;
        return $"#{Number.ToString(CultureInfo.InvariantCulture)} {kind}{code}";
    }
}
