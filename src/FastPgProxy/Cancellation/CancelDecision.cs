namespace FastPgProxy.Cancellation;

/// <summary>What a cancel does to the session it names, decided on that session's loop.</summary>
internal enum CancelAction
{
    /// <summary>The request has not reached PostgreSQL (it waits for a backend, or behind the proxy's own SETs): the proxy answers it 57014 and never forwards it.</summary>
    AnswerLocally,
    /// <summary>A query runs on the session's backend: the backend's own key goes to PostgreSQL, and the backend stays out of the pool until PostgreSQL has acted.</summary>
    Forward,
    /// <summary>Nothing runs: the cancel is dropped, so it can never reach another client's query on a reused backend.</summary>
    Drop,
}

/// <summary>
/// Cancels are bound to the request running when they are issued. Whatever starts one (a CancelRequest,
/// <c>pg_cancel_backend</c>, a termination, query_timeout), the session's loop asks <see cref="Decide"/>
/// with what only it knows, atomically with its backend being handed back to the pool.
/// </summary>
internal static class CancelDecision
{
    /// <summary>
    /// The action for a cancel of a session in the relay (<paramref name="relaying"/>) whose request is held
    /// by the proxy (<paramref name="requestHeld"/>: waiting for a backend or behind the parameter sync),
    /// is already being answered as cancelled (<paramref name="alreadyAnswering"/>), or runs on its backend
    /// (<paramref name="running"/>: the backend owes it replies).
    /// </summary>
    public static CancelAction Decide(bool relaying, bool requestHeld, bool alreadyAnswering, bool running)
    {
        if (relaying && requestHeld && !alreadyAnswering)
        {
            return CancelAction.AnswerLocally;
        }

        return relaying && running ? CancelAction.Forward : CancelAction.Drop;
    }
}
