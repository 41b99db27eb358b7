namespace FastPgProxy.Admin;

/// <summary>The column types the console reports, with their pg_type OIDs and sizes (pg_type.dat).</summary>
internal enum AdminType
{
    /// <summary>int4: OID 23, 4 bytes.</summary>
    Int4,
    /// <summary>int8: OID 20, 8 bytes.</summary>
    Int8,
    /// <summary>text: OID 25, variable length.</summary>
    Text,
    /// <summary>bool: OID 16, 1 byte.</summary>
    Bool,
    /// <summary>timestamptz: OID 1184, 8 bytes (microseconds since 2000-01-01 00:00 UTC).</summary>
    TimestampTz,
}

/// <summary>One result column: its name and type.</summary>
internal readonly record struct AdminColumn(string Name, AdminType Type);

/// <summary>SQLSTATE codes the console reports (PostgreSQL Appendix A), besides those in <see cref="Protocol.SqlState"/>.</summary>
internal static class AdminSqlState
{
    /// <summary>successful_completion: the code of a plain NOTICE.</summary>
    public const string Success = "00000";
    /// <summary>syntax_error.</summary>
    public const string SyntaxError = "42601";
    /// <summary>insufficient_privilege.</summary>
    public const string InsufficientPrivilege = "42501";
    /// <summary>undefined_object.</summary>
    public const string UndefinedObject = "42704";
    /// <summary>invalid_sql_statement_name: no such prepared statement.</summary>
    public const string InvalidStatementName = "26000";
    /// <summary>invalid_cursor_name: no such portal.</summary>
    public const string InvalidCursorName = "34000";
    /// <summary>duplicate_prepared_statement.</summary>
    public const string DuplicatePreparedStatement = "42P05";
    /// <summary>duplicate_cursor: a named portal that exists already.</summary>
    public const string DuplicateCursor = "42P03";
    /// <summary>invalid_parameter_value.</summary>
    public const string InvalidParameterValue = "22023";
    /// <summary>object_not_in_prerequisite_state.</summary>
    public const string ObjectNotInPrerequisiteState = "55000";
    /// <summary>invalid_catalog_name: no such database.</summary>
    public const string InvalidCatalogName = "3D000";
}

/// <summary>An ERROR or NOTICE the console reports.</summary>
internal sealed record AdminMessage(string SqlState, string Text, string? Detail = null, string? Hint = null);

/// <summary>
/// What a console command produced: rows under <see cref="Columns"/> (a SHOW), or just a command tag;
/// notices to send first; or an error instead of all of it.
/// </summary>
internal sealed class AdminResult
{
    /// <summary>The result columns; empty for a command that returns no rows.</summary>
    public AdminColumn[] Columns { get; init; } = [];

    /// <summary>The rows; each value is null, an int, a long, a string, a bool or a UTC <see cref="DateTime"/>, as its column's type says.</summary>
    public List<object?[]> Rows { get; } = new();

    /// <summary>The CommandComplete tag.</summary>
    public string Tag { get; init; } = "";

    /// <summary>NoticeResponses to send before the rows.</summary>
    public List<AdminMessage> Notices { get; } = new();

    /// <summary>The error the command failed with; nothing else is sent then.</summary>
    public AdminMessage? Error { get; init; }

    /// <summary>Whether the proxy stops once the reply is out (SHUTDOWN).</summary>
    public bool ShutdownAfterReply { get; init; }

    /// <summary>A failed command.</summary>
    public static AdminResult Failed(string sqlState, string text, string? detail = null, string? hint = null) =>
        new() { Error = new AdminMessage(sqlState, text, detail, hint) };

    /// <summary>A command that completed with <paramref name="tag"/> and no rows.</summary>
    public static AdminResult Done(string tag) => new() { Tag = tag };
}
