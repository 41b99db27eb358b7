using FastPgProxy.Auth;
using FastPgProxy.Cancellation;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Pooling;
using FastPgProxy.Sessions;

namespace FastPgProxy.Admin;

/// <summary>Who may do what on the console.</summary>
internal enum AdminRole
{
    /// <summary>Neither admin_users nor stats_users: logs in, every command gets 42501.</summary>
    None,
    /// <summary>stats_users: SHOW only.</summary>
    Stats,
    /// <summary>admin_users: every command.</summary>
    Admin,
}

/// <summary>
/// The admin console: a virtual database on the proxy's own listener (<c>fastpgproxy</c>, alias
/// <c>pgbouncer</c>). The session (<see cref="AdminSession"/>) speaks the protocol; this class runs the
/// commands. Commands run on the thread pool: they read other loops' state only through snapshots taken
/// on those loops (<see cref="AdminSnapshot"/>) or published values, and change it only through
/// thread-safe entry points (a session's terminate or cancel, work posted to a pool's loop).
/// </summary>
internal sealed partial class AdminConsole
{
    /// <summary>The server_version the console reports; clients parse it, so it has PostgreSQL's shape.</summary>
    public const string ReportedServerVersion = "15.0";

    /// <summary>Creates the console of <paramref name="proxy"/>.</summary>
    public AdminConsole(ProxyServer proxy) => Proxy = proxy;

    /// <summary>The proxy it reports on and controls.</summary>
    public ProxyServer Proxy { get; }

    /// <summary>Whether a client database name means the console.</summary>
    public static bool IsConsoleDatabase(string database) => database is "fastpgproxy" or "pgbouncer";

    /// <summary>What <paramref name="user"/> may do, by the current admin_users and stats_users.</summary>
    public AdminRole RoleOf(string user) =>
        Proxy.Options.AdminUsers.Contains(user) ? AdminRole.Admin
        : Proxy.Options.StatsUsers.Contains(user) ? AdminRole.Stats
        : AdminRole.None;

    /// <summary>42501 when <paramref name="user"/> may not run <paramref name="command"/>; null when it may.</summary>
    public AdminMessage? CheckPermission(AdminCommand command, string user)
    {
        if (command.Kind == AdminCommandKind.Peer)
        {
            return Proxy.Options.PeerUsers.Contains(user)
                ? null
                : new AdminMessage(AdminSqlState.InsufficientPrivilege, "permission denied for PEER", $"User \"{user}\" is not in peer_users: only other instances of the cluster may signal through PEER.");
        }

        AdminRole role = RoleOf(user);
        if (command.Kind == AdminCommandKind.Empty || role == AdminRole.Admin || (role == AdminRole.Stats && command.IsReadOnly))
        {
            return null;
        }

        return new AdminMessage(
            AdminSqlState.InsufficientPrivilege,
            $"permission denied for {command.Name}",
            role == AdminRole.Stats
                ? $"User \"{user}\" is in stats_users, which may only run SHOW commands."
                : $"User \"{user}\" is in neither admin_users nor stats_users.");
    }

    /// <summary>
    /// Runs <paramref name="command"/> for <paramref name="caller"/>, on the thread pool. Never throws:
    /// a failure is an <see cref="AdminResult"/> with an error.
    /// </summary>
    public async Task<AdminResult> ExecuteAsync(AdminCommand command, ClientSession caller)
    {
        ArgumentNullException.ThrowIfNull(command);
        ArgumentNullException.ThrowIfNull(caller);
        if (command.Kind != AdminCommandKind.Show)
        {
            Log.Write(LogLevel.Warning, $"admin console session {caller.Id} ({caller.User}): {Describe(command)}");
        }

        return await RunAsync(command, caller, $"admin console session {caller.Id}").ConfigureAwait(false);
    }

