using System.Security.Cryptography;
using System.Text;
using FastPgProxy.Auth;
using FastPgProxy.Protocol;

namespace FastPgProxy.Tests.Fuzz;

/// <summary>
/// Checks the parsers of what a client sends to authenticate (SASLInitialResponse, SCRAM client-first and
/// client-final in <see cref="ScramServer"/>, PasswordMessage and the MD5 check) against slow references
/// written from RFC 5802 and protocol chapter 55.7, on any bytes.
/// </summary>
internal static class AuthOracle
{
    public const string Password = "pencil";
    public const string ServerNonce = "3rfcNHYJY1ZVvWVs7j";
    public const int Iterations = 2;

    public static readonly byte[] Salt = [0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e, 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81];

    /// <summary>The server side's verifier: few iterations, so an exchange costs microseconds.</summary>
    public static readonly ScramVerifier Verifier = ScramVerifier.FromPassword(Password, Salt, Iterations);

    private static readonly byte[] SaltedPassword = Rfc2898DeriveBytes.Pbkdf2(Encoding.UTF8.GetBytes(Password), Salt, Iterations, HashAlgorithmName.SHA256, 32);

    /// <summary>ClientKey derived here from the password, independently of <see cref="ScramVerifier"/>.</summary>
    public static readonly byte[] ClientKey = HMACSHA256.HashData(SaltedPassword, Encoding.ASCII.GetBytes("Client Key"));

    private static readonly byte[] StoredKey = SHA256.HashData(ClientKey);

    private static readonly byte[] ServerKey = HMACSHA256.HashData(SaltedPassword, Encoding.ASCII.GetBytes("Server Key"));

    /// <summary>The mechanism PostgreSQL offers, as the proxy writes it in AuthenticationSASL.</summary>
    public static readonly byte[] Mechanism = Encoding.ASCII.GetBytes("SCRAM-SHA-256");

    private static List<byte[]> Split(byte[] message)
    {
        var parts = new List<byte[]>();
        int from = 0;
        for (int i = 0; i <= message.Length; i++)
        {
            if (i == message.Length || message[i] == (byte)',')
            {
                parts.Add(message[from..i]);
                from = i + 1;
            }
        }

        return parts;
    }

    private static bool IsAttribute(byte[] part) => part.Length >= 2 && part[1] == (byte)'=' && char.IsAsciiLetter((char)part[0]);

    private static bool IsAttribute(byte[] part, char name) => IsAttribute(part) && part[0] == (byte)name;

    /// <summary>Strict base64: only the 65 characters of the alphabet, and a decoding .NET's Convert accepts.</summary>
    public static byte[]? DecodeBase64(byte[] text)
    {
        foreach (byte b in text)
        {
            if (!(char.IsAsciiLetterOrDigit((char)b) || b is (byte)'+' or (byte)'/' or (byte)'='))
            {
                return null;
            }
        }

        var output = new byte[text.Length];
        return Convert.TryFromBase64String(Encoding.ASCII.GetString(text), output, out int written) ? output[..written] : null;
    }

    /// <summary>The reference client-first-message: gs2 header <c>n,,</c> or <c>y,,</c>, then n=, r=nonce, extensions.</summary>
    public static (byte[] Gs2, byte[] Bare, byte[] Nonce)? ReferenceClientFirst(byte[] m)
    {
        if (m.Length < 3 || m[0] is not ((byte)'n' or (byte)'y') || m[1] != (byte)',' || m[2] != (byte)',')
        {
            return null;
        }

        byte[] bare = m[3..];
        List<byte[]> parts = Split(bare);
        if (parts.Count < 2 || !IsAttribute(parts[0], 'n') || !IsAttribute(parts[1], 'r'))
        {
            return null;
        }

        byte[] nonce = parts[1][2..];
        if (nonce.Length == 0 || nonce.Any(b => b is < 0x21 or > 0x7E))
        {
            return null;
        }

        return parts.Skip(2).All(IsAttribute) ? (m[..3], bare, nonce) : null;
    }

