using System.Collections.Generic;
using System.Diagnostics.CodeAnalysis;
using System.IO;
using System.Text;

namespace FastPgProxy.Auth;

/// <summary>
/// The users of a PgBouncer-style auth_file (userlist.txt), read once and then shared read-only by every loop.
/// </summary>
/// <remarks>
/// Each meaningful line is <c>"user" "secret"</c>: two double-quoted strings, a doubled quote inside one
/// standing for a literal quote. Blank lines and lines whose first non-blank character is <c>;</c> or
/// <c>#</c> are skipped. Further quoted fields after the secret are ignored, as PgBouncer ignores them (old
/// exports of PostgreSQL's flat auth file carried more); anything else is an error naming file and line.
/// When a user appears twice the later line wins, as in PgBouncer. User names are case-sensitive, as
/// PostgreSQL's role names are once the startup packet has them.
/// </remarks>
internal sealed class UserList
{
    private const string ExpectedUserAndSecret = "expected \"user\" \"secret\"";

    private readonly Dictionary<string, UserSecret> _users;

    private UserList(Dictionary<string, UserSecret> users) => _users = users;

    /// <summary>How many users the file defines.</summary>
    public int Count => _users.Count;

    /// <summary>Looks up <paramref name="user"/> by exact (ordinal) name.</summary>
    public bool TryGet(string user, [MaybeNullWhen(false)] out UserSecret secret)
        => _users.TryGetValue(user, out secret);

    /// <summary>
    /// Reads and parses the auth_file at <paramref name="path"/>. On failure <paramref name="error"/> names the
    /// file, and the line for a parse error: <c>/etc/x/userlist.txt:3: expected "user" "secret"</c>.
    /// </summary>
    public static bool TryLoad(string path, [NotNullWhen(true)] out UserList? list, [NotNullWhen(false)] out string? error)
    {
        ArgumentNullException.ThrowIfNull(path);
        list = null;
        string text;
        try
        {
            text = File.ReadAllText(path, Encoding.UTF8);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            error = $"{path}: file not found";
            return false;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException or ArgumentException)
        {
            error = $"{path}: cannot read: {e.Message}";
            return false;
        }

        return TryParse(text, path, out list, out error);
    }

    /// <summary>
    /// Parses auth_file text; <paramref name="sourceName"/> is the file name used in errors. Throws
    /// <see cref="FormatException"/> with the message <see cref="TryLoad"/> would give.
    /// </summary>
    public static UserList Parse(string text, string sourceName)
        => TryParse(text, sourceName, out var list, out var error) ? list : throw new FormatException(error);

    /// <summary>Parses auth_file text, reporting the first bad line as <c>sourceName:line: reason</c>.</summary>
    public static bool TryParse(
        string text, string sourceName, [NotNullWhen(true)] out UserList? list, [NotNullWhen(false)] out string? error)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(sourceName);
        list = null;
        error = null;
        var users = new Dictionary<string, UserSecret>(StringComparer.Ordinal);
        var rest = text.AsSpan();
        if (!rest.IsEmpty && rest[0] == '\uFEFF')
        {
            rest = rest[1..]; // byte order mark left by some editors
        }

        for (var lineNumber = 1; ; lineNumber++)
        {
            var newline = rest.IndexOf('\n');
            var line = newline < 0 ? rest : rest[..newline];
            if (!TryParseLine(line, users, out var reason))
            {
                error = $"{sourceName}:{lineNumber}: {reason}";
                return false;
            }

            if (newline < 0)
            {
                break;
            }

            rest = rest[(newline + 1)..];
        }

        list = new UserList(users);
        return true;
    }

    private static bool TryParseLine(ReadOnlySpan<char> line, Dictionary<string, UserSecret> users, [NotNullWhen(false)] out string? reason)
    {
        reason = null;
        var position = SkipBlanks(line, 0);
        if (position == line.Length || line[position] is ';' or '#')
        {
            return true;
        }

        if (!TryReadQuoted(line, ref position, out var user, out reason))
        {
            return false;
        }

        var afterUser = position;
        position = SkipBlanks(line, position);
        if (position == afterUser || position == line.Length)
        {
            reason = ExpectedUserAndSecret;
            return false;
        }

        if (!TryReadQuoted(line, ref position, out var secretText, out reason))
        {
            return false;
        }

        while (true)
        {
            var afterField = position;
            position = SkipBlanks(line, position);
            if (position == line.Length)
            {
                break;
            }

            if (position == afterField || !TryReadQuoted(line, ref position, out _, out reason))
            {
                reason ??= ExpectedUserAndSecret;
                return false;
            }
        }

        if (user.Length == 0)
        {
            reason = "empty user name";
            return false;
        }

        if (!UserSecret.TryCreate(secretText, out var secret))
        {
            reason = $"malformed SCRAM-SHA-256 secret for user \"{user}\"";
            return false;
        }

        users[user] = secret;
        return true;
    }

    /// <summary>Reads <c>"..."</c> at <paramref name="position"/>, where <c>""</c> inside stands for <c>"</c>.</summary>
    private static bool TryReadQuoted(
        ReadOnlySpan<char> line, ref int position, [NotNullWhen(true)] out string? value, [NotNullWhen(false)] out string? reason)
    {
        value = null;
        reason = null;
        if (position >= line.Length || line[position] != '"')
        {
            reason = ExpectedUserAndSecret;
            return false;
        }

        var builder = new StringBuilder();
        var i = position + 1;
        while (true)
        {
            var quote = line[i..].IndexOf('"');
            if (quote < 0)
            {
                reason = "unterminated quoted string";
                return false;
            }

            builder.Append(line.Slice(i, quote));
            i += quote + 1;
            if (i < line.Length && line[i] == '"')
            {
                builder.Append('"');
                i++;
                continue;
            }

            position = i;
            value = builder.ToString();
            return true;
        }
    }

    /// <summary>Skips spaces, tabs and the carriage return of a CRLF line ending.</summary>
    private static int SkipBlanks(ReadOnlySpan<char> line, int position)
    {
        while (position < line.Length && line[position] is ' ' or '\t' or '\r')
        {
            position++;
        }

        return position;
    }
}
