using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using FastPgProxy.Cancellation;
using FastPgProxy.Config;
using FastPgProxy.Hosting;
using FastPgProxy.Pooling;
using FastPgProxy.Protocol;

namespace FastPgProxy.Auth;

/// <summary>How an auth_query lookup ended.</summary>
internal enum AuthLookupStatus
{
    /// <summary>One row: the user exists; <see cref="AuthLookupResult.Secret"/> is its secret (an empty one when the query gave NULL).</summary>
    Found,

    /// <summary>No row: the user does not exist (or may not log in).</summary>
    NotFound,

    /// <summary>The lookup could not tell: no connection, a refused login, a query error, or a result of the wrong shape (logged).</summary>
    Failed,
}

/// <summary>The outcome of one auth_query lookup.</summary>
internal sealed class AuthLookupResult
{
    /// <summary>A lookup that could not tell (the reason is logged where it was found).</summary>
    public static readonly AuthLookupResult Failure = new(AuthLookupStatus.Failed, null);

    /// <summary>A lookup that found no row.</summary>
    public static readonly AuthLookupResult NotFound = new(AuthLookupStatus.NotFound, null);

    /// <summary>A result with <paramref name="status"/> and, when found, <paramref name="secret"/>.</summary>
    public AuthLookupResult(AuthLookupStatus status, UserSecret? secret)
    {
        Status = status;
        Secret = secret;
    }

    /// <summary>How the lookup ended.</summary>
    public AuthLookupStatus Status { get; }

    /// <summary>The user's secret when <see cref="Status"/> is <see cref="AuthLookupStatus.Found"/>.</summary>
    public UserSecret? Secret { get; }
}

/// <summary>
/// Where and as whom a lookup runs: the [databases] entry of auth_dbname (or of the client's database), the
/// database name on the server, auth_user's credentials, and the query.
/// </summary>
internal sealed record AuthLookupTarget(DatabaseOptions Database, string DatabaseName, ServerCredentials Credentials, string Query);

/// <summary>
/// PgBouncer's auth_query: the secret of a user missing from auth_file, read from PostgreSQL by running
/// auth_query with the user name as <c>$1</c>, logged in as auth_user in auth_dbname. A task on the thread
/// pool, as a forwarded cancel is, on a connection made as a backend's is (the database entry's address,
/// <c>server_tls_sslmode</c>, auth_user's auth_file secret) and kept for the next lookup in
/// <see cref="AuthLookupPool"/>; no loop waits for it. The StartupMessage
/// names only the user and the database, never a parameter of the client's (CVE-2025-12819: a client's
/// <c>search_path</c> could otherwise pick the functions and operators auth_query runs), and the user name
/// travels as a Bind parameter of the extended protocol, never inside the SQL text. Bounded by
/// <c>server_connect_timeout</c> plus <c>query_wait_timeout</c>.
/// </summary>
internal static class AuthLookup
{
    // A secret is short; a reply longer than this is not auth_query's.
    private const int MaxMessageLength = 64 * 1024;

    // How errors name the other side.
    private const string Server = "the server";

    // auth_query's result: the user name, then its secret (PgBouncer's shape).
    private const int ResultColumns = 2;

    /// <summary>
    /// The lookup target for a client of <paramref name="database"/> (named <paramref name="databaseName"/>
    /// by the client) when <paramref name="authUser"/> looks users up, or null with <paramref name="error"/>
    /// when auth_dbname names no [databases] entry.
    /// </summary>
    public static AuthLookupTarget? Resolve(ProxyServer proxy, DatabaseOptions database, string databaseName, string authUser, out string? error)
    {
        error = null;
        ProxyOptions options = proxy.Options;
        if (options.AuthDbname is { } authDbname)
        {
            if (Admin.AdminConsole.IsConsoleDatabase(authDbname) || options.FindDatabase(authDbname) is not { } entry)
            {
                error = $"authentication database \"{authDbname}\" is not configured";
                return null;
            }

            database = entry;
            databaseName = authDbname;
        }

        ServerCredentials credentials = new() { User = authUser };
        if (proxy.Users is { } users && users.TryGet(authUser, out UserSecret? secret))
        {
            credentials = new ServerCredentials
            {
                User = authUser,
                Password = secret.Password,
                Md5Hash = secret.Kind == SecretKind.Md5 ? secret.Raw : null,
            };
        }

        return new AuthLookupTarget(database, database.DatabaseName ?? databaseName, credentials, options.AuthQuery);
    }

