using System.Buffers.Binary;
using FastPgProxy.Protocol;

namespace FastPgProxy.Interception;

/// <summary>
/// Recognises, at the start of a client's window, a batch the proxy answers itself: a Simple Query that is
/// exactly one intercepted call, or an extended-protocol batch that is exactly one such unnamed statement
/// (Parse, Bind, Describe, Execute, Sync, as drivers send a one-off command), and only when PostgreSQL would
/// resolve the call to the signature the proxy answers for. Pure and allocation-free: the relay asks it about
/// every Query and Parse that starts a batch.
/// </summary>
internal static class InterceptedBatch
{
    /// <summary>Length of the intercepted Query, or of the Parse..Sync batch of one intercepted unnamed statement; 0 when the window does not start with one.</summary>
    public static int Measure(ReadOnlySpan<byte> window)
    {
        int pos = 0;
        bool first = true;
        bool bound = false;
        bool executed = false;
        while (true)
        {
            int total = MessageFramer.WholeLength(window.Slice(pos));
            if (total == 0)
            {
                return 0;
            }

            byte type = window[pos];

            ReadOnlySpan<byte> message = window.Slice(pos, total);
            ReadOnlySpan<byte> body = message.Slice(MessageFramer.HeaderLength);
            if (first)
            {
                if (!StartsIntercepted(message))
                {
                    return 0;
                }

                if (type == (byte)FrontendMessage.Query)
                {
                    return total;
                }

                first = false;
                pos += total;
                continue;
            }

            switch (type)
            {
                case (byte)'B':
                    // Unnamed portal of the unnamed statement only.
                    if (body.Length < 2 || body[0] != 0 || body[1] != 0)
                    {
                        return 0;
                    }

                    bound = true;
                    break;
                case (byte)'D':
                    if (body.Length < 2 || body[1] != 0)
                    {
                        return 0;
                    }

                    break;
                case (byte)'E':
                    if (body.Length < 1 || !bound || body[0] != 0)
                    {
                        return 0;
                    }

                    executed = true;
                    break;
                case (byte)'H':
                    break;
                case (byte)'S':
                    // Only a whole one-off command: a statement prepared now and bound in a later round
                    // trip must exist on the backend, so such batches go to PostgreSQL.
                    return executed ? pos + total : 0;
                default:
                    return 0;
            }

            pos += total;
        }
    }

    /// <summary>Whether the window starts with a message the scanner recognises (a Query, or an unnamed Parse).</summary>
    private static bool StartsIntercepted(ReadOnlySpan<byte> message)
    {
        if (message.Length < MessageFramer.HeaderLength + 1)
        {
            return false;
        }

        ReadOnlySpan<byte> body = message.Slice(MessageFramer.HeaderLength);
        if (message[0] == (byte)FrontendMessage.Query)
        {
            // $n has no value in a Simple Query: PostgreSQL's own error is the right answer. So is its
            // 08P01 for bytes after the text's terminating zero (a malformed message).
            ReadOnlySpan<byte> text = MessageFramer.ReadCString(body);
            return text.Length + 1 == body.Length
                && QueryScanner.TryMatch(text, out InterceptedCall call)
                && call.Argument.Kind != ArgumentKind.Parameter && call.Timeout.Kind != ArgumentKind.Parameter
                && ResolvesLikePostgres(call, ReadOnlySpan<byte>.Empty);
        }

        if (message[0] != (byte)FrontendMessage.Parse || body.IsEmpty || body[0] != 0)
        {
            return false;
        }

        ReadOnlySpan<byte> sql = MessageFramer.ReadCString(body.Slice(1));
        ReadOnlySpan<byte> types = body.Slice(Math.Min(body.Length, 1 + sql.Length + 1));
        return WellFormedParameterTypes(types)
            && QueryScanner.TryMatch(sql, out InterceptedCall parsed) && ResolvesLikePostgres(parsed, types);
    }

    /// <summary>Whether a Parse ends in exactly an int16 count and that many int32 type OIDs, as PostgreSQL requires.</summary>
    private static bool WellFormedParameterTypes(ReadOnlySpan<byte> types)
    {
        return types.Length >= sizeof(short)
            && types.Length == sizeof(short) + (sizeof(int) * BinaryPrimitives.ReadInt16BigEndian(types));
    }

    /// <summary>
    /// Whether PostgreSQL would resolve the call to the int4 (pid) / int8 (timeout) signature. A pid that
    /// is a bigint (a literal beyond int4, a ::bigint cast, a parameter declared int8 or text) makes
    /// PostgreSQL look for another function and fail (42883); such calls go to PostgreSQL for its own error.
    /// </summary>
    private static bool ResolvesLikePostgres(InterceptedCall call, ReadOnlySpan<byte> parameterTypes)
    {
        CallArgument pid = call.Argument;
        if (pid.Int8Cast || (pid.Kind == ArgumentKind.Integer && pid.Value is < int.MinValue or > int.MaxValue))
        {
            return false;
        }

        if (pid.Kind == ArgumentKind.Parameter && !DeclaredAs(parameterTypes, pid.ParameterIndex, TypeOids.Int4))
        {
            return false;
        }

        return call.Timeout.Kind != ArgumentKind.Parameter || DeclaredAs(parameterTypes, call.Timeout.ParameterIndex, TypeOids.Int8);
    }

    /// <summary>Whether parameter <paramref name="index"/> is undeclared or declared an integer type no wider than <paramref name="widest"/>.</summary>
    private static bool DeclaredAs(ReadOnlySpan<byte> parameterTypes, int index, int widest)
    {
        int declared = parameterTypes.Length >= sizeof(short) ? BinaryPrimitives.ReadInt16BigEndian(parameterTypes) : 0;
        if (index > declared || parameterTypes.Length < sizeof(short) + (index * sizeof(int)))
        {
            return true;
        }

        int type = BinaryPrimitives.ReadInt32BigEndian(parameterTypes.Slice(sizeof(short) + ((index - 1) * sizeof(int))));
        return type is TypeOids.Unspecified or TypeOids.Int2 or TypeOids.Int4 || (type == TypeOids.Int8 && widest == TypeOids.Int8);
    }

}
