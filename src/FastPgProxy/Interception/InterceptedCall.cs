using System.Diagnostics;
using System.Text;

namespace FastPgProxy.Interception;

/// <summary>The server functions the proxy answers itself, in terms of proxy sessions.</summary>
internal enum InterceptedFunction : byte
{
    /// <summary><c>pg_backend_pid()</c>: returns int4, the session id the client received in BackendKeyData.</summary>
    BackendPid,
    /// <summary><c>pg_cancel_backend(pid int4)</c>: returns bool.</summary>
    CancelBackend,
    /// <summary><c>pg_terminate_backend(pid int4, timeout int8 DEFAULT 0)</c>: returns bool.</summary>
    TerminateBackend,
}

/// <summary>How an argument of an intercepted call is spelled.</summary>
internal enum ArgumentKind : byte
{
    /// <summary>The argument is absent (the timeout of a one-argument <c>pg_terminate_backend</c>).</summary>
    None,
    /// <summary>An integer literal, with its sign folded into <see cref="CallArgument.Value"/>.</summary>
    Integer,
    /// <summary>The <c>NULL</c> keyword.</summary>
    Null,
    /// <summary>A parameter placeholder <c>$n</c>, only meaningful in a Parse message.</summary>
    Parameter,
}

/// <summary>The type cast written after an argument, if any.</summary>
internal enum ArgumentCast : byte
{
    /// <summary>No cast.</summary>
    None,
    /// <summary><c>::int</c>, <c>::integer</c> or <c>::int4</c>.</summary>
    Int4,
    /// <summary><c>::bigint</c> or <c>::int8</c>.</summary>
    Int8,
}

/// <summary>One argument of an intercepted call, as written in the SQL text.</summary>
/// <remarks>
/// PostgreSQL types an integer literal as int4 when it fits in 32 bits (a leading minus counts) and as
/// int8 otherwise. <c>pg_cancel_backend</c> and the pid of <c>pg_terminate_backend</c> take int4 only, so
/// an int8-typed pid (<see cref="Int8Cast"/>, or a literal outside the int4 range without a cast) makes
/// PostgreSQL fail with 42883 (no such function); the caller decides whether to answer such a call or let
/// the server produce the error. A literal its cast cannot hold (<c>2147483648::int</c>,
/// <c>-2147483648::int</c>, where the cast binds before the sign) is never matched.
/// </remarks>
[DebuggerDisplay("{Kind} {Value} ${ParameterIndex} {Cast}")]
internal readonly struct CallArgument
{
    /// <summary>Creates an argument.</summary>
    public CallArgument(ArgumentKind kind, long value, int parameterIndex, ArgumentCast cast)
    {
        Kind = kind;
        Value = value;
        ParameterIndex = parameterIndex;
        Cast = cast;
    }

    /// <summary>How the argument is spelled; <see cref="ArgumentKind.None"/> when absent.</summary>
    public ArgumentKind Kind { get; }

    /// <summary>The value of an <see cref="ArgumentKind.Integer"/> literal, sign included; 0 otherwise.</summary>
    public long Value { get; }

    /// <summary>The 1-based <c>n</c> of a <see cref="ArgumentKind.Parameter"/> placeholder <c>$n</c>; 0 otherwise.</summary>
    public int ParameterIndex { get; }

    /// <summary>The cast written after the argument (inside or outside its parentheses).</summary>
    public ArgumentCast Cast { get; }

    /// <summary>Whether the argument is cast to int8 (<c>::bigint</c> or <c>::int8</c>).</summary>
    public bool Int8Cast => Cast == ArgumentCast.Int8;
}

