using System.Text;
using FastPgProxy.Interception;

namespace FastPgProxy.Tests.Fuzz;

/// <summary>
/// Checks <see cref="QueryScanner.TryMatch"/> against <see cref="ScannerReference"/> on any bytes: what the
/// scanner accepts must be one of the accepted forms and be read exactly as the reference reads it (a misread
/// would answer the wrong call, or cancel the wrong session); what it rejects goes to the server as it was, so
/// the scanner must leave the text and the call untouched, and the reference must reject it too.
/// </summary>
internal static class ScannerOracle
{
    /// <summary>The scanner's reading of <paramref name="sql"/> in the reference's terms; null when it rejected the text.</summary>
    public static ExpectedCall? Scan(byte[] sql)
    {
        byte[] before = sql.ToArray();
        bool ok = QueryScanner.TryMatch(sql, out InterceptedCall call);
        Property.Require(sql.AsSpan().SequenceEqual(before), "the scanner changed the text it was given");
        if (!ok)
        {
            Property.Require(call.Function == default && call.Argument.Kind == ArgumentKind.None && call.Timeout.Kind == ArgumentKind.None
                && call.ColumnNameStart == 0 && call.ColumnNameLength == 0, "a rejected text still describes a call");
            return null;
        }

        if (call.HasAlias)
        {
            int end = call.ColumnNameStart + call.ColumnNameLength;
            Property.Require(call.ColumnNameLength > 0 && end <= sql.Length, $"alias at {call.ColumnNameStart}+{call.ColumnNameLength} outside the text");
            if (call.ColumnNameQuoted)
            {
                Property.Require(call.ColumnNameStart > 0 && sql[call.ColumnNameStart - 1] == (byte)'"' && end < sql.Length && sql[end] == (byte)'"', "a quoted alias sits between quotes");
            }
        }
        else
        {
            Property.Require(call.ColumnNameStart == -1 && call.ColumnNameLength == 0 && !call.ColumnNameQuoted, "no alias, no offsets");
        }

        return new ExpectedCall(call.Function, Argument(call.Argument), Argument(call.Timeout), call.ColumnName(sql), call.HasAlias, call.ColumnNameQuoted);
    }

    private static ExpectedArgument? Argument(CallArgument a)
    {
        if (a.Kind == ArgumentKind.None)
        {
            Property.Require(a.Value == 0 && a.ParameterIndex == 0 && a.Cast == ArgumentCast.None, "an absent argument carries nothing");
            return null;
        }

        Property.Require(a.Kind == ArgumentKind.Integer || a.Value == 0, "only an integer has a value");
        Property.Require(a.Kind == ArgumentKind.Parameter ? a.ParameterIndex is >= 1 and <= 65535 : a.ParameterIndex == 0, "only $n has a parameter number, 1..65535");
        return new ExpectedArgument(a.Kind, a.Value, a.ParameterIndex, a.Cast);
    }

    /// <summary>Scanner and reference must agree: accept the same texts and read them the same way.</summary>
    public static ExpectedCall? Check(byte[] sql)
    {
        ExpectedCall? expected = ScannerReference.Match(sql);
        ExpectedCall? actual = Scan(sql);
        if (actual is not null && expected is null)
        {
            throw new PropertyViolationException($"misread: the scanner accepted {actual} in text the reference rejects: {Show(sql)}");
        }

        if (actual is null && expected is not null)
        {
            throw new PropertyViolationException($"missed: the scanner rejected {expected}: {Show(sql)}");
        }

        Property.RequireEqual(expected, actual, $"reading of {Show(sql)}");
        return actual;
    }

    /// <summary>The text as a C# string literal, bytes outside printable ASCII escaped.</summary>
    public static string Show(byte[] sql)
    {
        var text = new StringBuilder("\"");
        foreach (byte b in sql)
        {
            text.Append(b switch
            {
                (byte)'"' => "\\\"",
                (byte)'\\' => "\\\\",
                (byte)'\n' => "\\n",
                (byte)'\r' => "\\r",
                (byte)'\t' => "\\t",
                >= 0x20 and < 0x7F => ((char)b).ToString(),
                _ => $"\\x{b:X2}",
            });
        }

        return text.Append('"').ToString();
    }
}
