using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Xunit.Sdk;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>
/// A strict reader of the Prometheus text exposition format 0.0.4, for checking what the metrics endpoint
/// serves: every line is blank, a comment, or <c>name{labels} value</c>; names and label names are valid;
/// label values use only the format's escapes; every family has one HELP and one TYPE line before its first
/// sample, and its samples are together; no series appears twice; every counter's name ends in
/// <c>_total</c>; every value is a double. A violation throws with the line it is on.
/// </summary>
internal sealed partial class PrometheusText
{
    [GeneratedRegex("^[a-zA-Z_:][a-zA-Z0-9_:]*$")]
    private static partial Regex MetricName();

    [GeneratedRegex("^[a-zA-Z_][a-zA-Z0-9_]*$")]
    private static partial Regex LabelName();

    private readonly Dictionary<string, double> _series = new(StringComparer.Ordinal);

    private PrometheusText()
    {
    }

    /// <summary>Family name to its TYPE.</summary>
    public Dictionary<string, string> Types { get; } = new(StringComparer.Ordinal);

    /// <summary>Family name to its HELP text (unescaped).</summary>
    public Dictionary<string, string> Help { get; } = new(StringComparer.Ordinal);

    /// <summary>Every sample: name, labels by name, value.</summary>
    public List<(string Name, IReadOnlyDictionary<string, string> Labels, double Value)> Samples { get; } = new();

    /// <summary>Parses <paramref name="body"/>, throwing at the first violation of the format.</summary>
    public static PrometheusText Parse(string body)
    {
        var text = new PrometheusText();
        if (body.Length > 0 && !body.EndsWith('\n'))
        {
            throw new XunitException("the exposition does not end with a line feed");
        }

        string[] lines = body.Split('\n');
        var finished = new HashSet<string>(StringComparer.Ordinal);
        string? current = null;
        for (int i = 0; i < lines.Length - 1; i++)
        {
            string line = lines[i];
            string where = $"line {i + 1} '{line}'";
            if (line.Length == 0)
            {
                continue;
            }

            if (line.Contains('\r', StringComparison.Ordinal))
            {
                throw new XunitException($"{where}: carriage return");
            }

            if (line[0] == '#')
            {
                string[] parts = line.Split(' ', 4);
                if (parts.Length >= 3 && parts[0] == "#" && parts[1] is "HELP" or "TYPE")
                {
                    string family = parts[2];
                    Require(MetricName().IsMatch(family), where, "invalid metric name");
                    Require(!text.Samples.Any(s => s.Name == family), where, "HELP or TYPE after the family's samples");
                    if (parts[1] == "HELP")
                    {
                        Require(text.Help.TryAdd(family, Unescape(parts.Length > 3 ? parts[3] : "", where, help: true)), where, "second HELP");
                    }
                    else
                    {
                        Require(parts.Length == 4 && parts[3] is "counter" or "gauge" or "histogram" or "summary" or "untyped", where, "unknown type");
                        Require(text.Types.TryAdd(family, parts[3]), where, "second TYPE");
                        if (parts[3] == "counter")
                        {
                            Require(family.EndsWith("_total", StringComparison.Ordinal), where, "a counter's name must end in _total");
                        }
                    }
                }

                continue;
            }

            (string name, Dictionary<string, string> labels, double value) = ParseSample(line, where);
            Require(text.Help.ContainsKey(name), where, "sample without a HELP line before it");
            Require(text.Types.ContainsKey(name), where, "sample without a TYPE line before it");
            if (current != name)
            {
                Require(!finished.Contains(name), where, "the family's samples are not together");
                if (current is not null)
                {
                    finished.Add(current);
                }

                current = name;
            }

            string key = name + "{" + string.Join(",", labels.OrderBy(l => l.Key, StringComparer.Ordinal).Select(l => l.Key + "=" + l.Value)) + "}";
            Require(text._series.TryAdd(key, value), where, "duplicate series");
            text.Samples.Add((name, labels, value));
        }

        return text;
    }

