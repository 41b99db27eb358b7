using System.Buffers.Binary;
using System.Text;
using FastPgProxy.Admin;
using FastPgProxy.Hosting;
using FastPgProxy.Interception;
using FastPgProxy.Protocol;

namespace FastPgProxy.Sessions;

/// <summary>What the console's message loop does after one message.</summary>
internal enum AdminStep
{
    /// <summary>Go on with the next message.</summary>
    Continue,
    /// <summary>Send what is buffered (after ReadyForQuery or Flush), then go on.</summary>
    Flush,
    /// <summary>A command runs on the thread pool; its completion resumes the loop.</summary>
    Wait,
    /// <summary>The session is closing.</summary>
    Stop,
}

/// <summary>
/// Admin console sessions: logged in like any client, then served by <see cref="AdminConsole"/> without a
/// backend. The session speaks the simple and the extended query protocol (55.2.2, 55.2.3) itself:
/// replies are built in an <see cref="AdminOutput"/> and sent at ReadyForQuery or Flush, as PostgreSQL
/// sends them; commands run on the thread pool and their completion is posted back to this loop, so one
/// command at a time runs and the client's further messages wait in its receive window.
/// </summary>
internal sealed partial class ClientSession
{
    private AdminConsole? _console;
    private AdminOutput? _adminOutput;
    private Dictionary<string, AdminStatement>? _adminStatements;
    private Dictionary<string, AdminPortal>? _adminPortals;
    private bool _adminBusy;
    private bool _adminSkipToSync;
    private bool _adminShutdownRequested;

    /// <summary>
    /// Login finished for a console session: AuthenticationOk, the parameters a client expects of a
    /// PostgreSQL server, BackendKeyData and ReadyForQuery (55.2.2). Nothing else was sent for the console.
    /// </summary>
    private void OnAdminAuthenticated()
    {
        State = SessionState.Active;
        _console = new AdminConsole(_proxy);
        AdminOutput output = _adminOutput = new AdminOutput();
        output.WriteAuthenticationOk();
        output.WriteParameterStatus("server_version", AdminConsole.ReportedServerVersion);
        output.WriteParameterStatus("server_encoding", "UTF8");
        output.WriteParameterStatus("client_encoding", "UTF8");
        output.WriteParameterStatus("DateStyle", "ISO");
        output.WriteParameterStatus("integer_datetimes", "on");
        output.WriteParameterStatus("standard_conforming_strings", "on");
        output.WriteParameterStatus("TimeZone", "UTC");
        output.WriteParameterStatus("application_name", ApplicationName);
        output.WriteBackendKeyData(Id, Volatile.Read(ref _secret));
        output.WriteReadyForQuery();
        Log.Write(LogLevel.Info, $"session {Id}: admin console login ok, user={User} ({_console.RoleOf(User!).ToString().ToLowerInvariant()})");
        FlushAdmin();
    }

    /// <summary>
    /// Serves the console's messages from the receive window until a reply must go out, a command runs,
    /// or more bytes are needed. Called when the window has data and when the previous reply was sent.
    /// </summary>
    private void PumpAdmin()
    {
        if (_adminBusy || State != SessionState.Active || _out is not null)
        {
            return;
        }

        AdminOutput output = _adminOutput!;
        if (_adminShutdownRequested && output.Length == 0)
        {
            // The SHUTDOWN reply is out: stop as SIGTERM does. This session is told 57P01 like every other.
            _adminShutdownRequested = false;
            Log.Write(LogLevel.Warning, $"shutdown requested by admin console session {Id} ({User})");
            ProxyServer proxy = _proxy;
            _ = Task.Run(() => proxy.StopAsync(TimeSpan.FromSeconds(5)));
        }

        while (true)
        {
            ReadOnlySpan<byte> window = _client.Window;
            if (window.Length < MessageFramer.HeaderLength)
            {
                break;
            }

            int length = MessageFramer.ReadLength(window);
            if (length < sizeof(int))
            {
                Fatal(SqlState.ProtocolViolation, "invalid message length");
                return;
            }

            int total = length + sizeof(byte);
            if (total > Loop.Buffers.BufferSize)
            {
                // The console's messages are short; one that cannot fit the window could never be read whole.
                Fatal(SqlState.ProgramLimitExceeded, $"admin console message of {total} bytes is too long");
                return;
            }

            if (window.Length < total)
            {
                break;
            }

            AdminStep step;
            try
            {
                step = OnAdminMessage(window[0], window.Slice(MessageFramer.HeaderLength, total - MessageFramer.HeaderLength));
            }
            catch (InvalidOperationException e)
            {
                // The reply would exceed AdminOutput's bound.
                Fatal(SqlState.ProgramLimitExceeded, e.Message);
                return;
            }

            if (step == AdminStep.Stop)
            {
                return;
            }

            _client.Consume(total);
            if (step == AdminStep.Wait)
            {
                return;
            }

            if ((step == AdminStep.Flush && output.Length > 0) || output.Length >= AdminOutput.FlushThreshold)
            {
                FlushAdmin();
                return;
            }
        }

        ReceiveClient();
    }

