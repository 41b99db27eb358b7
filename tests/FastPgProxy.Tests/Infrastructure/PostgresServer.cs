using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text;
using System.Threading.Tasks;
using Npgsql;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>
/// A scratch PostgreSQL cluster in its own temp folder, on a free TCP port of 127.0.0.1, for
/// end-to-end tests. <see cref="Start"/> runs initdb, configures authentication per role and
/// creates the roles and the <c>fpp</c> database the tests use; <see cref="Dispose"/> stops the
/// server and deletes the folder.
/// </summary>
/// <remarks>
/// <para>pg_hba.conf, first match wins:</para>
/// <code>
/// local all all trust
/// host all fpp_md5 127.0.0.1/32 md5
/// host all fpp_scram 127.0.0.1/32 scram-sha-256
/// host all fpp_clear 127.0.0.1/32 password
/// host all all 127.0.0.1/32 trust
/// </code>
/// <para>
/// A server started with <see cref="StartWithTls"/> also has <c>ssl = on</c>, with the server
/// certificate, its key and the test CA copied into the data directory, and two more roles whose
/// lines come first:
/// </para>
/// <code>
/// hostssl   all fpp_sslonly 127.0.0.1/32 scram-sha-256
/// hostnossl all fpp_sslonly 127.0.0.1/32 reject
/// hostssl   all fpp_cert    127.0.0.1/32 cert
/// hostnossl all fpp_cert    127.0.0.1/32 reject
/// </code>
/// <para>
/// PostgreSQL refuses to run as root, so when the tests run as root every server program runs
/// as the <c>postgres</c> OS user through <c>runuser</c>, and the temp folder belongs to it.
/// </para>
/// </remarks>
public sealed class PostgresServer : IDisposable
{
    /// <summary>Name of the superuser that initdb creates; it logs in without a password.</summary>
    public const string Superuser = "postgres";

    /// <summary>Database the tests work in; every role may create objects in its public schema.</summary>
    public const string Database = "fpp";

    /// <summary>Role that must log in with md5 (its password is stored as an md5 hash).</summary>
    public const string Md5User = "fpp_md5";

    /// <summary>Password of <see cref="Md5User"/>.</summary>
    public const string Md5Password = "md5pass";

    /// <summary>Role that must log in with SCRAM-SHA-256.</summary>
    public const string ScramUser = "fpp_scram";

    /// <summary>Password of <see cref="ScramUser"/>.</summary>
    public const string ScramPassword = "scrampass";

    /// <summary>Role that must log in with a cleartext password (pg_hba method <c>password</c>).</summary>
    public const string ClearUser = "fpp_clear";

    /// <summary>Password of <see cref="ClearUser"/>.</summary>
    public const string ClearPassword = "clearpass";

    /// <summary>Role that logs in over TCP without a password.</summary>
    public const string TrustUser = "fpp_trust";

    /// <summary>A second trusted role, for tests that need two distinct users.</summary>
    public const string OtherUser = "fpp_other";

    /// <summary>Role that may log in only over TLS, with SCRAM-SHA-256 (TLS servers only).</summary>
    public const string SslOnlyUser = "fpp_sslonly";

    /// <summary>Password of <see cref="SslOnlyUser"/>.</summary>
    public const string SslOnlyPassword = "sslonlypass";

    /// <summary>
    /// Role that logs in only over TLS with a client certificate whose CN is the role name, signed by
    /// the test CA (pg_hba method <c>cert</c>, which implies <c>clientcert=verify-full</c>; TLS servers only).
    /// </summary>
    public const string CertUser = "fpp_cert";

    /// <summary>File names, in the data directory, of the copies the server reads when TLS is on.</summary>
    private const string ServerCertCopy = "server.crt";

    /// <inheritdoc cref="ServerCertCopy"/>
    private const string ServerKeyCopy = "server.key";

    /// <inheritdoc cref="ServerCertCopy"/>
    private const string CaCopy = "root.crt";

    /// <summary>The OS user PostgreSQL runs as when the tests run as root.</summary>
    private const string ServerOsUser = "postgres";

    /// <summary>Attempts at binding a fresh port when another process took the one we picked.</summary>
    private const int PortAttempts = 3;

