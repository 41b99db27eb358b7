using System.Buffers.Binary;
using System.Text;
using FastPgProxy.Hosting;
using FastPgProxy.Protocol;
using FastPgProxy.Sessions;

namespace FastPgProxy.Admin;

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
/// One admin console connection after its login: served by <see cref="AdminConsole"/> without a backend.
/// It speaks the simple and the extended query protocol (55.2.2, 55.2.3) itself over its owner's client
/// socket: replies are built in an <see cref="AdminOutput"/> and sent at ReadyForQuery or Flush, as
/// PostgreSQL sends them; commands run on the thread pool and their completion is posted back to the
/// owner's loop, so one command at a time runs and the client's further messages wait in its receive
/// window. Made by the owning <see cref="ClientSession"/> when the console login is authenticated, never
/// for a relay client; everything it does runs on the owner's loop. The extended protocol's messages are
/// in AdminSession.Extended.cs.
/// </summary>
internal sealed partial class AdminSession
{
    private readonly ClientSession _owner;
    private readonly AdminConsole _console;
    private readonly AdminOutput _output = new();
    private Dictionary<string, AdminStatement>? _statements;
    private Dictionary<string, AdminPortal>? _portals;
    private bool _busy;
    private bool _skipToSync;
    private bool _shutdownRequested;

    /// <summary>The console session of <paramref name="owner"/>, whose client socket, loop and login it uses; <see cref="Start"/> begins it.</summary>
    public AdminSession(ClientSession owner)
    {
        _owner = owner;
        _console = new AdminConsole(owner.Proxy);
    }

    /// <summary>
    /// Login finished for a console session: AuthenticationOk, the parameters a client expects of a
    /// PostgreSQL server, BackendKeyData and ReadyForQuery (55.2.2). Nothing else was sent for the console.
    /// </summary>
    public void Start()
    {
        ClientSession owner = _owner;
        AdminOutput output = _output;
        output.WriteAuthenticationOk();
        output.WriteParameterStatus("server_version", AdminConsole.ReportedServerVersion);
        output.WriteParameterStatus("server_encoding", "UTF8");
        output.WriteParameterStatus("client_encoding", "UTF8");
        output.WriteParameterStatus("DateStyle", "ISO");
        output.WriteParameterStatus("integer_datetimes", "on");
        output.WriteParameterStatus("standard_conforming_strings", "on");
        output.WriteParameterStatus("TimeZone", "UTC");
        output.WriteParameterStatus("application_name", owner.ApplicationName);
        output.WriteBackendKeyData(owner.Id, owner.Secret);
        output.WriteReadyForQuery();
        Log.Write(LogLevel.Info, $"session {owner.Id}: admin console login ok, user={owner.User} ({_console.RoleOf(owner.User!).ToString().ToLowerInvariant()})");
        Flush();
    }

    /// <summary>
    /// Serves the console's messages from the receive window until a reply must go out, a command runs,
    /// or more bytes are needed. Called when the window has data and when the previous reply was sent.
    /// </summary>
    public void Pump()
    {
        ClientSession owner = _owner;
        if (_busy || owner.State != SessionState.Active || owner.OutPending)
        {
            return;
        }

        AdminOutput output = _output;
        if (_shutdownRequested && output.Length == 0)
        {
            // The SHUTDOWN reply is out: stop as SIGTERM does. This session is told 57P01 like every other.
            _shutdownRequested = false;
            Log.Write(LogLevel.Warning, $"shutdown requested by admin console session {owner.Id} ({owner.User})");
            ProxyServer proxy = owner.Proxy;
            _ = Task.Run(() => proxy.StopAsync(TimeSpan.FromSeconds(5)));
        }

        while (true)
        {
            ReadOnlySpan<byte> window = owner.Client.Window;
            if (window.Length < MessageFramer.HeaderLength)
            {
                break;
            }

            int length = MessageFramer.ReadLength(window);
            if (length < sizeof(int))
            {
                owner.Fatal(SqlState.ProtocolViolation, "invalid message length");
                return;
            }

            int total = length + sizeof(byte);
            if (total > owner.Loop.Buffers.BufferSize)
            {
                // The console's messages are short; one that cannot fit the window could never be read whole.
                owner.Fatal(SqlState.ProgramLimitExceeded, $"admin console message of {total} bytes is too long");
                return;
            }

            if (window.Length < total)
            {
                break;
            }

            AdminStep step;
            try
            {
                step = OnMessage(window[0], window.Slice(MessageFramer.HeaderLength, total - MessageFramer.HeaderLength));
            }
            catch (InvalidOperationException e)
            {
                // The reply would exceed AdminOutput's bound.
                owner.Fatal(SqlState.ProgramLimitExceeded, e.Message);
                return;
            }

            if (step == AdminStep.Stop)
            {
                return;
            }

            owner.Client.Consume(total);
            if (step == AdminStep.Wait)
            {
                return;
            }

            if ((step == AdminStep.Flush && output.Length > 0) || output.Length >= AdminOutput.FlushThreshold)
            {
                Flush();
                return;
            }
        }

        owner.ReceiveClient();
    }

