using System.Collections.Generic;
using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.IO;
using System.Text;
using FastPgProxy.Tls;

namespace FastPgProxy.Config;

/// <summary>A config file that cannot be used; the message names file, line and key.</summary>
internal sealed class ConfigException : Exception
{
    /// <summary>Creates the exception with a ready message.</summary>
    public ConfigException(string message) : base(message)
    {
    }
}

/// <summary>
/// Reads a PgBouncer-style ini file into <see cref="ProxyOptions"/>. Sections <c>[databases]</c>, <c>[users]</c>,
/// <c>[peers]</c> and <c>[fastpgproxy]</c> (alias <c>[pgbouncer]</c>); <c>;</c> and <c>#</c> start comments. Every key is
/// checked: an unknown key or a bad value is an error that names the file, line and key.
/// </summary>
internal static class ConfigLoader
{
    // %include may nest this deep; deeper is taken for a file that includes itself.
    private const int MaxIncludeDepth = 10;

    /// <summary>Loads and validates the file at <paramref name="path"/> (and the files it includes).</summary>
    public static ProxyOptions Load(string path)
    {
        ProxyOptions options = Parse(ReadFile(path, path, 0), path);
        options.SourcePath = Path.GetFullPath(path);
        return options;
    }

    /// <summary>
    /// Parses ini text; <paramref name="source"/> names it in errors and relative <c>%include</c> paths are
    /// taken from its folder. Every error of the text is reported in one <see cref="ConfigException"/>,
    /// one line each.
    /// </summary>
    public static ProxyOptions Parse(string text, string source)
    {
        var options = new ProxyOptions();
        var errors = new List<string>();
        string? section = null;
        ParseLines(text, source, options, errors, ref section, depth: 0, review: null);
        if (errors.Count == 0)
        {
            Validate(options, source, errors);
        }

        if (errors.Count > 0)
        {
            throw new ConfigException(string.Join('\n', errors));
        }

        return options;
    }

