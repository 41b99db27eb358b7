using System.Globalization;

namespace FastPgProxy.Admin;

/// <summary>What a console command does.</summary>
internal enum AdminCommandKind
{
    /// <summary>An empty query (only blanks and <c>;</c>): EmptyQueryResponse.</summary>
    Empty,
    /// <summary><c>SHOW item</c>.</summary>
    Show,
    /// <summary><c>KILL PGSQL CONNECTION id</c> or <c>KILL_CLIENT id</c>.</summary>
    KillConnection,
    /// <summary><c>KILL PGSQL QUERY id</c>.</summary>
    KillQuery,
    /// <summary><c>PAUSE [db]</c>.</summary>
    Pause,
    /// <summary><c>RESUME [db]</c>.</summary>
    Resume,
    /// <summary><c>RELOAD</c>.</summary>
    Reload,
    /// <summary><c>SHUTDOWN</c>.</summary>
    Shutdown,
    /// <summary><c>PEER ...</c>: another instance signals a session of this one (<see cref="Cancellation.PeerSignal"/>); peer_users only.</summary>
    Peer,
}

/// <summary>What <c>SHOW</c> lists.</summary>
internal enum ShowItem
{
    /// <summary>Not a SHOW.</summary>
    None,
    /// <summary>Client sessions.</summary>
    Clients,
    /// <summary>Backend connections.</summary>
    Servers,
    /// <summary>Pools with client and backend counts.</summary>
    Pools,
    /// <summary>Traffic totals and stats_period averages per database.</summary>
    Stats,
    /// <summary>Traffic totals per database.</summary>
    StatsTotals,
    /// <summary>stats_period averages per database.</summary>
    StatsAverages,
    /// <summary>CancelRequest outcome counters.</summary>
    Cancels,
    /// <summary>The other instances of the cluster ([peers]).</summary>
    Peers,
    /// <summary>Settings.</summary>
    Config,
    /// <summary>The [databases] section.</summary>
    Databases,
    /// <summary>Counts of the proxy's lists.</summary>
    Lists,
    /// <summary>Managed memory and pooled buffers.</summary>
    Memory,
    /// <summary>The proxy's version.</summary>
    Version,
    /// <summary>The commands, as a NOTICE.</summary>
    Help,
}

/// <summary>One parsed console command.</summary>
internal sealed record AdminCommand(AdminCommandKind Kind, ShowItem Item = ShowItem.None, int SessionId = 0, string? Database = null, Cancellation.PeerSignal? Signal = null)
{
    /// <summary>Every command, for the HINT of a syntax error and for SHOW HELP.</summary>
    public const string CommandList =
        "SHOW CLIENTS|SERVERS|POOLS|STATS|STATS_TOTALS|STATS_AVERAGES|CANCELS|PEERS|CONFIG|DATABASES|LISTS|MEMORY|VERSION|HELP; "
        + "KILL PGSQL CONNECTION <id>; KILL_CLIENT <id>; KILL PGSQL QUERY <id>; PAUSE [db]; RESUME [db]; RELOAD; SHUTDOWN";

    /// <summary>Whether users in stats_users may run it (SHOW only); everything else needs admin_users.</summary>
    public bool IsReadOnly => Kind is AdminCommandKind.Show or AdminCommandKind.Empty;

    /// <summary>The command's name in messages.</summary>
    public string Name => Kind switch
    {
        AdminCommandKind.Show => "SHOW",
        AdminCommandKind.KillConnection or AdminCommandKind.KillQuery => "KILL",
        AdminCommandKind.Pause => "PAUSE",
        AdminCommandKind.Resume => "RESUME",
        AdminCommandKind.Reload => "RELOAD",
        AdminCommandKind.Shutdown => "SHUTDOWN",
        AdminCommandKind.Peer => "PEER",
        _ => "",
    };