    /// <summary>
    /// Runs the lookup of <paramref name="user"/> against <paramref name="target"/>; <paramref name="sessionId"/>
    /// names the client session in the log. Never throws; a failure is logged with its reason (and SQLSTATE
    /// when PostgreSQL gave one) and returned as <see cref="AuthLookupResult.Failure"/>.
    /// </summary>
    public static async Task<AuthLookupResult> RunAsync(ProxyServer proxy, AuthLookupTarget target, string user, int sessionId)
    {
        ProxyOptions options = proxy.Options;
        TimeSpan wait = options.QueryWaitTimeout > TimeSpan.Zero ? options.QueryWaitTimeout : options.ClientLoginTimeout;
        using CancellationTokenSource cts = CancelForwarder.Deadline(options.ServerConnectTimeout + wait);
        string where = $"session {sessionId}: auth_query for user \"{user}\" (as \"{target.Credentials.User}\" in database \"{target.DatabaseName}\")";
        AuthLookupPool pool = proxy.AuthConnections;
        string key = AuthLookupPool.KeyOf(target);
        AuthConnection? connection = pool.TryTake(key, options.ServerIdleTimeout);
        bool reused = connection is not null;
        try
        {
            while (true)
            {
                connection ??= await OpenAsync(proxy, target, cts.Token).ConfigureAwait(false);
                try
                {
                    await connection.Stream.WriteAsync(WriteQuery(target.Query, user), cts.Token).ConfigureAwait(false);
                    AuthLookupResult result = await ReadResultAsync(connection.Stream, where, cts.Token).ConfigureAwait(false);

                    // At ReadyForQuery, whatever the answer was: the next lookup may use it.
                    pool.Return(key, connection);
                    connection = null;
                    return result;
                }
                catch (Exception e) when (reused && e is SocketException or ObjectDisposedException or IOException)
                {
                    // A kept connection PostgreSQL closed meanwhile (server_lifetime, a restart): once more on a new one.
                    connection?.Dispose();
                    connection = null;
                    reused = false;
                }
            }
        }
        catch (OperationCanceledException)
        {
            Log.Warning($"{where} failed: no answer within server_connect_timeout + query_wait_timeout");
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException or System.Security.Authentication.AuthenticationException or LoginRefusedException)
        {
            string sqlState = e is LoginRefusedException { SqlState: { } code } ? $" (SQLSTATE {code})" : "";
            Log.Warning($"{where} failed: {e.Message}{sqlState}");
        }
        finally
        {
            connection?.Dispose();
        }

        return AuthLookupResult.Failure;
    }

