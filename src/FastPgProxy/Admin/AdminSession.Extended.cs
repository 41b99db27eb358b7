using System.Buffers.Binary;
using FastPgProxy.Interception;
using FastPgProxy.Protocol;

namespace FastPgProxy.Admin;

/// <summary>
/// The console's extended query protocol (55.2.3): named and unnamed statements, checked at Parse; portals
/// with their result formats; Describe, Execute with a row limit, Close. An error skips everything up to Sync.
/// </summary>
internal sealed partial class AdminSession
{
    /// <summary>Parse: the statement is parsed and checked now (syntax and permission errors come here, as PostgreSQL reports them at Parse).</summary>
    private AdminStep OnParse(ReadOnlySpan<byte> body)
    {
        int pos = 0;
        if (!TryReadString(body, ref pos, out string? name) || !TryReadString(body, ref pos, out string? text)
            || !TryReadInt16(body, ref pos, out short count) || count < 0 || body.Length - pos != count * sizeof(int))
        {
            return ExtendedError(InvalidMessage("Parse"));
        }

        int[] parameterTypes = new int[count];
        for (int i = 0; i < count; i++)
        {
            parameterTypes[i] = BinaryPrimitives.ReadInt32BigEndian(body.Slice(pos + (i * sizeof(int))));
        }

        AdminCommand? command = AdminCommand.TryParse(text, out AdminMessage? error);
        error ??= command is null ? null : _console.CheckPermission(command, _owner.User!);
        if (error is not null)
        {
            return ExtendedError(error);
        }

        _statements ??= new Dictionary<string, AdminStatement>(StringComparer.Ordinal);
        if (name.Length > 0 && _statements.ContainsKey(name))
        {
            return ExtendedError(new AdminMessage(AdminSqlState.DuplicatePreparedStatement, $"prepared statement \"{name}\" already exists"));
        }

        _statements[name] = new AdminStatement(command!, parameterTypes);
        _output.WriteEmpty((byte)ReplyMessage.ParseComplete);
        return AdminStep.Continue;
    }

    /// <summary>Bind: a portal over a statement, with the result formats the client wants (0 text, 1 binary).</summary>
    private AdminStep OnBind(ReadOnlySpan<byte> body)
    {
        int pos = 0;
        if (!TryReadString(body, ref pos, out string? portalName) || !TryReadString(body, ref pos, out string? statementName)
            || !TryReadInt16(body, ref pos, out short parameterFormats) || parameterFormats < 0 || body.Length - pos < parameterFormats * sizeof(short))
        {
            return ExtendedError(InvalidMessage("Bind"));
        }

        pos += parameterFormats * sizeof(short);
        if (!TryReadInt16(body, ref pos, out short parameters) || parameters < 0)
        {
            return ExtendedError(InvalidMessage("Bind"));
        }

        for (int i = 0; i < parameters; i++)
        {
            if (body.Length - pos < sizeof(int))
            {
                return ExtendedError(InvalidMessage("Bind"));
            }

            int valueLength = BinaryPrimitives.ReadInt32BigEndian(body.Slice(pos));
            pos += sizeof(int);
            if (valueLength > 0)
            {
                if (body.Length - pos < valueLength)
                {
                    return ExtendedError(InvalidMessage("Bind"));
                }

                pos += valueLength;
            }
        }

        if (!TryReadInt16(body, ref pos, out short resultFormats) || resultFormats < 0 || body.Length - pos != resultFormats * sizeof(short))
        {
            return ExtendedError(InvalidMessage("Bind"));
        }

        if (_statements is null || !_statements.TryGetValue(statementName, out AdminStatement? statement))
        {
            return ExtendedError(NoStatement(statementName));
        }

        if (parameters != statement.ParameterTypes.Length)
        {
            return ExtendedError(new AdminMessage(
                SqlState.ProtocolViolation,
                $"bind message supplies {parameters} parameters, but prepared statement \"{statementName}\" requires {statement.ParameterTypes.Length}"));
        }

        AdminColumn[] columns = AdminConsole.Columns(statement.Command);
        short[]? formats = null;
        if (resultFormats > 0)
        {
            if (resultFormats != 1 && resultFormats != columns.Length)
            {
                return ExtendedError(new AdminMessage(
                    SqlState.ProtocolViolation,
                    $"bind message has {resultFormats} result formats but query has {columns.Length} columns"));
            }

            formats = new short[columns.Length];
            for (int i = 0; i < columns.Length; i++)
            {
                short code = BinaryPrimitives.ReadInt16BigEndian(body.Slice(pos + ((resultFormats == 1 ? 0 : i) * sizeof(short))));
                if (code is not (InterceptReplies.TextFormat or InterceptReplies.BinaryFormat))
                {
                    return ExtendedError(new AdminMessage(AdminSqlState.InvalidParameterValue, $"unsupported format code: {code}"));
                }

                formats[i] = code;
            }
        }

        _portals ??= new Dictionary<string, AdminPortal>(StringComparer.Ordinal);
        if (portalName.Length > 0 && _portals.ContainsKey(portalName))
        {
            return ExtendedError(new AdminMessage(AdminSqlState.DuplicateCursor, $"cursor \"{portalName}\" already exists"));
        }

        _portals[portalName] = new AdminPortal(statement, formats);
        _output.WriteEmpty((byte)ReplyMessage.BindComplete);
        return AdminStep.Continue;
    }