    /// <summary>Sends what the output holds; the loop resumes when the send is done (AfterSend.ContinueRelay).</summary>
    private void FlushAdmin()
    {
        AdminOutput output = _adminOutput!;
        int length = output.Length;
        if (length == 0)
        {
            PumpAdmin();
            return;
        }

        // The bytes stay in the output's array until the send completes: nothing writes to it before then.
        output.Clear();
        SendOwned(output.Buffer, length, AfterSend.ContinueRelay);
    }

    /// <summary>Handles one complete message of the simple or extended query protocol (55.7 for the formats).</summary>
    private AdminStep OnAdminMessage(byte type, ReadOnlySpan<byte> body)
    {
        AdminOutput output = _adminOutput!;
        switch (type)
        {
            case (byte)FrontendMessage.Terminate:
                Log.Write(LogLevel.Info, $"session {Id}: admin console client sent Terminate");
                Close();
                return AdminStep.Stop;
            case (byte)'S':
                // Sync ends the implicit transaction of an extended batch: portals go, errors stop being skipped.
                _adminSkipToSync = false;
                _adminPortals?.Clear();
                output.WriteReadyForQuery();
                return AdminStep.Flush;
        }

        if (_adminSkipToSync)
        {
            // After an error in an extended batch, everything up to Sync is ignored (55.2.3).
            return AdminStep.Continue;
        }

        switch (type)
        {
            case (byte)FrontendMessage.Query:
                return OnAdminQuery(body);
            case (byte)FrontendMessage.Parse:
                return OnAdminParse(body);
            case (byte)'B':
                return OnAdminBind(body);
            case (byte)'D':
                return OnAdminDescribe(body);
            case (byte)'E':
                return OnAdminExecute(body);
            case (byte)'C':
                return OnAdminClose(body);
            case (byte)'H':
                return AdminStep.Flush;
            case (byte)'d' or (byte)'c' or (byte)'f':
                // CopyData, CopyDone, CopyFail outside a COPY are ignored, as PostgreSQL does.
                return AdminStep.Continue;
            case (byte)'F':
                output.WriteMessage(BackendMessage.ErrorResponse, new AdminMessage(SqlState.FeatureNotSupported, "function calls are not supported by the admin console"));
                output.WriteReadyForQuery();
                return AdminStep.Flush;
            default:
                Fatal(SqlState.ProtocolViolation, $"invalid frontend message type {type}");
                return AdminStep.Stop;
        }
    }

