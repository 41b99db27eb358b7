using FastPgProxy.Protocol;

namespace FastPgProxy.Server;

/// <summary>Admin console sessions: logged in like any client, then served by <see cref="Admin.AdminConsole"/> without a backend.</summary>
internal sealed partial class ClientSession
{
    /// <summary>Login finished for a console session.</summary>
    private void OnAdminAuthenticated() =>
        Fatal(SqlState.FeatureNotSupported, "the admin console is not available in this build");

    /// <summary>Serves the console's commands.</summary>
    private void PumpAdmin() => Close();
}
