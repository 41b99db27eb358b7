namespace FastPgProxy.Cancellation;

/// <summary>Counters of every outcome of a CancelRequest; updated from any thread.</summary>
internal sealed class CancelStats
{
    private long _received;
    private long _forwarded;
    private long _noBackend;
    private long _wrongKey;
    private long _unknownSession;
    private long _malformed;
    private long _failed;
    private long _idle;
    private long _queued;
    private long _timedOut;
    private long _rateLimited;
    private long _waitTimedOut;
    private long _peerForwarded;
    private long _peerReceived;
    private long _peerTtlExhausted;
    private long _peerUnreachable;
    private long _peerBusy;

    /// <summary>CancelRequest packets read.</summary>
    public long Received => Volatile.Read(ref _received);

    /// <summary>Cancels sent to PostgreSQL and acknowledged by its closing the connection.</summary>
    public long Forwarded => Volatile.Read(ref _forwarded);

    /// <summary>Valid cancels for a session that had no backend at that moment.</summary>
    public long NoBackend => Volatile.Read(ref _noBackend);

    /// <summary>Known session, wrong secret.</summary>
    public long WrongKey => Volatile.Read(ref _wrongKey);

    /// <summary>No live session with that id.</summary>
    public long UnknownSession => Volatile.Read(ref _unknownSession);

    /// <summary>Packets of the wrong length.</summary>
    public long Malformed => Volatile.Read(ref _malformed);

    /// <summary>Forwarding failed (connect refused, timeout).</summary>
    public long Failed => Volatile.Read(ref _failed);

    /// <summary>Valid cancels dropped because the session's query had ended (or it had none running).</summary>
    public long DroppedIdle => Volatile.Read(ref _idle);

    /// <summary>Cancels answered for a client still waiting for a backend (57014 without touching PostgreSQL).</summary>
    public long Queued => Volatile.Read(ref _queued);

    /// <summary>Queries cancelled by query_timeout.</summary>
    public long TimedOut => Volatile.Read(ref _timedOut);

    /// <summary>Cancel packets dropped because their source sent too many wrong keys.</summary>
    public long RateLimited => Volatile.Read(ref _rateLimited);

    /// <summary>Cancels dropped after waiting cancel_wait_timeout for a cancel connection.</summary>
    public long WaitTimedOut => Volatile.Read(ref _waitTimedOut);

    /// <summary>Cancels for another instance's session forwarded to it and acknowledged.</summary>
    public long ForwardedToPeer => Volatile.Read(ref _peerForwarded);

    /// <summary>Cancels another instance forwarded here.</summary>
    public long ReceivedFromPeer => Volatile.Read(ref _peerReceived);

    /// <summary>Forwarded cancels dropped after passing PeerCancel.MaxHops instances (a forwarding loop).</summary>
    public long PeerTtlExhausted => Volatile.Read(ref _peerTtlExhausted);

    /// <summary>Cancels for a peer that could not be reached (refused, timed out), or that no [peers] line names.</summary>
    public long PeerUnreachable => Volatile.Read(ref _peerUnreachable);

    /// <summary>Cancels for a peer dropped because its forwarding slots were all taken.</summary>
    public long PeerBusy => Volatile.Read(ref _peerBusy);

    /// <summary>Counts a cancel forwarded to a peer.</summary>
    public void OnPeerForwarded() => Interlocked.Increment(ref _peerForwarded);

    /// <summary>Counts a cancel received from a peer.</summary>
    public void OnPeerReceived() => Interlocked.Increment(ref _peerReceived);

    /// <summary>Counts a forwarded cancel dropped at the hop limit.</summary>
    public void OnPeerTtlExhausted() => Interlocked.Increment(ref _peerTtlExhausted);

    /// <summary>Counts a cancel for a peer that could not be reached.</summary>
    public void OnPeerUnreachable() => Interlocked.Increment(ref _peerUnreachable);

    /// <summary>Counts a cancel dropped for a busy peer.</summary>
    public void OnPeerBusy() => Interlocked.Increment(ref _peerBusy);

    /// <summary>A cancel waited cancel_wait_timeout for a cancel connection and was dropped.</summary>
    public void OnWaitTimedOut() => Interlocked.Increment(ref _waitTimedOut);

    /// <summary>Counts a query_timeout cancel.</summary>
    public void OnTimedOut() => Interlocked.Increment(ref _timedOut);

    /// <summary>Counts a rate-limited cancel packet.</summary>
    public void OnRateLimited() => Interlocked.Increment(ref _rateLimited);

    /// <summary>Counts a cancel dropped because nothing was running.</summary>
    public void OnDroppedIdle() => Interlocked.Increment(ref _idle);

    /// <summary>Counts a cancel answered for a queued client.</summary>
    public void OnQueued() => Interlocked.Increment(ref _queued);

    /// <summary>Counts a received packet.</summary>
    public void OnReceived() => Interlocked.Increment(ref _received);

    /// <summary>Counts a forwarded cancel.</summary>
    public void OnForwarded() => Interlocked.Increment(ref _forwarded);

    /// <summary>Counts a cancel that found no backend.</summary>
    public void OnNoBackend() => Interlocked.Increment(ref _noBackend);

    /// <summary>Counts a wrong secret.</summary>
    public void OnWrongKey() => Interlocked.Increment(ref _wrongKey);

    /// <summary>Counts an unknown session id.</summary>
    public void OnUnknownSession() => Interlocked.Increment(ref _unknownSession);

    /// <summary>Counts a malformed packet.</summary>
    public void OnMalformed() => Interlocked.Increment(ref _malformed);

    /// <summary>Counts a failed forward.</summary>
    public void OnFailed() => Interlocked.Increment(ref _failed);
}
