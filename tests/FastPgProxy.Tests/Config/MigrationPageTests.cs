using System.Text;
using System.Text.RegularExpressions;
using FastPgProxy.Config;
using FastPgProxy.Tests.Infrastructure;
using Xunit;

namespace FastPgProxy.Tests.Config;

/// <summary>
/// docs/MIGRATION.md shows, for Debian's stock pgbouncer.ini and a production-style file, what the loader
/// makes of every key. Those tables are the loader's own output (<c>fastpgproxy --review</c>), so they
/// are regenerated here and must match the page. With FPP_WRITE_MIGRATION_PAGE=1 the page is rewritten.
/// </summary>
public partial class MigrationPageTests
{
    /// <summary>Debian's stock file, from the pgbouncer package (.ci/run installs it).</summary>
    public const string DebianStockFile = "/etc/pgbouncer/pgbouncer.ini";

    [GeneratedRegex(@"<!-- review: (?<file>\S+) -->\n(?<table>.*?)<!-- end review -->", RegexOptions.Singleline)]
    private static partial Regex ReviewSection();

    private static string Resolve(string file) => Path.IsPathRooted(file) ? file : RepositoryPaths.Get(file);

    [Fact]
    public void The_migration_page_tables_are_what_the_loader_says_today()
    {
        Assert.True(File.Exists(DebianStockFile), $"{DebianStockFile} is missing: install Debian's pgbouncer package (bash .ci/run does)");
        string pagePath = RepositoryPaths.Get("docs", "MIGRATION.md");
        string page = File.ReadAllText(pagePath);
        MatchCollection sections = ReviewSection().Matches(page);
        Assert.Equal(2, sections.Count);
        string expected = ReviewSection().Replace(page, m =>
            $"<!-- review: {m.Groups["file"].Value} -->\n{ConfigReview.ToMarkdown(ConfigLoader.Review(Resolve(m.Groups["file"].Value)))}<!-- end review -->");
        if (Environment.GetEnvironmentVariable("FPP_WRITE_MIGRATION_PAGE") == "1")
        {
            File.WriteAllText(pagePath, expected, new UTF8Encoding(false));
            return;
        }

        Assert.Equal(expected, page);
    }

    /// <summary>Debian's stock file, read unchanged: no key refused, so it starts (with its empty [databases]).</summary>
    [Fact]
    public void Debians_stock_pgbouncer_ini_loads_unchanged_with_nothing_refused()
    {
        List<ConfigReviewEntry> review = ConfigLoader.Review(DebianStockFile);
        Assert.NotEmpty(review);
        Assert.All(review, entry => Assert.NotEqual(ConfigKeyStatus.Refused, entry.Status));
        ProxyOptions options = ConfigLoader.Load(DebianStockFile);
        Assert.Empty(options.Databases);
        Assert.Equal("/var/run/postgresql", options.UnixSocketDir);
        Assert.Equal("/etc/pgbouncer/userlist.txt", options.AuthFile);
    }

    /// <summary>The production-style example is what the migration page discusses; its refusals are exactly the keys the page marks refused.</summary>
    [Fact]
    public void Review_verdicts_agree_with_Load()
    {
        string file = RepositoryPaths.Get("examples", "pgbouncer-production.ini");
        List<ConfigReviewEntry> review = ConfigLoader.Review(file);
        List<string> refused = review.Where(e => e.Status == ConfigKeyStatus.Refused).Select(e => e.Message!).ToList();
        if (refused.Count == 0)
        {
            ProxyOptions options = ConfigLoader.Load(file);
            Assert.Equal(review.Count(e => e.Status == ConfigKeyStatus.Ignored), options.Warnings.Count);
        }
        else
        {
            ConfigException e = Assert.Throws<ConfigException>(() => ConfigLoader.Load(file));
            Assert.Equal(refused, e.Message.Split('\n'));
        }
    }
}
