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

    /// <summary>The canonical spelling of <paramref name="name"/> when it is tracked (GUC names ignore case); null otherwise.</summary>
    public static string? Find(string name)
    {
        foreach (string tracked in Names)
        {
            if (string.Equals(tracked, name, StringComparison.OrdinalIgnoreCase))
            {
                return tracked;
            }
        }

        return null;
    }

    /// <summary>
    /// The SET statements that make a backend's values equal the client's, as one Simple Query, or null
    /// when they already agree. Values are quoted as string literals.
    /// </summary>
    public static string? BuildSync(IReadOnlyDictionary<string, ParameterStatus> client, IReadOnlyDictionary<string, ParameterStatus> server)
    {
        System.Text.StringBuilder? sql = null;
        foreach (string name in Names)
        {
            if (!client.TryGetValue(name, out ParameterStatus? wanted))
            {
                continue;
            }

            if (server.TryGetValue(name, out ParameterStatus? current) && current.Value == wanted.Value)
            {
                continue;
            }

            sql ??= new System.Text.StringBuilder();
            sql.Append("SET ").Append(name).Append(" = '").Append(wanted.Value.Replace("'", "''", StringComparison.Ordinal)).Append("';");
        }

        return sql?.ToString();
    }
}
