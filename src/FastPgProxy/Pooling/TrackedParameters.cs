namespace FastPgProxy.Pooling;

/// <summary>
/// The session parameters the proxy keeps in step when a client moves between backends: the ones
/// PostgreSQL reports with ParameterStatus and a client may set at start-up (PgBouncer tracks the same).
/// </summary>
internal static class TrackedParameters
{
    /// <summary>The names, spelt as PostgreSQL reports them.</summary>
    public static readonly string[] Names =
    [
        "client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings", "application_name", "IntervalStyle",
    ];

    /// <summary>The index of application_name in <see cref="Names"/> (and in the slots of <see cref="NewSlots"/>).</summary>
    public const int ApplicationNameSlot = 4;

    /// <summary>The canonical spelling of <paramref name="name"/> when it is tracked (GUC names ignore case); null otherwise.</summary>
    public static string? Find(string name) => IndexOf(name) is int i and >= 0 ? Names[i] : null;

    /// <summary>The index of <paramref name="name"/> in <see cref="Names"/> (GUC names ignore case); -1 when it is not tracked.</summary>
    private static int IndexOf(string name)
    {
        for (int i = 0; i < Names.Length; i++)
        {
            if (string.Equals(Names[i], name, StringComparison.OrdinalIgnoreCase))
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>
    /// Whether PostgreSQL reports <paramref name="value"/> of <paramref name="name"/> exactly as spelt, known
    /// without asking it: an application_name of printable ASCII (PostgreSQL only replaces other bytes).
    /// Other parameters' spellings are learnt from the server (<see cref="ParameterSpellings"/>).
    /// </summary>
    public static bool KeepsSpelling(string name, string value)
    {
        if (name != "application_name" || value.Length >= 64)
        {
            return false;
        }

        foreach (char c in value)
        {
            if (c < ' ' || c > '~')
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// The statements that apply a client's start-up values to a backend as PostgreSQL applies them at
    /// login, over the pool's defaults, as one Simple Query; null when the backend already has them as
    /// spelt. A value is applied over the default because the outcome may depend on the value before:
    /// DateStyle 'ISO' keeps the field order of the one it replaces. So a parameter whose value differs
    /// from <paramref name="defaults"/> is RESET first (the session default is the login value, the same on
    /// every backend of a pool). Afterwards the backend reports the client's values as PostgreSQL spells them.
    /// </summary>
    public static string? BuildStartupSync(IReadOnlyList<KeyValuePair<string, string>> startup, IReadOnlyDictionary<string, ParameterStatus> server, IReadOnlyDictionary<string, ParameterStatus>? defaults)
    {
        System.Text.StringBuilder? sql = null;
        foreach (KeyValuePair<string, string> p in startup)
        {
            server.TryGetValue(p.Key, out ParameterStatus? current);
            if (current?.Value == p.Value)
            {
                continue;
            }

            sql ??= new System.Text.StringBuilder();
            if (current is not null && defaults is not null && defaults.TryGetValue(p.Key, out ParameterStatus? standard) && current.Value != standard.Value)
            {
                sql.Append("RESET ").Append(p.Key).Append(';');
            }

            AppendSet(sql, p.Key, p.Value);
        }

        return sql?.ToString();
    }

    /// <summary>
    /// The SET statements that make a backend's values equal the client's, as one Simple Query, or null
    /// when they already agree. Values are quoted as string literals. Both sides are spelt as PostgreSQL
    /// reports them (the client's start-up values were replaced by PostgreSQL's spelling at login, and
    /// later ones come from ParameterStatus), so equal strings are equal settings: PostgreSQL sends no
    /// ParameterStatus for a SET that changes nothing, and a backend would never be seen to agree with a
    /// client's own spelling.
    /// </summary>
    public static string? BuildSync(ParameterStatus?[] client, ParameterStatus?[] server)
    {
        System.Text.StringBuilder? sql = null;
        for (int i = 0; i < Names.Length; i++)
        {
            ParameterStatus? wanted = client[i];
            if (wanted is null)
            {
                continue;
            }

            ParameterStatus? current = server[i];
            if (current is not null && (ReferenceEquals(current, wanted) || current.Value == wanted.Value))
            {
                continue;
            }

            AppendSet(sql ??= new System.Text.StringBuilder(), Names[i], wanted.Value);
        }

        return sql?.ToString();
    }

    /// <summary>
    /// The tracked values of a backend or a client, by their index in <see cref="Names"/>, beside the
    /// dictionary of every parameter: what <see cref="BuildSync"/> compares before each transaction,
    /// without hashing a name.
    /// </summary>
    public static ParameterStatus?[] NewSlots() => new ParameterStatus?[Names.Length];

    /// <summary>Records <paramref name="status"/> of <paramref name="name"/> in <paramref name="slots"/> when the parameter is tracked.</summary>
    public static void Record(ParameterStatus?[] slots, string name, ParameterStatus status)
    {
        if (IndexOf(name) is int i and >= 0)
        {
            slots[i] = status;
        }
    }

    private static void AppendSet(System.Text.StringBuilder sql, string name, string value) =>
        sql.Append("SET ").Append(name).Append(" = '").Append(value.Replace("'", "''", StringComparison.Ordinal)).Append("';");
}