    /// <summary>Sends what the output holds; the loop resumes when the send is done (AfterSend.ContinueRelay).</summary>
    private void Flush()
    {
        AdminOutput output = _output;
        int length = output.Length;
        if (length == 0)
        {
            Pump();
            return;
        }

        // The bytes stay in the output's array until the send completes: nothing writes to it before then.
        output.Clear();
        _owner.SendOwned(output.Buffer, length, AfterSend.ContinueRelay);
    }

    /// <summary>Handles one complete message of the simple or extended query protocol (55.7 for the formats).</summary>
    private AdminStep OnMessage(byte type, ReadOnlySpan<byte> body)
    {
        AdminOutput output = _output;
        switch (type)
        {
            case (byte)FrontendMessage.Terminate:
                Log.Write(LogLevel.Info, $"session {_owner.Id}: admin console client sent Terminate");
                _owner.Close();
                return AdminStep.Stop;
            case (byte)'S':
                // Sync ends the implicit transaction of an extended batch: portals go, errors stop being skipped.
                _skipToSync = false;
                _portals?.Clear();
                output.WriteReadyForQuery();
                return AdminStep.Flush;
        }

        if (_skipToSync)
        {
            // After an error in an extended batch, everything up to Sync is ignored (55.2.3).
            return AdminStep.Continue;
        }

        switch (type)
        {
            case (byte)FrontendMessage.Query:
                return OnQuery(body);
            case (byte)FrontendMessage.Parse:
                return OnParse(body);
            case (byte)'B':
                return OnBind(body);
            case (byte)'D':
                return OnDescribe(body);
            case (byte)'E':
                return OnExecute(body);
            case (byte)'C':
                return OnClose(body);
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
                _owner.Fatal(SqlState.ProtocolViolation, $"invalid frontend message type {type}");
                return AdminStep.Stop;
        }
    }

    /// <summary>Simple Query: one command; its rows in text, CommandComplete, ReadyForQuery.</summary>
    private AdminStep OnQuery(ReadOnlySpan<byte> body)
    {
        AdminOutput output = _output;
        int pos = 0;
        if (!TryReadString(body, ref pos, out string? text))
        {
            output.WriteMessage(BackendMessage.ErrorResponse, InvalidMessage("Query"));
            output.WriteReadyForQuery();
            return AdminStep.Flush;
        }

        // A simple Query drops the unnamed statement and portal, as in PostgreSQL.
        _statements?.Remove("");
        _portals?.Remove("");
        AdminCommand? command = AdminCommand.TryParse(text, out AdminMessage? error);
        error ??= command is null ? null : _console.CheckPermission(command, _owner.User!);
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

        return RunCommand(command, portal: null, maxRows: 0);
    }

    /// <summary>
    /// Starts <paramref name="command"/> on the thread pool. Its result is written when it completes, back
    /// on the owner's loop: for a simple Query with ReadyForQuery and sent; for a portal, rows up to
    /// <paramref name="maxRows"/>, and the loop goes on with the next message.
    /// </summary>
    private AdminStep RunCommand(AdminCommand command, AdminPortal? portal, int maxRows)
    {
        _busy = true;
        AdminConsole console = _console;
        ClientSession owner = _owner;
        Task<AdminResult> running = Task.Run(() => console.ExecuteAsync(command, owner));
        running.ContinueWith(
            done => owner.Loop.Post(() => OnCommandDone(done, portal, maxRows)),
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default);
        return AdminStep.Wait;
    }

    private void OnCommandDone(Task<AdminResult> done, AdminPortal? portal, int maxRows)
    {
        ClientSession owner = _owner;
        _busy = false;
        if (owner.State == SessionState.Closed)
        {
            owner.TryFinish();
            return;
        }

        if (owner.OutPending || owner.Client.SendPending)
        {
            // Terminated meanwhile: its FATAL is on its way and the session closes after it.
            return;
        }

        AdminResult result = done.IsCompletedSuccessfully
            ? done.Result
            : AdminResult.Failed(SqlState.InternalError, done.Exception?.GetBaseException().Message ?? "command failed");
        _shutdownRequested |= result.ShutdownAfterReply;
        AdminOutput output = _output;
        try
        {
            if (portal is null)
            {
                WriteResult(result);
                output.WriteReadyForQuery();
                Flush();
                return;
            }

            portal.Result = result;
            WritePortalRows(portal, maxRows);
        }
        catch (InvalidOperationException e)
        {
            owner.Fatal(SqlState.ProgramLimitExceeded, e.Message);
            return;
        }

        Pump();
    }

    /// <summary>The reply to a simple Query: notices, RowDescription and DataRows in text, CommandComplete; or the error.</summary>
    private void WriteResult(AdminResult result)
    {
        AdminOutput output = _output;
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

    private static AdminMessage InvalidMessage(string what) => new(SqlState.ProtocolViolation, $"invalid {what} message format");

    /// <summary>Reads a NUL-terminated UTF-8 string at <paramref name="pos"/> and moves past it.</summary>
    private static bool TryReadString(ReadOnlySpan<byte> body, ref int pos, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out string? value)
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
}
