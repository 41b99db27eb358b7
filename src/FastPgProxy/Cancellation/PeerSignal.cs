using System.Diagnostics;
using System.Globalization;
using System.Text;
using FastPgProxy.Sessions;

namespace FastPgProxy.Cancellation;

/// <summary>What a signal for another instance's session asks.</summary>
internal enum PeerSignalKind
{
    /// <summary><c>pg_cancel_backend(pid)</c>.</summary>
    Cancel,
    /// <summary><c>pg_terminate_backend(pid[, timeout])</c>.</summary>
    Terminate,
    /// <summary>The console's <c>KILL PGSQL QUERY id</c>.</summary>
    KillQuery,
    /// <summary>The console's <c>KILL PGSQL CONNECTION id</c>.</summary>
    KillConnection,
}

/// <summary>What the owner of the session did with a signal; the caller renders it as a local target's answer.</summary>
internal enum PeerSignalOutcome
{
    /// <summary>Signalled (for a termination with a timeout: and gone within it).</summary>
    Signalled,
    /// <summary>No session has that id there.</summary>
    NotFound,
    /// <summary>The caller may not signal it (another user's session, caller not an admin): 42501.</summary>
    Denied,
    /// <summary>Terminated, but still there when the timeout was up.</summary>
    TimedOut,
    /// <summary>KILL PGSQL QUERY found no query running.</summary>
    NotRunning,
    /// <summary>The owner could not be reached or refused the peer login; nothing is known to have happened.</summary>
    Unreachable,
}

/// <summary>
/// A signal for a session that lives on another instance, with who asked: the user and whether they are
/// an admin on the instance they called. It travels as a console command, <c>PEER</c>, on a connection
/// the calling instance logs in with as a user in the owner's <c>peer_users</c>, over the owner's usual
/// <c>auth_type</c>; the owner applies the checks it applies to its own clients and answers one row, the
/// outcome. The syntax: <c>PEER CANCEL|TERMINATE|KILL_QUERY|KILL_CONNECTION id "user" ADMIN|USER timeout_ms</c>.
/// </summary>
internal sealed record PeerSignal(PeerSignalKind Kind, int SessionId, string User, bool Admin, int TimeoutMs)
{
    /// <summary>The outcome column's name in the owner's reply.</summary>
    public const string OutcomeColumn = "outcome";

    /// <summary>
    /// The application_name a calling instance logs in with, followed by its peer id: the owner counts the
    /// signal for that peer in SHOW PEERS.
    /// </summary>
    public const string ApplicationNamePrefix = "fastpgproxy peer ";

