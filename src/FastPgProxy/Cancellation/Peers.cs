using System.Net;
using System.Net.Sockets;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Protocol;
using FastPgProxy.Tls;

namespace FastPgProxy.Cancellation;

/// <summary>One other instance of the cluster: where it listens, and what was forwarded to and received from it. Any thread.</summary>
internal sealed class PeerLink
{
    private int _inFlight;
    private long _forwarded;
    private long _received;
    private long _unreachable;
    private long _busy;
    private long _signalsForwarded;
    private long _signalsReceived;
    private long _signalsFailed;
    private volatile string _state = "unknown";

    /// <summary>A link to the peer of <paramref name="options"/>; <paramref name="addresses"/> are where its connections come from.</summary>
    public PeerLink(PeerOptions options, IPAddress[] addresses)
    {
        Options = options;
        Addresses = addresses;
    }

    /// <summary>The <c>[peers]</c> line.</summary>
    public PeerOptions Options { get; }

    /// <summary>The peer's host resolved at start: a forwarded cancel is taken only from one of these.</summary>
    public IPAddress[] Addresses { get; }

    /// <summary><c>up</c> after a forward it acknowledged, <c>down</c> after one that failed, <c>unknown</c> before any.</summary>
    public string State => _state;

    /// <summary>Cancels forwarded to it and acknowledged (it closed the connection).</summary>
    public long Forwarded => Volatile.Read(ref _forwarded);

    /// <summary>Cancels it forwarded to this instance.</summary>
    public long Received => Volatile.Read(ref _received);

    /// <summary>Forwards that could not reach it (refused, timed out).</summary>
    public long Unreachable => Volatile.Read(ref _unreachable);

    /// <summary>Forwards dropped because as many as its pool size were already on their way.</summary>
    public long Busy => Volatile.Read(ref _busy);

    /// <summary>Signals (pg_cancel_backend, pg_terminate_backend, KILL) sent to it and answered.</summary>
    public long SignalsForwarded => Volatile.Read(ref _signalsForwarded);

    /// <summary>Signals it sent to this instance (PEER commands from a login it made).</summary>
    public long SignalsReceived => Volatile.Read(ref _signalsReceived);

    /// <summary>Signals for it that got no answer: unreachable, login refused, no <c>user=</c>, or all its slots taken.</summary>
    public long SignalsFailed => Volatile.Read(ref _signalsFailed);

    /// <summary>Counts a signal received from this peer.</summary>
    public void OnSignalReceived() => Interlocked.Increment(ref _signalsReceived);

    /// <summary>Counts a signal that could not be sent (no slot, or no <c>user=</c>), without a slot taken.</summary>
    public void OnSignalNotSent() => Interlocked.Increment(ref _signalsFailed);

    /// <summary>Gives a slot taken for a signal back, with whether the peer answered.</summary>
    public void ExitSignal(bool answered)
    {
        Interlocked.Decrement(ref _inFlight);
        _state = answered ? "up" : "down";
        Interlocked.Increment(ref answered ? ref _signalsForwarded : ref _signalsFailed);
    }

    /// <summary>Forwards on their way now.</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    /// <summary>Counts a cancel received from this peer.</summary>
    public void OnReceived() => Interlocked.Increment(ref _received);

    /// <summary>How many cancels and signals may be on their way to the peer at once: its <c>pool_size</c>, else <c>max_cancel_connections</c>.</summary>
    public int SlotLimit(ProxyOptions options) => Options.PoolSize ?? options.MaxCancelConnections;

    /// <summary>Takes one of the peer's <paramref name="limit"/> forwarding slots; false (counted) when all are taken.</summary>
    public bool TryEnter(int limit)
    {
        if (Interlocked.Increment(ref _inFlight) <= limit)
        {
            return true;
        }

        Interlocked.Decrement(ref _inFlight);
        Interlocked.Increment(ref _busy);
        return false;
    }

    /// <summary>Gives the slot back with the forward's outcome.</summary>
    public void Exit(bool reached)
    {
        Interlocked.Decrement(ref _inFlight);
        _state = reached ? "up" : "down";
        Interlocked.Increment(ref reached ? ref _forwarded : ref _unreachable);
    }
}

/// <summary>
/// The <c>[peers]</c> of this instance, and forwarding of CancelRequests to the instance that owns the
/// session: a task on the thread pool per forward (no loop waits), at most the peer's pool size (or
/// <c>max_cancel_connections</c>) at once, over TLS when <c>server_tls_sslmode</c> asks for it (as a
/// backend's connection does), each bounded by <c>cancel_timeout</c>.
/// </summary>
internal sealed class PeerDirectory
{
    private readonly Dictionary<int, PeerLink> _peers = new();