    /// <summary>Lines of the server log included in exceptions.</summary>
    private const int LogTailLines = 40;

    private static readonly TimeSpan InitDbTimeout = TimeSpan.FromMinutes(2);

    /// <summary>Above pg_ctl's own <c>-t 60</c>, so pg_ctl reports its timeout before we kill it.</summary>
    private static readonly TimeSpan PgCtlTimeout = TimeSpan.FromSeconds(90);

    private static readonly TimeSpan ShortCommandTimeout = TimeSpan.FromSeconds(20);

    /// <summary>Programs a directory must hold to count as the server binaries directory.</summary>
    private static readonly string[] RequiredServerPrograms = ["initdb", "postgres", "pg_ctl"];

    /// <summary>Where runuser lives when root's PATH lacks the sbin directories.</summary>
    private static readonly string[] RunuserFallbacks = ["/usr/sbin/runuser", "/sbin/runuser"];

    private static readonly Lazy<string> LocatedBinDir = new(LocateBinDir);

    private static readonly Lazy<bool> IsRoot = new(DetectRoot);

    private readonly string _logFile;
    private readonly string _pgCtl;
    private string _initialConf = string.Empty;

    // postgresql.conf lines a test asked for (StartWithSettings), written after the fixture's own.
    private string[] _extraSettings = [];
    private bool _running;
    private bool _disposed;

    private PostgresServer(string binDir, string rootDir, TestCertificates? certificates)
    {
        Certificates = certificates;
        BinDir = binDir;
        SocketDir = rootDir;
        DataDir = Path.Combine(rootDir, "data");
        _logFile = Path.Combine(rootDir, "postgresql.log");
        _pgCtl = Path.Combine(binDir, "pg_ctl");
    }

    /// <summary>TCP port the server listens on (on <see cref="Host"/>); it keeps it across restarts.</summary>
    public int Port { get; private set; }

    /// <summary>Address the server listens on: <c>127.0.0.1</c>.</summary>
    public string Host { get; } = "127.0.0.1";

    /// <summary>
    /// Directory holding the server's Unix-domain socket (<c>.s.PGSQL.&lt;port&gt;</c>); it is
    /// also the temp folder that holds the data directory and the log, deleted on dispose.
    /// </summary>
    public string SocketDir { get; }

    /// <summary>The cluster's data directory.</summary>
    public string DataDir { get; }

    /// <summary>Directory of the PostgreSQL server programs (initdb, postgres, pg_ctl).</summary>
    public string BinDir { get; }

    /// <summary>Path of the server log file.</summary>
    public string LogFile => _logFile;

    /// <summary>
    /// The certificates the server was started with by <see cref="StartWithTls"/>, or null when TLS is
    /// off. The server uses copies of their files; the caller keeps ownership of these.
    /// </summary>
    public TestCertificates? Certificates { get; }

    /// <summary>True when the server has <c>ssl = on</c> (see <see cref="StartWithTls"/>).</summary>
    public bool TlsEnabled => Certificates is not null;

    /// <summary>
    /// Creates, configures and starts a new scratch cluster and its test roles and database.
    /// </summary>
    /// <returns>The running server; dispose it to stop it and delete its files.</returns>
    /// <exception cref="InvalidOperationException">
    /// Any step failed; the message includes the tail of the server log.
    /// </exception>
    public static PostgresServer Start() => Launch(certificates: null, []);

    /// <summary>
    /// Like <see cref="Start"/>, with <paramref name="settings"/> appended to postgresql.conf (for example
    /// <c>shared_preload_libraries = 'pg_stat_statements'</c>).
    /// </summary>
    /// <param name="settings">postgresql.conf lines, written after the fixture's own.</param>
    /// <returns>The running server; dispose it to stop it and delete its files.</returns>
    /// <exception cref="InvalidOperationException">
    /// Any step failed; the message includes the tail of the server log.
    /// </exception>
    public static PostgresServer StartWithSettings(params string[] settings) => Launch(certificates: null, settings);

