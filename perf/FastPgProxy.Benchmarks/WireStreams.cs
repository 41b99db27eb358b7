using FastPgProxy.Protocol;

namespace FastPgProxy.Benchmarks;

/// <summary>Type bytes the benchmarks send that the proxy itself never names (protocol 55.7).</summary>
internal static class WireTypes
{
    /// <summary>RowDescription (backend).</summary>
    public const byte RowDescription = (byte)'T';

    /// <summary>DataRow (backend).</summary>
    public const byte DataRow = (byte)'D';

    /// <summary>CommandComplete (backend).</summary>
    public const byte CommandComplete = (byte)'C';

    /// <summary>Bind (frontend).</summary>
    public const byte Bind = (byte)'B';

    /// <summary>Execute (frontend).</summary>
    public const byte Execute = (byte)'E';

    /// <summary>Sync (frontend); shares its byte with the backend's ParameterStatus.</summary>
    public const byte Sync = (byte)'S';
}

/// <summary>
/// Byte streams as PostgreSQL and its clients put them on the wire, built once per benchmark in
/// [GlobalSetup] with the proxy's own <see cref="PgWriter"/>.
/// </summary>
internal static class WireStreams
{
    /// <summary>The query pgbench -S sends, with :aid substituted.</summary>
    public static ReadOnlySpan<byte> PgbenchSelect => "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"u8;

    // pg_type OID of int4, and an arbitrary table OID: the framer never reads either.
    private const int Int4Oid = 23;
    private const int AccountsTableOid = 16_397;

    // Room for the headers and small messages around the payload of the largest stream.
    private const int Slack = 4096;

    /// <summary>
    /// What the backend answers to pgbench -S (Simple Query, text format): RowDescription of one int4
    /// column, one DataRow, CommandComplete "SELECT 1", ReadyForQuery idle.
    /// </summary>
    public static byte[] PgbenchSelectResponse()
    {
        byte[] buffer = new byte[Slack];
        var writer = new PgWriter(buffer);
        WriteRowDescription(ref writer, ["abalance"u8.ToArray()]);
        WriteDataRow(ref writer, ["0"u8.ToArray()]);
        WriteCommandComplete(ref writer, "SELECT 1"u8);
        writer.WriteReadyForQuery(TransactionStatus.Idle);
        return buffer.AsSpan(0, writer.Position).ToArray();
    }

    /// <summary>
    /// The answer to SELECT aid, bid, abalance ... LIMIT <paramref name="rows"/>: RowDescription of three
    /// int4 columns, that many small text DataRows, CommandComplete, ReadyForQuery.
    /// </summary>
    public static byte[] SmallRowsResponse(int rows)
    {
        byte[] buffer = new byte[Slack + (rows * 64)];
        var writer = new PgWriter(buffer);
        WriteRowDescription(ref writer, ["aid"u8.ToArray(), "bid"u8.ToArray(), "abalance"u8.ToArray()]);
        Span<byte> aid = stackalloc byte[16];
        for (int row = 0; row < rows; row++)
        {
            int aidValue = 100_000 + row;
            aidValue.TryFormat(aid, out int aidLength, provider: System.Globalization.CultureInfo.InvariantCulture);
            WriteDataRow(ref writer, [aid.Slice(0, aidLength).ToArray(), "1"u8.ToArray(), "0"u8.ToArray()]);
        }

        WriteCommandComplete(ref writer, System.Text.Encoding.ASCII.GetBytes($"SELECT {rows}"));
        writer.WriteReadyForQuery(TransactionStatus.Idle);
        return buffer.AsSpan(0, writer.Position).ToArray();
    }

    /// <summary>
    /// A one-column result whose single DataRow carries <paramref name="valueLength"/> bytes of value,
    /// framed by RowDescription, CommandComplete and ReadyForQuery.
    /// </summary>
    public static byte[] LargeRowResponse(int valueLength)
    {
        byte[] value = new byte[valueLength];
        value.AsSpan().Fill((byte)'x');
        byte[] buffer = new byte[Slack + valueLength];
        var writer = new PgWriter(buffer);
        WriteRowDescription(ref writer, ["payload"u8.ToArray()]);
        WriteDataRow(ref writer, [value]);
        WriteCommandComplete(ref writer, "SELECT 1"u8);
        writer.WriteReadyForQuery(TransactionStatus.Idle);
        return buffer.AsSpan(0, writer.Position).ToArray();
    }

    /// <summary>
    /// Bind, Execute, Sync for an already prepared statement with one binary int4 parameter and binary
    /// results, as Npgsql sends once it has prepared and described the statement (protocol 55.2.3).
    /// </summary>
    public static byte[] BindExecuteSync()
    {
        byte[] buffer = new byte[Slack];
        var writer = new PgWriter(buffer);

        writer.BeginMessage(WireTypes.Bind);
        writer.WriteCString(""u8);             // unnamed portal
        writer.WriteCString("_p1"u8);          // prepared statement
        writer.WriteInt16(1);                  // one parameter format code:
        writer.WriteInt16(1);                  //   binary
        writer.WriteInt16(1);                  // one parameter value:
        writer.WriteInt32(sizeof(int));        //   its length
        writer.WriteInt32(12_345);             //   aid
        writer.WriteInt16(1);                  // one result format code:
        writer.WriteInt16(1);                  //   binary
        writer.EndMessage();

        writer.BeginMessage(WireTypes.Execute);
        writer.WriteCString(""u8);             // unnamed portal
        writer.WriteInt32(0);                  // no row limit
        writer.EndMessage();

        writer.BeginMessage(WireTypes.Sync);
        writer.EndMessage();
        return buffer.AsSpan(0, writer.Position).ToArray();
    }

    /// <summary>The Simple Query message pgbench -S sends.</summary>
    public static byte[] SimpleQuery()
    {
        byte[] buffer = new byte[Slack];
        var writer = new PgWriter(buffer);
        writer.BeginMessage((byte)FrontendMessage.Query);
        writer.WriteCString(PgbenchSelect);
        writer.EndMessage();
        return buffer.AsSpan(0, writer.Position).ToArray();
    }

    // RowDescription (55.7): per field its name, table OID, column number, type OID, type size, type
    // modifier and format code.
    private static void WriteRowDescription(ref PgWriter writer, byte[][] names)
    {
        writer.BeginMessage(WireTypes.RowDescription);
        writer.WriteInt16((short)names.Length);
        for (int i = 0; i < names.Length; i++)
        {
            writer.WriteCString(names[i]);
            writer.WriteInt32(AccountsTableOid);
            writer.WriteInt16((short)(i + 1));
            writer.WriteInt32(Int4Oid);
            writer.WriteInt16(sizeof(int));
            writer.WriteInt32(-1);             // no type modifier
            writer.WriteInt16(0);              // text format
        }

        writer.EndMessage();
    }

    // DataRow (55.7): column count, then each value as length word and bytes.
    private static void WriteDataRow(ref PgWriter writer, byte[][] values)
    {
        writer.BeginMessage(WireTypes.DataRow);
        writer.WriteInt16((short)values.Length);
        foreach (byte[] value in values)
        {
            writer.WriteInt32(value.Length);
            writer.WriteBytes(value);
        }

        writer.EndMessage();
    }

    private static void WriteCommandComplete(ref PgWriter writer, ReadOnlySpan<byte> tag)
    {
        writer.BeginMessage(WireTypes.CommandComplete);
        writer.WriteCString(tag);
        writer.EndMessage();
    }
}