    private static string ReadFile(string path, string source, int line)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ConfigException(line == 0 ? $"{path}: cannot read config file: {e.Message}" : $"{source}:{line}: %include: cannot read {path}: {e.Message}");
        }
    }

    /// <summary>The lines of one file, in the section it starts in; an error is noted and the next line read.</summary>
    /// <summary>
    /// Reads the file at <paramref name="path"/> (and its includes) as <see cref="Load"/> does, and says for
    /// every key what became of it: used, ignored with a warning, or refused, with the loader's own
    /// message. Errors that concern no single line (a setting that needs another) come last, without a key.
    /// </summary>
    public static List<ConfigReviewEntry> Review(string path)
    {
        var review = new List<ConfigReviewEntry>();
        var options = new ProxyOptions();
        var errors = new List<string>();
        string? section = null;
        ParseLines(ReadFile(path, path, 0), path, options, errors, ref section, depth: 0, review);
        if (errors.Count == 0)
        {
            var crossKey = new List<string>();
            Validate(options, path, crossKey);
            foreach (string error in crossKey)
            {
                review.Add(new ConfigReviewEntry(path, 0, null, "", "", ConfigKeyStatus.Refused, error));
            }
        }

        return review;
    }

    private static void ParseLines(string text, string source, ProxyOptions options, List<string> errors, ref string? section, int depth, List<ConfigReviewEntry>? review)
    {
        string[] lines = text.Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            int lineNo = i + 1;
            try
            {
                int warnings = options.Warnings.Count;
                ParseLine(StripComment(lines[i]).Trim(), source, lineNo, options, errors, ref section, depth, review);
                if (review is not null && KeyOf(lines[i]) is { } setting)
                {
                    bool ignored = options.Warnings.Count > warnings;
                    review.Add(new ConfigReviewEntry(source, lineNo, section, setting.Key, setting.Value, ignored ? ConfigKeyStatus.Ignored : ConfigKeyStatus.Used, ignored ? options.Warnings[^1] : null));
                }
            }
            catch (ConfigException e)
            {
                errors.Add(e.Message);
                if (review is not null)
                {
                    (string Key, string Value) setting = KeyOf(lines[i]) ?? ("", "");
                    review.Add(new ConfigReviewEntry(source, lineNo, section, setting.Key, setting.Value, ConfigKeyStatus.Refused, e.Message));
                }
            }
        }
    }

    /// <summary>The key and value of a <c>key = value</c> line; null for blanks, comments, sections and includes.</summary>
    private static (string Key, string Value)? KeyOf(string rawLine)
    {
        string line = StripComment(rawLine).Trim();
        int eq = line.IndexOf('=', StringComparison.Ordinal);
        return line.Length == 0 || line[0] is '[' or '%' || eq <= 0 ? null : (line[..eq].Trim(), line[(eq + 1)..].Trim());
    }

    private static void ParseLine(string line, string source, int lineNo, ProxyOptions options, List<string> errors, ref string? section, int depth, List<ConfigReviewEntry>? review)
    {
        if (line.Length == 0)
        {
            return;
        }

        if (line.StartsWith("%include", StringComparison.OrdinalIgnoreCase) && (line.Length == 8 || char.IsWhiteSpace(line[8])))
        {
            string target = Unquote(line[8..].Trim());
            if (target.Length == 0)
            {
                throw Error(source, lineNo, "%include", "needs a file name");
            }

            if (depth >= MaxIncludeDepth)
            {
                throw Error(source, lineNo, "%include", $"more than {MaxIncludeDepth} levels deep (does a file include itself?)");
            }

            string path = RelativeTo(source, target);
            ParseLines(ReadFile(path, source, lineNo), path, options, errors, ref section, depth + 1, review);
            return;
        }

        if (line[0] == '[')
        {
            if (line[^1] != ']')
            {
                throw Error(source, lineNo, null, $"malformed section header '{line}'");
            }

            section = line[1..^1].Trim().ToLowerInvariant();
            if (section is not ("databases" or "fastpgproxy" or "pgbouncer" or "users" or "peers"))
            {
                throw Error(source, lineNo, null, $"unknown section [{section}]");
            }

            return;
        }

        int eq = line.IndexOf('=', StringComparison.Ordinal);
        if (eq <= 0)
        {
            throw Error(source, lineNo, null, "expected 'key = value'");
        }

        string key = line[..eq].Trim();
        string value = line[(eq + 1)..].Trim();
        switch (section)
        {
            case null:
                throw Error(source, lineNo, key, "key outside of a section");
            case "databases":
                options.Databases.Add(ParseDatabase(key, value, source, lineNo, options.Warnings));
                break;
            case "users":
                UserOptions user = ParseUser(key, value, source, lineNo, options.Warnings);
                if (!options.Users.TryAdd(user.Name, user))
                {
                    throw Error(source, lineNo, key, "user listed twice in [users]");
                }

                break;
            case "peers":
                options.Peers.Add(ParsePeer(key, value, source, lineNo));
                break;
            default:
                ApplySetting(options, key.ToLowerInvariant(), Unquote(value), source, lineNo);
                break;
        }
    }

    /// <summary>
    /// The line without its comment: a <c>;</c> or <c>#</c> at its start, or after a blank outside quotes
    /// (so <c>pool_size = 20 ; was 10</c> is 20, and <c>password='a;b'</c> keeps its <c>;</c>).
    /// </summary>
    private static string StripComment(string line)
    {
        char quote = '\0';
        for (int i = 0; i < line.Length; i++)
        {
            char c = line[i];
            if (quote != '\0')
            {
                if (c == quote)
                {
                    quote = '\0';
                }
            }
            else if (c is '\'' or '"')
            {
                quote = c;
            }
            else if (c is ';' or '#' && (i == 0 || char.IsWhiteSpace(line[i - 1]) || line.AsSpan(0, i).IsWhiteSpace()))
            {
                return line[..i];
            }
        }

        return line;
    }

    private static void ApplySetting(ProxyOptions o, string key, string value, string source, int line)
    {
        switch (key)
        {
            case "listen_addr":
                foreach (string address in value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                {
                    if (address != "*" && address != "localhost" && !System.Net.IPAddress.TryParse(address, out _))
                    {
                        throw Error(source, line, key, $"invalid address '{address}' (a list of IP addresses, localhost or *)");
                    }
                }

                o.ListenAddress = value;
                break;
            case "listen_backlog":
                o.ListenBacklog = ParseInt(value, 1, 65535, source, line, key);
                break;
            case "unix_socket_dir":
                o.UnixSocketDir = EmptyAsNull(value);
                break;
            case "unix_socket_mode":
                o.UnixSocketMode = ParseFileMode(value, source, line, key);
                break;
            case "unix_socket_group":
                o.UnixSocketGroup = EmptyAsNull(value);
                break;
            case "listen_port":
                o.ListenPort = ParseInt(value, 0, 65535, source, line, key);
                break;
            case "peer_id":
                o.PeerId = ParseInt(value, 0, Sessions.SessionRegistry.MaxPeerId, source, line, key);
                break;
            case "so_reuseport":
                o.SoReusePort = ParseBool(value, source, line, key);
                break;
            case "auth_type":
                o.AuthType = value.ToLowerInvariant() switch
                {
                    "trust" => AuthType.Trust,
                    "md5" => AuthType.Md5,
                    "scram-sha-256" => AuthType.ScramSha256,
                    "cert" => AuthType.Cert,
                    "hba" => AuthType.Hba,
                    _ => throw Error(source, line, key, $"invalid value '{value}' (trust, md5, scram-sha-256, cert or hba)"),
                };
                break;
            case "auth_file":
                o.AuthFile = value.Length == 0 ? null : RelativeTo(source, value);
                break;
            case "auth_user":
                o.AuthUser = EmptyAsNull(value);
                break;
            case "auth_query":
                o.AuthQuery = value.Length == 0 ? throw Error(source, line, key, "must not be empty") : value;
                break;
            case "auth_dbname":
                o.AuthDbname = EmptyAsNull(value);
                break;
            case "auth_hba_file":
                o.AuthHbaFile = EmptyAsNull(value);
                break;
            case "pool_mode":
                o.PoolMode = ParsePoolMode(value, source, line, key);
                break;
            case "max_client_conn":
                o.MaxClientConnections = ParseInt(value, 1, 1_000_000, source, line, key);
                break;
            case "max_login_clients":
                o.MaxLoginClients = ParseInt(value, 0, 1_000_000, source, line, key);
                break;
            case "loop_threads":
                o.LoopThreads = ParseInt(value, 0, 256, source, line, key);
                break;
            case "socket_threads":
                o.SocketThreads = ParseInt(value, 0, 256, source, line, key);
                break;
            case "client_login_timeout":
                o.ClientLoginTimeout = ParseDuration(value, source, line, key);
                break;
            case "client_message_timeout":
                o.ClientMessageTimeout = ParseDuration(value, source, line, key);
                break;
            case "server_connect_timeout":
                o.ServerConnectTimeout = ParseDuration(value, source, line, key);
                break;
            case "cancel_timeout":
                o.CancelTimeout = ParseDuration(value, source, line, key);
                break;
            case "default_pool_size":
                o.DefaultPoolSize = ParseInt(value, 1, 100_000, source, line, key);
                break;
            case "min_pool_size":
                o.MinPoolSize = ParseInt(value, 0, 100_000, source, line, key);
                break;
            case "max_db_connections":
                o.MaxDbConnections = ParseInt(value, 0, 1_000_000, source, line, key);
                break;
            case "max_user_connections":
                o.MaxUserConnections = ParseInt(value, 0, 1_000_000, source, line, key);
                break;
            case "reserve_pool_size":
                o.ReservePoolSize = ParseInt(value, 0, 100_000, source, line, key);
                break;
            case "reserve_pool_timeout":
                o.ReservePoolTimeout = ParseDuration(value, source, line, key);
                break;
            case "server_check_query":
                // PgBouncer's spelling of an empty query; an empty value turns the check off.
                o.ServerCheckQuery = value == "<empty>" ? "" : EmptyAsNull(value);
                break;
            case "server_check_delay":
                o.ServerCheckDelay = ParseDuration(value, source, line, key);
                break;
            case "server_login_retry":
                o.ServerLoginRetry = ParseDuration(value, source, line, key);
                break;
            case "server_round_robin":
                o.ServerRoundRobin = ParseBool(value, source, line, key);
                break;
            case "server_reset_query_always":
                o.ServerResetQueryAlways = ParseBool(value, source, line, key);
                break;
            case "application_name_add_host":
                o.ApplicationNameAddHost = ParseBool(value, source, line, key);
                break;
            case "server_idle_timeout":
                o.ServerIdleTimeout = ParseDuration(value, source, line, key);
                break;
            case "server_lifetime":
                o.ServerLifetime = ParseDuration(value, source, line, key);
                break;
            case "query_wait_timeout":
                o.QueryWaitTimeout = ParseDuration(value, source, line, key);
                break;
            case "server_reset_query":
                o.ServerResetQuery = value;
                break;
            case "max_prepared_statements":
                o.MaxPreparedStatements = ParseInt(value, 0, 100_000, source, line, key);
                break;
            case "max_client_prepared_statements":
                o.MaxClientPreparedStatements = ParseInt(value, 1, 10_000_000, source, line, key);
                break;
            case "max_client_prepared_bytes":
                o.MaxClientPreparedBytes = (long)ParseInt(value, 1024, int.MaxValue, source, line, key);
                break;
            case "ignore_startup_parameters":
                AddNames(o.IgnoreStartupParameters, value);
                break;
            case "query_timeout":
                o.QueryTimeout = ParseDuration(value, source, line, key);
                break;
            case "idle_transaction_timeout":
                o.IdleTransactionTimeout = ParseDuration(value, source, line, key);
                break;
            case "client_idle_timeout":
                o.ClientIdleTimeout = ParseDuration(value, source, line, key);
                break;
            case "shutdown_wait_timeout":
                o.ShutdownWaitTimeout = ParseDuration(value, source, line, key);
                break;
            case "cancel_on_disconnect":
                o.CancelOnDisconnect = ParseBool(value, source, line, key);
                break;
            case "server_reset_timeout":
                o.ServerResetTimeout = ParseDuration(value, source, line, key);
                break;
            case "cancel_bad_key_limit":
                o.CancelBadKeyLimit = ParseInt(value, 0, 1_000_000, source, line, key);
                break;
            case "max_cancel_connections":
                o.MaxCancelConnections = ParseInt(value, 1, 100_000, source, line, key);
                break;
            case "cancel_wait_timeout":
                o.CancelWaitTimeout = ParseDuration(value, source, line, key);
                break;
            case "admin_users":
                AddNames(o.AdminUsers, value);
                break;
            case "stats_users":
                AddNames(o.StatsUsers, value);
                break;
            case "peer_users":
                AddNames(o.PeerUsers, value);
                break;
            case "client_tls_sslmode":
                o.ClientTls.Mode = ParseTlsMode(value, source, line, key);
                break;
            case "client_tls_key_file":
                o.ClientTls.KeyFile = EmptyAsNull(value);
                break;
            case "client_tls_cert_file":
                o.ClientTls.CertFile = EmptyAsNull(value);
                break;
            case "client_tls_ca_file":
                o.ClientTls.CaFile = EmptyAsNull(value);
                break;
            case "client_tls_protocols":
                o.ClientTls.Protocols = CheckTls(value, source, line, key, static (v, k) => TlsFiles.ParseProtocols(v, k));
                break;
            case "client_tls_ciphers":
                o.ClientTls.Ciphers = CheckTls(value, source, line, key, static (v, k) => TlsFiles.ParseCiphers(v, k));
                break;
            case "server_tls_sslmode":
                o.ServerTls.Mode = ParseTlsMode(value, source, line, key);
                break;
            case "server_tls_key_file":
                o.ServerTls.KeyFile = EmptyAsNull(value);
                break;
            case "server_tls_cert_file":
                o.ServerTls.CertFile = EmptyAsNull(value);
                break;
            case "server_tls_ca_file":
                o.ServerTls.CaFile = EmptyAsNull(value);
                break;
            case "server_tls_protocols":
                o.ServerTls.Protocols = CheckTls(value, source, line, key, static (v, k) => TlsFiles.ParseProtocols(v, k));
                break;
            case "server_tls_ciphers":
                o.ServerTls.Ciphers = CheckTls(value, source, line, key, static (v, k) => TlsFiles.ParseCiphers(v, k));
                break;
            case "tcp_keepalive":
                o.Keepalive.Enabled = ParseBool(value, source, line, key);
                break;
            case "tcp_keepidle":
                o.Keepalive.IdleSeconds = ParseInt(value, 0, 32767, source, line, key);
                break;
            case "tcp_keepintvl":
                o.Keepalive.IntervalSeconds = ParseInt(value, 0, 32767, source, line, key);
                break;
            case "tcp_keepcnt":
                o.Keepalive.Count = ParseInt(value, 0, 127, source, line, key);
                break;
            case "tcp_user_timeout":
                o.Keepalive.UserTimeoutMilliseconds = ParseInt(value, 0, int.MaxValue, source, line, key);
                break;
            case "logfile":
                o.LogFile = EmptyAsNull(value);
                break;
            case "pidfile":
                o.PidFile = EmptyAsNull(value);
                break;
            case "log_connections":
                o.LogConnections = ParseBool(value, source, line, key);
                break;
            case "log_disconnections":
                o.LogDisconnections = ParseBool(value, source, line, key);
                break;
            case "log_pooler_errors":
                o.LogPoolerErrors = ParseBool(value, source, line, key);
                break;
            case "verbose":
                o.Verbose = ParseInt(value, 0, 3, source, line, key);
                break;
            case "stats_period":
                o.StatsPeriod = ParseDuration(value, source, line, key);
                if (o.StatsPeriod < TimeSpan.FromSeconds(1))
                {
                    throw Error(source, line, key, $"invalid value '{value}' (at least 1 second)");
                }

                break;
            case "metrics_addr":
                if (value != "*" && !System.Net.IPAddress.TryParse(value, out _) && value != "localhost")
                {
                    throw Error(source, line, key, $"invalid address '{value}' (an IP address, localhost or *)");
                }

                o.MetricsAddress = value;
                break;
            case "metrics_port":
                o.MetricsPort = ParseInt(value, 0, 65535, source, line, key);
                break;
            default:
                if (s_pgBouncerOnly.TryGetValue(key, out string? consequence))
                {
                    if (consequence.Length > 0 && value.Length > 0)
                    {
                        throw Error(source, line, key, consequence);
                    }

                    o.Warnings.Add($"{source}:{line}: {key}: PgBouncer's setting is not implemented by FastPgProxy; ignored");
                    break;
                }

                throw Error(source, line, key, "unknown setting");
        }
    }

    // PgBouncer 1.25's settings that FastPgProxy does not implement: ignored with a warning, or, where the
    // text says what clients would lose, an error when set.
    private static readonly Dictionary<string, string> s_pgBouncerOnly = new(StringComparer.Ordinal)
    {
        ["auth_ident_file"] = "", ["auth_ldap_options"] = "", ["autodb_idle_timeout"] = "",
        ["client_tls13_ciphers"] = "", ["client_tls_dheparams"] = "", ["client_tls_ecdhcurve"] = "",
        ["conffile"] = "", ["disable_pqexec"] = "", ["dns_max_ttl"] = "", ["dns_nxdomain_ttl"] = "",
        ["dns_zone_check_period"] = "", ["job_name"] = "", ["log_stats"] = "",
        ["max_db_client_connections"] = "", ["max_packet_size"] = "", ["max_user_client_connections"] = "",
        ["pkt_buf"] = "", ["query_wait_notify"] = "", ["resolv_conf"] = "", ["sbuf_loopcnt"] = "",
        ["scram_iterations"] = "", ["server_fast_close"] = "", ["server_tls13_ciphers"] = "",
        ["service_name"] = "", ["suspend_timeout"] = "", ["syslog"] = "", ["syslog_facility"] = "",
        ["syslog_ident"] = "", ["tcp_defer_accept"] = "", ["tcp_socket_buffer"] = "",
        ["track_extra_parameters"] = "", ["transaction_timeout"] = "", ["user"] = "",
    };

    // PgBouncer 1.25's [databases] parameters that FastPgProxy does not implement: ignored with a warning.
    private static readonly HashSet<string> s_pgBouncerDatabaseOnly = new(StringComparer.Ordinal)
    {
        "application_name", "auth_dbname", "auth_query", "client_encoding", "datestyle", "load_balance_hosts",
        "max_db_client_connections", "min_pool_size", "server_lifetime", "timezone",
    };

    private static TlsMode ParseTlsMode(string value, string source, int line, string key) =>
        TlsSettings.ParseMode(value) ?? throw Error(source, line, key, $"invalid value '{value}' (disable, allow, prefer, require, verify-ca or verify-full)");

    /// <summary>
    /// Checks a protocol or cipher list as the file is read, so that a bad one names its line; the TLS
    /// contexts are built from it later (at start and at RELOAD), where the line is no longer known.
    /// </summary>
    private static string CheckTls(string value, string source, int line, string key, Action<string, string> parse)
    {
        try
        {
            parse(value, key);
        }
        catch (TlsConfigException e)
        {
            // The message starts with the key already.
            throw new ConfigException($"{source}:{line.ToString(CultureInfo.InvariantCulture)}: {e.Message}");
        }

        return value;
    }

    /// <summary>An octal file mode, as chmod takes it (<c>0777</c>, <c>770</c>).</summary>
    private static int ParseFileMode(string value, string source, int line, string key)
    {
        int mode = 0;
        foreach (char c in value)
        {
            if (c is < '0' or > '7')
            {
                throw Error(source, line, key, $"invalid file mode '{value}' (octal, for example 0777)");
            }

            mode = (mode * 8) + (c - '0');
        }

        if (value.Length == 0 || mode > Convert.ToInt32("777", 8))
        {
            throw Error(source, line, key, $"invalid file mode '{value}' (octal, for example 0777)");
        }

        return mode;
    }

    /// <summary>A file named in the config: a relative name is taken from the config file's folder, as <c>%include</c>.</summary>
    private static string RelativeTo(string source, string path) =>
        Path.IsPathRooted(path) ? path : Path.Combine(Path.GetDirectoryName(Path.GetFullPath(source)) ?? ".", path);

    private static string? EmptyAsNull(string value) => value.Length == 0 ? null : value;

    /// <summary>Adds the names of a comma-separated list (blanks ignored, spaces trimmed).</summary>
    private static void AddNames(HashSet<string> names, string value)
    {
        foreach (string name in value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            names.Add(name);
        }
    }

    private static PoolMode ParsePoolMode(string value, string source, int line, string key) => value.ToLowerInvariant() switch
    {
        "session" => PoolMode.Session,
        "transaction" => PoolMode.Transaction,
        "statement" => throw Error(source, line, key, "pool_mode 'statement' is not supported (session or transaction)"),
        _ => throw Error(source, line, key, $"invalid value '{value}' (session or transaction)"),
    };

    /// <summary>Parses a libpq-style <c>key=value key='quoted value'</c> database line.</summary>
    private static DatabaseOptions ParseDatabase(string name, string value, string source, int line, List<string> warnings)
    {
        string host = "127.0.0.1";
        int port = 5432;
        string? dbname = null, user = null, password = null, authUser = null;
        PoolMode? poolMode = null;
        int? poolSize = null, reservePoolSize = null, maxDbConnections = null;
        string? connectQuery = null;
        foreach ((string key, string item) in ReadConnPairs(value, source, line, name))
        {
            switch (key)
            {
                case "host":
                    host = item;
                    break;
                case "port":
                    port = ParseInt(item, 1, 65535, source, line, name + ": port");
                    break;
                case "dbname":
                    dbname = item;
                    break;
                case "user":
                    user = item;
                    break;
                case "password":
                    password = item;
                    break;
                case "max_db_connections":
                    maxDbConnections = ParseInt(item, 0, 1_000_000, source, line, name + ": max_db_connections");
                    break;
                case "pool_mode":
                    poolMode = ParsePoolMode(item, source, line, name + ": pool_mode");
                    break;
                case "pool_size":
                    poolSize = ParseInt(item, 1, 100_000, source, line, name + ": pool_size");
                    break;
                case "auth_user":
                    authUser = EmptyAsNull(item);
                    break;
                case "reserve_pool_size" or "reserve_pool":
                    reservePoolSize = ParseInt(item, 0, 100_000, source, line, name + ": " + key);
                    break;
                case "connect_query":
                    connectQuery = EmptyAsNull(item);
                    break;
                default:
                    if (!s_pgBouncerDatabaseOnly.Contains(key))
                    {
                        throw Error(source, line, name, $"unknown database parameter '{key}'");
                    }

                    warnings.Add($"{source}:{line}: {name}: {key}: PgBouncer's database parameter is not implemented by FastPgProxy; ignored");
                    break;
            }
        }

        return new DatabaseOptions
        {
            Name = name, Host = host, Port = port, DatabaseName = dbname, User = user, Password = password, PoolMode = poolMode, PoolSize = poolSize,
            ReservePoolSize = reservePoolSize, ConnectQuery = connectQuery, AuthUser = authUser, MaxDbConnections = maxDbConnections,
        };
    }

    /// <summary>Parses a <c>[users]</c> line: <c>name = pool_mode=M pool_size=N reserve_pool_size=N max_user_connections=N</c>.</summary>
    private static UserOptions ParseUser(string name, string value, string source, int line, List<string> warnings)
    {
        PoolMode? poolMode = null;
        int? poolSize = null, reservePoolSize = null, maxUserConnections = null;
        foreach ((string key, string item) in ReadConnPairs(value, source, line, name))
        {
            switch (key)
            {
                case "pool_mode":
                    poolMode = ParsePoolMode(item, source, line, name + ": pool_mode");
                    break;
                case "pool_size":
                    poolSize = ParseInt(item, 1, 100_000, source, line, name + ": pool_size");
                    break;
                case "reserve_pool_size":
                    reservePoolSize = ParseInt(item, 0, 100_000, source, line, name + ": reserve_pool_size");
                    break;
                case "max_user_connections":
                    maxUserConnections = ParseInt(item, 0, 1_000_000, source, line, name + ": max_user_connections");
                    break;
                case "max_user_client_connections":
                    warnings.Add($"{source}:{line}: {name}: {key}: PgBouncer's user parameter is not implemented by FastPgProxy; ignored");
                    break;
                case "query_timeout" or "idle_transaction_timeout" or "client_idle_timeout" or "transaction_timeout":
                    throw Error(source, line, name, $"{key}: PgBouncer's per-user {key} is not implemented by FastPgProxy, and this user's sessions rely on it; set the global {key} instead");
                default:
                    throw Error(source, line, name, $"unknown user parameter '{key}' (pool_mode, pool_size, reserve_pool_size, max_user_connections)");
            }
        }

        return new UserOptions { Name = name, PoolMode = poolMode, PoolSize = poolSize, ReservePoolSize = reservePoolSize, MaxUserConnections = maxUserConnections };
    }

    /// <summary>Parses a <c>[peers]</c> line: <c>ID = host=H port=P [pool_size=N]</c>.</summary>
    private static PeerOptions ParsePeer(string idText, string value, string source, int line)
    {
        int id = ParseInt(idText, 1, Sessions.SessionRegistry.MaxPeerId, source, line, "peer id");
        string host = "127.0.0.1";
        int port = 6432;
        int? poolSize = null;
        string? user = null;
        string? password = null;
        foreach ((string key, string item) in ReadConnPairs(value, source, line, idText))
        {
            switch (key)
            {
                case "host":
                    host = item;
                    break;
                case "port":
                    port = ParseInt(item, 1, 65535, source, line, idText + ": port");
                    break;
                case "pool_size":
                    poolSize = ParseInt(item, 1, 100_000, source, line, idText + ": pool_size");
                    break;
                case "user":
                    user = item;
                    break;
                case "password":
                    password = item;
                    break;
                default:
                    throw Error(source, line, idText, $"unknown peer parameter '{key}' (host, port, pool_size, user, password)");
            }
        }

        if (password is not null && user is null)
        {
            throw Error(source, line, idText, "password without user");
        }

        return new PeerOptions { Id = id, Host = host, Port = port, PoolSize = poolSize, User = user, Password = password };
    }

    /// <summary>The <c>key=value</c> pairs of a libpq-style line, keys lower-cased.</summary>
    private static List<(string Key, string Value)> ReadConnPairs(string value, string source, int line, string name)
    {
        var pairs = new List<(string, string)>();
        int pos = 0;
        while (true)
        {
            while (pos < value.Length && char.IsWhiteSpace(value[pos]))
            {
                pos++;
            }

            if (pos >= value.Length)
            {
                return pairs;
            }

            int eq = value.IndexOf('=', pos);
            if (eq < 0)
            {
                throw Error(source, line, name, $"expected key=value near '{value[pos..]}'");
            }

            string key = value[pos..eq].Trim().ToLowerInvariant();
            pos = eq + 1;
            while (pos < value.Length && value[pos] == ' ')
            {
                pos++;
            }

            pairs.Add((key, ReadConnValue(value, ref pos, source, line, name)));
        }
    }

    private static string ReadConnValue(string s, ref int pos, string source, int line, string key)
    {
        if (pos < s.Length && s[pos] == '\'')
        {
            var sb = new StringBuilder();
            pos++;
            while (true)
            {
                if (pos >= s.Length)
                {
                    throw Error(source, line, key, "unterminated quoted value");
                }

                char c = s[pos++];
                if (c == '\\' && pos < s.Length)
                {
                    sb.Append(s[pos++]);
                }
                else if (c == '\'')
                {
                    return sb.ToString();
                }
                else
                {
                    sb.Append(c);
                }
            }
        }

        int start = pos;
        while (pos < s.Length && !char.IsWhiteSpace(s[pos]))
        {
            pos++;
        }

        return s[start..pos];
    }

    private static bool ParseBool(string value, string source, int line, string key) => value.ToLowerInvariant() switch
    {
        "1" or "on" or "true" or "yes" => true,
        "0" or "off" or "false" or "no" => false,
        _ => throw Error(source, line, key, $"invalid value '{value}' (on or off)"),
    };

    private static string Unquote(string value) =>
        value.Length >= 2 && ((value[0] == '"' && value[^1] == '"') || (value[0] == '\'' && value[^1] == '\'')) ? value[1..^1] : value;

    private static int ParseInt(string value, int min, int max, string source, int line, string key)
    {
        if (!int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) || n < min || n > max)
        {
            throw Error(source, line, key, $"invalid value '{value}' (an integer from {min} to {max})");
        }

        return n;
    }

    /// <summary>Seconds as a number (fractions allowed), or a number with a unit: ms, s, min, h.</summary>
    private static TimeSpan ParseDuration(string value, string source, int line, string key)
    {
        string number = value;
        double scale = 1;
        foreach ((string unit, double factor) in new[] { ("ms", 0.001), ("min", 60.0), ("s", 1.0), ("h", 3600.0) })
        {
            if (value.EndsWith(unit, StringComparison.OrdinalIgnoreCase))
            {
                number = value[..^unit.Length].Trim();
                scale = factor;
                break;
            }
        }

        if (!double.TryParse(number, NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds) || seconds < 0 || seconds * scale > 86400 * 365)
        {
            throw Error(source, line, key, $"invalid duration '{value}' (seconds, or a number with ms, s, min or h)");
        }

        return TimeSpan.FromSeconds(seconds * scale);
    }

    private static void Validate(ProxyOptions o, string source, List<string> errors)
    {
        var peerIds = new HashSet<int>();
        foreach (PeerOptions peer in o.Peers)
        {
            if (!peerIds.Add(peer.Id))
            {
                errors.Add($"{source}: [peers] lists peer {peer.Id} twice");
            }
        }

        if (o.Peers.Count > 0 && o.PeerId == 0)
        {
            errors.Add($"{source}: [peers] needs this instance's own peer_id");
        }

        if (o.PeerId != 0 && o.MaxClientConnections > Sessions.SessionRegistry.LocalIdCapacity)
        {
            errors.Add($"{source}: max_client_conn {o.MaxClientConnections} is more than the {Sessions.SessionRegistry.LocalIdCapacity} session ids an instance with peer_id has");
        }

        if (o.AuthType == AuthType.Cert && o.ClientTls.Mode < TlsMode.VerifyCa)
        {
            errors.Add($"{source}: auth_type cert needs client_tls_sslmode verify-ca or verify-full");
        }

        if (o.AuthType == AuthType.Hba && o.AuthHbaFile is null)
        {
            errors.Add($"{source}: auth_type hba needs auth_hba_file");
        }

        if (o.AuthType is not (AuthType.Trust or AuthType.Cert or AuthType.Hba) && o.AuthFile is null && o.AuthUser is null && !o.Databases.Any(d => d.AuthUser is not null))
        {
            errors.Add($"{source}: auth_type {o.AuthType.ToString().ToLowerInvariant()} needs auth_file");
        }
    }

    [SuppressMessage("Design", "CA1863", Justification = "Start-up only.")]
    private static ConfigException Error(string source, int line, string? key, string message) =>
        new(key is null ? $"{source}:{line}: {message}" : $"{source}:{line}: {key}: {message}");
}