    /// <summary>The peers of <paramref name="options"/> other than this instance; host names are resolved now (start-up).</summary>
    public PeerDirectory(ProxyOptions options)
    {
        SelfId = options.PeerId;
        foreach (PeerOptions peer in options.Peers)
        {
            if (peer.Id == SelfId)
            {
                continue;
            }

            IPAddress[] addresses;
            try
            {
                addresses = IPAddress.TryParse(peer.Host, out IPAddress? address) ? [address] : Dns.GetHostAddresses(peer.Host);
            }
            catch (SocketException e)
            {
                Log.Warning($"peer {peer.Id}: cannot resolve {peer.Host} ({e.Message}); its forwarded cancels will be refused");
                addresses = [];
            }

            _peers[peer.Id] = new PeerLink(peer, addresses);
        }
    }

    /// <summary>This instance's peer id; 0 without peering.</summary>
    public int SelfId { get; }

    /// <summary>The peers, by id (this instance excluded).</summary>
    public IReadOnlyCollection<PeerLink> All => _peers.Values;

    /// <summary>The peer with <paramref name="id"/>, if configured.</summary>
    public PeerLink? Find(int id) => _peers.GetValueOrDefault(id);

    /// <summary>The peer that owns session <paramref name="id"/> (the peer id in its top bits), when that is another configured instance.</summary>
    public PeerLink? OwnerOf(int id)
    {
        int owner = Sessions.SessionRegistry.PeerOf(id);
        return SelfId == 0 || owner == SelfId ? null : Find(owner);
    }

    /// <summary>The peer whose address <paramref name="address"/> is, if any.</summary>
    public PeerLink? FindByAddress(IPAddress? address)
    {
        if (address is null)
        {
            return null;
        }

        IPAddress plain = address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address;
        foreach (PeerLink peer in _peers.Values)
        {
            if (Array.IndexOf(peer.Addresses, plain) >= 0)
            {
                return peer;
            }
        }

        return null;
    }

    /// <summary>
    /// Forwards a cancel to <paramref name="peer"/> and disposes <paramref name="clientConnection"/> once the
    /// peer closed the forwarding connection (it has then acted) or the forward failed; libpq waits for
    /// that close, as with PostgreSQL.
    /// </summary>
    public static async Task ForwardAsync(ProxyServer proxy, PeerLink peer, IDisposable? clientConnection, byte[] envelope)
    {
        CancelStats stats = proxy.CancelStats;
        int limit = peer.SlotLimit(proxy.Options);
        if (!peer.TryEnter(limit))
        {
            stats.OnPeerBusy();
            Log.Warning($"cancel for peer {peer.Options.Id} dropped: {limit} forwards to it already on their way");
            clientConnection?.Dispose();
            return;
        }

        bool reached = false;
        using CancellationTokenSource cts = CancelForwarder.Deadline(proxy.Options.CancelTimeout);
        try
        {
            using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            await using Stream stream = await OpenAsync(proxy, peer, socket, cts.Token).ConfigureAwait(false);
            await CancelForwarder.SendAndAwaitCloseAsync(stream, envelope, cts.Token).ConfigureAwait(false);

            reached = true;
            stats.OnPeerForwarded();
            Log.Debug($"cancel forwarded to peer {peer.Options.Id}");
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException or IOException or System.Security.Authentication.AuthenticationException)
        {
            stats.OnPeerUnreachable();
            Log.Warning($"cancel for peer {peer.Options.Id} ({peer.Options.Host}:{peer.Options.Port}) failed: {e.Message}");
        }
        finally
        {
            peer.Exit(reached);
            clientConnection?.Dispose();
        }
    }

    /// <summary>
    /// Connects <paramref name="socket"/> to <paramref name="peer"/> and returns the stream to it: TLS when
    /// <c>server_tls_sslmode</c> asks for it, as a backend's connection is. Forwarded cancels and signals
    /// alike; the caller disposes both.
    /// </summary>
    public static async Task<Stream> OpenAsync(ProxyServer proxy, PeerLink peer, Socket socket, CancellationToken cancellation)
    {
        await socket.ConnectAsync(peer.Options.Host, peer.Options.Port, cancellation).ConfigureAwait(false);
        ServerTls? tls = proxy.ServerTls is { AsksForTls: true } serverTls ? serverTls : null;
        return await CancelForwarder.OpenAsync(socket, tls, peer.Options.Host, cancellation).ConfigureAwait(false);
    }
}
