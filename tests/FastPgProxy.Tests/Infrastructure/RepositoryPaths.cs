using Xunit;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>Files of the repository the tests were built from (the folder holding FastPgProxy.sln).</summary>
public static class RepositoryPaths
{
    /// <summary>The repository's root folder, found upwards from the test binaries.</summary>
    public static string Root
    {
        get
        {
            DirectoryInfo? root = new(AppContext.BaseDirectory);
            while (root is not null && !File.Exists(Path.Combine(root.FullName, "FastPgProxy.sln")))
            {
                root = root.Parent;
            }

            Assert.True(root is not null, $"no FastPgProxy.sln above {AppContext.BaseDirectory}");
            return root.FullName;
        }
    }

    /// <summary>A path under the root, from its parts.</summary>
    public static string Get(params string[] parts) => Path.Combine([Root, .. parts]);
}