    /// <summary>
    /// Parses one command: keywords in any letter case, separated by blanks, an optional trailing <c>;</c>.
    /// A database name may be double-quoted. Returns null and sets <paramref name="error"/> (42601 with
    /// the command list as HINT) for anything else.
    /// </summary>
    public static AdminCommand? TryParse(string text, out AdminMessage? error)
    {
        error = null;
        string body = text.Trim();
        while (body.EndsWith(';'))
        {
            body = body[..^1].TrimEnd();
        }

        if (body.Length == 0)
        {
            return new AdminCommand(AdminCommandKind.Empty);
        }

        if (!TryTokenize(body, out List<string>? tokens))
        {
            error = SyntaxError(body.Contains(';', StringComparison.Ordinal)
                ? "only one command per query is supported by the admin console"
                : $"syntax error in admin console command \"{body}\"");
            return null;
        }

        string verb = tokens[0].ToUpperInvariant();
        switch (verb)
        {
            case "SHOW" when tokens.Count == 2:
                ShowItem item = tokens[1].ToUpperInvariant() switch
                {
                    "CLIENTS" => ShowItem.Clients,
                    "SERVERS" => ShowItem.Servers,
                    "POOLS" => ShowItem.Pools,
                    "STATS" => ShowItem.Stats,
                    "STATS_TOTALS" => ShowItem.StatsTotals,
                    "STATS_AVERAGES" => ShowItem.StatsAverages,
                    "CANCELS" => ShowItem.Cancels,
                    "PEERS" => ShowItem.Peers,
                    "CONFIG" => ShowItem.Config,
                    "DATABASES" => ShowItem.Databases,
                    "LISTS" => ShowItem.Lists,
                    "MEMORY" => ShowItem.Memory,
                    "VERSION" => ShowItem.Version,
                    "HELP" => ShowItem.Help,
                    _ => ShowItem.None,
                };
                if (item == ShowItem.None)
                {
                    error = SyntaxError($"unrecognized SHOW item \"{tokens[1]}\"");
                    return null;
                }

                return new AdminCommand(AdminCommandKind.Show, item);
            case "KILL_CLIENT" when tokens.Count == 2:
                return ParseSessionCommand(AdminCommandKind.KillConnection, tokens[1], out error);
            case "KILL" when tokens.Count == 4 && tokens[1].Equals("PGSQL", StringComparison.OrdinalIgnoreCase):
                if (tokens[2].Equals("CONNECTION", StringComparison.OrdinalIgnoreCase))
                {
                    return ParseSessionCommand(AdminCommandKind.KillConnection, tokens[3], out error);
                }

                if (tokens[2].Equals("QUERY", StringComparison.OrdinalIgnoreCase))
                {
                    return ParseSessionCommand(AdminCommandKind.KillQuery, tokens[3], out error);
                }

                break;
            case "PAUSE" when tokens.Count <= 2:
                return new AdminCommand(AdminCommandKind.Pause, Database: tokens.Count == 2 ? tokens[1] : null);
            case "RESUME" when tokens.Count <= 2:
                return new AdminCommand(AdminCommandKind.Resume, Database: tokens.Count == 2 ? tokens[1] : null);
            case "RELOAD" when tokens.Count == 1:
                return new AdminCommand(AdminCommandKind.Reload);
            case "SHUTDOWN" when tokens.Count == 1:
                return new AdminCommand(AdminCommandKind.Shutdown);
            case "PEER":
                if (Cancellation.PeerSignal.TryParse(tokens.GetRange(1, tokens.Count - 1)) is { } signal)
                {
                    return new AdminCommand(AdminCommandKind.Peer, SessionId: signal.SessionId, Signal: signal);
                }

                break;
        }

        error = SyntaxError($"unrecognized admin console command \"{body}\"");
        return null;
    }

    private static AdminCommand? ParseSessionCommand(AdminCommandKind kind, string token, out AdminMessage? error)
    {
        if (int.TryParse(token, NumberStyles.None, CultureInfo.InvariantCulture, out int id) && id > 0)
        {
            error = null;
            return new AdminCommand(kind, SessionId: id);
        }

        error = SyntaxError($"invalid session id \"{token}\": expected the positive integer that SHOW CLIENTS lists as id");
        return null;
    }

    private static AdminMessage SyntaxError(string message) =>
        new(AdminSqlState.SyntaxError, message, Hint: "Commands: " + CommandList);

    /// <summary>Splits on blanks; a double-quoted token keeps its blanks (<c>""</c> inside is a quote). False at a stray quote or <c>;</c>.</summary>
    private static bool TryTokenize(string text, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out List<string>? tokens)
    {
        tokens = new List<string>();
        int pos = 0;
        while (pos < text.Length)
        {
            char c = text[pos];
            if (char.IsWhiteSpace(c))
            {
                pos++;
                continue;
            }

            if (c == ';')
            {
                return false;
            }

            if (c == '"')
            {
                var quoted = new System.Text.StringBuilder();
                pos++;
                while (true)
                {
                    if (pos >= text.Length)
                    {
                        return false;
                    }

                    if (text[pos] == '"')
                    {
                        if (pos + 1 < text.Length && text[pos + 1] == '"')
                        {
                            quoted.Append('"');
                            pos += 2;
                            continue;
                        }

                        pos++;
                        break;
                    }

                    quoted.Append(text[pos++]);
                }

                tokens.Add(quoted.ToString());
                continue;
            }

            int start = pos;
            while (pos < text.Length && !char.IsWhiteSpace(text[pos]) && text[pos] is not (';' or '"'))
            {
                pos++;
            }

            tokens.Add(text[start..pos]);
        }

        return tokens.Count > 0;
    }
}
