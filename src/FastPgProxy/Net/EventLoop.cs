using System.Collections.Concurrent;
using System.Diagnostics;
using FastPgProxy.Server;

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
/// One event-loop thread. Sessions are owned by exactly one loop; every state change of a session happens
/// here. Socket completions, which .NET raises on its own epoll threads, only enqueue the finished operation
/// (an <see cref="ILoopWork"/>) on the owning loop; other threads (the listener, the cancel path, shutdown)
/// post work the same way. The loop drains its queue, runs due timers, and sleeps on a semaphore when idle.
/// </summary>
internal sealed class EventLoop : IDisposable
{
    private readonly ConcurrentQueue<ILoopWork> _queue = new();
    private readonly SemaphoreSlim _wake = new(0);
    private readonly PriorityQueue<ILoopTimer, long> _timers = new();
    private readonly Thread _thread;
    private volatile bool _stopping;

    // 1 while the loop is about to sleep or sleeping; a poster that swaps it to 0 owes one Release.
    private int _sleeping;

    /// <summary>Creates the loop; <see cref="Start"/> starts its thread.</summary>
    public EventLoop(int index, int bufferSize)
    {
        Index = index;
        Buffers = new BufferPool(bufferSize, maxRetained: 1024);
        _thread = new Thread(Run) { IsBackground = true, Name = $"fpp-loop-{index}" };
    }

    /// <summary>Position of this loop in its group.</summary>
    public int Index { get; }

    /// <summary>Buffers owned by this loop; only its thread rents and returns them.</summary>
    public BufferPool Buffers { get; }

    /// <summary>Whether the caller runs on this loop's thread.</summary>
    public bool InLoop => Thread.CurrentThread == _thread;

    /// <summary>Starts the thread.</summary>
    public void Start() => _thread.Start();

    /// <summary>Queues work for the loop; callable from any thread.</summary>
    public void Post(ILoopWork work)
    {
        _queue.Enqueue(work);
        if (Volatile.Read(ref _sleeping) == 1 && Interlocked.Exchange(ref _sleeping, 0) == 1)
        {
            _wake.Release();
        }
    }

    /// <summary>Queues a delegate; allocates, so only for rare paths (shutdown, administration).</summary>
    public void Post(Action action) => Post(new ActionWork(action));

    /// <summary>Calls <paramref name="timer"/> on this loop at or after <paramref name="dueTimestamp"/> (<see cref="Stopwatch"/> ticks). Loop thread only.</summary>
    public void Schedule(ILoopTimer timer, long dueTimestamp)
    {
        Debug.Assert(InLoop);
        _timers.Enqueue(timer, dueTimestamp);
    }

    /// <summary>Asks the thread to finish after the work already queued, and waits for it.</summary>
    public void Stop(TimeSpan timeout)
    {
        _stopping = true;
        Post(NopWork.Instance);
        _thread.Join(timeout);
    }

    /// <summary>Releases the wake-up semaphore; call after <see cref="Stop"/>.</summary>
    public void Dispose() => _wake.Dispose();

    private void Run()
    {
        while (true)
        {
            while (_queue.TryDequeue(out ILoopWork? work))
            {
                RunSafely(work);
            }

            int sleepMs = RunTimers();
            if (_stopping && _queue.IsEmpty)
            {
                return;
            }

            Interlocked.Exchange(ref _sleeping, 1);
            if (!_queue.IsEmpty)
            {
                // Work arrived between the drain and the flag: take the flag back, and if a poster took it
                // first, consume the Release it made so the semaphore count stays at zero.
                if (Interlocked.Exchange(ref _sleeping, 0) == 0)
                {
                    _wake.Wait();
                }

                continue;
            }

            if (!_wake.Wait(sleepMs))
            {
                if (Interlocked.Exchange(ref _sleeping, 0) == 0)
                {
                    _wake.Wait();
                }
            }
        }
    }

    private int RunTimers()
    {
        while (_timers.TryPeek(out ILoopTimer? timer, out long due))
        {
            long now = Stopwatch.GetTimestamp();
            if (due > now)
            {
                long ms = (due - now) * 1000 / Stopwatch.Frequency;
                return (int)Math.Clamp(ms + 1, 1, 1000);
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
        }

        return 1000;
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

    private sealed class NopWork : ILoopWork
    {
        public static readonly NopWork Instance = new();

        public void Execute()
        {
        }
    }
}

/// <summary>The loops of a server; new sessions are spread over them round-robin.</summary>
internal sealed class EventLoopGroup
{
    private readonly EventLoop[] _loops;
    private int _next = -1;

    /// <summary>Creates and starts <paramref name="count"/> loops.</summary>
    public EventLoopGroup(int count, int bufferSize)
    {
        _loops = new EventLoop[count];
        for (int i = 0; i < count; i++)
        {
            _loops[i] = new EventLoop(i, bufferSize);
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
