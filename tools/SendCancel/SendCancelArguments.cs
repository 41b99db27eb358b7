using System.Globalization;

namespace FastPgProxy.Tools.SendCancel;

/// <summary>How the connection that carries the CancelRequest is made.</summary>
internal enum CancelTransport
{
    /// <summary>A plain TCP (or Unix-domain) connection: the CancelRequest is the first byte sent.</summary>
    Plain,

    /// <summary>SSLRequest, the server's <c>S</c>, a TLS handshake, then the CancelRequest inside TLS.</summary>
    Tls,

    /// <summary>TLS from the first byte with ALPN <c>postgresql</c> (PostgreSQL 17's <c>sslnegotiation=direct</c>).</summary>
    DirectTls,
}

/// <summary>The command line of SendCancel, checked: what to cancel, where, how, and how long to wait.</summary>
internal sealed class SendCancelArguments
{
    /// <summary>The default of <c>--timeout</c>.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(10);

    /// <summary>What is printed on standard error with every argument error.</summary>
    public const string Usage =
        """
        usage: SendCancel <pid> <key> <host> <port> [--tls | --direct-tls] [--key-hex HEX] [--timeout SECONDS]

        Sends one CancelRequest for the query running on <pid>, as pg_send_cancellation does, waits until
        the server closes the connection (it has then acted on the request) and exits 0. The server answers
        nothing either way: exit 0 does not mean the key was right or a query was running.

          <pid>              process id from BackendKeyData (PQbackendPID, NpgsqlConnection.ProcessID)
          <key>              the 4-byte secret key as a signed 32-bit integer, as libpq and Citus print it;
                             must be - when --key-hex is given
          <host>             host name or address; a path starting with / is a Unix-socket directory
                             (the socket <host>/.s.PGSQL.<port>, as libpq uses it)
          <port>             TCP port, 1 to 65535
          --tls              SSLRequest first; after the server's S, a TLS handshake, then the request
                             inside TLS (a server that answers N: error, exit 1)
          --direct-tls       TLS from the first byte with ALPN "postgresql" (sslnegotiation=direct,
                             PostgreSQL 17 and later)
                             With --tls and --direct-tls the server certificate is NOT verified: TLS hides
                             the key from eavesdroppers, not from a server impersonating the real one.
          --key-hex HEX      a protocol 3.2 key of 4 to 256 bytes in hex (64 digits for PostgreSQL 18's
                             32-byte keys) instead of <key>
          --timeout SECONDS  limit for connecting, sending and waiting for the close (default 10)

        Exit status: 0 sent and closed by the server, 1 connection refused, timed out or TLS failed,
        2 bad arguments.
        """;

    private SendCancelArguments(int processId, byte[] key, string host, int port, CancelTransport transport, TimeSpan timeout)
    {
        ProcessId = processId;
        Key = key;
        Host = host;
        Port = port;
        Transport = transport;
        Timeout = timeout;
    }

    /// <summary>The process id of BackendKeyData, sent as given.</summary>
    public int ProcessId { get; }

    /// <summary>The secret key bytes, 4 to 256 of them, sent as given.</summary>
    public byte[] Key { get; }

    /// <summary>The host name or address, or a Unix-socket directory when it starts with <c>/</c>.</summary>
    public string Host { get; }

    /// <summary>The port (also names the Unix socket).</summary>
    public int Port { get; }

    /// <summary>Plain, TLS after SSLRequest, or direct TLS.</summary>
    public CancelTransport Transport { get; }

    /// <summary>Limit for the whole exchange: connect, TLS, send and the wait for the close.</summary>
    public TimeSpan Timeout { get; }

    /// <summary>True when <see cref="Host"/> names a Unix-socket directory.</summary>
    public bool IsUnixSocket => Host.StartsWith('/');

