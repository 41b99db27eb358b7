namespace FastPgProxy.Pooling;

/// <summary>
/// The proxy-named prepared statements one backend holds, least recently used first, bounded by
/// max_prepared_statements. Loop-owned, like its backend.
/// </summary>
internal sealed class PreparedStatementCache
{
    private readonly LinkedList<string> _order = new();
    private readonly Dictionary<string, LinkedListNode<string>> _index = new(StringComparer.Ordinal);

    /// <summary>Creates an empty cache holding at most <paramref name="capacity"/> statements.</summary>
    public PreparedStatementCache(int capacity) => Capacity = capacity;

    /// <summary>Most statements kept.</summary>
    public int Capacity { get; }

    /// <summary>Statements held.</summary>
    public int Count => _index.Count;

    /// <summary>Whether the backend has <paramref name="name"/>; marks it recently used.</summary>
    public bool Touch(string name)
    {
        if (!_index.TryGetValue(name, out LinkedListNode<string>? node))
        {
            return false;
        }

        _order.Remove(node);
        _order.AddLast(node);
        return true;
    }

    /// <summary>Records a statement; returns the least recently used one to close when the cache was full.</summary>
    public string? Add(string name)
    {
        if (Touch(name))
        {
            return null;
        }

        string? evicted = null;
        if (_index.Count >= Capacity && _order.First is { } oldest)
        {
            evicted = oldest.Value;
            _order.RemoveFirst();
            _index.Remove(evicted);
        }

        _index[name] = _order.AddLast(name);
        return evicted;
    }

    /// <summary>Forgets a statement (closed).</summary>
    public void Remove(string name)
    {
        if (_index.Remove(name, out LinkedListNode<string>? node))
        {
            _order.Remove(node);
        }
    }
}

/// <summary>A client's named prepared statement: the name it has on backends, and what to send to prepare it again.</summary>
internal sealed class ClientStatement
{
    private static long s_lastId;

    /// <summary>Creates the statement with a proxy-unique backend name.</summary>
    public ClientStatement(byte[] parseTail)
    {
        ServerName = $"fpp_{Interlocked.Increment(ref s_lastId)}";
        ServerNameBytes = System.Text.Encoding.ASCII.GetBytes(ServerName);
        ParseTail = parseTail;
    }

    /// <summary>Name on every backend; unique in the process, so statements of different clients never clash.</summary>
    public string ServerName { get; }

    /// <summary>The name as ASCII bytes, for rewriting messages.</summary>
    public byte[] ServerNameBytes { get; }

    /// <summary>The Parse body after the statement name: query text, parameter count and types.</summary>
    public byte[] ParseTail { get; }
}