/// <summary>
/// A statement <see cref="QueryScanner.TryMatch"/> recognised: which function, its arguments and the name
/// of the single result column. Offsets refer to the SQL text that was scanned.
/// </summary>
[DebuggerDisplay("{Function} alias@{ColumnNameStart}+{ColumnNameLength}")]
internal readonly struct InterceptedCall
{
    /// <summary>Creates a call; <paramref name="columnNameStart"/> is -1 when there is no alias.</summary>
    public InterceptedCall(
        InterceptedFunction function,
        CallArgument argument,
        CallArgument timeout,
        int columnNameStart,
        int columnNameLength,
        bool columnNameQuoted)
    {
        Function = function;
        Argument = argument;
        Timeout = timeout;
        ColumnNameStart = columnNameStart;
        ColumnNameLength = columnNameLength;
        ColumnNameQuoted = columnNameQuoted;
    }

    /// <summary>The function called.</summary>
    public InterceptedFunction Function { get; }

    /// <summary>The pid argument; <see cref="ArgumentKind.None"/> for <c>pg_backend_pid()</c>.</summary>
    public CallArgument Argument { get; }

    /// <summary>The timeout argument of <c>pg_terminate_backend</c>; <see cref="ArgumentKind.None"/> when not given (PostgreSQL's default is 0).</summary>
    public CallArgument Timeout { get; }

    /// <summary>
    /// Offset in the SQL text of the alias, or -1 when there is none. For a quoted alias this is the first
    /// byte after the opening quote, and doubled quotes inside are still doubled.
    /// </summary>
    public int ColumnNameStart { get; }

    /// <summary>Length in bytes of the alias as written (between the quotes for a quoted alias); 0 when there is none.</summary>
    public int ColumnNameLength { get; }

    /// <summary>Whether the alias is a double-quoted identifier (case kept, <c>""</c> unescaped) rather than a bare one (folded to lower case).</summary>
    public bool ColumnNameQuoted { get; }

    /// <summary>Whether the statement gives the column an alias.</summary>
    public bool HasAlias => ColumnNameStart >= 0;

    /// <summary>The highest <c>$n</c> the statement refers to, 0 when none: the parameter count PostgreSQL infers for a Parse without declared types.</summary>
    public int ParameterCount => Math.Max(Argument.ParameterIndex, Timeout.ParameterIndex);

    /// <summary>
    /// Whether PostgreSQL would analyse the call without error, and with which parameter types: the
    /// ParameterDescription of the statement. False means the server must handle the statement, because
    /// PostgreSQL would fail (42883 no such function for an int8 pid or a parameter of another type;
    /// 42P18 for a parameter whose type nothing determines; 42P02 for any <c>$n</c> in a Simple Query) or
    /// would accept a parameter type <see cref="InterceptReplies.TryDecodeIntParameter"/> does not read.
    /// </summary>
    /// <param name="declaredTypes">
    /// The type OIDs the Parse message declared (0 and unknown, 705, leave a type to be inferred); empty for
    /// a Parse without types. For a Simple Query, pass <paramref name="simpleQuery"/> true.
    /// </param>
    /// <param name="parameterTypes">
    /// Receives the resolved OID of each parameter, <c>$1</c> first: as declared, or int4 for an untyped pid,
    /// int8 for an untyped timeout, the cast's type for an untyped <c>$n::type</c>.
    /// </param>
    /// <param name="parameterCount">
    /// How many parameters the statement has: the declared ones, or more if the text refers to a higher
    /// <c>$n</c>. False (not resolvable here) when <paramref name="parameterTypes"/> is shorter.
    /// </param>
    /// <param name="simpleQuery">Whether the text came in a Query message, where no parameter can be bound.</param>
    /// <remarks>
    /// A parameter wider than its cast (<c>$1::int</c> declared int8) resolves, and PostgreSQL then fails
    /// a bound value outside int4 with 22003 <c>integer out of range</c> when it plans the portal
    /// (<see cref="InterceptErrors.WriteIntegerOutOfRange"/>).
    /// </remarks>
    public bool TryResolveParameterTypes(ReadOnlySpan<int> declaredTypes, Span<int> parameterTypes, out int parameterCount, bool simpleQuery = false)
    {
        parameterCount = Math.Max(ParameterCount, declaredTypes.Length);
        if ((simpleQuery && ParameterCount > 0) || parameterCount > parameterTypes.Length)
        {
            return false;
        }

        for (int k = 0; k < parameterCount; k++)
        {
            parameterTypes[k] = k < declaredTypes.Length ? declaredTypes[k] : TypeOids.Unspecified;
        }

        // PostgreSQL first transforms the arguments left to right (a cast types an untyped parameter),
        // then resolves the function and coerces each argument to it, typing what is still untyped: the
        // same untyped $n passed as both int4 and int8 is an error (42P08 inconsistent types deduced).
        if (Function != InterceptedFunction.BackendPid
            && (!TryTransform(Argument, parameterTypes, out int argumentType)
                || !TryTransform(Timeout, parameterTypes, out int timeoutType)
                || !TryCoerce(Argument, argumentType, TypeOids.Int4, parameterTypes)
                || !TryCoerce(Timeout, timeoutType, TypeOids.Int8, parameterTypes)))
        {
            return false;
        }

        for (int k = 0; k < parameterCount; k++)
        {
            if (IsUnresolved(parameterTypes[k]))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// The type of an argument once transformed: its cast's, its literal's, or its parameter's, which is
    /// <see cref="TypeOids.Unknown"/> while untyped. False for a cast from a type the proxy does not read.
    /// </summary>
    private static bool TryTransform(CallArgument argument, Span<int> parameterTypes, out int type)
    {
        int castType = argument.Cast switch
        {
            ArgumentCast.Int4 => TypeOids.Int4,
            ArgumentCast.Int8 => TypeOids.Int8,
            _ => TypeOids.Unknown,
        };
        switch (argument.Kind)
        {
            case ArgumentKind.None:
            case ArgumentKind.Null:
                type = castType;
                return true;
            case ArgumentKind.Integer:
                // A cast between integer types always applies: the scanner only accepts literals it holds.
                type = argument.Cast != ArgumentCast.None ? castType
                    : argument.Value is >= int.MinValue and <= int.MaxValue ? TypeOids.Int4 : TypeOids.Int8;
                return true;
            default:
                ref int parameterType = ref parameterTypes[argument.ParameterIndex - 1];
                type = IsUnresolved(parameterType) ? TypeOids.Unknown : parameterType;
                if (argument.Cast == ArgumentCast.None)
                {
                    return true;
                }

                if (type == TypeOids.Unknown)
                {
                    parameterType = castType;
                }
                else if (!IsIntegerType(type))
                {
                    // PostgreSQL casts other types explicitly (text::int), but the proxy does not read them.
                    return false;
                }

                type = castType;
                return true;
        }
    }

    /// <summary>
    /// Whether a transformed argument coerces implicitly to <paramref name="expected"/> (int4 for the pid,
    /// int8 for the timeout), typing a still untyped parameter on the way. Only int2 and int4 coerce to
    /// int4; int2, int4 and int8 to int8.
    /// </summary>
    private static bool TryCoerce(CallArgument argument, int type, int expected, Span<int> parameterTypes)
    {
        if (argument.Kind == ArgumentKind.None)
        {
            return true;
        }

        if (type == TypeOids.Unknown)
        {
            if (argument.Kind == ArgumentKind.Null)
            {
                return true;
            }

            ref int parameterType = ref parameterTypes[argument.ParameterIndex - 1];
            if (IsUnresolved(parameterType))
            {
                parameterType = expected;
                return true;
            }

            return parameterType == expected;
        }

        return expected == TypeOids.Int8 ? IsIntegerType(type) : type is TypeOids.Int4 or TypeOids.Int2;
    }

    private static bool IsIntegerType(int type) => type is TypeOids.Int2 or TypeOids.Int4 or TypeOids.Int8;

    private static bool IsUnresolved(int type) => type is TypeOids.Unspecified or TypeOids.Unknown;

    /// <summary>The function's name, which is also the column name PostgreSQL gives a call without an alias.</summary>
    public static ReadOnlySpan<byte> FunctionName(InterceptedFunction function) => function switch
    {
        InterceptedFunction.BackendPid => "pg_backend_pid"u8,
        InterceptedFunction.CancelBackend => "pg_cancel_backend"u8,
        _ => "pg_terminate_backend"u8,
    };

    /// <summary>
    /// Writes the final column name into <paramref name="destination"/> (at least
    /// <see cref="QueryScanner.MaxIdentifierLength"/> bytes) and returns its length: the alias folded to
    /// lower case (bare) or unescaped (quoted), or the function's name. Allocation-free.
    /// </summary>
    public int CopyColumnName(ReadOnlySpan<byte> sql, Span<byte> destination)
    {
        if (!HasAlias)
        {
            ReadOnlySpan<byte> name = FunctionName(Function);
            name.CopyTo(destination);
            return name.Length;
        }

        ReadOnlySpan<byte> alias = sql.Slice(ColumnNameStart, ColumnNameLength);
        int written = 0;
        for (int i = 0; i < alias.Length; i++)
        {
            byte b = alias[i];
            if (ColumnNameQuoted)
            {
                // The scanner only accepts well-formed quoted identifiers: a quote here is the first of a pair.
                if (b == (byte)'"')
                {
                    i++;
                }
            }
            else if ((uint)(b - 'A') <= 'Z' - 'A')
            {
                // PostgreSQL folds only ASCII letters of an unquoted identifier when the encoding is
                // multibyte (downcase_identifier); other bytes are kept.
                b |= 0x20;
            }

            destination[written++] = b;
        }

        return written;
    }

    /// <summary>The final column name as a string (allocates; for use off the scanning path).</summary>
    public string ColumnName(ReadOnlySpan<byte> sql)
    {
        Span<byte> name = stackalloc byte[QueryScanner.MaxIdentifierLength];
        int length = CopyColumnName(sql, name);
        return Encoding.UTF8.GetString(name.Slice(0, length));
    }
}
