using System.Diagnostics.CodeAnalysis;
using System.Formats.Asn1;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace FastPgProxy.Auth;

/// <summary>
/// Channel binding data of type <c>tls-server-end-point</c> (RFC 5929 section 4), the one type PostgreSQL
/// uses for SCRAM-SHA-256-PLUS: the hash of the TLS server's certificate, as DER. The server computes it
/// from its own certificate and the client from the certificate the server presented; a man in the middle
/// who terminates TLS with another certificate cannot make the two agree.
/// </summary>
/// <remarks>
/// The hash function is the one of the certificate's signature algorithm, except that MD5 and SHA-1 become
/// SHA-256 (RFC 5929 section 4.1). For RSASSA-PSS it is the hash named in the signature's parameters
/// (SHA-1 when absent, so SHA-256), as OpenSSL's <c>X509_get_signature_info</c> reports it to PostgreSQL's
/// <c>be_tls_get_certificate_hash</c>. Signatures without a hash of their own (Ed25519, Ed448) or with a
/// hash .NET lacks here (SHA-224) or that this class does not map (SHA-3) have no binding data: the caller
/// then offers or uses no channel binding, where PostgreSQL would fail the login. Runs once per login, so
/// it may allocate.
/// </remarks>
internal static class ChannelBinding
{
    /// <summary>The channel binding type name, after <c>p=</c> in the gs2 header.</summary>
    public const string TlsServerEndPointType = "tls-server-end-point";

    // Signature algorithms (RFC 4055, RFC 5758, RFC 3279) and the digests in RSASSA-PSS parameters.
    private const string Md5WithRsa = "1.2.840.113549.1.1.4";
    private const string Sha1WithRsa = "1.2.840.113549.1.1.5";
    private const string RsaSsaPss = "1.2.840.113549.1.1.10";
    private const string Sha256WithRsa = "1.2.840.113549.1.1.11";
    private const string Sha384WithRsa = "1.2.840.113549.1.1.12";
    private const string Sha512WithRsa = "1.2.840.113549.1.1.13";
    private const string EcdsaWithSha1 = "1.2.840.10045.4.1";
    private const string EcdsaWithSha256 = "1.2.840.10045.4.3.2";
    private const string EcdsaWithSha384 = "1.2.840.10045.4.3.3";
    private const string EcdsaWithSha512 = "1.2.840.10045.4.3.4";
    private const string DsaWithSha1 = "1.2.840.10040.4.3";
    private const string DsaWithSha256 = "2.16.840.1.101.3.4.3.2";
    private const string Md5 = "1.2.840.113549.2.5";
    private const string Sha1 = "1.3.14.3.2.26";
    private const string Sha256 = "2.16.840.1.101.3.4.2.1";
    private const string Sha384 = "2.16.840.1.101.3.4.2.2";
    private const string Sha512 = "2.16.840.1.101.3.4.2.3";

    /// <summary>
    /// The tls-server-end-point data of <paramref name="certificate"/> (the TLS server's own certificate on
    /// the server side, <c>SslStream.RemoteCertificate</c> on the client side). False when its signature
    /// algorithm has no usable hash (see the remarks) or its DER cannot be read.
    /// </summary>
    public static bool TryComputeTlsServerEndPoint(X509Certificate certificate, [NotNullWhen(true)] out byte[]? data)
    {
        ArgumentNullException.ThrowIfNull(certificate);
        ReadOnlyMemory<byte> der = certificate is X509Certificate2 full ? full.RawDataMemory : certificate.GetRawCertData();
        if (!TryGetHashAlgorithm(der, out HashAlgorithmName hash))
        {
            data = null;
            return false;
        }

        data = CryptographicOperations.HashData(hash, der.Span);
        return true;
    }

    /// <summary>The tls-server-end-point data of <paramref name="certificate"/>, as <see cref="TryComputeTlsServerEndPoint"/>.</summary>
    /// <exception cref="NotSupportedException">The certificate's signature algorithm has no usable hash.</exception>
    public static byte[] ComputeTlsServerEndPoint(X509Certificate certificate)
        => TryComputeTlsServerEndPoint(certificate, out byte[]? data)
            ? data
            : throw new NotSupportedException("The certificate's signature algorithm has no hash for tls-server-end-point channel binding.");

    /// <summary>
    /// The hash function tls-server-end-point uses for the certificate <paramref name="der"/>, read from its
    /// outer <c>signatureAlgorithm</c> (RFC 5280 section 4.1.1.2).
    /// </summary>
    internal static bool TryGetHashAlgorithm(ReadOnlyMemory<byte> der, out HashAlgorithmName hash)
    {
        hash = default;
        try
        {
            // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, signatureValue }
            var reader = new AsnReader(der, AsnEncodingRules.BER);
            AsnReader certificate = reader.ReadSequence();
            certificate.ReadEncodedValue();
            AsnReader algorithm = certificate.ReadSequence();
            string? digest = algorithm.ReadObjectIdentifier() switch
            {
                Md5WithRsa or Sha1WithRsa or EcdsaWithSha1 or DsaWithSha1 => Sha1,
                Sha256WithRsa or EcdsaWithSha256 or DsaWithSha256 => Sha256,
                Sha384WithRsa or EcdsaWithSha384 => Sha384,
                Sha512WithRsa or EcdsaWithSha512 => Sha512,
                RsaSsaPss => ReadPssDigest(algorithm),
                _ => null,
            };

            return TryMapDigest(digest, out hash);
        }
        catch (AsnContentException)
        {
            return false;
        }
    }

    /// <summary>
    /// The hashAlgorithm of <c>RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] EXPLICIT AlgorithmIdentifier
    /// DEFAULT sha1, ... }</c> (RFC 4055 section 3.1). The parameters are required in a certificate's signature.
    /// </summary>
    private static string? ReadPssDigest(AsnReader algorithm)
    {
        if (!algorithm.HasData)
        {
            return null;
        }

        AsnReader parameters = algorithm.ReadSequence();
        var hashTag = new Asn1Tag(TagClass.ContextSpecific, 0, isConstructed: true);
        if (!parameters.HasData || !parameters.PeekTag().HasSameClassAndValue(hashTag))
        {
            return Sha1;
        }

        return parameters.ReadSequence(hashTag).ReadSequence().ReadObjectIdentifier();
    }

    /// <summary>RFC 5929 section 4.1: the signature's digest, but SHA-256 for MD5 and SHA-1.</summary>
    private static bool TryMapDigest(string? digest, out HashAlgorithmName hash)
    {
        hash = digest switch
        {
            Md5 or Sha1 or Sha256 => HashAlgorithmName.SHA256,
            Sha384 => HashAlgorithmName.SHA384,
            Sha512 => HashAlgorithmName.SHA512,
            _ => default,
        };
        return hash != default;
    }
}
