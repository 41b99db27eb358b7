using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace FastPgProxy.Config;

/// <summary>What the loader made of one key of a config file.</summary>
internal enum ConfigKeyStatus
{
    /// <summary>Read and acted on.</summary>
    Used,
    /// <summary>A PgBouncer setting FastPgProxy does not implement: one warning, start-up goes on.</summary>
    Ignored,
    /// <summary>An error: start-up stops (an unknown key, a bad value, or a value FastPgProxy cannot honour).</summary>
    Refused,
}

/// <summary>One key of a reviewed config file: where it is, its value, and what the loader made of it (with the loader's message).</summary>
internal sealed record ConfigReviewEntry(string Source, int Line, string? Section, string Key, string Value, ConfigKeyStatus Status, string? Message);

/// <summary>
/// Renders <see cref="ConfigLoader.Review"/> as the migration page's tables (<c>fastpgproxy --review FILE</c>):
/// the loader's own verdict on every key, so the page cannot drift from what the loader does.
/// </summary>
internal static partial class ConfigReview
{
    /// <summary>A Markdown table: line, section, key, value (passwords masked), and the verdict with its reason.</summary>
    public static string ToMarkdown(IReadOnlyList<ConfigReviewEntry> entries)
    {
        var text = new StringBuilder();
        text.Append("| line | section | key | value | FastPgProxy |\n|---|---|---|---|---|\n");
        foreach (ConfigReviewEntry entry in entries)
        {
            string verdict = entry.Status switch
            {
                ConfigKeyStatus.Used => "supported",
                ConfigKeyStatus.Ignored => "ignored with a warning (not implemented)",
                _ => "**refused**: " + Reason(entry),
            };
            text.Append(CultureInfo.InvariantCulture, $"| {(entry.Line == 0 ? "" : entry.Line.ToString(CultureInfo.InvariantCulture))} | {entry.Section} | {Cell(entry.Key)} | {Cell(Mask(entry.Value))} | {verdict} |\n");
        }

        return text.ToString();
    }

    /// <summary>Whether the file would start: nothing refused.</summary>
    public static bool Starts(IReadOnlyList<ConfigReviewEntry> entries) => entries.All(e => e.Status != ConfigKeyStatus.Refused);

    // The message without the "file:line: key: " the table already shows.
    private static string Reason(ConfigReviewEntry entry)
    {
        string message = entry.Message ?? "";
        string prefix = entry.Line == 0 ? $"{entry.Source}: " : $"{entry.Source}:{entry.Line.ToString(CultureInfo.InvariantCulture)}: ";
        if (message.StartsWith(prefix, StringComparison.Ordinal))
        {
            message = message[prefix.Length..];
        }

        return entry.Key.Length > 0 && message.StartsWith(entry.Key + ": ", StringComparison.Ordinal) ? Cell(message[(entry.Key.Length + 2)..]) : Cell(message);
    }

    private static string Mask(string value) => PasswordPattern().Replace(value, "password=***");

    private static string Cell(string text) => text.Length == 0 ? "" : "`" + text.Replace("|", "\\|", StringComparison.Ordinal).Replace("`", "'", StringComparison.Ordinal) + "`";

    [GeneratedRegex(@"password\s*=\s*('([^'\\]|\\.)*'|\S+)", RegexOptions.IgnoreCase)]
    private static partial Regex PasswordPattern();
}