    /// <summary>
    /// Like <see cref="Start"/>, with <c>ssl = on</c>: the server presents
    /// <see cref="TestCertificates.ServerCertificate"/>, verifies client certificates against
    /// <see cref="TestCertificates.Ca"/>, and has the roles <see cref="SslOnlyUser"/> and
    /// <see cref="CertUser"/> besides the usual ones. Plain connections still work for every other role.
    /// </summary>
    /// <param name="certificates">Where the server certificate, its key and the CA come from; the caller disposes it after the server.</param>
    /// <returns>The running server; dispose it to stop it and delete its files.</returns>
    /// <exception cref="InvalidOperationException">
    /// Any step failed; the message includes the tail of the server log.
    /// </exception>
    public static PostgresServer StartWithTls(TestCertificates certificates)
    {
        ArgumentNullException.ThrowIfNull(certificates);
        return Launch(certificates, []);
    }

    private static PostgresServer Launch(TestCertificates? certificates, string[] settings)
    {
        string binDir = LocatedBinDir.Value;
        string rootDir = Directory.CreateTempSubdirectory("fpp-pg-").FullName;
        var server = new PostgresServer(binDir, rootDir, certificates) { _extraSettings = settings };
        try
        {
            server.InitializeCluster();
            server.StartWithFreePort();
            server.CreateRolesAndDatabase();
            return server;
        }
        catch (Exception ex)
        {
            string message = $"Could not start a scratch PostgreSQL in {rootDir} (binaries: {binDir}): {ex.Message}"
                + server.DescribeLog();
            server.Dispose();
            throw new InvalidOperationException(message, ex);
        }
    }

    /// <summary>
    /// Npgsql connection string for this server over TCP (or for a proxy in front of it, with
    /// <paramref name="port"/>).
    /// </summary>
    /// <param name="user">Role to log in as.</param>
    /// <param name="password">Password, or null for none.</param>
    /// <param name="database">Database to connect to.</param>
    /// <param name="pooling">Whether Npgsql pools connections; off by default so every open is a real login.</param>
    /// <param name="port">Port to connect to; null means <see cref="Port"/>.</param>
    /// <returns>The connection string.</returns>
    public string ConnectionString(
        string user = Superuser,
        string? password = null,
        string database = Database,
        bool pooling = false,
        int? port = null)
    {
        var builder = new NpgsqlConnectionStringBuilder
        {
            Host = Host,
            Port = port ?? Port,
            Username = user,
            Database = database,
            Pooling = pooling,
            Timeout = 15,
            CommandTimeout = 60,
        };
        if (password is not null)
        {
            builder.Password = password;
        }

        return builder.ConnectionString;
    }

    /// <summary>
    /// Npgsql connection string for this TLS server (or a proxy in front of it, with
    /// <paramref name="port"/>) that trusts the test CA: <c>Root Certificate</c> is
    /// <see cref="TestCertificates.CaFile"/>.
    /// </summary>
    /// <param name="sslMode">Npgsql's SSL mode; VerifyFull checks the chain and that the certificate names <see cref="Host"/>.</param>
    /// <param name="user">Role to log in as.</param>
    /// <param name="password">Password, or null for none.</param>
    /// <param name="database">Database to connect to.</param>
    /// <param name="pooling">Whether Npgsql pools connections; off by default so every open is a real login.</param>
    /// <param name="port">Port to connect to; null means <see cref="Port"/>.</param>
    /// <returns>The connection string.</returns>
    /// <exception cref="InvalidOperationException">The server was started without TLS.</exception>
    public string TlsConnectionString(
        SslMode sslMode = SslMode.VerifyFull,
        string user = Superuser,
        string? password = null,
        string database = Database,
        bool pooling = false,
        int? port = null)
    {
        TestCertificates certificates = Certificates
            ?? throw new InvalidOperationException("This server was started without TLS; use StartWithTls.");
        return new NpgsqlConnectionStringBuilder(ConnectionString(user, password, database, pooling, port))
        {
            SslMode = sslMode,
            RootCertificate = certificates.CaFile,
        }.ConnectionString;
    }