    /// <summary>
    /// Runs <paramref name="command"/> for <paramref name="caller"/> (null for a process signal, which runs
    /// only RELOAD, PAUSE and RESUME); a failure is logged for <paramref name="who"/> and returned as an
    /// error. Never throws.
    /// </summary>
    private async Task<AdminResult> RunAsync(AdminCommand command, ClientSession? caller, string who)
    {
        try
        {
            return command.Kind switch
            {
                AdminCommandKind.Show => await ShowAsync(command.Item).ConfigureAwait(false),
                AdminCommandKind.KillConnection => await KillConnectionAsync(command.SessionId, caller!).ConfigureAwait(false),
                AdminCommandKind.KillQuery => await KillQueryAsync(command.SessionId, caller!).ConfigureAwait(false),
                AdminCommandKind.Pause => await PauseAsync(command.Database, pause: true).ConfigureAwait(false),
                AdminCommandKind.Resume => await PauseAsync(command.Database, pause: false).ConfigureAwait(false),
                AdminCommandKind.Reload => await ReloadAsync().ConfigureAwait(false),
                AdminCommandKind.Shutdown => new AdminResult { Tag = "SHUTDOWN", ShutdownAfterReply = true },
                AdminCommandKind.Peer => await SignalFromPeerAsync(command.Signal!, caller!).ConfigureAwait(false),
                _ => AdminResult.Done(""),
            };
        }
        catch (TimeoutException)
        {
            return AdminResult.Failed(Protocol.SqlState.QueryCanceled, $"an event loop did not answer within {AdminSnapshot.CollectTimeout.TotalSeconds} s");
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Log.Warning($"{who}: {Describe(command)} failed: {e}");
            return AdminResult.Failed(Protocol.SqlState.InternalError, $"{command.Name} failed: {e.Message}");
        }
    }

    /// <summary>
    /// Runs RELOAD, PAUSE or RESUME for a process signal (PgBouncer's SIGHUP, SIGUSR1, SIGUSR2), on the
    /// thread pool, as the console runs them. The outcome is logged: a RELOAD that fails keeps every
    /// setting as it was. Throws only for another command.
    /// </summary>
    public async Task RunForSignalAsync(AdminCommand command, string signal)
    {
        ArgumentNullException.ThrowIfNull(command);
        if (command.Kind is not (AdminCommandKind.Reload or AdminCommandKind.Pause or AdminCommandKind.Resume))
        {
            throw new ArgumentException($"{command.Name} is not run for a signal", nameof(command));
        }

        Log.Write(LogLevel.Warning, $"{signal}: {Describe(command)}");
        AdminResult result = await RunAsync(command, caller: null, signal).ConfigureAwait(false);

        if (result.Error is { } error)
        {
            Log.Warning($"{signal}: {command.Name} failed: {error.Text}{(error.Detail is null ? "" : " " + error.Detail)}");
            return;
        }

        foreach (AdminMessage notice in result.Notices)
        {
            Log.Write(LogLevel.Warning, $"{signal}: {notice.Text}");
        }

        Log.Write(LogLevel.Warning, $"{signal}: {command.Name} done");
    }

    private static string Describe(AdminCommand command) => command.Kind switch
    {
        AdminCommandKind.KillConnection => $"KILL PGSQL CONNECTION {command.SessionId}",
        AdminCommandKind.KillQuery => $"KILL PGSQL QUERY {command.SessionId}",
        AdminCommandKind.Peer => command.Signal!.ToCommand(),
        AdminCommandKind.Pause or AdminCommandKind.Resume when command.Database is not null => $"{command.Name} {command.Database}",
        _ => command.Name,
    };

    private async Task<AdminResult> KillConnectionAsync(int id, ClientSession caller)
    {
        if (!Proxy.Sessions.TryGet(id, out ClientSession? target))
        {
            return await KillOnPeerAsync(PeerSignalKind.KillConnection, id, caller).ConfigureAwait(false);
        }

        target.TerminateFromAnywhere();
        return AdminResult.Done("KILL");
    }

    private async Task<AdminResult> KillQueryAsync(int id, ClientSession caller)
    {
        if (!Proxy.Sessions.TryGet(id, out ClientSession? target))
        {
            return await KillOnPeerAsync(PeerSignalKind.KillQuery, id, caller).ConfigureAwait(false);
        }

        bool running = await target.CancelQueryFromAdminAsync().WaitAsync(AdminSnapshot.CollectTimeout).ConfigureAwait(false);
        return running ? AdminResult.Done("KILL") : NoQueryRunning(id);
    }

    private static AdminResult NoQueryRunning(int id)
    {
        AdminResult result = AdminResult.Done("KILL");
        result.Notices.Add(new AdminMessage(AdminSqlState.Success, $"no query running on session {id}"));
        return result;
    }