    /// <summary>The reference client-final-message: c=base64(gs2 header), r=nonce, extensions, p=32-byte proof last.</summary>
    public static (int WithoutProofLength, byte[] Proof)? ReferenceClientFinal(byte[] m, byte[] gs2, byte[] nonce)
    {
        List<byte[]> parts = Split(m);
        if (parts.Count < 3 || !IsAttribute(parts[0], 'c') || !IsAttribute(parts[1], 'r'))
        {
            return null;
        }

        byte[]? binding = DecodeBase64(parts[0][2..]);
        if (binding is null || !binding.AsSpan().SequenceEqual(gs2) || !parts[1].AsSpan(2).SequenceEqual(nonce))
        {
            return null;
        }

        int k = 2;
        while (k < parts.Count && IsAttribute(parts[k]) && parts[k][0] != (byte)'p')
        {
            k++;
        }

        if (k != parts.Count - 1 || !IsAttribute(parts[k], 'p'))
        {
            return null;
        }

        byte[]? proof = DecodeBase64(parts[k][2..]);
        if (proof is null || proof.Length != 32)
        {
            return null;
        }

        int withoutProof = parts.Take(k).Sum(p => p.Length) + (k - 1);
        return (withoutProof, proof);
    }

    /// <summary>The server-first-message the server must answer a client nonce with.</summary>
    public static byte[] ExpectedServerFirst(byte[] clientNonce) =>
        [.. "r="u8, .. clientNonce, .. Encoding.ASCII.GetBytes(ServerNonce + ",s=" + Convert.ToBase64String(Salt) + ",i=" + Iterations)];

    /// <summary>The proof a client with the right password sends, computed forwards from the password.</summary>
    public static byte[] Proof(byte[] bare, byte[] serverFirst, ReadOnlySpan<byte> withoutProof)
    {
        byte[] authMessage = [.. bare, (byte)',', .. serverFirst, (byte)',', .. withoutProof];
        byte[] signature = HMACSHA256.HashData(StoredKey, authMessage);
        var proof = new byte[32];
        for (int i = 0; i < proof.Length; i++)
        {
            proof[i] = (byte)(ClientKey[i] ^ signature[i]);
        }

        return proof;
    }

    /// <summary>
    /// Runs one exchange: <paramref name="clientFirst"/>, then, when the server accepted it, <paramref name="clientFinal"/>.
    /// In the final message the text <c>p=!</c> stands for the right proof (so generated and fuzzed messages can
    /// reach the success path). Returns the outcome of the final step, or null when the first was refused.
    /// </summary>
    public static ScramServerState? CheckExchange(byte[] clientFirst, byte[] clientFinal)
    {
        var server = new ScramServer(Verifier, ServerNonce);
        (byte[] Gs2, byte[] Bare, byte[] Nonce)? first = ReferenceClientFirst(clientFirst);
        bool ok = server.TryHandleClientFirst(clientFirst, out byte[] serverFirst, out string? error);
        Property.RequireEqual(first is not null, ok, $"client-first accepted ({error})");
        if (first is not { } f)
        {
            Property.RequireEqual(ScramServerState.Malformed, server.State, "state after a refused client-first");
            Property.Require(serverFirst.Length == 0, "no server-first for a refused client-first");
            return null;
        }

        Property.RequireEqual(ScramServerState.AwaitingClientFinal, server.State, "state after client-first");
        Property.Require(serverFirst.AsSpan().SequenceEqual(ExpectedServerFirst(f.Nonce)), "server-first carries the client's nonce, the salt and the iterations");

        byte[] nonce = [.. f.Nonce, .. Encoding.ASCII.GetBytes(ServerNonce)];
        clientFinal = WithRightProof(clientFinal, f.Bare, serverFirst);
        (int WithoutProofLength, byte[] Proof)? final = ReferenceClientFinal(clientFinal, f.Gs2, nonce);
        ok = server.TryHandleClientFinal(clientFinal, out byte[] serverFinal, out error);
        if (final is not { } fin)
        {
            Property.Require(!ok, "a malformed client-final was accepted");
            Property.RequireEqual(ScramServerState.Malformed, server.State, $"state after a malformed client-final ({error})");
            return server.State;
        }

        byte[] right = Proof(f.Bare, serverFirst, clientFinal.AsSpan(0, fin.WithoutProofLength));
        bool expected = fin.Proof.AsSpan().SequenceEqual(right);
        Property.RequireEqual(expected, ok, $"client-final accepted ({error})");
        if (!ok)
        {
            Property.RequireEqual(ScramServerState.ProofRejected, server.State, "state after a wrong proof");
            return server.State;
        }

        Property.RequireEqual(ScramServerState.Succeeded, server.State, "state after the right proof");
        Property.Require(server.ClientKey.SequenceEqual(ClientKey), "the ClientKey recovered from the proof");
        byte[] authMessage = [.. f.Bare, (byte)',', .. serverFirst, (byte)',', .. clientFinal.AsSpan(0, fin.WithoutProofLength)];
        byte[] expectedFinal = Encoding.ASCII.GetBytes("v=" + Convert.ToBase64String(HMACSHA256.HashData(ServerKey, authMessage)));
        Property.Require(serverFinal.AsSpan().SequenceEqual(expectedFinal), "server-final carries the server signature");
        return server.State;
    }

