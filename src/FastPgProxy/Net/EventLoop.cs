using System.Collections.Concurrent;
using System.Diagnostics;
using FastPgProxy.Hosting;

namespace FastPgProxy.Net;

/// <summary>A unit of work that runs on the loop that owns it.</summary>
internal interface ILoopWork
{
    /// <summary>Runs on the loop thread.</summary>
    void Execute();
}

/// <summary>Something that wants a callback on its loop at a point in time.</summary>
internal interface ILoopTimer
{
    /// <summary>Runs on the loop thread once the due time has passed.</summary>
    void OnTimer(long dueTimestamp);
}

/// <summary>
/// One event loop: a serial execution domain that owns its sessions, buffers and timers. Exactly one thread
/// runs a loop at a time (the owner, recorded in <c>_owner</c>); every state change of a session happens
/// while its loop is owned. Work reaches a loop through <see cref="Post(ILoopWork)"/>: a finished socket
/// operation (an <see cref="ILoopWork"/>, so posting allocates nothing), a new session, a cancel.
/// </summary>
/// <remarks>
/// A poster that finds the loop free runs the work at once on its own thread and drains the queue
/// (the runtime's epoll thread, with inline socket completions, thus acts as the loop: no thread hop, no
/// wake-up). A poster that finds the loop owned only enqueues; the owner drains before it lets go, and
/// re-checks the queue after letting go so nothing is stranded. Whoever owns the loop runs the timers
/// that are due when it has drained the queue; the loop's own thread sleeps until the next timer is due
/// (or it is woken), runs it when nobody else holds the loop, and takes over a backlog longer than one
/// drain budget, so one busy loop cannot hold a completion thread for long. See docs/ARCHITECTURE.md.
/// </remarks>
internal sealed class EventLoop : IDisposable
{
    // Items one inline drain may run before it hands the rest to the loop thread.
    private const int InlineDrainBudget = 256;

    private readonly ConcurrentQueue<ILoopWork> _queue = new();
    private readonly SemaphoreSlim _wake = new(0);
    private readonly PriorityQueue<ILoopTimer, long> _timers = new();
    private readonly Thread _thread;
    private volatile bool _stopping;

    // Managed thread id of the thread running the loop now; 0 while nobody does.
    private int _owner;

    // 1 while the loop thread is about to sleep or sleeping; a waker that swaps it to 0 owes one Release.
    private int _sleeping;

    // Stopwatch timestamp the loop thread sleeps until; an earlier timer wakes it.
    private long _sleepDeadline = long.MaxValue;

    // Stopwatch timestamp of the earliest timer; long.MaxValue when none. Written by the owner.
    private long _nextTimer = long.MaxValue;

    /// <summary>Creates the loop; <see cref="Start"/> starts its thread.</summary>
    public EventLoop(int index, int bufferSize, bool inlineExecution = true)
    {
        Index = index;
        InlineExecution = inlineExecution;
        Buffers = new BufferPool(bufferSize, maxRetained: 1024);
        Random = new LoopRandom();
        _thread = new Thread(Run) { IsBackground = true, Name = $"fpp-loop-{index}" };
    }

    /// <summary>Position of this loop in its group.</summary>
    public int Index { get; }

    /// <summary>Whether posters may run the loop on their own thread when it is free (default) or must always hand work to the loop thread.</summary>
    public bool InlineExecution { get; }

    /// <summary>Buffers owned by this loop; only its owner rents and returns them.</summary>
    public BufferPool Buffers { get; }

    /// <summary>Random bytes for the logins on this loop; only its owner draws from it.</summary>
    public LoopRandom Random { get; }

    /// <summary>Send arguments lent to this loop's channels while a send is in flight; owner only.</summary>
    public SendArgsPool SendArgs { get; } = new(maxRetained: 1024);

    /// <summary>Whether the caller is the loop's current owner.</summary>
    public bool InLoop => Volatile.Read(ref _owner) == Environment.CurrentManagedThreadId;

    /// <summary>Starts the thread.</summary>
    public void Start() => _thread.Start();

    /// <summary>Queues work for the loop, running it at once when the loop is free; callable from any thread.</summary>
    public void Post(ILoopWork work)
    {
        _queue.Enqueue(work);
        if (InLoop)
        {
            // The owner's drain picks it up: no recursion, however deep the chain of completions.
            return;
        }

        if (InlineExecution)
        {
            RunInline();
        }
        else
        {
            Wake();
        }
    }

    /// <summary>Queues a delegate; allocates, so only for rare paths (shutdown, administration).</summary>
    public void Post(Action action) => Post(new ActionWork(action));

    /// <summary>Calls <paramref name="timer"/> on this loop at or after <paramref name="dueTimestamp"/> (<see cref="Stopwatch"/> ticks). Owner only.</summary>
    public void Schedule(ILoopTimer timer, long dueTimestamp)
    {
        Debug.Assert(InLoop);
        _timers.Enqueue(timer, dueTimestamp);
        if (dueTimestamp < _nextTimer)
        {
            // A full fence between this write and the read of _sleepDeadline below, matched by the loop
            // thread's fence between its write of _sleeping and its second read of _nextTimer: either the
            // loop thread sees this timer before it sleeps, or this thread sees it asleep and wakes it.
            Interlocked.Exchange(ref _nextTimer, dueTimestamp);
        }

        if (dueTimestamp < Volatile.Read(ref _sleepDeadline))
        {
            Wake();
        }
    }

    /// <summary>Asks the thread to finish after the work already queued, and waits for it.</summary>
    public void Stop(TimeSpan timeout)
    {
        _stopping = true;
        Wake();
        _thread.Join(timeout);
    }

