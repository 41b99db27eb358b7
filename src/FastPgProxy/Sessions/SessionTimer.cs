using System.Diagnostics;
using FastPgProxy.Net;

namespace FastPgProxy.Sessions;

/// <summary>
/// One re-armable timer of a session, on the session's loop. Arming allocates nothing: at most one
/// callback sits in the loop's timer queue, and when it comes due before the current deadline (the
/// timer was re-armed meanwhile) it is put back for the deadline instead of firing.
/// </summary>
internal sealed class SessionTimer(ClientSession session, Action fire) : ILoopTimer
{
    private long _deadline;

    // The loop whose timer queue holds this timer; null when none does. A session that moved to
    // another loop leaves a stale entry behind, which then finds the session gone and does nothing.
    private EventLoop? _queuedOn;
    private long _queuedDue;

    /// <summary>Whether the timer will fire at its deadline.</summary>
    public bool Armed { get; private set; }

    /// <summary>Fires <paramref name="after"/> from now, unless disarmed or armed again before then.</summary>
    public void Arm(TimeSpan after)
    {
        Armed = true;
        _deadline = Stopwatch.GetTimestamp() + (long)(after.TotalSeconds * Stopwatch.Frequency);
        EventLoop loop = session.Loop;
        // A queued entry due after the deadline (the timeout was lowered by RELOAD) is superseded by an
        // earlier one; only the entry last queued acts.
        if (_queuedOn != loop || _queuedDue > _deadline)
        {
            Queue(loop);
        }
    }

    /// <summary>Will not fire (its queued entry stays and does nothing).</summary>
    public void Disarm() => Armed = false;

    /// <inheritdoc/>
    public void OnTimer(long dueTimestamp)
    {
        EventLoop loop = session.Loop;
        if (!loop.InLoop || _queuedOn != loop || dueTimestamp != _queuedDue)
        {
            // Left on a loop the session has since left, or superseded by an earlier entry.
            return;
        }

        _queuedOn = null;
        if (!Armed)
        {
            return;
        }

        if (Stopwatch.GetTimestamp() < _deadline)
        {
            Queue(loop);
            return;
        }

        Armed = false;
        fire();
    }

    private void Queue(EventLoop loop)
    {
        _queuedOn = loop;
        _queuedDue = _deadline;
        loop.Schedule(this, _deadline);
    }
}