    /// <summary>Simple Query: one command; its rows in text, CommandComplete, ReadyForQuery.</summary>
    private AdminStep OnAdminQuery(ReadOnlySpan<byte> body)
    {
        AdminOutput output = _adminOutput!;
        int pos = 0;
        if (!TryReadAdminString(body, ref pos, out string? text))
        {
            output.WriteMessage(BackendMessage.ErrorResponse, InvalidMessage("Query"));
            output.WriteReadyForQuery();
            return AdminStep.Flush;
        }

        // A simple Query drops the unnamed statement and portal, as in PostgreSQL.
        _adminStatements?.Remove("");
        _adminPortals?.Remove("");
        AdminCommand? command = AdminCommand.TryParse(text, out AdminMessage? error);
        error ??= command is null ? null : _console!.CheckPermission(command, User!);
        if (error is not null)
        {
            output.WriteMessage(BackendMessage.ErrorResponse, error);
            output.WriteReadyForQuery();
            return AdminStep.Flush;
        }

        if (command!.Kind == AdminCommandKind.Empty)
        {
            output.WriteEmpty((byte)'I');
            output.WriteReadyForQuery();
            return AdminStep.Flush;
        }

        return RunAdminCommand(command, portal: null, maxRows: 0);
    }

    /// <summary>Parse: the statement is parsed and checked now (syntax and permission errors come here, as PostgreSQL reports them at Parse).</summary>
    private AdminStep OnAdminParse(ReadOnlySpan<byte> body)
    {
        int pos = 0;
        if (!TryReadAdminString(body, ref pos, out string? name) || !TryReadAdminString(body, ref pos, out string? text)
            || !TryReadInt16(body, ref pos, out short count) || count < 0 || body.Length - pos != count * sizeof(int))
        {
            return AdminExtendedError(InvalidMessage("Parse"));
        }

        int[] parameterTypes = new int[count];
        for (int i = 0; i < count; i++)
        {
            parameterTypes[i] = BinaryPrimitives.ReadInt32BigEndian(body.Slice(pos + (i * sizeof(int))));
        }

        AdminCommand? command = AdminCommand.TryParse(text, out AdminMessage? error);
        error ??= command is null ? null : _console!.CheckPermission(command, User!);
        if (error is not null)
        {
            return AdminExtendedError(error);
        }

        _adminStatements ??= new Dictionary<string, AdminStatement>(StringComparer.Ordinal);
        if (name.Length > 0 && _adminStatements.ContainsKey(name))
        {
            return AdminExtendedError(new AdminMessage(AdminSqlState.DuplicatePreparedStatement, $"prepared statement \"{name}\" already exists"));
        }

        _adminStatements[name] = new AdminStatement(command!, parameterTypes);
        _adminOutput!.WriteEmpty((byte)ReplyMessage.ParseComplete);
        return AdminStep.Continue;
    }