    /// <summary>
    /// KILL for a session id that names another instance of the cluster: sent to it as a PEER signal, and
    /// its outcome answered as a local session's would be. An id of no configured peer is unknown.
    /// </summary>
    private async Task<AdminResult> KillOnPeerAsync(PeerSignalKind kind, int id, ClientSession caller)
    {
        if (Proxy.Peers.OwnerOf(id) is not { } peer)
        {
            return UnknownSession(id);
        }

        var signal = new PeerSignal(kind, id, caller.User!, Admin: true, TimeoutMs: 0);
        return await PeerSignalSender.SendAsync(Proxy, peer, signal).ConfigureAwait(false) switch
        {
            PeerSignalOutcome.Signalled => AdminResult.Done("KILL"),
            PeerSignalOutcome.NotRunning => NoQueryRunning(id),
            PeerSignalOutcome.NotFound => UnknownSession(id),
            PeerSignalOutcome.Denied => AdminResult.Failed(AdminSqlState.InsufficientPrivilege, "permission denied for KILL", $"Peer {peer.Options.Id}, which owns session {id}, refused it."),
            _ => AdminResult.Failed(Protocol.SqlState.ConnectionFailure, $"peer {peer.Options.Id}, which owns session {id}, could not be reached", hint: "SHOW PEERS shows its state; the log says why."),
        };
    }

    /// <summary>PEER: another instance signals a session of this one, for a caller it vouches for (<see cref="PeerSignal.ApplyAsync"/>).</summary>
    private async Task<AdminResult> SignalFromPeerAsync(PeerSignal signal, ClientSession caller)
    {
        string name = caller.ApplicationName;
        if (name.StartsWith(PeerSignal.ApplicationNamePrefix, StringComparison.Ordinal) && int.TryParse(name.AsSpan(PeerSignal.ApplicationNamePrefix.Length), out int from))
        {
            Proxy.Peers.Find(from)?.OnSignalReceived();
        }

        PeerSignalOutcome outcome = await signal.ApplyAsync(Proxy.Sessions, AdminSnapshot.CollectTimeout).ConfigureAwait(false);
        var result = new AdminResult { Columns = [new AdminColumn(PeerSignal.OutcomeColumn, AdminType.Text)], Tag = "PEER" };
        result.Rows.Add([PeerSignal.Spell(outcome)]);
        return result;
    }

    private static AdminResult UnknownSession(int id) =>
        AdminResult.Failed(AdminSqlState.UndefinedObject, $"unknown session id: {id}", hint: "SHOW CLIENTS lists the session ids.");

    /// <summary>
    /// PAUSE or RESUME: recorded in the pool manager (so pools created later follow it), then, once every
    /// loop has finished what it was doing (a pool being created right now is then registered), told to
    /// each pool on its loop. Each pool reads the recorded state when its turn comes, so PAUSE and RESUME
    /// racing each other end in the state recorded last.
    /// </summary>
    private async Task<AdminResult> PauseAsync(string? database, bool pause)
    {
        if (database is not null && Proxy.Options.FindDatabase(database) is null)
        {
            return AdminResult.Failed(AdminSqlState.InvalidCatalogName, $"database \"{database}\" does not exist");
        }

        PoolManager pools = Proxy.Pools;
        pools.SetPaused(database, pause);
        await Task.WhenAll(Proxy.Loops.Loops.Select(loop => AdminSnapshot.RunOnLoopAsync(loop, () => true))).WaitAsync(AdminSnapshot.CollectTimeout).ConfigureAwait(false);
        var told = new List<Task<bool>>();
        foreach (ServerPool pool in pools.Pools)
        {
            if (database is null || pool.Database == database)
            {
                told.Add(AdminSnapshot.RunOnLoopAsync(pool.Loop, () =>
                {
                    pool.SetPaused(pools.IsPaused(pool.Database));
                    return true;
                }));
            }
        }

        await Task.WhenAll(told).WaitAsync(AdminSnapshot.CollectTimeout).ConfigureAwait(false);
        AdminResult result = AdminResult.Done(pause ? "PAUSE" : "RESUME");
        if (!pause && database is not null && pools.IsPaused(database))
        {
            result.Notices.Add(new AdminMessage(AdminSqlState.Success, $"database \"{database}\" stays paused: every database is paused; RESUME without a name resumes them"));
        }

        return result;
    }