    /// <summary>The value of the one series <paramref name="name"/> whose labels include <paramref name="labels"/>.</summary>
    public double Value(string name, params (string Name, string Value)[] labels)
    {
        var matches = Samples.Where(s => s.Name == name && labels.All(l => s.Labels.TryGetValue(l.Name, out string? v) && v == l.Value)).ToList();
        if (matches.Count != 1)
        {
            IEnumerable<string> present = Samples.Where(s => s.Name == name).Select(s => "{" + string.Join(",", s.Labels.Select(l => $"{l.Key}=[{l.Value}]")) + "}");
            throw new XunitException($"{matches.Count} series {name}{{{string.Join(",", labels.Select(l => $"{l.Name}=[{l.Value}]"))}}}; present: {string.Join(" ", present)}");
        }

        return matches[0].Value;
    }

    private static (string Name, Dictionary<string, string> Labels, double Value) ParseSample(string line, string where)
    {
        int pos = 0;
        while (pos < line.Length && line[pos] is not ('{' or ' '))
        {
            pos++;
        }

        string name = line[..pos];
        Require(MetricName().IsMatch(name), where, "invalid metric name");
        var labels = new Dictionary<string, string>(StringComparer.Ordinal);
        if (pos < line.Length && line[pos] == '{')
        {
            pos++;
            while (true)
            {
                Require(pos < line.Length, where, "unterminated labels");
                if (line[pos] == '}')
                {
                    pos++;
                    break;
                }

                int eq = line.IndexOf('=', pos);
                Require(eq > pos, where, "label without a name");
                string labelName = line[pos..eq];
                Require(LabelName().IsMatch(labelName) && !labelName.StartsWith("__", StringComparison.Ordinal), where, $"invalid label name '{labelName}'");
                pos = eq + 1;
                Require(pos < line.Length && line[pos] == '"', where, "label value not quoted");
                pos++;
                var value = new StringBuilder();
                while (true)
                {
                    Require(pos < line.Length, where, "unterminated label value");
                    char c = line[pos++];
                    if (c == '"')
                    {
                        break;
                    }

                    if (c == '\\')
                    {
                        Require(pos < line.Length, where, "dangling backslash");
                        char e = line[pos++];
                        value.Append(e switch
                        {
                            '\\' => '\\',
                            '"' => '"',
                            'n' => '\n',
                            _ => throw new XunitException($"{where}: invalid escape \\{e}"),
                        });
                    }
                    else
                    {
                        value.Append(c);
                    }
                }

                Require(labels.TryAdd(labelName, value.ToString()), where, $"label {labelName} twice");
                Require(pos < line.Length && line[pos] is ',' or '}', where, "expected , or } after a label");
                if (line[pos] == ',')
                {
                    pos++;
                }
            }
        }

        Require(pos < line.Length && line[pos] == ' ', where, "expected a space before the value");
        string[] rest = line[(pos + 1)..].Split(' ');
        Require(rest.Length is 1 or 2, where, "expected a value and an optional timestamp");
        double number = rest[0] switch
        {
            "NaN" => double.NaN,
            "+Inf" => double.PositiveInfinity,
            "-Inf" => double.NegativeInfinity,
            _ => double.TryParse(rest[0], NumberStyles.Float, CultureInfo.InvariantCulture, out double d) ? d : throw new XunitException($"{where}: value '{rest[0]}' is not a number"),
        };
        Require(rest.Length == 1 || long.TryParse(rest[1], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out _), where, "invalid timestamp");
        return (name, labels, number);
    }

    private static string Unescape(string text, string where, bool help)
    {
        var result = new StringBuilder(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            if (text[i] != '\\')
            {
                result.Append(text[i]);
                continue;
            }

            Require(i + 1 < text.Length, where, "dangling backslash");
            char e = text[++i];
            result.Append(e switch
            {
                '\\' => '\\',
                'n' => '\n',
                _ => throw new XunitException($"{where}: invalid escape \\{e} in {(help ? "HELP" : "text")}"),
            });
        }

        return result.ToString();
    }

    private static void Require(bool condition, string where, string problem)
    {
        if (!condition)
        {
            throw new XunitException($"{where}: {problem}");
        }
    }
}