    /// <summary>Runs <paramref name="sql"/> as the superuser on database <c>fpp</c>.</summary>
    /// <param name="sql">One or more statements.</param>
    /// <returns>Rows affected, as Npgsql reports them.</returns>
    public async Task<int> ExecuteNonQueryAsync(string sql)
    {
        await using var connection = new NpgsqlConnection(ConnectionString());
        await connection.OpenAsync().ConfigureAwait(false);
        await using var command = new NpgsqlCommand(sql, connection);
        return await command.ExecuteNonQueryAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// Waits until at least <paramref name="count"/> queries containing <paramref name="marker"/> are
    /// running on this server (the asking connection aside); throws <see cref="TimeoutException"/> after
    /// <paramref name="timeout"/>.
    /// </summary>
    public async Task WaitUntilRunningAsync(string marker, TimeSpan timeout, int count = 1)
    {
        var deadline = System.Diagnostics.Stopwatch.StartNew();
        while (await ScalarAsync<long>(
            $"SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()") < count)
        {
            if (deadline.Elapsed > timeout)
            {
                throw new TimeoutException($"query '{marker}' did not start ({count} expected) within {timeout}");
            }

            await Task.Delay(20);
        }
    }

    /// <summary>
    /// Runs <paramref name="sql"/> as the superuser on database <c>fpp</c> and returns the first
    /// column of the first row, read as <typeparamref name="T"/>.
    /// </summary>
    /// <typeparam name="T">CLR type to read the value as (Npgsql's type mapping applies).</typeparam>
    /// <param name="sql">A query.</param>
    /// <returns>The value, or default when there is no row or the value is NULL.</returns>
    public async Task<T?> ScalarAsync<T>(string sql)
    {
        await using var connection = new NpgsqlConnection(ConnectionString());
        await connection.OpenAsync().ConfigureAwait(false);
        await using var command = new NpgsqlCommand(sql, connection);
        await using NpgsqlDataReader reader = await command.ExecuteReaderAsync().ConfigureAwait(false);
        if (!await reader.ReadAsync().ConfigureAwait(false) || await reader.IsDBNullAsync(0).ConfigureAwait(false))
        {
            return default;
        }

        return await reader.GetFieldValueAsync<T>(0).ConfigureAwait(false);
    }

    /// <summary>
    /// Path of a PostgreSQL client program (psql, pgbench, pg_isready): the one next to the
    /// server binaries when present, so client and server versions match, else the one on PATH.
    /// </summary>
    /// <param name="name">Program name.</param>
    /// <returns>Full path of the program.</returns>
    /// <exception cref="FileNotFoundException">Neither place has it.</exception>
    public string ToolPath(string name)
    {
        string local = Path.Combine(BinDir, name);
        if (ProcessRunner.IsExecutableFile(local))
        {
            return local;
        }

        return ProcessRunner.FindOnPath(name)
            ?? throw new FileNotFoundException($"'{name}' is neither in {BinDir} nor on PATH.", name);
    }

    /// <summary>Stops the server (<c>pg_ctl stop -m fast</c>), keeping its data for <see cref="StartAgain"/>.</summary>
    /// <exception cref="InvalidOperationException">pg_ctl failed; the message includes the log tail.</exception>
    public void Stop()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var (exitCode, stdout, stderr) = RunServerCommand(
            _pgCtl, ["stop", "-D", DataDir, "-m", "fast", "-w", "-t", "60"], PgCtlTimeout);
        if (exitCode != 0)
        {
            throw new InvalidOperationException($"pg_ctl stop failed ({exitCode}): {stderr}{stdout}{DescribeLog()}");
        }

        _running = false;
    }

