using System.Buffers.Binary;
using System.Data;
using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using FastPgProxy.Config;
using FastPgProxy.Pooling;
using FastPgProxy.Tests.Infrastructure;
using Npgsql;
using NpgsqlTypes;
using Xunit;

namespace FastPgProxy.Tests.EndToEnd;

/// <summary>
/// pg_backend_pid(), pg_cancel_backend(pid) and pg_terminate_backend(pid[, timeout]) answered by the proxy in
/// terms of its own sessions, with PostgreSQL's types, column names, notices, errors and SQLSTATEs; and every
/// statement that is not exactly one such call reaching PostgreSQL untouched.
/// </summary>
/// <remarks>
/// Where the reply does not depend on a pid, the proxy's answer is compared with what the fixture's
/// PostgreSQL answers to the same bytes, so the test states PostgreSQL's behaviour by asking it. Proxy clients
/// log in as <see cref="PostgresServer.TrustUser"/>; the test's own look-ups in pg_stat_activity go to
/// PostgreSQL directly as the superuser.
/// </remarks>
[Collection(PostgresCollection.Name)]
public sealed class InterceptionTests(PostgresFixture fixture)
{
    private const string User = PostgresServer.TrustUser;

    /// <summary>pg_backend_pid() inside an expression is PostgreSQL's own: the proxy only answers the call alone.</summary>
    private const string RealBackendPid = "SELECT pg_backend_pid() + 0";

    /// <summary>A pid no session and no PostgreSQL backend has.</summary>
    private const int UnknownPid = 2_000_000_000;

    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    /// <summary>How long a cancel or terminate may take to reach its target.</summary>
    private static readonly TimeSpan SignalDeadline = TimeSpan.FromSeconds(10);

    /// <summary>How long a reply may take that PostgreSQL gives in milliseconds: generous, yet short of the proxy's own timeouts.</summary>
    private static readonly TimeSpan ReplyDeadline = TimeSpan.FromSeconds(5);

    /// <summary>The raw extended-protocol exchanges of <see cref="RawSteps"/>.</summary>
    private static readonly string[] RawExchanges =
    [
        "describe both",
        "binary result",
        "text parameter abc",
        "null parameter",
        "unknown pid",
        "int8 parameter",
        "not bound",
        "queued behind a slow query",
        "inside a transaction",
        "inside a failed transaction",
        "after an error in the same pipeline",
        "ordinary statement: parse then bind in a second round trip",
        "parse then bind in a second round trip",
        "describe statement then bind in a second round trip",
        "stale unnamed statement on the backend",
    ];

    private readonly PostgresServer _pg = fixture.Server;

    /// <summary>Both pool modes, as the names the config file uses.</summary>
    public static TheoryData<string> Modes => new() { "session", "transaction" };

    /// <summary>How the pid reaches pg_cancel_backend: an int4 parameter, or a literal in the SQL text.</summary>
    public static TheoryData<string, string> CancelForms => new()
    {
        { "session", "int4 parameter" },
        { "session", "literal" },
        { "transaction", "int4 parameter" },
        { "transaction", "literal" },
    };

    /// <summary>
    /// Statements whose psql output (header, rows, notices, errors with SQLSTATE) does not depend on a pid:
    /// the proxy's must equal PostgreSQL's. A statement with a line break is a psql script on stdin.
    /// </summary>
    public static TheoryData<string, string> PsqlSameAsPostgres
    {
        get
        {
            string[] statements =
            [
                "select pg_cancel_backend(999999)",
                "select pg_cancel_backend(NULL)",
                "select pg_cancel_backend(-1)",
                "SELECT pg_catalog.pg_cancel_backend((999999)::int) AS \"Cancelled\";",
                "select pg_terminate_backend(999999, 10) done",
                "select pg_terminate_backend(1, -5)",
                "select pg_terminate_backend(999999, 1000000000000)",
                "select pg_terminate_backend(NULL, -5)",
                "select pg_terminate_backend(999999, NULL)",
                "select pg_cancel_backend(999999::bigint)",
                "select pg_cancel_backend(9999999999)",
                "select pg_cancel_backend($1)",
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE false",
                "select 'pg_backend_pid()'",
                "BEGIN;\nSELECT 1/0;\nSELECT pg_backend_pid();\nSELECT pg_cancel_backend(999999);\nROLLBACK;\nSELECT pg_cancel_backend(NULL);\n",
                // A session signalling itself: PostgreSQL cancels the calling statement, or ends the session.
                "select pg_backend_pid() as me \\gset\nselect pg_cancel_backend(:me);\nselect 1;\n",
                "select pg_backend_pid() as me \\gset\nselect pg_terminate_backend(:me);\nselect 2;\n",
            ];
            var data = new TheoryData<string, string>();
            foreach (string mode in new[] { "session", "transaction" })
            {
                foreach (string statement in statements)
                {
                    data.Add(mode, statement);
                }
            }

            return data;
        }
    }

    /// <summary>Raw exchanges (see <see cref="RawSteps"/>) compared message by message with PostgreSQL's replies.</summary>
    public static TheoryData<string, string> RawSameAsPostgres
    {
        get
        {
            var data = new TheoryData<string, string>();
            foreach (string mode in new[] { "session", "transaction" })
            {
                foreach (string exchange in RawExchanges)
                {
                    data.Add(mode, exchange);
                }
            }

            return data;
        }
    }

    // ---- 1. pg_backend_pid() through Npgsql ---------------------------------------------------------------

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Backend_pid_is_the_session_id_as_an_int4_column(string mode)
    {
        await using ProxyHarness proxy = StartProxy(mode);
        await using NpgsqlConnection c = await proxy.OpenAsync(User);
        Assert.True(c.ProcessID > 0);

        await using (var cmd = new NpgsqlCommand("SELECT pg_backend_pid()", c))
        {
            object? value = await cmd.ExecuteScalarAsync();
            Assert.IsType<int>(value);
            Assert.Equal(c.ProcessID, (int)value);
        }

        await using (var cmd = new NpgsqlCommand("SELECT pg_backend_pid()", c))
        await using (NpgsqlDataReader r = await cmd.ExecuteReaderAsync())
        {
            Assert.Equal("integer", r.GetDataTypeName(0));
            Assert.Equal("pg_backend_pid", r.GetName(0));
            Assert.Equal(typeof(int), r.GetFieldType(0));
            Assert.True(await r.ReadAsync());
            Assert.Equal(c.ProcessID, r.GetInt32(0));
            Assert.False(await r.ReadAsync());
        }

        await using (var cmd = new NpgsqlCommand("SELECT pg_backend_pid() AS me", c))
        await using (NpgsqlDataReader r = await cmd.ExecuteReaderAsync())
        {
            Assert.Equal("me", r.GetName(0));
            Assert.True(await r.ReadAsync());
            Assert.Equal(c.ProcessID, r.GetInt32(0));
        }

        // In an expression the call is PostgreSQL's: the pid of a real backend of this user.
        int real = await ScalarAsync<int>(c, RealBackendPid);
        Assert.NotEqual(c.ProcessID, real);
        Assert.Equal(1L, await _pg.ScalarAsync<long>($"SELECT count(*) FROM pg_stat_activity WHERE pid = {real} AND usename = '{User}'"));
    }

