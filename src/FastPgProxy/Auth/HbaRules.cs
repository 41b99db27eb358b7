using System.Diagnostics.CodeAnalysis;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace FastPgProxy.Auth;

/// <summary>How a client reached the proxy, as an hba line's first field tells them apart.</summary>
internal enum HbaConnectionType
{
    /// <summary>A Unix-domain socket (<c>local</c> lines).</summary>
    Local,

    /// <summary>TCP (<c>host</c>, and <c>hostssl</c> or <c>hostnossl</c> by whether the client uses TLS).</summary>
    Host,
}

/// <summary>The first field of an hba line: which connections it is about.</summary>
internal enum HbaLineType
{
    /// <summary><c>local</c>: Unix-domain sockets.</summary>
    Local,

    /// <summary><c>host</c>: TCP, with or without TLS.</summary>
    Host,

    /// <summary><c>hostssl</c>: TCP with TLS.</summary>
    HostSsl,

    /// <summary><c>hostnossl</c>: TCP without TLS.</summary>
    HostNoSsl,
}

/// <summary>The authentication method of an hba line.</summary>
internal enum HbaMethod
{
    /// <summary><c>trust</c>: no password.</summary>
    Trust,

    /// <summary><c>reject</c>: the connection is refused.</summary>
    Reject,

    /// <summary><c>md5</c>: an MD5 challenge (SCRAM for a user whose secret is a SCRAM verifier).</summary>
    Md5,

    /// <summary><c>scram-sha-256</c>.</summary>
    ScramSha256,

    /// <summary><c>cert</c>: the TLS client certificate's CN is the user.</summary>
    Cert,

    /// <summary><c>peer</c>: the Unix socket peer's OS user (only on <c>local</c> lines).</summary>
    Peer,
}

/// <summary>The database or user field of an hba line: keywords, and names listed or read from @files.</summary>
internal sealed class HbaNames
{
    /// <summary><c>all</c>: every name (every database but <c>replication</c>).</summary>
    public bool All { get; set; }

    /// <summary><c>sameuser</c> (database field): the database named like the user.</summary>
    public bool SameUser { get; set; }

    /// <summary><c>replication</c> (database field): replication connections, which the proxy never accepts.</summary>
    public bool Replication { get; set; }

    /// <summary>The names listed, case-sensitive.</summary>
    public HashSet<string> Names { get; } = new(StringComparer.Ordinal);

    /// <summary>Whether <paramref name="name"/> is matched; <paramref name="user"/> for <c>sameuser</c>.</summary>
    public bool Matches(string name, string user) => All || (SameUser && name == user) || Names.Contains(name);
}

/// <summary>One line of the hba file.</summary>
internal sealed class HbaRule
{
    /// <summary>Which connections the line is about.</summary>
    public required HbaLineType Type { get; init; }

    /// <summary>The database field.</summary>
    public required HbaNames Databases { get; init; }

    /// <summary>The user field.</summary>
    public required HbaNames Users { get; init; }

    /// <summary>The network address; null for <c>all</c> and for <c>local</c> lines.</summary>
    public IPAddress? Address { get; init; }

    /// <summary>The mask that goes with <see cref="Address"/>, as bytes of the same length.</summary>
    public byte[]? Mask { get; init; }

    /// <summary>The method.</summary>
    public required HbaMethod Method { get; init; }

    /// <summary>The line number in the file, for logs.</summary>
    public required int Line { get; init; }

    /// <summary>Whether the line is about a client connected as <paramref name="type"/> (TLS: <paramref name="ssl"/>) from <paramref name="address"/>.</summary>
    public bool MatchesConnection(HbaConnectionType type, bool ssl, IPAddress? address)
    {
        if (type == HbaConnectionType.Local)
        {
            return Type == HbaLineType.Local;
        }

        switch (Type)
        {
            case HbaLineType.Local:
            case HbaLineType.HostSsl when !ssl:
            case HbaLineType.HostNoSsl when ssl:
                return false;
        }

        if (Address is null)
        {
            return true;
        }

        if (address is null)
        {
            return false;
        }

        if (address.IsIPv4MappedToIPv6)
        {
            address = address.MapToIPv4();
        }

        if (address.AddressFamily != Address.AddressFamily)
        {
            return false;
        }

        // PostgreSQL's pg_range_sockaddr: the bits under the mask are equal; bits of the line's address
        // outside the mask do not count.
        Span<byte> client = stackalloc byte[16];
        Span<byte> network = stackalloc byte[16];
        address.TryWriteBytes(client, out int length);
        Address.TryWriteBytes(network, out _);
        for (int i = 0; i < length; i++)
        {
            if (((client[i] ^ network[i]) & Mask![i]) != 0)
            {
                return false;
            }
        }

        return true;
    }
}