    /// <summary>Releases the wake-up semaphore; call after <see cref="Stop"/>.</summary>
    public void Dispose() => _wake.Dispose();

    private void RunInline()
    {
        int me = Environment.CurrentManagedThreadId;
        while (!_queue.IsEmpty && Interlocked.CompareExchange(ref _owner, me, 0) == 0)
        {
            bool drained = Drain(InlineDrainBudget);
            if (drained && Stopwatch.GetTimestamp() >= _nextTimer)
            {
                RunTimers();
            }

            Interlocked.Exchange(ref _owner, 0);
            if (!drained)
            {
                Wake();
                return;
            }
        }
    }

    /// <summary>Runs queued work; true when the queue was emptied within <paramref name="budget"/> items.</summary>
    private bool Drain(int budget)
    {
        for (int i = 0; i < budget; i++)
        {
            if (!_queue.TryDequeue(out ILoopWork? work))
            {
                return true;
            }

            RunSafely(work);
        }

        return _queue.IsEmpty;
    }

    private void Wake()
    {
        if (Volatile.Read(ref _sleeping) == 1 && Interlocked.Exchange(ref _sleeping, 0) == 1)
        {
            _wake.Release();
        }
    }

    private void Run()
    {
        int me = Environment.CurrentManagedThreadId;
        while (true)
        {
            // When another thread owns the loop, it drains the queue and runs the timers due when it is
            // done; sleep until the next timer is due (or until woken because it left a backlog), and
            // look again in 1 ms when that moment has passed while the loop was held.
            bool owned = Interlocked.CompareExchange(ref _owner, me, 0) == 0;
            if (owned)
            {
                Drain(int.MaxValue);
                RunTimers();
                Interlocked.Exchange(ref _owner, 0);
                if (_stopping && _queue.IsEmpty)
                {
                    return;
                }

                if (!_queue.IsEmpty)
                {
                    continue;
                }
            }

            long nextTimer = Volatile.Read(ref _nextTimer);
            int sleepMs = SleepMillis(nextTimer);
            Volatile.Write(ref _sleepDeadline, Stopwatch.GetTimestamp() + (sleepMs * Stopwatch.Frequency / 1000));
            Interlocked.Exchange(ref _sleeping, 1);
            if ((owned && (!_queue.IsEmpty || _stopping)) || Volatile.Read(ref _nextTimer) < nextTimer)
            {
                // Work arrived between the drain and the flag, or an earlier timer was scheduled: take the
                // flag back, and if a waker took it first, consume the Release it made so the semaphore
                // count stays at zero.
                if (Interlocked.Exchange(ref _sleeping, 0) == 0)
                {
                    _wake.Wait();
                }

                Volatile.Write(ref _sleepDeadline, long.MaxValue);
                continue;
            }

            if (!_wake.Wait(sleepMs) && Interlocked.Exchange(ref _sleeping, 0) == 0)
            {
                _wake.Wait();
            }

            Volatile.Write(ref _sleepDeadline, long.MaxValue);
        }
    }

    /// <summary>How long the loop thread may sleep: until the next timer (at least 1 ms, at most 1 s).</summary>
    private static int SleepMillis(long nextTimer)
    {
        if (nextTimer == long.MaxValue)
        {
            return 1000;
        }

        long ms = (nextTimer - Stopwatch.GetTimestamp()) * 1000 / Stopwatch.Frequency;
        return (int)Math.Clamp(ms + 1, 1, 1000);
    }

    /// <summary>Runs the timers that are due, and the work they post; owner only.</summary>
    private void RunTimers()
    {
        while (_timers.TryPeek(out ILoopTimer? timer, out long due))
        {
            if (due > Stopwatch.GetTimestamp())
            {
                Volatile.Write(ref _nextTimer, due);
                return;
            }

            _timers.Dequeue();
            try
            {
                timer.OnTimer(due);
            }
            catch (Exception e)
            {
                Log.Error($"loop {Index}: timer failed: {e}");
            }

            // A timer may post work (a close); run it before the next timer, within one drain's budget
            // (this may be a socket thread draining inline; what is left stays queued).
            Drain(InlineDrainBudget);
        }

        Volatile.Write(ref _nextTimer, long.MaxValue);
    }

    private void RunSafely(ILoopWork work)
    {
        try
        {
            work.Execute();
        }
        catch (Exception e)
        {
            // A bug in one session must not take the loop, and every other session on it, down.
            Log.Error($"loop {Index}: unhandled error: {e}");
        }
    }

    private sealed class ActionWork(Action action) : ILoopWork
    {
        public void Execute() => action();
    }
}

/// <summary>The loops of a server; new sessions are spread over them round-robin.</summary>
internal sealed class EventLoopGroup
{
    private readonly EventLoop[] _loops;
    private int _next = -1;

    /// <summary>Creates and starts <paramref name="count"/> loops.</summary>
    public EventLoopGroup(int count, int bufferSize, bool inlineExecution = true)
    {
        _loops = new EventLoop[count];
        for (int i = 0; i < count; i++)
        {
            _loops[i] = new EventLoop(i, bufferSize, inlineExecution);
            _loops[i].Start();
        }
    }

    /// <summary>All loops.</summary>
    public IReadOnlyList<EventLoop> Loops => _loops;

    /// <summary>The loop for the next new session.</summary>
    public EventLoop Next() => _loops[(int)((uint)Interlocked.Increment(ref _next) % (uint)_loops.Length)];

    /// <summary>Stops every loop.</summary>
    public void Stop(TimeSpan timeout)
    {
        foreach (EventLoop loop in _loops)
        {
            loop.Stop(timeout);
            loop.Dispose();
        }
    }
}