    /// <summary>Bind: a portal over a statement, with the result formats the client wants (0 text, 1 binary).</summary>
    private AdminStep OnAdminBind(ReadOnlySpan<byte> body)
    {
        int pos = 0;
        if (!TryReadAdminString(body, ref pos, out string? portalName) || !TryReadAdminString(body, ref pos, out string? statementName)
            || !TryReadInt16(body, ref pos, out short parameterFormats) || parameterFormats < 0 || body.Length - pos < parameterFormats * sizeof(short))
        {
            return AdminExtendedError(InvalidMessage("Bind"));
        }

        pos += parameterFormats * sizeof(short);
        if (!TryReadInt16(body, ref pos, out short parameters) || parameters < 0)
        {
            return AdminExtendedError(InvalidMessage("Bind"));
        }

        for (int i = 0; i < parameters; i++)
        {
            if (body.Length - pos < sizeof(int))
            {
                return AdminExtendedError(InvalidMessage("Bind"));
            }

            int valueLength = BinaryPrimitives.ReadInt32BigEndian(body.Slice(pos));
            pos += sizeof(int);
            if (valueLength > 0)
            {
                if (body.Length - pos < valueLength)
                {
                    return AdminExtendedError(InvalidMessage("Bind"));
                }

                pos += valueLength;
            }
        }

        if (!TryReadInt16(body, ref pos, out short resultFormats) || resultFormats < 0 || body.Length - pos != resultFormats * sizeof(short))
        {
            return AdminExtendedError(InvalidMessage("Bind"));
        }

        if (_adminStatements is null || !_adminStatements.TryGetValue(statementName, out AdminStatement? statement))
        {
            return AdminExtendedError(NoStatement(statementName));
        }

        if (parameters != statement.ParameterTypes.Length)
        {
            return AdminExtendedError(new AdminMessage(
                SqlState.ProtocolViolation,
                $"bind message supplies {parameters} parameters, but prepared statement \"{statementName}\" requires {statement.ParameterTypes.Length}"));
        }

        AdminColumn[] columns = AdminConsole.Columns(statement.Command);
        short[]? formats = null;
        if (resultFormats > 0)
        {
            if (resultFormats != 1 && resultFormats != columns.Length)
            {
                return AdminExtendedError(new AdminMessage(
                    SqlState.ProtocolViolation,
                    $"bind message has {resultFormats} result formats but query has {columns.Length} columns"));
            }

            formats = new short[columns.Length];
            for (int i = 0; i < columns.Length; i++)
            {
                short code = BinaryPrimitives.ReadInt16BigEndian(body.Slice(pos + ((resultFormats == 1 ? 0 : i) * sizeof(short))));
                if (code is not (InterceptReplies.TextFormat or InterceptReplies.BinaryFormat))
                {
                    return AdminExtendedError(new AdminMessage(AdminSqlState.InvalidParameterValue, $"unsupported format code: {code}"));
                }

                formats[i] = code;
            }
        }

        _adminPortals ??= new Dictionary<string, AdminPortal>(StringComparer.Ordinal);
        if (portalName.Length > 0 && _adminPortals.ContainsKey(portalName))
        {
            return AdminExtendedError(new AdminMessage(AdminSqlState.DuplicateCursor, $"cursor \"{portalName}\" already exists"));
        }

        _adminPortals[portalName] = new AdminPortal(statement, formats);
        _adminOutput!.WriteEmpty((byte)ReplyMessage.BindComplete);
        return AdminStep.Continue;
    }

    /// <summary>Describe: ParameterDescription and RowDescription (statement, text formats) or RowDescription in the portal's formats; NoData for commands.</summary>
    private AdminStep OnAdminDescribe(ReadOnlySpan<byte> body)
    {
        AdminOutput output = _adminOutput!;
        int pos = 1;
        if (body.IsEmpty || !TryReadAdminString(body, ref pos, out string? name) || pos != body.Length)
        {
            return AdminExtendedError(InvalidMessage("Describe"));
        }

        AdminCommand command;
        short[]? formats = null;
        if (body[0] == (byte)'S')
        {
            if (_adminStatements is null || !_adminStatements.TryGetValue(name, out AdminStatement? statement))
            {
                return AdminExtendedError(NoStatement(name));
            }

            output.WriteParameterDescription(statement.ParameterTypes);
            command = statement.Command;
        }
        else if (body[0] == (byte)'P')
        {
            if (_adminPortals is null || !_adminPortals.TryGetValue(name, out AdminPortal? portal))
            {
                return AdminExtendedError(NoPortal(name));
            }

            command = portal.Statement.Command;
            formats = portal.Formats;
        }
        else
        {
            return AdminExtendedError(new AdminMessage(SqlState.ProtocolViolation, $"invalid DESCRIBE message subtype {body[0]}"));
        }

        AdminColumn[] columns = AdminConsole.Columns(command);
        if (columns.Length == 0)
        {
            output.WriteEmpty((byte)ReplyMessage.NoData);
        }
        else
        {
            output.WriteRowDescription(columns, formats);
        }

        return AdminStep.Continue;
    }

    /// <summary>Execute: runs the portal's command the first time (side effects happen here, never at Describe), then sends rows up to the row limit.</summary>
    private AdminStep OnAdminExecute(ReadOnlySpan<byte> body)
    {
        int pos = 0;
        if (!TryReadAdminString(body, ref pos, out string? name) || body.Length - pos != sizeof(int))
        {
            return AdminExtendedError(InvalidMessage("Execute"));
        }

        int maxRows = BinaryPrimitives.ReadInt32BigEndian(body.Slice(pos));
        if (_adminPortals is null || !_adminPortals.TryGetValue(name, out AdminPortal? portal))
        {
            return AdminExtendedError(NoPortal(name));
        }

        if (portal.Statement.Command.Kind == AdminCommandKind.Empty)
        {
            _adminOutput!.WriteEmpty((byte)'I');
            return AdminStep.Continue;
        }

        if (portal.Result is null)
        {
            return RunAdminCommand(portal.Statement.Command, portal, maxRows);
        }

        WritePortalRows(portal, maxRows);
        return AdminStep.Continue;
    }

