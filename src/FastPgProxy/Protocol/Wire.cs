namespace FastPgProxy.Protocol;

/// <summary>Type bytes of the messages PostgreSQL sends (protocol chapter 55.7, "Message Formats").</summary>
internal enum BackendMessage : byte
{
    /// <summary>Authentication request or AuthenticationOk.</summary>
    Authentication = (byte)'R',
    /// <summary>BackendKeyData: the pid and secret key a client needs to cancel.</summary>
    BackendKeyData = (byte)'K',
    /// <summary>ErrorResponse.</summary>
    ErrorResponse = (byte)'E',
    /// <summary>NoticeResponse.</summary>
    NoticeResponse = (byte)'N',
    /// <summary>ParameterStatus.</summary>
    ParameterStatus = (byte)'S',
    /// <summary>DataRow.</summary>
    DataRow = (byte)'D',
    /// <summary>RowDescription: the column count, then one description per column.</summary>
    RowDescription = (byte)'T',
    /// <summary>ReadyForQuery, carrying the transaction status.</summary>
    ReadyForQuery = (byte)'Z',
    /// <summary>NegotiateProtocolVersion.</summary>
    NegotiateProtocolVersion = (byte)'v',
    /// <summary>NotificationResponse: the pid of the notifying backend, the channel and the payload.</summary>
    NotificationResponse = (byte)'A',
}

/// <summary>Type bytes of the messages a client sends.</summary>
internal enum FrontendMessage : byte
{
    /// <summary>PasswordMessage, SASLInitialResponse and SASLResponse share this byte.</summary>
    Password = (byte)'p',
    /// <summary>Simple Query.</summary>
    Query = (byte)'Q',
    /// <summary>Parse (extended protocol).</summary>
    Parse = (byte)'P',
    /// <summary>Bind (extended protocol).</summary>
    Bind = (byte)'B',
    /// <summary>Describe (extended protocol).</summary>
    Describe = (byte)'D',
    /// <summary>Execute (extended protocol).</summary>
    Execute = (byte)'E',
    /// <summary>Sync (extended protocol).</summary>
    Sync = (byte)'S',
    /// <summary>Terminate.</summary>
    Terminate = (byte)'X',
}

/// <summary>Sub-codes of the Authentication message.</summary>
internal enum AuthRequest
{
    /// <summary>AuthenticationOk.</summary>
    Ok = 0,
    /// <summary>AuthenticationKerberosV5 (unsupported by PostgreSQL since 9.4).</summary>
    KerberosV5 = 2,
    /// <summary>AuthenticationCleartextPassword.</summary>
    CleartextPassword = 3,
    /// <summary>AuthenticationMD5Password, followed by a 4-byte salt.</summary>
    Md5Password = 5,
    /// <summary>AuthenticationGSS.</summary>
    Gss = 7,
    /// <summary>AuthenticationGSSContinue.</summary>
    GssContinue = 8,
    /// <summary>AuthenticationSSPI.</summary>
    Sspi = 9,
    /// <summary>AuthenticationSASL, followed by the mechanism names.</summary>
    Sasl = 10,
    /// <summary>AuthenticationSASLContinue.</summary>
    SaslContinue = 11,
    /// <summary>AuthenticationSASLFinal.</summary>
    SaslFinal = 12,
}

/// <summary>Transaction status byte of ReadyForQuery.</summary>
internal enum TransactionStatus : byte
{
    /// <summary>Idle, not in a transaction block.</summary>
    Idle = (byte)'I',
    /// <summary>In a transaction block.</summary>
    InTransaction = (byte)'T',
    /// <summary>In a failed transaction block.</summary>
    Failed = (byte)'E',
}

/// <summary>Constants of the untyped start-up packets (protocol 55.2.1 and 55.7).</summary>
internal static class StartupCodes
{
    /// <summary>Protocol 3.0 as sent in StartupMessage: major 3 in the high 16 bits, minor 0.</summary>
    public const int Protocol30 = 3 << 16;