/// <summary>
/// PgBouncer's <c>auth_hba_file</c>: PostgreSQL's pg_hba.conf format as PgBouncer 1.25 reads it. Each line is
/// <c>TYPE DATABASE USER [ADDRESS] METHOD</c>: TYPE <c>local</c>, <c>host</c>, <c>hostssl</c> or
/// <c>hostnossl</c>; DATABASE and USER comma-separated lists of names, double-quoted names (a quoted keyword is
/// a name), <c>all</c>, <c>@file</c> (names read from a file next to the hba file), and for DATABASE
/// <c>sameuser</c> and <c>replication</c>; ADDRESS (not on <c>local</c> lines) <c>all</c>, an address with a
/// CIDR mask, or an address and a mask; METHOD <c>trust</c>, <c>reject</c>, <c>md5</c>, <c>scram-sha-256</c>,
/// <c>cert</c>, or <c>peer</c> (local lines). <c>#</c> starts a comment. What PgBouncer refuses
/// (<c>+group</c>, <c>samerole</c>, <c>samegroup</c>, host names) and what this proxy does not implement
/// (<c>password</c>, <c>ldap</c>, options such as <c>map=</c>) is an error naming the file and line. The first
/// line that matches decides; none matching means the connection is refused.
/// </summary>
internal sealed class HbaRules
{
    private readonly List<HbaRule> _rules;

    private HbaRules(List<HbaRule> rules) => _rules = rules;

    /// <summary>The lines, in file order.</summary>
    public IReadOnlyList<HbaRule> Rules => _rules;

    /// <summary>The first line that matches the connection, database and user; null when none does.</summary>
    public HbaRule? Match(HbaConnectionType type, bool ssl, IPAddress? address, string database, string user)
    {
        foreach (HbaRule rule in _rules)
        {
            if (rule.MatchesConnection(type, ssl, address) && rule.Databases.Matches(database, user) && rule.Users.Matches(user, user))
            {
                return rule;
            }
        }

        return null;
    }

    /// <summary>Reads and parses the file at <paramref name="path"/>; <paramref name="error"/> is <c>path:line: reason</c>.</summary>
    public static bool TryLoad(string path, [NotNullWhen(true)] out HbaRules? rules, [NotNullWhen(false)] out string? error)
    {
        ArgumentNullException.ThrowIfNull(path);
        rules = null;
        if (!TryRead(path, out string? text, out error))
        {
            return false;
        }

        return TryParse(text, path, Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".", out rules, out error);
    }

    /// <summary>
    /// Parses hba text; <paramref name="sourceName"/> names it in errors, and <c>@file</c> names are read
    /// relative to <paramref name="directory"/>.
    /// </summary>
    public static bool TryParse(
        string text, string sourceName, string directory, [NotNullWhen(true)] out HbaRules? rules, [NotNullWhen(false)] out string? error)
    {
        ArgumentNullException.ThrowIfNull(text);
        rules = null;
        var list = new List<HbaRule>();
        string[] lines = text.Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            if (!TryTokenize(lines[i], out List<List<Token>>? fields, out string? reason)
                || !TryParseLine(fields, i + 1, directory, out HbaRule? rule, out reason))
            {
                error = $"{sourceName}:{i + 1}: {reason}";
                return false;
            }

            if (rule is not null)
            {
                list.Add(rule);
            }
        }