    /// <summary>Describe: ParameterDescription and RowDescription (statement, text formats) or RowDescription in the portal's formats; NoData for commands.</summary>
    private AdminStep OnDescribe(ReadOnlySpan<byte> body)
    {
        AdminOutput output = _output;
        int pos = 1;
        if (body.IsEmpty || !TryReadString(body, ref pos, out string? name) || pos != body.Length)
        {
            return ExtendedError(InvalidMessage("Describe"));
        }

        AdminCommand command;
        short[]? formats = null;
        if (body[0] == (byte)'S')
        {
            if (_statements is null || !_statements.TryGetValue(name, out AdminStatement? statement))
            {
                return ExtendedError(NoStatement(name));
            }

            output.WriteParameterDescription(statement.ParameterTypes);
            command = statement.Command;
        }
        else if (body[0] == (byte)'P')
        {
            if (_portals is null || !_portals.TryGetValue(name, out AdminPortal? portal))
            {
                return ExtendedError(NoPortal(name));
            }

            command = portal.Statement.Command;
            formats = portal.Formats;
        }
        else
        {
            return ExtendedError(new AdminMessage(SqlState.ProtocolViolation, $"invalid DESCRIBE message subtype {body[0]}"));
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
    private AdminStep OnExecute(ReadOnlySpan<byte> body)
    {
        int pos = 0;
        if (!TryReadString(body, ref pos, out string? name) || body.Length - pos != sizeof(int))
        {
            return ExtendedError(InvalidMessage("Execute"));
        }

        int maxRows = BinaryPrimitives.ReadInt32BigEndian(body.Slice(pos));
        if (_portals is null || !_portals.TryGetValue(name, out AdminPortal? portal))
        {
            return ExtendedError(NoPortal(name));
        }

        if (portal.Statement.Command.Kind == AdminCommandKind.Empty)
        {
            _output.WriteEmpty((byte)'I');
            return AdminStep.Continue;
        }

        if (portal.Result is null)
        {
            return RunCommand(portal.Statement.Command, portal, maxRows);
        }

        WritePortalRows(portal, maxRows);
        return AdminStep.Continue;
    }

    /// <summary>Close of a statement or portal; closing one that does not exist is not an error.</summary>
    private AdminStep OnClose(ReadOnlySpan<byte> body)
    {
        int pos = 1;
        if (body.IsEmpty || !TryReadString(body, ref pos, out string? name) || pos != body.Length || body[0] is not ((byte)'S' or (byte)'P'))
        {
            return ExtendedError(InvalidMessage("Close"));
        }

        if (body[0] == (byte)'S')
        {
            _statements?.Remove(name);
        }
        else
        {
            _portals?.Remove(name);
        }

        _output.WriteEmpty((byte)ReplyMessage.CloseComplete);
        return AdminStep.Continue;
    }

    /// <summary>The reply to Execute: DataRows in the portal's formats up to the row limit, then PortalSuspended or CommandComplete.</summary>
    private void WritePortalRows(AdminPortal portal, int maxRows)
    {
        AdminOutput output = _output;
        AdminResult result = portal.Result!;
        if (result.Error is { } error)
        {
            output.WriteMessage(BackendMessage.ErrorResponse, error);
            _skipToSync = true;
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
    private AdminStep ExtendedError(AdminMessage error)
    {
        _output.WriteMessage(BackendMessage.ErrorResponse, error);
        _skipToSync = true;
        return AdminStep.Continue;
    }

    private static AdminMessage NoStatement(string name) => new(
        AdminSqlState.InvalidStatementName,
        name.Length == 0 ? "unnamed prepared statement does not exist" : $"prepared statement \"{name}\" does not exist");

    private static AdminMessage NoPortal(string name) => new(
        AdminSqlState.InvalidCursorName,
        name.Length == 0 ? "unnamed portal does not exist" : $"portal \"{name}\" does not exist");

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