    /// <summary>
    /// Parses <paramref name="args"/>; false with <paramref name="problem"/> saying what is wrong. Options
    /// may come before, between or after the four positional arguments; a lone <c>-</c> and negative
    /// numbers are positional.
    /// </summary>
    public static bool TryParse(IReadOnlyList<string> args, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out SendCancelArguments? result, [System.Diagnostics.CodeAnalysis.NotNullWhen(false)] out string? problem)
    {
        result = null;
        var positional = new List<string>(4);
        string? keyHex = null;
        TimeSpan timeout = DefaultTimeout;
        CancelTransport transport = CancelTransport.Plain;
        for (int i = 0; i < args.Count; i++)
        {
            string arg = args[i];
            if (!arg.StartsWith("--", StringComparison.Ordinal))
            {
                positional.Add(arg);
                continue;
            }

            switch (arg)
            {
                case "--tls":
                case "--direct-tls":
                    CancelTransport chosen = arg == "--tls" ? CancelTransport.Tls : CancelTransport.DirectTls;
                    if (transport != CancelTransport.Plain && transport != chosen)
                    {
                        problem = "--tls and --direct-tls exclude each other";
                        return false;
                    }

                    transport = chosen;
                    break;
                case "--key-hex":
                case "--timeout":
                    if (i + 1 == args.Count)
                    {
                        problem = $"{arg} needs a value";
                        return false;
                    }

                    string value = args[++i];
                    if (arg == "--key-hex")
                    {
                        keyHex = value;
                    }
                    else if (!double.TryParse(value, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double seconds)
                        || seconds <= 0 || seconds > int.MaxValue / 1000.0)
                    {
                        problem = $"--timeout must be a positive number of seconds, not '{value}'";
                        return false;
                    }
                    else
                    {
                        timeout = TimeSpan.FromSeconds(seconds);
                    }

                    break;
                default:
                    problem = $"unknown option '{arg}'";
                    return false;
            }
        }

        if (positional.Count != 4)
        {
            problem = $"expected <pid> <key> <host> <port>, got {positional.Count} argument{(positional.Count == 1 ? "" : "s")}";
            return false;
        }

        (string pidText, string keyText, string host, string portText) = (positional[0], positional[1], positional[2], positional[3]);
        if (!int.TryParse(pidText, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int pid))
        {
            problem = $"<pid> must be a 32-bit integer, not '{pidText}'";
            return false;
        }

        byte[] key;
        if (keyHex is not null)
        {
            if (keyText != "-")
            {
                problem = $"with --key-hex, <key> must be -, not '{keyText}'";
                return false;
            }

            if (!TryParseHexKey(keyHex, out key, out problem))
            {
                return false;
            }
        }
        else if (keyText == "-")
        {
            problem = "<key> is - but no --key-hex was given";
            return false;
        }
        else if (int.TryParse(keyText, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int key32))
        {
            key = CancelPacket.Key(key32);
        }
        else
        {
            problem = $"<key> must be a signed 32-bit integer (or - with --key-hex), not '{keyText}'";
            return false;
        }

        if (host.Length == 0)
        {
            problem = "<host> is empty";
            return false;
        }

        if (!int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out int port) || port is < 1 or > 65535)
        {
            problem = $"<port> must be 1 to 65535, not '{portText}'";
            return false;
        }

        if (transport != CancelTransport.Plain && host.StartsWith('/'))
        {
            problem = "--tls and --direct-tls need a TCP host, not a Unix-socket directory";
            return false;
        }

        result = new SendCancelArguments(pid, key, host, port, transport, timeout);
        problem = null;
        return true;
    }

    private static bool TryParseHexKey(string hex, out byte[] key, [System.Diagnostics.CodeAnalysis.NotNullWhen(false)] out string? problem)
    {
        key = [];
        if (hex.Length % 2 != 0 || hex.Length < 2 * CancelPacket.MinKeyLength || hex.Length > 2 * CancelPacket.MaxKeyLength)
        {
            problem = $"--key-hex must be {CancelPacket.MinKeyLength} to {CancelPacket.MaxKeyLength} bytes as an even number of hex digits, not {hex.Length} digits";
            return false;
        }

        try
        {
            key = Convert.FromHexString(hex);
        }
        catch (FormatException)
        {
            problem = $"--key-hex must be hex digits only, not '{hex}'";
            return false;
        }

        problem = null;
        return true;
    }
}
