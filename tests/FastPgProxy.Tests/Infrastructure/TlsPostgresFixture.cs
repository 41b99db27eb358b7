using System;
using Xunit;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>
/// Makes one <see cref="TestCertificates"/> set and starts one TLS <see cref="PostgresServer"/>
/// (<see cref="PostgresServer.StartWithTls"/>) with it for every test class in the
/// <c>postgres-tls</c> collection (<c>[Collection("postgres-tls")]</c>); disposes both after the last one.
/// </summary>
public sealed class TlsPostgresFixture : IDisposable
{
    /// <summary>Makes the certificates and starts the shared server.</summary>
    public TlsPostgresFixture()
    {
        Certificates = TestCertificates.Create();
        try
        {
            Server = PostgresServer.StartWithTls(Certificates);
        }
        catch
        {
            Certificates.Dispose();
            throw;
        }
    }

    /// <summary>The certificates the server uses; make client certificates for it here.</summary>
    public TestCertificates Certificates { get; }

    /// <summary>The running TLS server shared by the collection.</summary>
    public PostgresServer Server { get; }

    /// <summary>Stops the server, deletes its files, then the certificates' files.</summary>
    public void Dispose()
    {
        Server.Dispose();
        Certificates.Dispose();
    }
}

/// <summary>
/// The <c>postgres-tls</c> test collection: its classes share one <see cref="TlsPostgresFixture"/>
/// and run one after another rather than in parallel.
/// </summary>
[CollectionDefinition(Name)]
public sealed class TlsPostgresCollection : ICollectionFixture<TlsPostgresFixture>
{
    /// <summary>Name to use in <c>[Collection(...)]</c>.</summary>
    public const string Name = "postgres-tls";
}