    /// <summary>The command the calling instance sends.</summary>
    public string ToCommand()
    {
        string kind = Kind switch
        {
            PeerSignalKind.Cancel => "CANCEL",
            PeerSignalKind.Terminate => "TERMINATE",
            PeerSignalKind.KillQuery => "KILL_QUERY",
            _ => "KILL_CONNECTION",
        };
        return string.Create(CultureInfo.InvariantCulture, $"PEER {kind} {SessionId} \"{User.Replace("\"", "\"\"", StringComparison.Ordinal)}\" {(Admin ? "ADMIN" : "USER")} {TimeoutMs}");
    }

    /// <summary>Reads the tokens after <c>PEER</c>; null when they are not a signal.</summary>
    public static PeerSignal? TryParse(IReadOnlyList<string> tokens)
    {
        if (tokens.Count != 5)
        {
            return null;
        }

        PeerSignalKind? kind = tokens[0].ToUpperInvariant() switch
        {
            "CANCEL" => PeerSignalKind.Cancel,
            "TERMINATE" => PeerSignalKind.Terminate,
            "KILL_QUERY" => PeerSignalKind.KillQuery,
            "KILL_CONNECTION" => PeerSignalKind.KillConnection,
            _ => null,
        };
        bool? admin = tokens[3].ToUpperInvariant() switch
        {
            "ADMIN" => true,
            "USER" => false,
            _ => null,
        };
        if (kind is null || admin is null
            || !int.TryParse(tokens[1], NumberStyles.None, CultureInfo.InvariantCulture, out int id) || id <= 0
            || !int.TryParse(tokens[4], NumberStyles.None, CultureInfo.InvariantCulture, out int timeout)
            || tokens[2].Length == 0)
        {
            return null;
        }

        return new PeerSignal(kind.Value, id, tokens[2], admin.Value, timeout);
    }

    /// <summary>An outcome as the owner writes it.</summary>
    public static string Spell(PeerSignalOutcome outcome) => outcome switch
    {
        PeerSignalOutcome.Signalled => "signalled",
        PeerSignalOutcome.NotFound => "not_found",
        PeerSignalOutcome.Denied => "denied",
        PeerSignalOutcome.TimedOut => "timed_out",
        PeerSignalOutcome.NotRunning => "not_running",
        _ => "unreachable",
    };

    /// <summary>An outcome the caller read; <see cref="PeerSignalOutcome.Unreachable"/> for anything else.</summary>
    public static PeerSignalOutcome Read(ReadOnlySpan<byte> text)
    {
        string spelt = Encoding.ASCII.GetString(text);
        foreach (PeerSignalOutcome outcome in Enum.GetValues<PeerSignalOutcome>())
        {
            if (spelt == Spell(outcome))
            {
                return outcome;
            }
        }

        return PeerSignalOutcome.Unreachable;
    }

    /// <summary>
    /// Whether <paramref name="caller"/> may signal a session of <paramref name="targetUser"/>: their own
    /// sessions, or any when an admin. The one rule for local and peer signals.
    /// </summary>
    public static bool MaySignal(string? targetUser, string? caller, bool callerIsAdmin) => callerIsAdmin || targetUser == caller;

    /// <summary>
    /// Acts on this instance's session as the owner (thread pool): the same checks and effects as for a
    /// local caller, with the claimed user and admin flag. Never throws.
    /// </summary>
    public async Task<PeerSignalOutcome> ApplyAsync(SessionRegistry sessions, TimeSpan loopTimeout)
    {
        if (!sessions.TryGet(SessionId, out ClientSession? target))
        {
            return PeerSignalOutcome.NotFound;
        }

        bool consoleKill = Kind is PeerSignalKind.KillQuery or PeerSignalKind.KillConnection;
        if (consoleKill ? !Admin : !MaySignal(target.User, User, Admin))
        {
            return PeerSignalOutcome.Denied;
        }

        switch (Kind)
        {
            case PeerSignalKind.Cancel:
                target.CancelFromAnywhere();
                return PeerSignalOutcome.Signalled;
            case PeerSignalKind.KillQuery:
                bool running = await target.CancelQueryFromAdminAsync().WaitAsync(loopTimeout).ConfigureAwait(false);
                return running ? PeerSignalOutcome.Signalled : PeerSignalOutcome.NotRunning;
            default:
                target.TerminateFromAnywhere();
                if (Kind == PeerSignalKind.Terminate && TimeoutMs > 0)
                {
                    return await target.WaitUntilClosedAsync(TimeoutMs).ConfigureAwait(false) ? PeerSignalOutcome.Signalled : PeerSignalOutcome.TimedOut;
                }

                return PeerSignalOutcome.Signalled;
        }
    }
}

/// <summary>Waiting for a session to end, for terminations that wait (local and peer alike).</summary>
internal static class SessionEnd
{
    /// <summary>Whether <paramref name="session"/> is closed within <paramref name="timeoutMs"/>; polls on the thread pool.</summary>
    public static async Task<bool> WaitUntilClosedAsync(this ClientSession session, int timeoutMs)
    {
        var deadline = Stopwatch.StartNew();
        while (session.State != SessionState.Closed && deadline.ElapsedMilliseconds < timeoutMs)
        {
            await Task.Delay(5).ConfigureAwait(false);
        }

        return session.State == SessionState.Closed;
    }
}
