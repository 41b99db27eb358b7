using System;
using Xunit;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>
/// Starts one <see cref="PostgresServer"/> for every test class in the <c>postgres</c>
/// collection (<c>[Collection("postgres")]</c>) and disposes it after the last one.
/// </summary>
public sealed class PostgresFixture : IDisposable
{
    /// <summary>Starts the shared server.</summary>
    public PostgresFixture() => Server = PostgresServer.Start();

    /// <summary>The running server shared by the collection.</summary>
    public PostgresServer Server { get; }

    /// <summary>Stops the server and deletes its files.</summary>
    public void Dispose() => Server.Dispose();
}

/// <summary>
/// The <c>postgres</c> test collection: its classes share one <see cref="PostgresFixture"/>
/// and, as with any xunit collection, run one after another rather than in parallel.
/// </summary>
[CollectionDefinition(Name)]
public sealed class PostgresCollection : ICollectionFixture<PostgresFixture>
{
    /// <summary>Name to use in <c>[Collection(...)]</c>.</summary>
    public const string Name = "postgres";
}
