using FastPgProxy.Admin;

namespace FastPgProxy.Sessions;

/// <summary>
/// Admin console sessions: logged in like any client, then served by an <see cref="AdminSession"/> without
/// a backend. Also the console's entry point into any session for KILL PGSQL QUERY.
/// </summary>
internal sealed partial class ClientSession
{
    // The console's own protocol handling; made when a console login is authenticated, never for a relay client.
    private AdminSession? _adminSession;

    /// <summary>Login finished for a console session: it is active and its <see cref="AdminSession"/> sends the login tail.</summary>
    private void OnAdminAuthenticated()
    {
        State = SessionState.Active;
        _adminSession = new AdminSession(this);
        _adminSession.Start();
    }

    /// <summary>
    /// KILL PGSQL QUERY: on this session's loop, decides whether a query runs and, if so, cancels it
    /// through <see cref="RequestCancel"/> (which decides again, atomically with the backend going back
    /// to the pool). Completes with whether a query was running. Any thread.
    /// </summary>
    public Task<bool> CancelQueryFromAdminAsync()
    {
        var done = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        void Decide()
        {
            if (!Loop.InLoop)
            {
                // Moved to its pool's loop since the post: decide there.
                Loop.Post(Decide);
                return;
            }

            bool running = IsQueryRunning;
            if (running)
            {
                RequestCancel(null);
            }

            done.TrySetResult(running);
        }

        Loop.Post(Decide);
        return done.Task;
    }
}