    /// <summary>Replaces a trailing <c>p=!</c> by the proof a client with the right password would send.</summary>
    public static byte[] WithRightProof(byte[] clientFinal, byte[] bare, byte[] serverFirst)
    {
        if (!clientFinal.AsSpan().EndsWith(",p=!"u8))
        {
            return clientFinal;
        }

        ReadOnlySpan<byte> withoutProof = clientFinal.AsSpan(0, clientFinal.Length - 4);
        return [.. withoutProof, .. ",p="u8, .. Encoding.ASCII.GetBytes(Convert.ToBase64String(Proof(bare, serverFirst, withoutProof)))];
    }

    /// <summary>The reference SASLInitialResponse: name, NUL, length word, data; the mechanism is checked before the length.</summary>
    public static (byte[]? Data, string? Error) ReferenceSaslInitialResponse(byte[] body)
    {
        int nul = Array.IndexOf(body, (byte)0);
        if (nul < 0 || body.Length - (nul + 1) < 4)
        {
            return (null, "malformed SASLInitialResponse message");
        }

        if (!body.AsSpan(0, nul).SequenceEqual(Mechanism))
        {
            return (null, "client selected an invalid SASL authentication mechanism");
        }

        int length = (body[nul + 1] << 24) | (body[nul + 2] << 16) | (body[nul + 3] << 8) | body[nul + 4];
        byte[] data = body[(nul + 5)..];
        return length == data.Length ? (data, null) : (null, "malformed SASLInitialResponse message");
    }

    public static void CheckSaslInitialResponse(byte[] body)
    {
        (byte[]? data, string? error) = ReferenceSaslInitialResponse(body);
        bool ok = PasswordMessages.TryReadSaslInitialResponse(
            body, [.. Mechanism, 0], out ReadOnlySpan<byte> mechanism, out ReadOnlySpan<byte> actual, out string? actualError);
        Property.RequireEqual(data is not null, ok, "SASLInitialResponse accepted");
        Property.RequireEqual(error, actualError, "SASLInitialResponse error");
        Property.Require(ok ? actual.SequenceEqual(data) : actual.IsEmpty, "SASLInitialResponse data");
        Property.Require(ok ? mechanism.SequenceEqual(Mechanism) : mechanism.IsEmpty, "SASLInitialResponse mechanism");
    }

    /// <summary>The reference MD5 answer: "md5" + hex(md5(hex(md5(password + user)) + salt)).</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Security", "CA5351:Do Not Use Broken Cryptographic Algorithms", Justification = "The protocol's md5 method.")]
    public static byte[] Md5Response(string user, string password, byte[] salt)
    {
        string inner = Convert.ToHexStringLower(MD5.HashData(Encoding.UTF8.GetBytes(password + user)));
        byte[] outer = MD5.HashData([.. Encoding.ASCII.GetBytes(inner), .. salt]);
        return Encoding.ASCII.GetBytes("md5" + Convert.ToHexStringLower(outer));
    }

    /// <summary>
    /// A PasswordMessage body answering an MD5 challenge: the response is the text up to the NUL, and it passes
    /// exactly when it equals the reference answer, for a plaintext and for an md5 secret alike.
    /// </summary>
    public static void CheckPasswordMessage(string user, string password, byte[] salt, byte[] body)
    {
        int nul = Array.IndexOf(body, (byte)0);
        byte[] response = nul >= 0 ? body[..nul] : body;
        Property.Require(PasswordMessages.ReadPassword(body).SequenceEqual(response), "password text of a PasswordMessage");
        bool expected = password.Length > 0 && salt.Length == 4 && response.AsSpan().SequenceEqual(Md5Response(user, password, salt));
        UserSecret plain = UserSecret.Create(password);
        if (plain.Kind == SecretKind.Plain)
        {
            Property.RequireEqual(expected, Md5Auth.Verify(plain, user, salt, response), "MD5 check against a plaintext secret");
        }

        if (password.Length > 0)
        {
            UserSecret hashed = UserSecret.Create(Md5Auth.HashPassword(user, password));
            Property.RequireEqual(expected, Md5Auth.Verify(hashed, user, salt, response), "MD5 check against an md5 secret");
        }
    }
}
