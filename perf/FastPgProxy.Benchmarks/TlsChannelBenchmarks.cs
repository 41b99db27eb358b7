using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using FastPgProxy.Net;

namespace FastPgProxy.Benchmarks;

/// <summary>
/// One pgbench -S round trip through a channel over a loopback TCP connection: the client (the benchmark
/// thread, with synchronous calls) writes the 62-byte Query, the channel receives it on its loop, consumes it
/// and sends the 66-byte answer, and the client reads the answer. <c>Plain</c> is a
/// <see cref="SocketChannel"/> over a plain socket, <c>Tls</c> a <see cref="TlsChannel"/> whose client is an
/// <see cref="SslStream"/> (TLS 1.3, each side's default cipher, a self-signed RSA 2048 certificate made at
/// setup). Both channels are idle without a buffer between round trips, as the proxy's are, so each round
/// trip waits for bytes without a buffer, rents one, receives, sends and releases it. What is measured is
/// the channel's receive and send with their completions on the loop, plus the client's side and the
/// kernel: time per round trip is mostly loopback latency, and the number to read is Allocated
/// (the process's total: the loop, the socket threads and the client). Budget: 0 B for both.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(InlineCompletionsConfig))]
[MinColumn]
public class TlsChannelBenchmarks
{
    // Round trips per invocation: one is some tens of microseconds.
    private const int RoundTrips = 64;

    private readonly List<IDisposable> _owned = [];
    private EventLoop? _loop;
    private byte[] _query = [];
    private byte[] _response = [];
    private byte[] _readBuffer = [];
    private Stream _plainClient = null!;
    private Stream _tlsClient = null!;

    /// <summary>Starts the loop, connects both pairs, finishes the TLS handshake and checks one round trip on each.</summary>
    [GlobalSetup]
    public void Setup()
    {
        _query = WireStreams.SimpleQuery();
        _response = WireStreams.PgbenchSelectResponse();
        _readBuffer = new byte[_response.Length];
        _loop = new EventLoop(0, 32 * 1024);
        _loop.Start();

        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(2);

        (Socket plainServer, Socket plainClient) = Connect(listener);
        var plainChannel = new SocketChannel(_loop, plainServer, new Responder(_query.Length, _response)) { IdleWithoutBuffer = true };
        _loop.Post(plainChannel.Receive);
        _plainClient = new NetworkStream(plainClient, ownsSocket: true);
        _owned.Add(_plainClient);

        (Socket tlsServer, Socket tlsClient) = Connect(listener);
        X509Certificate2 certificate = SelfSigned();
        _owned.Add(certificate);
        var responder = new Responder(_query.Length, _response);
        var tlsChannel = new TlsChannel(_loop, tlsServer, null, responder) { IdleWithoutBuffer = true };
        _loop.Post(() => tlsChannel.AuthenticateAsServer(new SslServerAuthenticationOptions { ServerCertificate = certificate }));
        var ssl = new SslStream(new NetworkStream(tlsClient, ownsSocket: true), leaveInnerStreamOpen: false);
        ssl.AuthenticateAsClient(new SslClientAuthenticationOptions
        {
            TargetHost = "localhost",

            // The certificate made above and no other (self-signed, so the chain check fails by design).
            RemoteCertificateValidationCallback = (_, presented, _, _) => presented is not null && presented.GetCertHash().AsSpan().SequenceEqual(certificate.GetCertHash()),
        });
        if (!responder.Connected.Wait(TimeSpan.FromSeconds(10)))
        {
            throw new InvalidOperationException("the TLS channel's handshake did not finish");
        }

        _tlsClient = ssl;
        _owned.Add(_tlsClient);

        Check(nameof(Plain), Plain());
        Check(nameof(Tls), Tls());
    }

    /// <summary>Closes the clients (the channels see the end of the stream) and stops the loop.</summary>
    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (IDisposable owned in _owned)
        {
            owned.Dispose();
        }

        _loop?.Stop(TimeSpan.FromSeconds(5));
        _loop?.Dispose();
    }

    /// <summary>Round trips through <see cref="SocketChannel"/>.</summary>
    [Benchmark(Baseline = true, OperationsPerInvoke = RoundTrips)]
    public int Plain() => RoundTrip(_plainClient);

    /// <summary>Round trips through <see cref="TlsChannel"/>.</summary>
    [Benchmark(OperationsPerInvoke = RoundTrips)]
    public int Tls() => RoundTrip(_tlsClient);

    private int RoundTrip(Stream client)
    {
        int total = 0;
        for (int i = 0; i < RoundTrips; i++)
        {
            client.Write(_query);
            int read = 0;
            while (read < _response.Length)
            {
                int bytes = client.Read(_readBuffer.AsSpan(read));
                if (bytes == 0)
                {
                    throw new InvalidOperationException("the channel closed");
                }

                read += bytes;
            }

            total += read;
        }

        return total;
    }

    private void Check(string name, int received)
    {
        if (received != _response.Length * RoundTrips || !_readBuffer.AsSpan().SequenceEqual(_response))
        {
            throw new InvalidOperationException($"{name}: received {received} bytes, expected {_response.Length * RoundTrips} and the response");
        }
    }

    private static (Socket Server, Socket Client) Connect(Socket listener)
    {
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        client.Connect(listener.LocalEndPoint!);
        Socket server = listener.Accept();
        server.NoDelay = true;
        return (server, client);
    }

    private static X509Certificate2 SelfSigned()
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        using X509Certificate2 certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));

        // Through PKCS#12, as a certificate loaded from files is: the private key becomes usable by SslStream.
        return X509CertificateLoader.LoadPkcs12(certificate.Export(X509ContentType.Pkcs12), null);
    }

    /// <summary>The loop's side: on a whole Query, consume it and send the answer; after the send, receive again.</summary>
    private sealed class Responder(int queryLength, byte[] response) : IChannelHandler
    {
        public ManualResetEventSlim Connected { get; } = new();

        public void OnConnect(Channel channel, SocketError error)
        {
            if (error != SocketError.Success)
            {
                throw new InvalidOperationException($"handshake failed: {error}");
            }

            Connected.Set();
            channel.Receive();
        }

        public void OnReceive(Channel channel, int bytes, SocketError error)
        {
            if (bytes == 0 || error != SocketError.Success)
            {
                channel.Close();
                return;
            }

            if (channel.Buffered < queryLength)
            {
                channel.Receive();
                return;
            }

            channel.Consume(queryLength);
            channel.Send(response, 0, response.Length);
        }

        public void OnSend(Channel channel, SocketError error)
        {
            if (error != SocketError.Success)
            {
                channel.Close();
                return;
            }

            channel.Receive();
        }
    }

    /// <summary>
    /// <see cref="ShortJobConfig"/>'s job with socket completions inline on the runtime's epoll threads, as
    /// the proxy runs them (Program sets DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1 at start).
    /// </summary>
    public sealed class InlineCompletionsConfig : ManualConfig
    {
        /// <summary>Adds the job.</summary>
        public InlineCompletionsConfig()
        {
            AddJob(Job.Default
                .WithLaunchCount(1)
                .WithWarmupCount(3)
                .WithIterationCount(10)
                .WithEnvironmentVariables(new EnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS", "1"))
                .WithId("ShortInline"));
        }
    }
}