    /// <summary>Starts the server again on the same data directory and port after <see cref="Stop"/>.</summary>
    /// <exception cref="InvalidOperationException">pg_ctl failed; the message includes the log tail.</exception>
    public void StartAgain()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var (exitCode, stdout, stderr) = PgCtlStart();
        if (exitCode != 0)
        {
            throw new InvalidOperationException($"pg_ctl start failed ({exitCode}): {stderr}{stdout}{DescribeLog()}");
        }
    }

    /// <summary>
    /// Restarts the server (<c>pg_ctl restart -m fast</c>): every backend is told to exit (FATAL 57P01) and
    /// the server comes back on the same data directory and port.
    /// </summary>
    /// <exception cref="InvalidOperationException">pg_ctl failed; the message includes the log tail.</exception>
    public void Restart()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var (exitCode, stdout, stderr) = RunServerCommand(
            _pgCtl, ["restart", "-D", DataDir, "-m", "fast", "-w", "-t", "60", "-l", _logFile], PgCtlTimeout);
        _running = exitCode == 0;
        if (exitCode != 0)
        {
            throw new InvalidOperationException($"pg_ctl restart failed ({exitCode}): {stderr}{stdout}{DescribeLog()}");
        }
    }

    /// <summary>
    /// Kills one backend with SIGKILL. Unlike <c>pg_terminate_backend</c>, this is a crash: the postmaster
    /// ends every other backend (FATAL 57P02), refuses logins during crash recovery (57P03), then accepts
    /// them again.
    /// </summary>
    /// <param name="pid">Process id of a backend of this server.</param>
    public void KillBackend(int pid)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var (exitCode, _, stderr) = ProcessRunner.Run("kill", ["-KILL", pid.ToString(CultureInfo.InvariantCulture)], ShortCommandTimeout);
        if (exitCode != 0)
        {
            throw new InvalidOperationException($"kill -KILL {pid} failed ({exitCode}): {stderr}");
        }
    }

    /// <summary>
    /// Suspends the postmaster (SIGSTOP): running backends go on, but new connections, cancel requests
    /// included, wait in its listen queue until <see cref="ThawPostmaster"/>.
    /// </summary>
    public void FreezePostmaster() => SignalPostmaster("STOP");

    /// <summary>Resumes a postmaster suspended by <see cref="FreezePostmaster"/> (SIGCONT).</summary>
    public void ThawPostmaster() => SignalPostmaster("CONT");

    private void SignalPostmaster(string signal)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        string pid = File.ReadLines(Path.Combine(DataDir, "postmaster.pid")).First().Trim();
        var (exitCode, _, stderr) = ProcessRunner.Run("kill", [$"-{signal}", pid], ShortCommandTimeout);
        if (exitCode != 0)
        {
            throw new InvalidOperationException($"kill -{signal} {pid} failed ({exitCode}): {stderr}");
        }
    }

    /// <summary>
    /// Stops the server at once (<c>pg_ctl stop -m immediate</c>) and deletes the temp folder.
    /// Never throws.
    /// </summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        if (_running || File.Exists(Path.Combine(DataDir, "postmaster.pid")))
        {
            StopImmediately();
        }

        try
        {
            Directory.Delete(SocketDir, recursive: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // A leftover temp folder is not worth failing a test run for.
        }
    }

    private void InitializeCluster()
    {
        if (IsRoot.Value)
        {
            // initdb and postgres run as the postgres OS user; it must own the folder they write.
            var (chownExit, _, chownErr) = ProcessRunner.Run(
                "chown", [$"{ServerOsUser}:{ServerOsUser}", SocketDir], ShortCommandTimeout);
            if (chownExit != 0)
            {
                throw new InvalidOperationException($"chown of {SocketDir} to {ServerOsUser} failed: {chownErr}");
            }
        }

        // --no-sync: a scratch cluster does not need to survive a power cut, and fsync is slow.
        var (exitCode, stdout, stderr) = RunServerCommand(
            Path.Combine(BinDir, "initdb"),
            ["-D", DataDir, "-U", Superuser, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"],
            InitDbTimeout);
        if (exitCode != 0)
        {
            throw new InvalidOperationException($"initdb failed ({exitCode}): {stderr}{stdout}");
        }

        // Rewriting existing files keeps their owner (postgres when running as root).
        File.WriteAllText(Path.Combine(DataDir, "pg_hba.conf"), string.Join('\n', (string[])[
            "# Written by the FastPgProxy test fixture; first match wins.",
            "local all all trust",
            .. TlsHbaLines(),
            $"host all {Md5User} 127.0.0.1/32 md5",
            $"host all {ScramUser} 127.0.0.1/32 scram-sha-256",
            $"host all {ClearUser} 127.0.0.1/32 password",
            "host all all 127.0.0.1/32 trust",
            string.Empty]));
        _initialConf = File.ReadAllText(Path.Combine(DataDir, "postgresql.conf"));
        CopyTlsFiles();
    }

    /// <summary>
    /// The pg_hba.conf lines of the TLS-only roles, ahead of the catch-all <c>trust</c> line, which
    /// would otherwise let them in without TLS; none when TLS is off.
    /// </summary>
    private string[] TlsHbaLines() => Certificates is null
        ? []
        :
        [
            $"hostssl all {SslOnlyUser} 127.0.0.1/32 scram-sha-256",
            $"hostnossl all {SslOnlyUser} 127.0.0.1/32 reject",
            $"hostssl all {CertUser} 127.0.0.1/32 cert",
            $"hostnossl all {CertUser} 127.0.0.1/32 reject",
        ];

    /// <summary>
    /// Copies the server certificate, its key and the CA into the data directory. PostgreSQL refuses a
    /// key file that is not owned by its OS user (or root) or that others may read, and as the
    /// postgres OS user it could not read the caller's 0600 files anyway: the copies are mode 0600
    /// and, when we are root, handed to the postgres user.
    /// </summary>
    private void CopyTlsFiles()
    {
        if (Certificates is null)
        {
            return;
        }

        string[] copies =
        [
            Path.Combine(DataDir, ServerCertCopy),
            Path.Combine(DataDir, ServerKeyCopy),
            Path.Combine(DataDir, CaCopy),
        ];
        File.Copy(Certificates.ServerCertFile, copies[0]);
        File.Copy(Certificates.ServerKeyFile, copies[1]);
        File.Copy(Certificates.CaFile, copies[2]);
        if (!OperatingSystem.IsWindows())
        {
            foreach (string copy in copies)
            {
                File.SetUnixFileMode(copy, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            }
        }

        if (IsRoot.Value)
        {
            var (chownExit, _, chownErr) = ProcessRunner.Run(
                "chown", [$"{ServerOsUser}:{ServerOsUser}", .. copies], ShortCommandTimeout);
            if (chownExit != 0)
            {
                throw new InvalidOperationException($"chown of the TLS files to {ServerOsUser} failed: {chownErr}");
            }
        }
    }

    private void WriteSettings()
    {
        string settings = string.Join('\n', (string[])[
            string.Empty,
            "# Written by the FastPgProxy test fixture.",
            $"listen_addresses = '{Host}'",
            $"port = {Port.ToString(CultureInfo.InvariantCulture)}",
            $"unix_socket_directories = '{QuoteConf(SocketDir)}'",
            "max_connections = 300",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "shared_buffers = 64MB",
            "log_min_messages = warning",
            // pg_ctl -l sends the server's stderr to LogFile in the temp folder.
            "logging_collector = off",
            "log_destination = 'stderr'",
            .. TlsSettings(),
            .. _extraSettings,
            string.Empty]);
        File.WriteAllText(Path.Combine(DataDir, "postgresql.conf"), _initialConf + settings);
    }

    /// <summary>The TLS settings, naming the copies made by <see cref="CopyTlsFiles"/>; none when TLS is off.</summary>
    private string[] TlsSettings() => Certificates is null
        ? []
        :
        [
            "ssl = on",
            $"ssl_cert_file = '{QuoteConf(Path.Combine(DataDir, ServerCertCopy))}'",
            $"ssl_key_file = '{QuoteConf(Path.Combine(DataDir, ServerKeyCopy))}'",
            // With a CA file the server asks every client for a certificate, but only the cert
            // method (and clientcert options) make one required.
            $"ssl_ca_file = '{QuoteConf(Path.Combine(DataDir, CaCopy))}'",
        ];

    private static string QuoteConf(string value) => value.Replace("'", "''", StringComparison.Ordinal);

    private void StartWithFreePort()
    {
        for (int attempt = 1; ; attempt++)
        {
            Port = NetUtil.GetFreeTcpPort();
            WriteSettings();
            long logLength = File.Exists(_logFile) ? new FileInfo(_logFile).Length : 0;
            var (exitCode, stdout, stderr) = PgCtlStart();
            if (exitCode == 0)
            {
                return;
            }

            // Between NetUtil releasing the port and the postmaster binding it, another process
            // may have taken it; that alone is worth another try with a fresh port.
            string newLog = ReadLogFrom(logLength);
            bool portTaken = newLog.Contains("could not bind", StringComparison.OrdinalIgnoreCase)
                || newLog.Contains("Address already in use", StringComparison.OrdinalIgnoreCase);
            if (!portTaken || attempt == PortAttempts)
            {
                throw new InvalidOperationException($"pg_ctl start failed ({exitCode}): {stderr}{stdout}");
            }
        }
    }

    private (int ExitCode, string StdOut, string StdErr) PgCtlStart()
    {
        var result = RunServerCommand(
            _pgCtl, ["start", "-w", "-t", "60", "-D", DataDir, "-l", _logFile], PgCtlTimeout);
        _running = result.ExitCode == 0;
        return result;
    }

    private void CreateRolesAndDatabase()
    {
        // One statement per command: CREATE DATABASE may not run inside the implicit
        // transaction of a multi-statement batch.
        string[] setup =
        [
            // md5 storage needs md5 encryption at CREATE time; SCRAM is the default since PG 14.
            "SET password_encryption = 'md5'",
            $"CREATE ROLE {Md5User} LOGIN PASSWORD '{Md5Password}'",
            "SET password_encryption = 'scram-sha-256'",
            $"CREATE ROLE {ScramUser} LOGIN PASSWORD '{ScramPassword}'",
            $"CREATE ROLE {ClearUser} LOGIN PASSWORD '{ClearPassword}'",
            $"CREATE ROLE {TrustUser} LOGIN",
            $"CREATE ROLE {OtherUser} LOGIN",
            .. TlsRoles(),
            $"CREATE DATABASE {Database} OWNER {Superuser}",
            $"GRANT ALL ON DATABASE {Database} TO PUBLIC",
        ];
        ExecuteEach(ConnectionString(database: "postgres"), setup);

        // PostgreSQL 15 no longer lets PUBLIC create in the public schema.
        ExecuteEach(ConnectionString(), ["GRANT ALL ON SCHEMA public TO PUBLIC"]);
    }

    /// <summary>The roles of <see cref="TlsHbaLines"/>; none when TLS is off. SCRAM is the encryption in force here.</summary>
    private string[] TlsRoles() => Certificates is null
        ? []
        :
        [
            $"CREATE ROLE {SslOnlyUser} LOGIN PASSWORD '{SslOnlyPassword}'",
            $"CREATE ROLE {CertUser} LOGIN",
        ];

    private static void ExecuteEach(string connectionString, IEnumerable<string> statements)
    {
        using var connection = new NpgsqlConnection(connectionString);
        connection.Open();
        foreach (string sql in statements)
        {
            using var command = new NpgsqlCommand(sql, connection);
            command.ExecuteNonQuery();
        }
    }

    private void StopImmediately()
    {
        try
        {
            var (exitCode, _, _) = RunServerCommand(
                _pgCtl, ["stop", "-D", DataDir, "-m", "immediate", "-w", "-t", "30"], TimeSpan.FromSeconds(45));
            if (exitCode == 0)
            {
                _running = false;
                return;
            }
        }
        catch (Exception ex) when (ex is TimeoutException or InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            // Fall through to killing the postmaster directly.
        }

        KillPostmaster();
    }

    /// <summary>Last resort when pg_ctl could not stop the server: SIGKILL the postmaster named in postmaster.pid.</summary>
    private void KillPostmaster()
    {
        try
        {
            string pidFile = Path.Combine(DataDir, "postmaster.pid");
            if (!File.Exists(pidFile))
            {
                return;
            }

            string firstLine = File.ReadLines(pidFile).FirstOrDefault() ?? string.Empty;
            if (int.TryParse(firstLine.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
            {
                using var postmaster = System.Diagnostics.Process.GetProcessById(pid);
                postmaster.Kill(entireProcessTree: true);
                postmaster.WaitForExit(TimeSpan.FromSeconds(10));
            }
        }
        catch (Exception ex) when (ex is IOException or ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            // Nothing more we can do; the folder is deleted regardless.
        }

        _running = false;
    }

    /// <summary>Runs a server program, as the postgres OS user when we are root.</summary>
    private (int ExitCode, string StdOut, string StdErr) RunServerCommand(
        string program, IReadOnlyList<string> args, TimeSpan timeout)
    {
        // The working directory is the temp folder, which the server's OS user can always
        // enter (root's home directory is not, and initdb complains about that).
        if (!IsRoot.Value)
        {
            return ProcessRunner.Run(program, args, timeout, workingDirectory: SocketDir);
        }

        string runuser = ProcessRunner.FindOnPath("runuser")
            ?? RunuserFallbacks.FirstOrDefault(ProcessRunner.IsExecutableFile)
            ?? throw new InvalidOperationException("Running as root, but 'runuser' was not found to run PostgreSQL as the postgres user.");
        return ProcessRunner.Run(
            runuser, ["-u", ServerOsUser, "--", program, .. args], timeout, workingDirectory: SocketDir);
    }

    private string ReadLogFrom(long offset)
    {
        try
        {
            using var stream = new FileStream(_logFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            stream.Seek(Math.Min(offset, stream.Length), SeekOrigin.Begin);
            using var reader = new StreamReader(stream, Encoding.UTF8);
            return reader.ReadToEnd();
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return string.Empty;
        }
    }

    /// <summary>The last lines of the server log, formatted for an exception message.</summary>
    private string DescribeLog()
    {
        string[] lines = ReadLogFrom(0).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        if (lines.Length == 0)
        {
            return $"{Environment.NewLine}(server log {_logFile} is empty or missing)";
        }

        return $"{Environment.NewLine}--- last lines of {_logFile} ---{Environment.NewLine}"
            + string.Join(Environment.NewLine, lines.TakeLast(LogTailLines));
    }

    /// <summary>
    /// Finds the directory with initdb, postgres and pg_ctl: <c>pg_config --bindir</c> first,
    /// then <c>/usr/lib/postgresql/&lt;version&gt;/bin</c>, highest version first, then PATH.
    /// </summary>
    private static string LocateBinDir()
    {
        var candidates = new List<string>();
        string? pgConfig = ProcessRunner.FindOnPath("pg_config");
        if (pgConfig is not null)
        {
            try
            {
                var (exitCode, stdout, _) = ProcessRunner.Run(pgConfig, ["--bindir"], ShortCommandTimeout);
                if (exitCode == 0 && stdout.Trim().Length > 0)
                {
                    candidates.Add(stdout.Trim());
                }
            }
            catch (TimeoutException)
            {
                // Fall back to the other places.
            }
        }

        const string debianRoot = "/usr/lib/postgresql";
        if (Directory.Exists(debianRoot))
        {
            candidates.AddRange(Directory.GetDirectories(debianRoot)
                .Select(dir => (Dir: dir, Version: ParseVersion(Path.GetFileName(dir))))
                .Where(entry => entry.Version is not null)
                .OrderByDescending(entry => entry.Version)
                .Select(entry => Path.Combine(entry.Dir, "bin")));
        }

        string? initdbOnPath = ProcessRunner.FindOnPath("initdb");
        if (initdbOnPath is not null)
        {
            candidates.Add(Path.GetDirectoryName(initdbOnPath)!);
        }

        string? found = candidates.FirstOrDefault(dir =>
            RequiredServerPrograms.All(exe => ProcessRunner.IsExecutableFile(Path.Combine(dir, exe))));
        return found ?? throw new InvalidOperationException(
            "PostgreSQL server binaries (initdb, postgres, pg_ctl) were not found via pg_config --bindir, "
            + "in /usr/lib/postgresql/*/bin or on PATH. Install them, e.g. 'apt-get install postgresql'. "
            + $"Looked in: {string.Join(", ", candidates.DefaultIfEmpty("(nowhere)"))}");
    }

    private static Version? ParseVersion(string name)
        => Version.TryParse(name.Contains('.', StringComparison.Ordinal) ? name : name + ".0", out Version? version)
            ? version
            : null;

    /// <summary>
    /// True when the effective user id is 0. Read from /proc/self/status (the same value as
    /// geteuid()), with the user name as a fallback where /proc is not available.
    /// </summary>
    private static bool DetectRoot()
    {
        try
        {
            foreach (string line in File.ReadLines("/proc/self/status"))
            {
                // "Uid:\t<real>\t<effective>\t<saved>\t<filesystem>"
                if (line.StartsWith("Uid:", StringComparison.Ordinal))
                {
                    string[] ids = line.Split((char[])['\t', ' '], StringSplitOptions.RemoveEmptyEntries);
                    return ids.Length > 2 && ids[2] == "0";
                }
            }
        }
        catch (IOException)
        {
            // No /proc; fall back below.
        }

        return Environment.UserName == "root";
    }
}