    /// <summary>
    /// Connects to the target's server as a backend connection is made (address, server_tls_sslmode) and
    /// logs in as auth_user with only <c>user</c> and <c>database</c> in the StartupMessage.
    /// </summary>
    private static async Task<AuthConnection> OpenAsync(ProxyServer proxy, AuthLookupTarget target, CancellationToken cancellation)
    {
        System.Net.EndPoint endPoint = ServerConnection.ResolveEndPoint(target.Database);
        Socket socket = endPoint is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        Stream? stream = null;
        try
        {
            await socket.ConnectAsync(endPoint, cancellation).ConfigureAwait(false);
            Tls.ServerTls? tls = endPoint is not UnixDomainSocketEndPoint && proxy.ServerTls is { AsksForTls: true } serverTls ? serverTls : null;
            stream = await CancelForwarder.OpenAsync(socket, tls, target.Database.Host, cancellation).ConfigureAwait(false);
            byte[]? binding = stream is System.Net.Security.SslStream { RemoteCertificate: { } certificate }
                && ChannelBinding.TryComputeTlsServerEndPoint(certificate, out byte[]? data) ? data : null;

            // Only the user and the database: nothing the client sent reaches this connection.
            KeyValuePair<string, string>[] startup = [new("user", target.Credentials.User), new("database", target.DatabaseName)];
            await StreamLogin.LogInAsync(stream, new PasswordLogin(target.Credentials, binding), startup, Server, MaxMessageLength, cancellation).ConfigureAwait(false);
            proxy.AuthConnections.OnOpened();
            return new AuthConnection(socket, stream);
        }
        catch
        {
            if (stream is not null)
            {
                await stream.DisposeAsync().ConfigureAwait(false);
            }

            socket.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Parse, Bind with the user name as the one text parameter, Describe of the portal (so a result of the
    /// wrong shape is seen even without rows), Execute and Sync (55.2.3).
    /// </summary>
    private static byte[] WriteQuery(string query, string user)
    {
        byte[] userBytes = Encoding.UTF8.GetBytes(user);
        byte[] output = new byte[Encoding.UTF8.GetMaxByteCount(query.Length) + userBytes.Length + 128];
        var writer = new PgWriter(output);
        writer.BeginMessage((byte)FrontendMessage.Parse);
        writer.WriteCString(""u8); // the unnamed statement
        writer.WriteCString(query);
        writer.WriteInt16(0); // no parameter types: PostgreSQL infers $1's
        writer.EndMessage();

        writer.BeginMessage((byte)FrontendMessage.Bind);
        writer.WriteCString(""u8); // the unnamed portal
        writer.WriteCString(""u8); // of the unnamed statement
        writer.WriteInt16(0); // every parameter in text format
        writer.WriteInt16(1); // one parameter value:
        writer.WriteInt32(userBytes.Length);
        writer.WriteBytes(userBytes);
        writer.WriteInt16(0); // every result column in text format
        writer.EndMessage();

        writer.BeginMessage((byte)FrontendMessage.Describe);
        writer.WriteByte((byte)'P');
        writer.WriteCString(""u8);
        writer.EndMessage();

        writer.BeginMessage((byte)FrontendMessage.Execute);
        writer.WriteCString(""u8);
        writer.WriteInt32(0); // no row limit: a second row must be seen to be refused
        writer.EndMessage();

        writer.BeginMessage((byte)FrontendMessage.Sync);
        writer.EndMessage();
        return output.AsSpan(0, writer.Position).ToArray();
    }

    /// <summary>Reads the answer up to ReadyForQuery and judges it: one row of two columns, a non-null user name.</summary>
    private static async Task<AuthLookupResult> ReadResultAsync(Stream stream, string where, CancellationToken cancellation)
    {
        int rows = 0;
        string? problem = null;
        UserSecret? secret = null;
        while (true)
        {
            (byte type, byte[] body) = await StreamLogin.ReadMessageAsync(stream, Server, MaxMessageLength, cancellation).ConfigureAwait(false);
            switch ((BackendMessage)type)
            {
                case BackendMessage.RowDescription:
                    short columns = body.Length >= sizeof(short) ? BinaryPrimitives.ReadInt16BigEndian(body) : (short)-1;
                    if (columns != ResultColumns)
                    {
                        problem ??= $"auth_query returned {columns} columns; it must return 2 (user name, secret)";
                    }

                    break;
                case BackendMessage.DataRow:
                    rows++;
                    if (problem is null && rows == 1 && !TryReadRow(body, out secret, out problem))
                    {
                        problem ??= "auth_query returned a malformed row";
                    }

                    break;
                case BackendMessage.ErrorResponse:
                    problem ??= $"auth_query failed: ERROR {ErrorFields.SqlStateOfFields(body) ?? "(no SQLSTATE)"}: {ErrorFields.MessageOf(body)}";
                    break;
                case BackendMessage.ReadyForQuery:
                    if (problem is null && rows > 1)
                    {
                        problem = $"auth_query returned {rows} rows; it must return at most one";
                    }

                    if (problem is not null)
                    {
                        Log.Warning($"{where}: {problem}");
                        return AuthLookupResult.Failure;
                    }

                    return rows == 0 ? AuthLookupResult.NotFound : new AuthLookupResult(AuthLookupStatus.Found, secret);
            }
        }
    }

    /// <summary>
    /// A DataRow of (user name, secret) in text format. A NULL secret (no password, or one that expired) is
    /// an empty one, so that every password method fails, as PgBouncer's impossible secret makes them.
    /// </summary>
    private static bool TryReadRow(ReadOnlySpan<byte> body, out UserSecret? secret, out string? problem)
    {
        secret = null;
        problem = null;
        if (body.Length < sizeof(short) || BinaryPrimitives.ReadInt16BigEndian(body) != ResultColumns)
        {
            problem = "auth_query must return 2 columns (user name, secret)";
            return false;
        }

        body = body.Slice(sizeof(short));
        if (!TryReadColumn(ref body, out string? name) || !TryReadColumn(ref body, out string? text))
        {
            return false;
        }

        if (name is null)
        {
            problem = "auth_query returned a NULL user name";
            return false;
        }

        if (!UserSecret.TryCreate(text ?? "", out secret))
        {
            problem = "auth_query returned a malformed SCRAM-SHA-256 secret";
            return false;
        }

        return true;
    }

    /// <summary>One column value: its length (-1 for NULL) and bytes.</summary>
    private static bool TryReadColumn(ref ReadOnlySpan<byte> body, out string? value)
    {
        value = null;
        if (body.Length < sizeof(int))
        {
            return false;
        }

        int length = BinaryPrimitives.ReadInt32BigEndian(body);
        body = body.Slice(sizeof(int));
        if (length < 0)
        {
            return length == -1;
        }

        if (length > body.Length)
        {
            return false;
        }

        value = Encoding.UTF8.GetString(body.Slice(0, length));
        body = body.Slice(length);
        return true;
    }
}
