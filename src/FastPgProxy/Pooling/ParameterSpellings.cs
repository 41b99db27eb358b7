namespace FastPgProxy.Pooling;

/// <summary>
/// What a pool's PostgreSQL makes of the start-up values clients spell their own way (client_encoding
/// 'utf8' is reported as 'UTF8', TimeZone 'utc' as 'UTC', DateStyle 'ISO' as 'ISO, MDY'), learnt from
/// applying them to a backend over the pool's defaults (<see cref="TrackedParameters.BuildStartupSync"/>).
/// PostgreSQL's spelling of a value applied over the same defaults is always the same, so a client whose
/// values are all known here logs in without a backend (transaction mode), told what PostgreSQL would
/// tell it. Owned by the pool's loop.
/// </summary>
internal sealed class ParameterSpellings
{
    /// <summary>The most spellings remembered; beyond that a client with a new one logs in through a backend.</summary>
    public const int Capacity = 256;

    private readonly Dictionary<(string Name, string Spelling), ParameterStatus> _known = new();

    /// <summary>How many spellings are known.</summary>
    public int Count => _known.Count;

    /// <summary>
    /// The client's start-up values as PostgreSQL reports them when it logs in with <paramref name="startup"/>
    /// over <paramref name="defaults"/>; null when one of them is not known yet.
    /// </summary>
    public List<KeyValuePair<string, ParameterStatus>>? TryResolve(IReadOnlyList<KeyValuePair<string, string>> startup, IReadOnlyDictionary<string, ParameterStatus> defaults)
    {
        var resolved = new List<KeyValuePair<string, ParameterStatus>>(startup.Count);
        foreach (KeyValuePair<string, string> p in startup)
        {
            if (defaults.TryGetValue(p.Key, out ParameterStatus? standard) && standard.Value == p.Value)
            {
                // PostgreSQL's own spelling of the value the backends already have: a SET of it changes nothing.
                resolved.Add(new(p.Key, standard));
            }
            else if (TrackedParameters.KeepsSpelling(p.Key, p.Value))
            {
                resolved.Add(new(p.Key, ParameterStatus.Create(p.Key, p.Value)));
            }
            else if (_known.TryGetValue((p.Key, p.Value), out ParameterStatus? spelt))
            {
                resolved.Add(new(p.Key, spelt));
            }
            else
            {
                return null;
            }
        }

        return resolved;
    }

    /// <summary>
    /// The client's start-up values as <paramref name="server"/> reports them once they were applied to it
    /// (<see cref="TrackedParameters.BuildStartupSync"/>), remembered for the clients after it.
    /// </summary>
    public List<KeyValuePair<string, ParameterStatus>> Learn(IReadOnlyList<KeyValuePair<string, string>> startup, IReadOnlyDictionary<string, ParameterStatus> server)
    {
        var resolved = new List<KeyValuePair<string, ParameterStatus>>(startup.Count);
        foreach (KeyValuePair<string, string> p in startup)
        {
            if (!server.TryGetValue(p.Key, out ParameterStatus? spelt))
            {
                // Not reported by this server: the client is told its own value, as before.
                resolved.Add(new(p.Key, ParameterStatus.Create(p.Key, p.Value)));
                continue;
            }

            resolved.Add(new(p.Key, spelt));
            if (!TrackedParameters.KeepsSpelling(p.Key, p.Value) && _known.Count < Capacity)
            {
                _known[(p.Key, p.Value)] = spelt;
            }
        }

        return resolved;
    }
}
