using System;
using System.Formats.Asn1;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using FastPgProxy.Auth;
using Xunit;

namespace FastPgProxy.Tests.Auth;

/// <summary>
/// tls-server-end-point data (RFC 5929 section 4) of certificates made here, each checked against a hash of the
/// certificate's DER computed directly with the function RFC 5929 section 4.1 names for its signature.
/// </summary>
public class ChannelBindingTests
{
    private static X509Certificate2 SelfSignedRsa(HashAlgorithmName hash, RSASignaturePadding padding)
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest("CN=fpp-test", key, hash, padding);
        return request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
    }

    private static X509Certificate2 SelfSignedEcdsa(ECCurve curve, HashAlgorithmName hash)
    {
        using var key = ECDsa.Create(curve);
        var request = new CertificateRequest("CN=fpp-test", key, hash);
        return request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
    }

    /// <summary>
    /// A certificate whose signature algorithm is <paramref name="signatureAlgorithm"/> (DER AlgorithmIdentifier),
    /// whatever the signature bytes: only the DER is hashed, the signature is never checked.
    /// </summary>
    private static X509Certificate2 WithSignatureAlgorithm(byte[] signatureAlgorithm)
    {
        using var key = RSA.Create(2048);
        var generator = new FixedAlgorithmGenerator(X509SignatureGenerator.CreateForRSA(key, RSASignaturePadding.Pkcs1), signatureAlgorithm);
        var request = new CertificateRequest(new X500DistinguishedName("CN=fpp-test"), generator.PublicKey, HashAlgorithmName.SHA256);
        return request.Create(
            new X500DistinguishedName("CN=fpp-test"), generator, DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1), [1, 2, 3, 4]);
    }

    /// <summary>A self-signed sha1WithRSAEncryption certificate, really signed with SHA-1 (CertificateRequest refuses SHA-1).</summary>
    internal static X509Certificate2 SelfSignedRsaSha1()
    {
        using var key = RSA.Create(2048);
        var generator = new RsaSha1Generator(key);
        var name = new X500DistinguishedName("CN=fpp-test");
        var request = new CertificateRequest(name, generator.PublicKey, HashAlgorithmName.SHA256);
        return request.Create(name, generator, DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1), [1, 2, 3, 4]);
    }

    /// <summary>AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }.</summary>
    private static byte[] AlgorithmIdentifier(string oid, Action<AsnWriter>? parameters = null)
    {
        var writer = new AsnWriter(AsnEncodingRules.DER);
        using (writer.PushSequence())
        {
            writer.WriteObjectIdentifier(oid);
            parameters?.Invoke(writer);
        }

        return writer.Encode();
    }

    [Fact]
    public void Rsa_sha256_certificate_is_hashed_with_sha256()
    {
        using var cert = SelfSignedRsa(HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);

        Assert.Equal("1.2.840.113549.1.1.11", cert.SignatureAlgorithm.Value);
        Assert.Equal(SHA256.HashData(cert.RawData), ChannelBinding.ComputeTlsServerEndPoint(cert));
    }

    [Fact]
    public void Ecdsa_sha384_certificate_is_hashed_with_sha384()
    {
        using var cert = SelfSignedEcdsa(ECCurve.NamedCurves.nistP384, HashAlgorithmName.SHA384);

        Assert.Equal("1.2.840.10045.4.3.3", cert.SignatureAlgorithm.Value);
        Assert.Equal(SHA384.HashData(cert.RawData), ChannelBinding.ComputeTlsServerEndPoint(cert));
    }

    [Fact]
    public void Rsa_sha512_certificate_is_hashed_with_sha512()
    {
        using var cert = SelfSignedRsa(HashAlgorithmName.SHA512, RSASignaturePadding.Pkcs1);

        Assert.Equal("1.2.840.113549.1.1.13", cert.SignatureAlgorithm.Value);
        Assert.Equal(SHA512.HashData(cert.RawData), ChannelBinding.ComputeTlsServerEndPoint(cert));
    }

    [Theory]
    [InlineData("SHA256")]
    [InlineData("SHA512")]
    public void Ecdsa_certificate_is_hashed_with_its_signature_hash(string hashName)
    {
        var hash = new HashAlgorithmName(hashName);
        using var cert = SelfSignedEcdsa(ECCurve.NamedCurves.nistP256, hash);

        Assert.Equal(CryptographicOperations.HashData(hash, cert.RawData), ChannelBinding.ComputeTlsServerEndPoint(cert));
    }

    [Fact]
    public void Rsa_pss_certificate_is_hashed_with_the_hash_of_its_parameters()
    {
        using var cert = SelfSignedRsa(HashAlgorithmName.SHA384, RSASignaturePadding.Pss);

        Assert.Equal("1.2.840.113549.1.1.10", cert.SignatureAlgorithm.Value);
        Assert.Equal(SHA384.HashData(cert.RawData), ChannelBinding.ComputeTlsServerEndPoint(cert));
    }

    [Theory]
    [InlineData("1.2.840.113549.1.1.5")] // sha1WithRSAEncryption
    [InlineData("1.2.840.113549.1.1.4")] // md5WithRSAEncryption
    [InlineData("1.2.840.10045.4.1")] // ecdsa-with-SHA1
    [InlineData("1.2.840.10040.4.3")] // dsa-with-sha1
    public void Md5_and_sha1_signatures_are_hashed_with_sha256(string oid)
    {
        using var cert = WithSignatureAlgorithm(AlgorithmIdentifier(oid, oid.StartsWith("1.2.840.113549", StringComparison.Ordinal) ? w => w.WriteNull() : null));

        Assert.Equal(oid, cert.SignatureAlgorithm.Value);
        Assert.Equal(SHA256.HashData(cert.RawData), ChannelBinding.ComputeTlsServerEndPoint(cert));
    }

    [Fact]
    public void Rsa_sha1_certificate_is_hashed_with_sha256()
    {
        using var cert = SelfSignedRsaSha1();

        Assert.Equal("1.2.840.113549.1.1.5", cert.SignatureAlgorithm.Value);
        Assert.Equal(SHA256.HashData(cert.RawData), ChannelBinding.ComputeTlsServerEndPoint(cert));
    }

    [Fact]
    public void Rsa_pss_with_default_parameters_means_sha1_so_sha256()
    {
        // RSASSA-PSS-params with every field at its DEFAULT: an empty SEQUENCE, hashAlgorithm sha1.
        using var cert = WithSignatureAlgorithm(AlgorithmIdentifier("1.2.840.113549.1.1.10", w => w.PushSequence().Dispose()));

        Assert.Equal(SHA256.HashData(cert.RawData), ChannelBinding.ComputeTlsServerEndPoint(cert));
    }

    [Fact]
    public void Rsa_pss_with_sha512_parameter_is_hashed_with_sha512()
    {
        byte[] algorithm = AlgorithmIdentifier("1.2.840.113549.1.1.10", w =>
        {
            using (w.PushSequence())
            {
                using (w.PushSequence(new Asn1Tag(TagClass.ContextSpecific, 0, isConstructed: true)))
                {
                    w.WriteEncodedValue(AlgorithmIdentifier("2.16.840.1.101.3.4.2.3", x => x.WriteNull()));
                }
            }
        });
        using var cert = WithSignatureAlgorithm(algorithm);

        Assert.Equal(SHA512.HashData(cert.RawData), ChannelBinding.ComputeTlsServerEndPoint(cert));
    }

    [Theory]
    [InlineData("1.3.101.112")] // Ed25519: no hash of its own
    [InlineData("1.2.840.113549.1.1.14")] // sha224WithRSAEncryption: no SHA-224 in .NET
    [InlineData("2.16.840.1.101.3.4.3.10")] // id-ecdsa-with-sha3-256: not mapped
    public void Signature_without_a_usable_hash_has_no_binding_data(string oid)
    {
        using var cert = WithSignatureAlgorithm(AlgorithmIdentifier(oid));

        Assert.False(ChannelBinding.TryComputeTlsServerEndPoint(cert, out var data));
        Assert.Null(data);
        Assert.Throws<NotSupportedException>(() => ChannelBinding.ComputeTlsServerEndPoint(cert));
    }

    [Fact]
    public void Rsa_pss_without_parameters_has_no_binding_data()
    {
        using var cert = WithSignatureAlgorithm(AlgorithmIdentifier("1.2.840.113549.1.1.10"));

        Assert.False(ChannelBinding.TryComputeTlsServerEndPoint(cert, out _));
    }

    [Theory]
    [InlineData(new byte[0])]
    [InlineData(new byte[] { 0x30, 0x03, 0x02, 0x01, 0x00 })] // a SEQUENCE holding one INTEGER
    [InlineData(new byte[] { 0x30, 0x80, 0x00 })]
    public void Unreadable_der_has_no_hash_algorithm(byte[] der)
    {
        Assert.False(ChannelBinding.TryGetHashAlgorithm(der, out _));
    }

    [Fact]
    public void Base_certificate_type_gives_the_same_data()
    {
        using var cert = SelfSignedEcdsa(ECCurve.NamedCurves.nistP384, HashAlgorithmName.SHA384);
        using var plain = new X509Certificate(cert);

        Assert.False(plain is X509Certificate2);
        Assert.Equal(SHA384.HashData(cert.RawData), ChannelBinding.ComputeTlsServerEndPoint(plain));
    }

    /// <summary>sha1WithRSAEncryption (RFC 3279 section 2.2.1): PKCS #1 v1.5 over SHA-1, parameters NULL.</summary>
    private sealed class RsaSha1Generator(RSA key) : X509SignatureGenerator
    {
        public override byte[] GetSignatureAlgorithmIdentifier(HashAlgorithmName hashAlgorithm)
            => AlgorithmIdentifier("1.2.840.113549.1.1.5", w => w.WriteNull());

        [System.Diagnostics.CodeAnalysis.SuppressMessage("Security", "CA5350:Do Not Use Weak Cryptographic Algorithms", Justification = "A SHA-1 certificate is what is under test.")]
        public override byte[] SignData(byte[] data, HashAlgorithmName hashAlgorithm)
            => key.SignData(data, HashAlgorithmName.SHA1, RSASignaturePadding.Pkcs1);

        protected override PublicKey BuildPublicKey() => new(key);
    }

    /// <summary>Signs with an RSA key but names whatever signature algorithm it is given.</summary>
    private sealed class FixedAlgorithmGenerator(X509SignatureGenerator inner, byte[] algorithmIdentifier) : X509SignatureGenerator
    {
        public override byte[] GetSignatureAlgorithmIdentifier(HashAlgorithmName hashAlgorithm) => algorithmIdentifier;

        public override byte[] SignData(byte[] data, HashAlgorithmName hashAlgorithm) => inner.SignData(data, hashAlgorithm);

        protected override PublicKey BuildPublicKey() => inner.PublicKey;
    }
}