    /// <summary>Close of a statement or portal; closing one that does not exist is not an error.</summary>
    private AdminStep OnAdminClose(ReadOnlySpan<byte> body)
    {
        int pos = 1;
        if (body.IsEmpty || !TryReadAdminString(body, ref pos, out string? name) || pos != body.Length || body[0] is not ((byte)'S' or (byte)'P'))
        {
            return AdminExtendedError(InvalidMessage("Close"));
        }

        if (body[0] == (byte)'S')
        {
            _adminStatements?.Remove(name);
        }
        else
        {
            _adminPortals?.Remove(name);
        }

        _adminOutput!.WriteEmpty((byte)ReplyMessage.CloseComplete);
        return AdminStep.Continue;
    }

    /// <summary>
    /// Starts <paramref name="command"/> on the thread pool. Its result is written when it completes, back
    /// on this loop: for a simple Query with ReadyForQuery and sent; for a portal, rows up to
    /// <paramref name="maxRows"/>, and the loop goes on with the next message.
    /// </summary>
    private AdminStep RunAdminCommand(AdminCommand command, AdminPortal? portal, int maxRows)
    {
        _adminBusy = true;
        AdminConsole console = _console!;
        Task<AdminResult> running = Task.Run(() => console.ExecuteAsync(command, this));
        running.ContinueWith(
            done => Loop.Post(() => OnAdminCommandDone(done, portal, maxRows)),
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default);
        return AdminStep.Wait;
    }

    private void OnAdminCommandDone(Task<AdminResult> done, AdminPortal? portal, int maxRows)
    {
        _adminBusy = false;
        if (State == SessionState.Closed)
        {
            TryFinish();
            return;
        }

        if (_out is not null || _client.SendPending)
        {
            // Terminated meanwhile: its FATAL is on its way and the session closes after it.
            return;
        }

        AdminResult result = done.IsCompletedSuccessfully
            ? done.Result
            : AdminResult.Failed(SqlState.InternalError, done.Exception?.GetBaseException().Message ?? "command failed");
        _adminShutdownRequested |= result.ShutdownAfterReply;
        AdminOutput output = _adminOutput!;
        try
        {
            if (portal is null)
            {
                WriteAdminResult(result);
                output.WriteReadyForQuery();
                FlushAdmin();
                return;
            }

            portal.Result = result;
            WritePortalRows(portal, maxRows);
        }
        catch (InvalidOperationException e)
        {
            Fatal(SqlState.ProgramLimitExceeded, e.Message);
            return;
        }

        PumpAdmin();
    }

    /// <summary>The reply to a simple Query: notices, RowDescription and DataRows in text, CommandComplete; or the error.</summary>
    private void WriteAdminResult(AdminResult result)
    {
        AdminOutput output = _adminOutput!;
        if (result.Error is { } error)
        {
            output.WriteMessage(BackendMessage.ErrorResponse, error);
            return;
        }

        foreach (AdminMessage notice in result.Notices)
        {
            output.WriteMessage(BackendMessage.NoticeResponse, notice);
        }

        if (result.Columns.Length > 0)
        {
            output.WriteRowDescription(result.Columns, null);
            foreach (object?[] row in result.Rows)
            {
                output.WriteDataRow(result.Columns, row, null);
            }
        }

        output.WriteCommandComplete(result.Tag);
    }

