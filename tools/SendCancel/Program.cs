namespace FastPgProxy.Tools.SendCancel;

/// <summary>
/// SendCancel, this project's <c>pg_send_cancellation</c>: sends one CancelRequest for a pid and key to a
/// PostgreSQL server or a proxy, in plain TCP, after SSLRequest, or in direct TLS, and waits for the close.
/// </summary>
/// <remarks>Exit status: 0 sent and closed; 1 refused, timed out or failed; 2 bad arguments (usage on stderr).</remarks>
internal static class Program
{
    private static async Task<int> Main(string[] args)
    {
        if (args is ["--help"])
        {
            Console.WriteLine(SendCancelArguments.Usage);
            return 0;
        }

        if (!SendCancelArguments.TryParse(args, out SendCancelArguments? parsed, out string? problem))
        {
            Console.Error.WriteLine($"SendCancel: {problem}");
            Console.Error.WriteLine(SendCancelArguments.Usage);
            return 2;
        }

        string? failure = await CancelSender.SendAsync(parsed);
        if (failure is not null)
        {
            Console.Error.WriteLine($"SendCancel: {failure}");
            return 1;
        }

        return 0;
    }
}