        error = null;
        rules = new HbaRules(list);
        return true;
    }

    /// <summary>Parses hba text; throws <see cref="FormatException"/> with the message <see cref="TryParse"/> gives.</summary>
    public static HbaRules Parse(string text, string sourceName, string directory) =>
        TryParse(text, sourceName, directory, out HbaRules? rules, out string? error) ? rules : throw new FormatException(error);

    /// <summary>One item of a field: its text, and whether it was quoted (then it is never a keyword).</summary>
    private readonly record struct Token(string Text, bool Quoted)
    {
        public bool Is(string keyword) => !Quoted && Text == keyword;
    }

    /// <summary>
    /// Splits a line into fields (separated by blanks) of comma-separated items, as PostgreSQL's
    /// tokenizer: a comma at the end of a field, or at the start of the next, continues the list.
    /// </summary>
    private static bool TryTokenize(string line, [NotNullWhen(true)] out List<List<Token>>? fields, [NotNullWhen(false)] out string? reason)
    {
        fields = new List<List<Token>>();
        reason = null;
        List<Token>? field = null;
        bool continueList = false;
        int i = 0;
        while (true)
        {
            while (i < line.Length && line[i] is ' ' or '\t' or '\r')
            {
                i++;
            }

            if (i == line.Length || line[i] == '#')
            {
                break;
            }

            if (line[i] == ',')
            {
                if (field is null)
                {
                    reason = "unexpected comma";
                    return false;
                }

                continueList = true;
                i++;
                continue;
            }

            var item = new StringBuilder();
            bool quoted = false;
            while (i < line.Length && line[i] is not (' ' or '\t' or '\r' or ','))
            {
                if (line[i] == '#' && !quoted)
                {
                    break;
                }

                if (line[i] == '"')
                {
                    int close = line.IndexOf('"', i + 1);
                    if (close < 0)
                    {
                        reason = "unterminated quoted string";
                        return false;
                    }

                    item.Append(line, i + 1, close - i - 1);
                    quoted = true;
                    i = close + 1;
                    continue;
                }

                item.Append(line[i]);
                i++;
            }

            if (!continueList || field is null)
            {
                field = new List<Token>();
                fields.Add(field);
            }

            field.Add(new Token(item.ToString(), quoted));
            continueList = false;
        }

        if (continueList)
        {
            reason = "a list ends with a comma";
            fields = null;
            return false;
        }

        return true;
    }

    private static bool TryParseLine(List<List<Token>> fields, int line, string directory, out HbaRule? rule, [NotNullWhen(false)] out string? reason)
    {
        rule = null;
        reason = null;
        if (fields.Count == 0)
        {
            return true;
        }

        HbaLineType? type = Single(fields[0]) switch
        {
            { } t when t.Is("local") => HbaLineType.Local,
            { } t when t.Is("host") => HbaLineType.Host,
            { } t when t.Is("hostssl") => HbaLineType.HostSsl,
            { } t when t.Is("hostnossl") => HbaLineType.HostNoSsl,
            _ => null,
        };
        if (type is null)
        {
            reason = $"invalid connection type \"{Join(fields[0])}\" (local, host, hostssl or hostnossl)";
            return false;
        }

        int needed = type == HbaLineType.Local ? 4 : 5;
        if (fields.Count < needed - 1)
        {
            reason = "expected TYPE DATABASE USER" + (type == HbaLineType.Local ? "" : " ADDRESS") + " METHOD";
            return false;
        }

        if (!TryParseNames(fields[1], isDatabase: true, directory, out HbaNames? databases, out reason)
            || !TryParseNames(fields[2], isDatabase: false, directory, out HbaNames? users, out reason))
        {
            return false;
        }

        int next = 3;
        IPAddress? address = null;
        byte[]? mask = null;
        if (type != HbaLineType.Local)
        {
            if (!TryParseAddress(fields, ref next, out address, out mask, out reason))
            {
                return false;
            }
        }

        if (next >= fields.Count)
        {
            reason = "end of line before the authentication method";
            return false;
        }

        if (!TryParseMethod(Single(fields[next]), type.Value, out HbaMethod method, out reason))
        {
            return false;
        }

        if (next + 1 < fields.Count)
        {
            reason = $"authentication options are not supported: \"{Join(fields[next + 1])}\"";
            return false;
        }

        rule = new HbaRule { Type = type.Value, Databases = databases, Users = users, Address = address, Mask = mask, Method = method, Line = line };
        return true;
    }

    private static bool TryParseMethod(Token? token, HbaLineType type, out HbaMethod method, [NotNullWhen(false)] out string? reason)
    {
        reason = null;
        method = default;
        string text = token is { Quoted: false } t ? t.Text : "";
        switch (text)
        {
            case "trust":
                method = HbaMethod.Trust;
                return true;
            case "reject":
                method = HbaMethod.Reject;
                return true;
            case "md5":
                method = HbaMethod.Md5;
                return true;
            case "scram-sha-256":
                method = HbaMethod.ScramSha256;
                return true;
            case "cert":
                method = HbaMethod.Cert;
                return true;
            case "peer" when type == HbaLineType.Local:
                method = HbaMethod.Peer;
                return true;
            case "peer":
                reason = "peer authentication is only supported on local sockets";
                return false;
            case "password" or "ldap" or "pam" or "ident" or "gss" or "sspi" or "radius":
                reason = $"authentication method \"{text}\" is not supported (trust, reject, md5, scram-sha-256, cert, or peer on local lines)";
                return false;
            default:
                reason = $"invalid authentication method \"{token?.Text}\"";
                return false;
        }
    }

    private static bool TryParseNames(List<Token> field, bool isDatabase, string directory, [NotNullWhen(true)] out HbaNames? names, [NotNullWhen(false)] out string? reason)
    {
        names = new HbaNames();
        reason = null;
        foreach (Token token in field)
        {
            if (token.Is("all"))
            {
                names.All = true;
            }
            else if (isDatabase && token.Is("sameuser"))
            {
                names.SameUser = true;
            }
            else if (isDatabase && token.Is("replication"))
            {
                names.Replication = true;
            }
            else if (isDatabase && (token.Is("samerole") || token.Is("samegroup")))
            {
                reason = $"{token.Text} is not supported";
                names = null;
                return false;
            }
            else if (!token.Quoted && token.Text.StartsWith('+'))
            {
                reason = $"group membership (\"{token.Text}\") is not supported";
                names = null;
                return false;
            }
            else if (!token.Quoted && token.Text.StartsWith('@'))
            {
                if (!TryReadNameFile(Path.Combine(directory, token.Text[1..]), names.Names, out reason))
                {
                    names = null;
                    return false;
                }
            }
            else
            {
                names.Names.Add(token.Text);
            }
        }

        return true;
    }

    /// <summary>Names in an @file: separated by blanks, commas or line ends; <c>#</c> starts a comment.</summary>
    private static bool TryReadNameFile(string path, HashSet<string> names, [NotNullWhen(false)] out string? reason)
    {
        if (!TryRead(path, out string? text, out reason))
        {
            return false;
        }

        foreach (string line in text.Split('\n'))
        {
            if (!TryTokenize(line, out List<List<Token>>? fields, out string? error))
            {
                reason = $"{path}: {error}";
                return false;
            }

            foreach (List<Token> field in fields)
            {
                foreach (Token token in field)
                {
                    names.Add(token.Text);
                }
            }
        }

        return true;
    }

    private static bool TryParseAddress(
        List<List<Token>> fields, ref int next, out IPAddress? address, out byte[]? mask, [NotNullWhen(false)] out string? reason)
    {
        address = null;
        mask = null;
        reason = null;
        Token? token = Single(fields[next]);
        next++;
        if (token is { } all && all.Is("all"))
        {
            return true;
        }

        string text = token?.Text ?? Join(fields[next - 1]);
        int slash = text.IndexOf('/');
        string addressText = slash < 0 ? text : text[..slash];
        if (!IPAddress.TryParse(addressText, out address) || addressText.Contains('%'))
        {
            reason = $"invalid IP address \"{addressText}\" (host names, samehost and samenet are not supported)";
            return false;
        }

        int bytes = address.AddressFamily == AddressFamily.InterNetwork ? 4 : 16;
        if (slash >= 0)
        {
            if (!int.TryParse(text.AsSpan(slash + 1), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int bits) || bits > bytes * 8)
            {
                reason = $"invalid CIDR mask in address \"{text}\"";
                return false;
            }

            mask = new byte[bytes];
            for (int i = 0; i < bytes; i++)
            {
                int left = bits - (i * 8);
                mask[i] = left >= 8 ? (byte)0xFF : left <= 0 ? (byte)0 : (byte)(0xFF << (8 - left));
            }

            return true;
        }

        if (next >= fields.Count || Single(fields[next]) is not { } maskToken
            || !IPAddress.TryParse(maskToken.Text, out IPAddress? maskAddress) || maskAddress.AddressFamily != address.AddressFamily)
        {
            reason = $"IP address \"{text}\" needs a CIDR mask or a mask of the same family after it";
            return false;
        }

        next++;
        mask = maskAddress.GetAddressBytes();
        return true;
    }

    /// <summary>The field's one item; null for a list.</summary>
    private static Token? Single(List<Token> field) => field.Count == 1 ? field[0] : null;

    private static string Join(List<Token> field) => string.Join(',', field.Select(t => t.Text));

    private static bool TryRead(string path, [NotNullWhen(true)] out string? text, [NotNullWhen(false)] out string? error)
    {
        text = null;
        try
        {
            text = File.ReadAllText(path, Encoding.UTF8);
            error = null;
            return true;
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            error = $"{path}: file not found";
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException or ArgumentException)
        {
            error = $"{path}: cannot read: {e.Message}";
        }

        return false;
    }
}