    /// <summary>
    /// RELOAD: reads the config file again and copies every changeable setting into the running options;
    /// pools get their new size on their loops. Settings that only a restart applies are named in a NOTICE
    /// when they changed.
    /// </summary>
    private async Task<AdminResult> ReloadAsync()
    {
        ProxyOptions running = Proxy.Options;
        if (running.SourcePath is null)
        {
            return AdminResult.Failed(AdminSqlState.ObjectNotInPrerequisiteState, "the proxy was not started from a config file, so there is nothing to reload");
        }

        ProxyOptions fresh;
        try
        {
            fresh = await Task.Run(() => ConfigLoader.Load(running.SourcePath)).ConfigureAwait(false);
        }
        catch (ConfigException e)
        {
            // Not F0000 (config_file_error): drivers treat that class as fatal to the connection.
            return AdminResult.Failed(AdminSqlState.InvalidParameterValue, e.Message, detail: "Nothing was changed.");
        }

        foreach (string warning in fresh.Warnings)
        {
            Log.Warning(warning);
        }

        UserList? users;
        HbaRules? hba;
        try
        {
            // The auth_file, the hba file and certificates first: a file that does not load leaves every setting as it was.
            hba = await Task.Run(Proxy.LoadHba).ConfigureAwait(false);
            fresh.SourcePath = running.SourcePath;
            users = await Task.Run(() => ProxyServer.LoadUsers(fresh)).ConfigureAwait(false);
            await Task.Run(() => Proxy.ReloadTls(fresh)).ConfigureAwait(false);
            Proxy.SetUsers(users);
        }
        catch (ConfigException e)
        {
            return AdminResult.Failed(AdminSqlState.InvalidParameterValue, e.Message, detail: "Nothing was changed.");
        }

        Proxy.UseHba(hba);
        var restart = new List<string>();
        foreach (ConfigSetting setting in ConfigSetting.All)
        {
            if (setting.Apply is null)
            {
                if (setting.Get(running) != setting.Get(fresh))
                {
                    restart.Add(setting.Key);
                }

                continue;
            }

            setting.Apply(running, fresh);
        }

        if (!SameDatabases(running, fresh))
        {
            restart.Add("[databases]");
        }

        if (!SameUsers(running, fresh))
        {
            restart.Add("[users]");
        }

        Log.SetVerbosity(running.Verbose);
        try
        {
            // Reopened even when the name is the same: after a log rotation the old file is let go.
            Log.SetFile(running.LogFile);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Log.Warning($"logfile {running.LogFile}: cannot open it ({e.Message}); logging goes on where it went before");
        }

        var resized = new List<Task<bool>>();
        foreach (ServerPool pool in Proxy.Pools.Pools)
        {
            int size = running.Users.GetValueOrDefault(pool.User)?.PoolSize
                ?? fresh.Databases.FirstOrDefault(d => d.Name == pool.Options.Name)?.PoolSize ?? running.DefaultPoolSize;
            resized.Add(AdminSnapshot.RunOnLoopAsync(pool.Loop, () =>
            {
                pool.Resize(size);
                return true;
            }));
        }

        await Task.WhenAll(resized).WaitAsync(AdminSnapshot.CollectTimeout).ConfigureAwait(false);
        AdminResult result = AdminResult.Done("RELOAD");
        if (restart.Count > 0)
        {
            result.Notices.Add(new AdminMessage(AdminSqlState.Success, $"changed settings that need a restart to take effect: {string.Join(", ", restart)}"));
        }

        Log.Write(LogLevel.Warning, $"configuration reloaded from {running.SourcePath}{(restart.Count > 0 ? $"; needing a restart: {string.Join(", ", restart)}" : "")}");
        return result;
    }

    /// <summary>Whether two [users] sections are the same (a pool reads its entry when it is created).</summary>
    private static bool SameUsers(ProxyOptions a, ProxyOptions b) =>
        a.Users.Count == b.Users.Count
        && a.Users.Values.All(u => b.Users.TryGetValue(u.Name, out UserOptions? v)
            && u.PoolMode == v.PoolMode && u.PoolSize == v.PoolSize && u.ReservePoolSize == v.ReservePoolSize && u.MaxUserConnections == v.MaxUserConnections);

    /// <summary>Whether two [databases] sections route the same way (pool_size aside, which RELOAD applies).</summary>
    private static bool SameDatabases(ProxyOptions a, ProxyOptions b) =>
        a.Databases.Count == b.Databases.Count
        && a.Databases.Zip(b.Databases).All(p =>
            p.First.Name == p.Second.Name && p.First.Host == p.Second.Host && p.First.Port == p.Second.Port
            && p.First.DatabaseName == p.Second.DatabaseName && p.First.User == p.Second.User
            && p.First.Password == p.Second.Password && p.First.PoolMode == p.Second.PoolMode
            && p.First.ReservePoolSize == p.Second.ReservePoolSize && p.First.ConnectQuery == p.Second.ConnectQuery);
}
