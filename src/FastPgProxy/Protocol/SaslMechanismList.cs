namespace FastPgProxy.Protocol;

/// <summary>
/// The mechanism list of AuthenticationSASL (protocol 55.7): names in order of preference, each ended by a
/// NUL, and one more NUL after the last. PostgreSQL lists SCRAM-SHA-256-PLUS before SCRAM-SHA-256 over TLS.
/// </summary>
internal static class SaslMechanismList
{
    /// <summary>
    /// True when <paramref name="name"/> is one of the names of <paramref name="list"/>. Reading stops at the
    /// list's closing NUL, at its end, or at a last name without its NUL, which does not count.
    /// </summary>
    public static bool Contains(ReadOnlySpan<byte> list, ReadOnlySpan<byte> name)
    {
        while (!list.IsEmpty && list[0] != 0)
        {
            int end = list.IndexOf((byte)0);
            if (end < 0)
            {
                return false;
            }

            if (list.Slice(0, end).SequenceEqual(name))
            {
                return true;
            }

            list = list.Slice(end + 1);
        }

        return false;
    }
}