    /// <summary>
    /// Protocol 3.1, which no PostgreSQL version speaks: it was skipped because old PgBouncer versions
    /// claimed it (PostgreSQL's PG_PROTOCOL_RESERVED_31). libpq refuses a server that names it.
    /// </summary>
    public const int Protocol31Reserved = (3 << 16) | 1;

    /// <summary>Protocol 3.2 (PostgreSQL 18), the newest the proxy speaks: BackendKeyData's key is 4 to 256 bytes.</summary>
    public const int Protocol32 = (3 << 16) | 2;

    /// <summary>CancelRequest code: 1234 in the high 16 bits, 5678 in the low.</summary>
    public const int CancelRequestCode = 80877102;

    /// <summary>SSLRequest code: 1234 / 5679.</summary>
    public const int SslRequestCode = 80877103;

    /// <summary>GSSENCRequest code: 1234 / 5680.</summary>
    public const int GssEncRequestCode = 80877104;

    /// <summary>The largest start-up packet accepted, as PostgreSQL's MAX_STARTUP_PACKET_LENGTH.</summary>
    public const int MaxStartupPacketLength = 10_000;

    /// <summary>The smallest start-up packet: the length word and the code word.</summary>
    public const int MinStartupPacketLength = sizeof(int) /* length */ + sizeof(int) /* code */;

    /// <summary>A CancelRequest with a 4-byte key (protocol 3.0).</summary>
    public const int CancelRequestLength = sizeof(int) /* length */ + sizeof(int) /* code */ + sizeof(int) /* pid */ + sizeof(int) /* key */;

    /// <summary>Smallest cancel key protocol 3.2 allows.</summary>
    public const int MinCancelKeyLength = 4;

    /// <summary>The cancel key of protocol 3.0, and of any request below 3.2 (as PostgreSQL 18 gives).</summary>
    public const int ShortCancelKeyLength = sizeof(int);

    /// <summary>The cancel key PostgreSQL 18 gives a client that asked for 3.2 or newer (its MAX_CANCEL_KEY_LENGTH).</summary>
    public const int LongCancelKeyLength = 32;

    /// <summary>Largest cancel key protocol 3.2 allows.</summary>
    public const int MaxCancelKeyLength = 256;
}

/// <summary>SQLSTATE codes the proxy itself reports (PostgreSQL Appendix A).</summary>
internal static class SqlState
{
    /// <summary>protocol_violation.</summary>
    public const string ProtocolViolation = "08P01";
    /// <summary>connection_failure.</summary>
    public const string ConnectionFailure = "08006";
    /// <summary>invalid_parameter_value.</summary>
    public const string InvalidParameterValue = "22023";
    /// <summary>sqlclient_unable_to_establish_sqlconnection.</summary>
    public const string CannotConnectNow = "57P03";
    /// <summary>invalid_password.</summary>
    public const string InvalidPassword = "28P01";
    /// <summary>invalid_authorization_specification.</summary>
    public const string InvalidAuthorization = "28000";
    /// <summary>invalid_catalog_name: the database does not exist.</summary>
    public const string InvalidCatalogName = "3D000";
    /// <summary>too_many_connections.</summary>
    public const string TooManyConnections = "53300";
    /// <summary>feature_not_supported.</summary>
    public const string FeatureNotSupported = "0A000";
    /// <summary>admin_shutdown.</summary>
    public const string AdminShutdown = "57P01";

    /// <summary>crash_shutdown.</summary>
    public const string CrashShutdown = "57P02";
    /// <summary>query_canceled.</summary>
    public const string QueryCanceled = "57014";
    /// <summary>program_limit_exceeded.</summary>
    public const string ProgramLimitExceeded = "54000";

    /// <summary>out_of_memory.</summary>
    public const string OutOfMemory = "53200";
    /// <summary>internal_error.</summary>
    public const string InternalError = "XX000";
}