    [Fact]
    public async Task Backend_pid_needs_no_backend_in_transaction_mode()
    {
        await using ProxyHarness proxy = StartProxy("transaction", poolSize: 1);
        await using NpgsqlConnection holder = await proxy.OpenAsync(User);
        await using NpgsqlConnection other = await proxy.OpenAsync(User);

        // The holder keeps the only backend in an open transaction.
        await using NpgsqlTransaction tx = await holder.BeginTransactionAsync();
        Assert.Equal(1, await ScalarAsync<int>(holder, "SELECT 1", tx));

        Assert.Equal(other.ProcessID, await ScalarAsync<int>(other, "SELECT pg_backend_pid()").WaitAsync(ReplyDeadline));
        Assert.False(await ScalarAsync<bool>(other, $"SELECT pg_cancel_backend({UnknownPid})").WaitAsync(ReplyDeadline));

        await tx.CommitAsync();
        Assert.Equal(2, await ScalarAsync<int>(other, "SELECT 2").WaitAsync(Patience));
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Named_prepared_statement_reaches_postgres(string mode)
    {
        await using ProxyHarness proxy = StartProxy(mode);
        await using NpgsqlConnection c = await proxy.OpenAsync(User);
        await using var cmd = new NpgsqlCommand("SELECT pg_backend_pid()", c);
        await cmd.PrepareAsync();
        int real = (int)(await cmd.ExecuteScalarAsync())!;
        Assert.True(cmd.IsPrepared);
        Assert.NotEqual(c.ProcessID, real);
        Assert.Equal(1L, await _pg.ScalarAsync<long>($"SELECT count(*) FROM pg_stat_activity WHERE pid = {real} AND usename = '{User}'"));
    }

    // ---- 2 and 9. psql, simple protocol -------------------------------------------------------------------

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Psql_gets_the_session_id_and_postgres_pids_in_multi_statement_queries(string mode)
    {
        await using ProxyHarness proxy = StartProxy(mode);
        (int code, string stdout, string stderr) = await PsqlAsync(
            proxy.Port,
            tuplesOnly: true,
            stdin: null,
            "select pg_backend_pid()",
            "SELECT pg_catalog.pg_backend_pid() AS x;",
            "select pg_backend_pid() ; select 1",
            RealBackendPid);
        Assert.True(code == 0, stderr);
        Assert.Equal(string.Empty, stderr);
        string[] lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(5, lines.Length);
        int session = int.Parse(lines[0], CultureInfo.InvariantCulture);
        Assert.True(session > 0);
        Assert.Equal(session, int.Parse(lines[1], CultureInfo.InvariantCulture));

        // Two statements in one Query are not intercepted: PostgreSQL's own pid, then 1.
        int real = int.Parse(lines[2], CultureInfo.InvariantCulture);
        Assert.NotEqual(session, real);
        Assert.Equal("1", lines[3]);
        Assert.NotEqual(session, int.Parse(lines[4], CultureInfo.InvariantCulture));

        // With headers: the alias names the column.
        (code, stdout, stderr) = await PsqlAsync(proxy.Port, tuplesOnly: false, stdin: null, "SELECT pg_catalog.pg_backend_pid() AS x;");
        Assert.True(code == 0, stderr);
        lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(3, lines.Length);
        Assert.Equal("x", lines[0]);
        Assert.True(int.Parse(lines[1], CultureInfo.InvariantCulture) > 0);
        Assert.Equal("(1 row)", lines[2]);
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Psql_cancel_and_terminate_replies(string mode)
    {
        await using ProxyHarness proxy = StartProxy(mode);

        (int code, string stdout, string stderr) = await PsqlAsync(proxy.Port, tuplesOnly: true, stdin: null, "select pg_cancel_backend(999999)");
        Assert.True(code == 0, stderr);
        Assert.Equal("f\n", stdout);
        Assert.Contains("WARNING:  01000: PID 999999 is not a PostgreSQL backend process", stderr, StringComparison.Ordinal);

        (code, stdout, stderr) = await PsqlAsync(proxy.Port, tuplesOnly: true, stdin: null, "select pg_cancel_backend(NULL)");
        Assert.True(code == 0, stderr);
        Assert.Equal("\n", stdout);
        Assert.Equal(string.Empty, stderr);

        (code, stdout, stderr) = await PsqlAsync(proxy.Port, tuplesOnly: true, stdin: null, "select pg_terminate_backend(1, -5)");
        Assert.NotEqual(0, code);
        Assert.Equal(string.Empty, stdout);
        Assert.Contains("ERROR:  22003: \"timeout\" must not be negative", stderr, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(PsqlSameAsPostgres))]
    public async Task Psql_output_is_postgres_output(string mode, string statement)
    {
        await using ProxyHarness proxy = StartProxy(mode);
        string? stdin = statement.Contains('\n', StringComparison.Ordinal) ? statement : null;
        string[] commands = stdin is null ? [statement] : [];
        (int ExitCode, string StdOut, string StdErr) expected = await PsqlAsync(_pg.Port, tuplesOnly: false, stdin, commands);
        (int ExitCode, string StdOut, string StdErr) actual = await PsqlAsync(proxy.Port, tuplesOnly: false, stdin, commands);
        AssertSame(
            $"exit {expected.ExitCode}\n{expected.StdOut}\n--- stderr\n{WithoutLocation(expected.StdErr)}",
            $"exit {actual.ExitCode}\n{actual.StdOut}\n--- stderr\n{WithoutLocation(actual.StdErr)}");
    }

    // ---- 3. pg_cancel_backend(pid) ------------------------------------------------------------------------

    [Theory]
    [MemberData(nameof(CancelForms))]
    public async Task Cancel_by_pid_cancels_the_sessions_running_query(string mode, string form)
    {
        await using ProxyHarness proxy = StartProxy(mode);
        await using NpgsqlConnection a = await proxy.OpenAsync(User);
        await using NpgsqlConnection b = await proxy.OpenAsync(User);
        int pid = await ScalarAsync<int>(a, "SELECT pg_backend_pid()");
        Assert.Equal(a.ProcessID, pid);

        string marker = Marker();
        await using var sleep = new NpgsqlCommand($"SELECT pg_sleep(30) /* {marker} */", a);
        try
        {
            Task<object?> running = sleep.ExecuteScalarAsync();
            await WaitRunningAsync(marker);

            await using NpgsqlCommand cancel = form == "literal"
                ? new NpgsqlCommand($"SELECT pg_cancel_backend({pid})", b)
                : new NpgsqlCommand("SELECT pg_cancel_backend(@pid)", b) { Parameters = { new NpgsqlParameter("pid", NpgsqlDbType.Integer) { Value = pid } } };
            var sw = Stopwatch.StartNew();
            object? result = await cancel.ExecuteScalarAsync().WaitAsync(Patience);
            Assert.IsType<bool>(result);
            Assert.True((bool)result);

            await AssertFailsAsync(running, "57014");
            Assert.True(sw.Elapsed < SignalDeadline, $"the cancel took {sw.Elapsed}");
            await WaitNotRunningAsync(marker);

            // Both sessions go on.
            Assert.Equal(5, await ScalarAsync<int>(a, "SELECT 5").WaitAsync(Patience));
            Assert.Equal(pid, await ScalarAsync<int>(a, "SELECT pg_backend_pid()"));
            Assert.Equal(6, await ScalarAsync<int>(b, "SELECT 6").WaitAsync(Patience));
        }
        finally
        {
            await CancelLeftoversAsync(marker);
        }
    }

    /// <summary>
    /// pg_cancel_backend takes int4 only, and int8 does not cast to int4 implicitly: PostgreSQL refuses a
    /// bigint parameter at Parse (42883) and cancels nothing. The proxy must do the same.
    /// </summary>
    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Cancel_with_an_int8_parameter_is_refused_as_postgres_refuses_it(string mode)
    {
        // What PostgreSQL says, against one of its own idle backends.
        await using (var directTarget = new NpgsqlConnection(_pg.ConnectionString(User)))
        await using (var direct = new NpgsqlConnection(_pg.ConnectionString(User)))
        {
            await directTarget.OpenAsync();
            await direct.OpenAsync();
            PostgresException pgError = await Assert.ThrowsAsync<PostgresException>(() => CancelWithInt8Async(direct, directTarget.ProcessID));
            Assert.Equal("42883", pgError.SqlState);
            Assert.Equal("function pg_cancel_backend(bigint) does not exist", pgError.MessageText);
        }

        await using ProxyHarness proxy = StartProxy(mode);
        await using NpgsqlConnection a = await proxy.OpenAsync(User);
        await using NpgsqlConnection b = await proxy.OpenAsync(User);
        string marker = Marker();
        await using var sleep = new NpgsqlCommand($"SELECT pg_sleep(1) /* {marker} */", a);
        try
        {
            Task<object?> running = sleep.ExecuteScalarAsync();
            await WaitRunningAsync(marker);
            PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => CancelWithInt8Async(b, a.ProcessID).WaitAsync(Patience));
            Assert.Equal("42883", e.SqlState);
            Assert.Equal("function pg_cancel_backend(bigint) does not exist", e.MessageText);

            // Nothing was cancelled: the sleep finishes normally.
            await running.WaitAsync(Patience);
            Assert.Equal(7, await ScalarAsync<int>(b, "SELECT 7"));
        }
        finally
        {
            await CancelLeftoversAsync(marker);
        }

        static async Task<object?> CancelWithInt8Async(NpgsqlConnection caller, int pid)
        {
            await using var cmd = new NpgsqlCommand("SELECT pg_cancel_backend(@pid)", caller);
            cmd.Parameters.Add(new NpgsqlParameter("pid", NpgsqlDbType.Bigint) { Value = (long)pid });
            return await cmd.ExecuteScalarAsync();
        }
    }

    // ---- 4. pg_terminate_backend(pid[, timeout]) ----------------------------------------------------------

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Terminate_by_pid_ends_the_session_and_leaves_a_clean_backend(string mode)
    {
        // One backend per client: in transaction mode the next client must get the backend the terminated
        // session was using, so a backend returned to the pool still busy would show.
        await using ProxyHarness proxy = StartProxy(mode, poolSize: mode == "session" ? 2 : 1);
        await using NpgsqlConnection a = await proxy.OpenAsync(User);
        await using NpgsqlConnection b = await proxy.OpenAsync(User);
        int pid = await ScalarAsync<int>(a, "SELECT pg_backend_pid()");

        string marker = Marker();
        await using var sleep = new NpgsqlCommand($"SELECT pg_sleep(30) /* {marker} */", a);
        try
        {
            Task<object?> running = sleep.ExecuteScalarAsync();
            await WaitRunningAsync(marker);
            long forwardedBefore = proxy.Server.CancelStats.Forwarded;

            await using var terminate = new NpgsqlCommand("SELECT pg_terminate_backend(@pid)", b);
            terminate.Parameters.AddWithValue("pid", pid);
            object? result = await terminate.ExecuteScalarAsync().WaitAsync(Patience);
            Assert.IsType<bool>(result);
            Assert.True((bool)result);

            await AssertTerminatedAsync(a, running);
            await WaitNotRunningAsync(marker);
            await AssertProxyStillServesAsync(proxy, b);

            // One cancel reached PostgreSQL: the termination's; closing the session does not send another.
            ServerPool pool = proxy.Server.Pools.Pools.Single();
            await CancelRaceTests.PollAsync(() => pool.CoolingCount == 0 && pool.CancelConnections == 0, "the cancel to be settled");
            Assert.Equal(1, proxy.Server.CancelStats.Forwarded - forwardedBefore);
        }
        finally
        {
            await CancelLeftoversAsync(marker);
        }
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Terminate_with_a_timeout_returns_true_once_the_session_is_gone(string mode)
    {
        await using ProxyHarness proxy = StartProxy(mode, poolSize: mode == "session" ? 2 : 1);
        await using NpgsqlConnection a = await proxy.OpenAsync(User);
        await using NpgsqlConnection b = await proxy.OpenAsync(User);
        int pid = await ScalarAsync<int>(a, "SELECT pg_backend_pid()");

        string marker = Marker();
        await using var sleep = new NpgsqlCommand($"SELECT pg_sleep(30) /* {marker} */", a);
        try
        {
            Task<object?> running = sleep.ExecuteScalarAsync();
            await WaitRunningAsync(marker);

            await using var terminate = new NpgsqlCommand("SELECT pg_terminate_backend(@pid, 5000)", b);
            terminate.Parameters.AddWithValue("pid", pid);
            var sw = Stopwatch.StartNew();
            object? result = await terminate.ExecuteScalarAsync().WaitAsync(Patience);
            Assert.IsType<bool>(result);
            Assert.True((bool)result);
            Assert.True(sw.Elapsed < SignalDeadline, $"pg_terminate_backend(pid, 5000) took {sw.Elapsed}");

            await AssertTerminatedAsync(a, running);
            await WaitNotRunningAsync(marker);
            await AssertProxyStillServesAsync(proxy, b);
        }
        finally
        {
            await CancelLeftoversAsync(marker);
        }
    }

    /// <summary>
    /// A session terminated while idle in a transaction leaves no open transaction behind: as PostgreSQL ends
    /// the backend at once, the proxy rolls it back (or closes it) at once, releasing its locks, before anyone
    /// else gets it.
    /// </summary>
    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Terminate_a_session_idle_in_a_transaction_leaves_no_transaction_behind(string mode)
    {
        // server_reset_timeout well past the deadline below: the rollback must not wait for it.
        await using ProxyHarness proxy = StartProxy(mode, poolSize: mode == "session" ? 2 : 1, o => o.ServerResetTimeout = TimeSpan.FromSeconds(30));
        await using NpgsqlConnection a = await proxy.OpenAsync(User);
        await using NpgsqlConnection b = await proxy.OpenAsync(User);
        await using NpgsqlTransaction tx = await a.BeginTransactionAsync();
        Assert.Equal("yes", await ScalarAsync<string>(a, "SELECT set_config('fpp.dirty', 'yes', true)", tx));
        int backend = await ScalarAsync<int>(a, RealBackendPid, tx);
        Assert.Equal("idle in transaction", await BackendStateAsync());

        try
        {
            Assert.True(await ScalarAsync<bool>(b, $"SELECT pg_terminate_backend({a.ProcessID})").WaitAsync(Patience));
            await AssertTerminatedAsync(a, ScalarAsync<int>(a, "SELECT 1", tx));

            // Rolled back (idle) or closed (gone), promptly.
            var sw = Stopwatch.StartNew();
            string? state;
            while ((state = await BackendStateAsync()) is not (null or "idle"))
            {
                Assert.True(sw.Elapsed < ReplyDeadline, $"backend {backend} of the terminated session is still '{state}' {sw.Elapsed} after the terminate");
                await Task.Delay(20);
            }

            await using NpgsqlConnection next = await proxy.OpenAsync(User);
            Assert.NotEqual("yes", await ScalarAsync<string>(next, "SELECT coalesce(current_setting('fpp.dirty', true), '')").WaitAsync(SignalDeadline));
            Assert.Equal(9, await ScalarAsync<int>(b, "SELECT 9").WaitAsync(SignalDeadline));
        }
        finally
        {
            // A failed assertion must not leave the open transaction to the tests that follow.
            await _pg.ExecuteNonQueryAsync($"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = {backend} AND state LIKE 'idle in transaction%'");
        }

        async Task<string?> BackendStateAsync() => await _pg.ScalarAsync<string>($"SELECT state FROM pg_stat_activity WHERE pid = {backend}");
    }

    // ---- 5. Permissions -----------------------------------------------------------------------------------

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Another_user_may_not_cancel_or_terminate(string mode)
    {
        await using ProxyHarness proxy = StartProxy(mode);
        await using NpgsqlConnection a = await proxy.OpenAsync(User);
        await using NpgsqlConnection b = await proxy.OpenAsync(PostgresServer.OtherUser);

        PostgresException cancel = await Assert.ThrowsAsync<PostgresException>(() => ScalarAsync<object>(b, $"SELECT pg_cancel_backend({a.ProcessID})"));
        Assert.Equal("42501", cancel.SqlState);
        Assert.Equal("permission denied to cancel query", cancel.MessageText);
        Assert.Equal("ERROR", cancel.InvariantSeverity);

        await using (var cmd = new NpgsqlCommand("SELECT pg_terminate_backend(@pid)", b))
        {
            cmd.Parameters.AddWithValue("pid", a.ProcessID);
            PostgresException terminate = await Assert.ThrowsAsync<PostgresException>(() => cmd.ExecuteScalarAsync());
            Assert.Equal("42501", terminate.SqlState);
            Assert.Equal("permission denied to terminate process", terminate.MessageText);
        }

        // Nobody was hurt, and the refused caller goes on.
        Assert.Equal(1, await ScalarAsync<int>(a, "SELECT 1"));
        Assert.Equal(a.ProcessID, await ScalarAsync<int>(a, "SELECT pg_backend_pid()"));
        Assert.Equal(2, await ScalarAsync<int>(b, "SELECT 2"));
        Assert.Equal(b.ProcessID, await ScalarAsync<int>(b, "SELECT pg_backend_pid()"));
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task An_admin_user_may_cancel_another_users_query(string mode)
    {
        await using ProxyHarness proxy = StartProxy(mode, configure: o => o.AdminUsers.Add(PostgresServer.OtherUser));
        await using NpgsqlConnection a = await proxy.OpenAsync(User);
        await using NpgsqlConnection b = await proxy.OpenAsync(PostgresServer.OtherUser);

        string marker = Marker();
        await using var sleep = new NpgsqlCommand($"SELECT pg_sleep(30) /* {marker} */", a);
        try
        {
            Task<object?> running = sleep.ExecuteScalarAsync();
            await WaitRunningAsync(marker);
            Assert.True(await ScalarAsync<bool>(b, $"SELECT pg_cancel_backend({a.ProcessID})").WaitAsync(Patience));
            await AssertFailsAsync(running, "57014");
            Assert.Equal(3, await ScalarAsync<int>(a, "SELECT 3").WaitAsync(Patience));
        }
        finally
        {
            await CancelLeftoversAsync(marker);
        }
    }

    // ---- 6. Unknown pid -----------------------------------------------------------------------------------

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Unknown_pid_returns_false_with_postgres_warning(string mode)
    {
        await using ProxyHarness proxy = StartProxy(mode);
        await using NpgsqlConnection c = await proxy.OpenAsync(User);
        var notices = new List<PostgresNotice>();
        c.Notice += (_, e) => notices.Add(e.Notice);

        Assert.False(await ScalarAsync<bool>(c, $"SELECT pg_cancel_backend({UnknownPid})"));
        PostgresNotice notice = Assert.Single(notices);
        Assert.Equal("WARNING", notice.InvariantSeverity);
        Assert.Equal("01000", notice.SqlState);
        Assert.Equal($"PID {UnknownPid} is not a PostgreSQL backend process", notice.MessageText);

        notices.Clear();
        await using (var cmd = new NpgsqlCommand("SELECT pg_terminate_backend(@pid)", c))
        {
            cmd.Parameters.AddWithValue("pid", UnknownPid);
            Assert.Equal(false, await cmd.ExecuteScalarAsync());
        }

        notice = Assert.Single(notices);
        Assert.Equal("01000", notice.SqlState);
        Assert.Equal($"PID {UnknownPid} is not a PostgreSQL backend process", notice.MessageText);
    }

    // ---- 7. Parameter errors and NULL ---------------------------------------------------------------------

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Parameter_errors_and_null_are_postgres_own(string mode)
    {
        await using ProxyHarness proxy = StartProxy(mode);
        await using NpgsqlConnection c = await proxy.OpenAsync(User);
        await using var direct = new NpgsqlConnection(_pg.ConnectionString(User));
        await direct.OpenAsync();

        // Untyped text "abc": PostgreSQL infers int4 for the parameter and fails to read the value.
        PostgresException expected = await Assert.ThrowsAsync<PostgresException>(() => CancelWithUnknownAsync(direct, "abc"));
        PostgresException actual = await Assert.ThrowsAsync<PostgresException>(() => CancelWithUnknownAsync(c, "abc"));
        Assert.Equal("22P02", expected.SqlState);
        Assert.Equal(expected.SqlState, actual.SqlState);
        Assert.Equal(expected.MessageText, actual.MessageText);
        Assert.Equal("invalid input syntax for type integer: \"abc\"", actual.MessageText);

        // A NULL pid: the function is strict, the result NULL.
        await using (var cmd = new NpgsqlCommand("SELECT pg_cancel_backend($1)", c))
        {
            cmd.Parameters.Add(new NpgsqlParameter { NpgsqlDbType = NpgsqlDbType.Integer, Value = DBNull.Value });
            Assert.Equal(DBNull.Value, await cmd.ExecuteScalarAsync());
        }

        await using (var cmd = new NpgsqlCommand("SELECT pg_terminate_backend($1, $2)", c))
        {
            cmd.Parameters.Add(new NpgsqlParameter { NpgsqlDbType = NpgsqlDbType.Integer, Value = UnknownPid });
            cmd.Parameters.Add(new NpgsqlParameter { NpgsqlDbType = NpgsqlDbType.Bigint, Value = DBNull.Value });
            Assert.Equal(DBNull.Value, await cmd.ExecuteScalarAsync());
        }

        Assert.Equal(c.ProcessID, await ScalarAsync<int>(c, "SELECT pg_backend_pid()"));

        static async Task<object?> CancelWithUnknownAsync(NpgsqlConnection conn, string value)
        {
            await using var cmd = new NpgsqlCommand("SELECT pg_cancel_backend($1)", conn);
            cmd.Parameters.Add(new NpgsqlParameter { NpgsqlDbType = NpgsqlDbType.Unknown, Value = value });
            return await cmd.ExecuteScalarAsync();
        }
    }

    // ---- 8. Failed transaction ----------------------------------------------------------------------------

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Calls_in_a_failed_transaction_get_25P02(string mode)
    {
        await using ProxyHarness proxy = StartProxy(mode, poolSize: 4);
        await using NpgsqlConnection c = await proxy.OpenAsync(User);
        await using (NpgsqlTransaction tx = await c.BeginTransactionAsync())
        {
            PostgresException division = await Assert.ThrowsAsync<PostgresException>(() => ScalarAsync<int>(c, "SELECT 1/0", tx));
            Assert.Equal("22012", division.SqlState);

            foreach (string sql in new[] { "SELECT pg_backend_pid()", $"SELECT pg_cancel_backend({UnknownPid})", "SELECT pg_terminate_backend(1, -5)" })
            {
                PostgresException aborted = await Assert.ThrowsAsync<PostgresException>(() => ScalarAsync<object>(c, sql, tx));
                Assert.Equal("25P02", aborted.SqlState);
                Assert.Equal("current transaction is aborted, commands ignored until end of transaction block", aborted.MessageText);
            }

            await tx.RollbackAsync();
        }

        Assert.Equal(c.ProcessID, await ScalarAsync<int>(c, "SELECT pg_backend_pid()"));
        Assert.Equal(4, await ScalarAsync<int>(c, "SELECT 4"));
    }

    // ---- 9. Pass-through ----------------------------------------------------------------------------------

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Statements_that_are_not_one_call_reach_postgres(string mode)
    {
        await using ProxyHarness proxy = StartProxy(mode);
        await using NpgsqlConnection c = await proxy.OpenAsync(User);

        await using (var cmd = new NpgsqlCommand("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE false", c))
        await using (NpgsqlDataReader r = await cmd.ExecuteReaderAsync())
        {
            Assert.Equal("pg_cancel_backend", r.GetName(0));
            Assert.Equal("boolean", r.GetDataTypeName(0));
            Assert.False(await r.ReadAsync());
        }

        Assert.Equal("pg_backend_pid()", await ScalarAsync<string>(c, "select 'pg_backend_pid()'"));
        Assert.NotEqual(c.ProcessID, await ScalarAsync<int>(c, "SELECT pg_backend_pid() FROM (VALUES (1)) v"));
    }

    /// <summary>
    /// A batch of several statements before one Sync is not one intercepted statement, even when its last
    /// statement alone would be: PostgreSQL runs it (its own pid) and skips it after an earlier error.
    /// </summary>
    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Batch_of_several_statements_reaches_postgres(string mode)
    {
        await using ProxyHarness proxy = StartProxy(mode);

        // A short command timeout: a batch the proxy never answers fails in seconds, not at the harness's 60.
        var builder = new NpgsqlConnectionStringBuilder(proxy.ConnectionString(User)) { CommandTimeout = 5, CancellationTimeout = -1 };
        await using var c = new NpgsqlConnection(builder.ConnectionString);
        await c.OpenAsync();

        await using (var batch = new NpgsqlBatch(c) { BatchCommands = { new("SELECT 1"), new("SELECT pg_backend_pid()"), new(RealBackendPid) } })
        {
            await using NpgsqlDataReader r = await AnsweredAsync(batch.ExecuteReaderAsync());
            Assert.True(await r.ReadAsync());
            Assert.Equal(1, r.GetInt32(0));
            Assert.True(await r.NextResultAsync());
            Assert.True(await r.ReadAsync());
            int first = r.GetInt32(0);
            Assert.True(await r.NextResultAsync());
            Assert.True(await r.ReadAsync());
            int second = r.GetInt32(0);
            Assert.NotEqual(c.ProcessID, first);
            Assert.Equal(second, first);
        }

        await using (var failing = new NpgsqlBatch(c) { BatchCommands = { new("SELECT 1/0"), new("SELECT pg_backend_pid()") } })
        {
            PostgresException e = await Assert.ThrowsAsync<PostgresException>(() => AnsweredAsync(failing.ExecuteReaderAsync()));
            Assert.Equal("22012", e.SqlState);
        }

        Assert.Equal(c.ProcessID, await ScalarAsync<int>(c, "SELECT pg_backend_pid()"));

        // Npgsql reports its own command timeout as an NpgsqlException around a TimeoutException.
        static async Task<T> AnsweredAsync<T>(Task<T> task)
        {
            try
            {
                return await task;
            }
            catch (NpgsqlException e) when (e.InnerException is TimeoutException)
            {
                Assert.Fail("the batch got no reply within Npgsql's 5 s command timeout");
                throw;
            }
        }
    }

    /// <summary>
    /// Npgsql's multiplexing writes commands of concurrent callers back to back on one connection, so a
    /// pg_backend_pid() often arrives in the same packet as the query before it. Every command is answered.
    /// </summary>
    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Multiplexed_calls_behind_running_queries_are_answered(string mode)
    {
        await using ProxyHarness proxy = StartProxy(mode);
        var builder = new NpgsqlConnectionStringBuilder(proxy.ConnectionString(User, pooling: true))
        {
            Multiplexing = true,
            MaxPoolSize = 1,
        };
        await using NpgsqlDataSource source = NpgsqlDataSource.Create(builder.ConnectionString);

        // One connection only: learn its session id first.
        int session;
        await using (NpgsqlCommand first = source.CreateCommand("SELECT pg_backend_pid()"))
        {
            session = (int)(await first.ExecuteScalarAsync())!;
        }

        var tasks = new List<Task<object?>>();
        for (int i = 0; i < 20; i++)
        {
            tasks.Add(RunAsync(i % 2 == 0 ? "SELECT pg_sleep(0.05)::text" : "SELECT pg_backend_pid()"));
        }

        object?[] results;
        try
        {
            results = await Task.WhenAll(tasks).WaitAsync(ReplyDeadline);
        }
        catch (TimeoutException)
        {
            Assert.Fail($"{tasks.Count(t => !t.IsCompleted)} of {tasks.Count} multiplexed commands got no reply within {ReplyDeadline.TotalSeconds} s");
            throw;
        }

        for (int i = 1; i < results.Length; i += 2)
        {
            Assert.Equal(session, results[i]);
        }

        async Task<object?> RunAsync(string sql)
        {
            await using NpgsqlCommand cmd = source.CreateCommand(sql);
            return await cmd.ExecuteScalarAsync();
        }
    }

    // ---- 10. Raw extended protocol ------------------------------------------------------------------------

    [Theory]
    [MemberData(nameof(RawSameAsPostgres))]
    public async Task Extended_protocol_replies_are_postgres_replies(string mode, string exchange)
    {
        await using ProxyHarness proxy = StartProxy(mode);
        List<string> expected = await RawExchangeAsync(_pg.Port, exchange);
        List<string> actual = await RawExchangeAsync(proxy.Port, exchange);
        if (exchange is "parse then bind in a second round trip" or "describe statement then bind in a second round trip" or "stale unnamed statement on the backend")
        {
            // By design (README, "Exactly what is intercepted") only a whole one-off command batch is
            // answered by the proxy; a statement prepared in one round trip and bound in a later one must
            // exist on the backend, so it goes to PostgreSQL, whose DataRow carries its own backend pid.
            // Everything else of the exchange must be PostgreSQL's own replies.
            expected = expected.Select(m => m.StartsWith("D ", StringComparison.Ordinal) ? "D <a pid>" : m).ToList();
            actual = actual.Select(m => m.StartsWith("D ", StringComparison.Ordinal) ? "D <a pid>" : m).ToList();
        }

        AssertSame(string.Join('\n', expected), string.Join('\n', actual));

        if (exchange == "describe both")
        {
            // ParseComplete, ParameterDescription (no parameters), RowDescription (int4), BindComplete,
            // RowDescription, DataRow (the connection's own pid), CommandComplete, ReadyForQuery; then the
            // follow-up query's replies.
            Assert.Equal("1 t T 2 T D C Z", string.Join(' ', actual.SkipLast(1).Select(m => m[0])));
            Assert.Equal("t 0000", actual[1]);
            Assert.Contains("D <own pid>", actual);
            Assert.Contains("C SELECT 1", actual);
        }
    }

    // ---- Helpers ------------------------------------------------------------------------------------------

    private ProxyHarness StartProxy(string mode, int? poolSize = null, Action<ProxyOptions>? configure = null) =>
        ProxyHarness.Start(_pg, mode == "session" ? PoolMode.Session : PoolMode.Transaction, poolSize ?? (mode == "session" ? 20 : 4), configure);

    private static string Marker() => "icpt-" + Guid.NewGuid().ToString("N");

    private static async Task<T> ScalarAsync<T>(NpgsqlConnection c, string sql, NpgsqlTransaction? tx = null)
    {
        await using var cmd = new NpgsqlCommand(sql, c, tx);
        return (T)(await cmd.ExecuteScalarAsync())!;
    }

    /// <summary>Active queries in PostgreSQL containing <paramref name="marker"/>, other than the one asking.</summary>
    private async Task<long> RunningAsync(string marker) => await _pg.ScalarAsync<long>(
        $"SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()");

    private async Task WaitRunningAsync(string marker)
    {
        var sw = Stopwatch.StartNew();
        while (await RunningAsync(marker) == 0)
        {
            Assert.True(sw.Elapsed < Patience, $"query '{marker}' did not start within {Patience}");
            await Task.Delay(20);
        }
    }

    /// <summary>Waits until PostgreSQL runs no query containing <paramref name="marker"/> any more.</summary>
    private async Task WaitNotRunningAsync(string marker)
    {
        var sw = Stopwatch.StartNew();
        long running;
        while ((running = await RunningAsync(marker)) > 0)
        {
            Assert.True(sw.Elapsed < SignalDeadline, $"PostgreSQL still runs {running} query '{marker}' after {sw.Elapsed}");
            await Task.Delay(20);
        }
    }

    /// <summary>A failed assertion must not leave a sleeping query behind: disposing its connection would wait for it.</summary>
    private async Task CancelLeftoversAsync(string marker) => await _pg.ExecuteNonQueryAsync(
        $"SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()");

    /// <summary>
    /// The running command fails with <paramref name="sqlState"/> within <see cref="SignalDeadline"/>. Npgsql
    /// reports a 57014 it did not ask for as the PostgresException itself, and one it did ask for wrapped in an
    /// OperationCanceledException.
    /// </summary>
    private static async Task AssertFailsAsync(Task running, string sqlState)
    {
        Exception e = await CaptureFailureAsync(running);
        PostgresException pg = Assert.IsType<PostgresException>(e is OperationCanceledException { InnerException: not null } ? e.InnerException : e);
        Assert.Equal(sqlState, pg.SqlState);
    }

    private static async Task<Exception> CaptureFailureAsync(Task running)
    {
        try
        {
            await running.WaitAsync(SignalDeadline);
        }
        catch (TimeoutException)
        {
            Assert.Fail($"the command was still running {SignalDeadline.TotalSeconds} s after the signal");
        }
        catch (Exception e)
        {
            return e;
        }

        Assert.Fail("the command completed without an error");
        return null!;
    }

    /// <summary>
    /// The terminated session's command fails with FATAL 57P01 (or, had the proxy closed without a word, a
    /// connection error) and the connection is broken for good.
    /// </summary>
    private static async Task AssertTerminatedAsync(NpgsqlConnection a, Task running)
    {
        Exception e = await CaptureFailureAsync(running);
        if (e is PostgresException pg)
        {
            Assert.Equal("57P01", pg.SqlState);
            Assert.Equal("terminating connection due to administrator command", pg.MessageText);
            Assert.Equal("FATAL", pg.InvariantSeverity);
        }
        else
        {
            Assert.IsAssignableFrom<NpgsqlException>(e);
        }

        Assert.NotEqual(ConnectionState.Open, a.State);
        await Assert.ThrowsAnyAsync<Exception>(() => ScalarAsync<int>(a, "SELECT 1"));
    }

    /// <summary>New clients and the caller still get clean backends from the same proxy.</summary>
    private static async Task AssertProxyStillServesAsync(ProxyHarness proxy, NpgsqlConnection caller)
    {
        for (int i = 0; i < 3; i++)
        {
            await using NpgsqlConnection next = await proxy.OpenAsync(User);
            Assert.Equal(40 + i, await ScalarAsync<int>(next, $"SELECT {40 + i}").WaitAsync(Patience));
            Assert.Equal(next.ProcessID, await ScalarAsync<int>(next, "SELECT pg_backend_pid()").WaitAsync(Patience));
        }

        Assert.Equal(8, await ScalarAsync<int>(caller, "SELECT 8").WaitAsync(Patience));
    }

    private async Task<(int ExitCode, string StdOut, string StdErr)> PsqlAsync(int port, bool tuplesOnly, string? stdin, params string[] commands)
    {
        var args = new List<string>
        {
            "-X", tuplesOnly ? "-At" : "-A", "-v", "VERBOSITY=verbose",
            "-h", "127.0.0.1", "-p", port.ToString(CultureInfo.InvariantCulture), "-U", User, "-d", PostgresServer.Database,
        };
        foreach (string command in commands)
        {
            args.Add("-c");
            args.Add(command);
        }

        var env = new Dictionary<string, string> { ["PGPASSWORD"] = string.Empty, ["PGCONNECT_TIMEOUT"] = "10", ["PGOPTIONS"] = string.Empty };
        return await ProcessRunner.RunAsync(_pg.ToolPath("psql"), args, Patience, env, stdin ?? string.Empty);
    }

    /// <summary>Equal texts, or a failure that shows both in full: PostgreSQL's reply, then the proxy's.</summary>
    private static void AssertSame(string postgres, string proxy) =>
        Assert.True(postgres == proxy, $"PostgreSQL replied:\n{postgres}\n\nthe proxy replied:\n{proxy}");

    /// <summary>PostgreSQL's LOCATION lines name its C source; the proxy has none to give.</summary>
    private static string WithoutLocation(string stderr) =>
        string.Join('\n', stderr.Split('\n').Where(line => !line.StartsWith("LOCATION:", StringComparison.Ordinal)));

    /// <summary>
    /// Logs in over a raw socket, runs the named exchange step by step (each step one write, then its replies
    /// up to the step's count of ReadyForQuery), and describes each reply message: errors and notices by their
    /// fields (without PostgreSQL's source location F, L, R), a data row that holds the connection's own pid
    /// as <c>D &lt;own pid&gt;</c>, anything else as its bytes.
    /// </summary>
    private static async Task<List<string>> RawExchangeAsync(int port, string exchange)
    {
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync("127.0.0.1", port);
        await socket.SendAsync(RawProtocol.Startup(("user", User), ("database", PostgresServer.Database)));
        int ownPid = 0;
        foreach ((byte type, byte[] body) in await RawProtocol.ReadUntilReadyAsync(socket, Patience))
        {
            Assert.NotEqual((byte)'E', type);
            if (type == (byte)'K')
            {
                ownPid = BinaryPrimitives.ReadInt32BigEndian(body);
            }
        }

        Assert.NotEqual(0, ownPid);
        var described = new List<string>();
        foreach ((byte[][] messages, int readyCount) in RawSteps(exchange))
        {
            await socket.SendAsync(messages.SelectMany(m => m).ToArray());
            for (int i = 0; i < readyCount; i++)
            {
                List<(byte Type, byte[] Body)> replies;
                try
                {
                    replies = await RawProtocol.ReadUntilReadyAsync(socket, ReplyDeadline);
                }
                catch (OperationCanceledException)
                {
                    described.Add($"<no ReadyForQuery within {ReplyDeadline.TotalSeconds} s>");
                    return described;
                }

                described.AddRange(replies.Select(m => Describe(m.Type, m.Body, ownPid)));
            }
        }

        // The session still answers afterwards.
        await socket.SendAsync(RawProtocol.Query("SELECT 424243"));
        described.Add("then " + string.Concat((await RawProtocol.ReadUntilReadyAsync(socket, ReplyDeadline)).Select(m => (char)m.Type)));
        return described;
    }

    /// <summary>The writes of a named raw exchange, each with the number of ReadyForQuery it is answered with.</summary>
    private static IEnumerable<(byte[][] Messages, int ReadyCount)> RawSteps(string exchange)
    {
        byte[] bindAll = RawProtocol.Bind(string.Empty, string.Empty, [], [], []);
        byte[] describePortal = RawProtocol.Describe('P', string.Empty);
        byte[] execute = RawProtocol.Execute(string.Empty);
        byte[] sync = RawProtocol.Sync();
        byte[][] OneShot(string sql) => [RawProtocol.Parse(string.Empty, sql), bindAll, describePortal, execute, sync];
        byte[] Text(long value) => Encoding.UTF8.GetBytes(value.ToString(CultureInfo.InvariantCulture));

        switch (exchange)
        {
            case "describe both":
                yield return ([RawProtocol.Parse(string.Empty, "SELECT pg_backend_pid()"), RawProtocol.Describe('S', string.Empty), bindAll, describePortal, execute, sync], 1);
                break;
            case "binary result":
                yield return ([RawProtocol.Parse(string.Empty, $"SELECT pg_cancel_backend({UnknownPid}) AS \"Done\""), RawProtocol.Bind(string.Empty, string.Empty, [], [], [1]), describePortal, execute, sync], 1);
                break;
            case "text parameter abc":
                yield return ([RawProtocol.Parse(string.Empty, "SELECT pg_cancel_backend($1)"), RawProtocol.Bind(string.Empty, string.Empty, [], [Encoding.UTF8.GetBytes("abc")], []), describePortal, execute, sync], 1);
                break;
            case "null parameter":
                byte[] pid = new byte[sizeof(int)];
                BinaryPrimitives.WriteInt32BigEndian(pid, UnknownPid);
                yield return ([RawProtocol.Parse(string.Empty, "SELECT pg_terminate_backend($1, $2)"), RawProtocol.Describe('S', string.Empty), RawProtocol.Bind(string.Empty, string.Empty, [1], [pid, null], [1]), describePortal, execute, sync], 1);
                break;
            case "unknown pid":
                yield return ([RawProtocol.Parse(string.Empty, "SELECT pg_cancel_backend($1)", 23), RawProtocol.Bind(string.Empty, string.Empty, [0], [Text(UnknownPid)], []), describePortal, execute, sync], 1);
                break;
            case "int8 parameter":
                yield return ([RawProtocol.Parse(string.Empty, "SELECT pg_cancel_backend($1)", 20), RawProtocol.Bind(string.Empty, string.Empty, [0], [Text(UnknownPid)], []), describePortal, execute, sync], 1);
                break;
            case "not bound":
                yield return ([RawProtocol.Parse(string.Empty, "SELECT pg_backend_pid()"), execute, sync], 1);
                break;
            case "queued behind a slow query":
                // One write: the local answers must come after the backend's, in request order.
                yield return ([RawProtocol.Query("SELECT pg_sleep(0.3)::text"), .. OneShot("SELECT pg_backend_pid()"), RawProtocol.Query("select pg_backend_pid()"), RawProtocol.Query("SELECT 424242")], 4);
                break;
            case "inside a transaction":
                yield return ([RawProtocol.Query("BEGIN"), RawProtocol.Query("select pg_backend_pid()"), .. OneShot($"SELECT pg_cancel_backend({UnknownPid})"), RawProtocol.Query("COMMIT")], 4);
                break;
            case "inside a failed transaction":
                yield return ([RawProtocol.Query("BEGIN"), RawProtocol.Query("SELECT 1/0"), RawProtocol.Query("select pg_backend_pid()"), .. OneShot("SELECT pg_backend_pid()"), RawProtocol.Query("ROLLBACK"), RawProtocol.Query("select pg_backend_pid()")], 6);
                break;
            case "after an error in the same pipeline":
                // Two statements before one Sync: not one intercepted batch. PostgreSQL skips the second after the error.
                yield return ([RawProtocol.Parse(string.Empty, "SELECT 1/0"), bindAll, describePortal, execute, .. OneShot("SELECT pg_backend_pid()")], 1);
                break;
            case "ordinary statement: parse then bind in a second round trip":
                // The control for the next two: an unnamed statement outlives its Sync on PostgreSQL.
                yield return ([RawProtocol.Parse(string.Empty, "SELECT 424244"), sync], 1);
                yield return ([bindAll, describePortal, execute, sync], 1);
                break;
            case "parse then bind in a second round trip":
                // libpq's PQprepare with an empty name, then PQexecPrepared.
                yield return ([RawProtocol.Parse(string.Empty, "SELECT pg_backend_pid()"), sync], 1);
                yield return ([bindAll, describePortal, execute, sync], 1);
                break;
            case "describe statement then bind in a second round trip":
                yield return ([RawProtocol.Parse(string.Empty, "SELECT pg_backend_pid()"), RawProtocol.Describe('S', string.Empty), sync], 1);
                yield return ([bindAll, execute, sync], 1);
                break;
            case "stale unnamed statement on the backend":
                // The backend's unnamed statement is 'stale' when the intercepted Parse arrives.
                yield return (OneShot("SELECT 'stale'"), 1);
                yield return ([RawProtocol.Parse(string.Empty, "SELECT pg_backend_pid()"), sync], 1);
                yield return ([bindAll, describePortal, execute, sync], 1);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(exchange), exchange, null);
        }
    }

    private static string Describe(byte type, byte[] body, int ownPid)
    {
        char t = (char)type;
        switch (t)
        {
            case 'E' or 'N':
                return $"{t} " + string.Join(' ', RawProtocol.Fields(body).Where(f => f.Code is not ('F' or 'L' or 'R')).Select(f => $"{f.Code}={f.Value}"));
            case 'C':
                return $"C {Encoding.UTF8.GetString(body, 0, body.Length - 1)}";
            case 'D' when body.Length > sizeof(short) + sizeof(int) && BinaryPrimitives.ReadInt16BigEndian(body) == 1:
                int length = BinaryPrimitives.ReadInt32BigEndian(body.AsSpan(sizeof(short)));
                if (length > 0 && Encoding.UTF8.GetString(body, sizeof(short) + sizeof(int), length) == ownPid.ToString(CultureInfo.InvariantCulture))
                {
                    return "D <own pid>";
                }

                break;
        }

        return $"{t} {Convert.ToHexString(body)}";
    }
}