    /// <summary>The reply to Execute: DataRows in the portal's formats up to the row limit, then PortalSuspended or CommandComplete.</summary>
    private void WritePortalRows(AdminPortal portal, int maxRows)
    {
        AdminOutput output = _adminOutput!;
        AdminResult result = portal.Result!;
        if (result.Error is { } error)
        {
            output.WriteMessage(BackendMessage.ErrorResponse, error);
            _adminSkipToSync = true;
            return;
        }

        if (!portal.NoticesSent)
        {
            portal.NoticesSent = true;
            foreach (AdminMessage notice in result.Notices)
            {
                output.WriteMessage(BackendMessage.NoticeResponse, notice);
            }
        }

        int end = maxRows > 0 ? (int)Math.Min(result.Rows.Count, (long)portal.RowsSent + maxRows) : result.Rows.Count;
        for (int i = portal.RowsSent; i < end; i++)
        {
            output.WriteDataRow(result.Columns, result.Rows[i], portal.Formats);
        }

        portal.RowsSent = end;
        if (end < result.Rows.Count)
        {
            output.WriteEmpty((byte)'s');
            return;
        }

        output.WriteCommandComplete(result.Tag);
    }

    /// <summary>An error in an extended batch: ErrorResponse, then everything up to Sync is skipped.</summary>
    private AdminStep AdminExtendedError(AdminMessage error)
    {
        _adminOutput!.WriteMessage(BackendMessage.ErrorResponse, error);
        _adminSkipToSync = true;
        return AdminStep.Continue;
    }

    private static AdminMessage InvalidMessage(string what) => new(SqlState.ProtocolViolation, $"invalid {what} message format");

    private static AdminMessage NoStatement(string name) => new(
        AdminSqlState.InvalidStatementName,
        name.Length == 0 ? "unnamed prepared statement does not exist" : $"prepared statement \"{name}\" does not exist");

    private static AdminMessage NoPortal(string name) => new(
        AdminSqlState.InvalidCursorName,
        name.Length == 0 ? "unnamed portal does not exist" : $"portal \"{name}\" does not exist");

    /// <summary>Reads a NUL-terminated UTF-8 string at <paramref name="pos"/> and moves past it.</summary>
    private static bool TryReadAdminString(ReadOnlySpan<byte> body, ref int pos, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out string? value)
    {
        int end = pos < body.Length ? body.Slice(pos).IndexOf((byte)0) : -1;
        if (end < 0)
        {
            value = null;
            return false;
        }

        value = Encoding.UTF8.GetString(body.Slice(pos, end));
        pos += end + 1;
        return true;
    }

    private static bool TryReadInt16(ReadOnlySpan<byte> body, ref int pos, out short value)
    {
        if (body.Length - pos < sizeof(short))
        {
            value = 0;
            return false;
        }

        value = BinaryPrimitives.ReadInt16BigEndian(body.Slice(pos));
        pos += sizeof(short);
        return true;
    }

    /// <summary>
    /// KILL PGSQL QUERY: on this session's loop, decides whether a query runs and, if so, cancels it
    /// through <see cref="RequestCancel"/> (which decides again, atomically with the backend going back
    /// to the pool). Completes with whether a query was running. Any thread.
    /// </summary>
    public Task<bool> CancelQueryFromAdminAsync()
    {
        var done = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        void Decide()
        {
            if (!Loop.InLoop)
            {
                // Moved to its pool's loop since the post: decide there.
                Loop.Post(Decide);
                return;
            }

            bool running = IsQueryRunning;
            if (running)
            {
                RequestCancel(null);
            }

            done.TrySetResult(running);
        }

        Loop.Post(Decide);
        return done.Task;
    }

    /// <summary>A statement of the console's extended protocol: the command, checked at Parse, and the parameter types the client declared.</summary>
    private sealed record AdminStatement(AdminCommand Command, int[] ParameterTypes);

    /// <summary>A portal: its statement, result formats (null: all text), and, once executed, the result and how many rows went out.</summary>
    private sealed class AdminPortal(AdminStatement statement, short[]? formats)
    {
        public AdminStatement Statement { get; } = statement;

        public short[]? Formats { get; } = formats;

        public AdminResult? Result { get; set; }

        public int RowsSent { get; set; }

        public bool NoticesSent { get; set; }
    }
}
