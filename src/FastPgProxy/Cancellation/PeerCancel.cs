using System.Buffers.Binary;
using System.Net;
using FastPgProxy.Protocol;

namespace FastPgProxy.Cancellation;

/// <summary>
/// A CancelRequest one instance forwards to the instance that owns the session (the peer id in the pid's
/// top bits): the client's pid and key untouched, inside an envelope that carries how many instances it has
/// passed (a forwarding loop between misconfigured peers dies after <see cref="MaxHops"/>) and the address
/// of the client that sent it (the owner's wrong-key guard counts that client, not the forwarding peer).
/// </summary>
/// <remarks>
/// Layout, big-endian like every start-up packet: int32 length, int32 code 1234.5690 (<see cref="RequestCode"/>,
/// outside PostgreSQL's codes), int32 hops (1 for the first forward), 16 bytes of the client's address
/// (IPv6, an IPv4 address mapped), int32 pid, then the key (4 to 256 bytes). An instance accepts it only
/// from the address of a peer in its <c>[peers]</c> section; from anyone else it is malformed.
/// </remarks>
internal static class PeerCancel
{
    /// <summary>The request code: 1234 in the high half, as PostgreSQL's special codes, and 5690 below.</summary>
    public const int RequestCode = (1234 << 16) | 5690;

    /// <summary>Instances a forwarded cancel may pass before it is dropped.</summary>
    public const int MaxHops = 3;

    private const int AddressLength = 16;
    private const int HeaderLength = StartupCodes.MinStartupPacketLength + sizeof(int) + AddressLength;

    /// <summary>The envelope for the client's <paramref name="pid"/> and <paramref name="key"/>, forwarded for the <paramref name="hops"/>th time, from <paramref name="client"/>.</summary>
    public static byte[] Wrap(int hops, IPAddress? client, int pid, ReadOnlySpan<byte> key)
    {
        byte[] packet = new byte[HeaderLength + sizeof(int) + key.Length];
        var writer = new PgWriter(packet);
        writer.WriteInt32(packet.Length);
        writer.WriteInt32(RequestCode);
        writer.WriteInt32(hops);
        Span<byte> address = stackalloc byte[AddressLength];
        (client ?? IPAddress.IPv6None).MapToIPv6().TryWriteBytes(address, out _);
        writer.WriteBytes(address);
        writer.WriteInt32(pid);
        writer.WriteBytes(key);
        return packet;
    }

    /// <summary>Reads an envelope; false when its length is wrong or its key is not 4 to 256 bytes.</summary>
    public static bool TryParse(ReadOnlySpan<byte> packet, out int hops, out IPAddress client, out int pid, out ReadOnlySpan<byte> key)
    {
        hops = pid = 0;
        client = IPAddress.IPv6None;
        key = default;
        int keyLength = packet.Length - HeaderLength - sizeof(int);
        if (keyLength < StartupCodes.MinCancelKeyLength || keyLength > StartupCodes.MaxCancelKeyLength)
        {
            return false;
        }

        hops = BinaryPrimitives.ReadInt32BigEndian(packet.Slice(StartupCodes.MinStartupPacketLength));
        var address = new IPAddress(packet.Slice(StartupCodes.MinStartupPacketLength + sizeof(int), AddressLength));
        client = address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address;
        pid = BinaryPrimitives.ReadInt32BigEndian(packet.Slice(HeaderLength));
        key = packet.Slice(HeaderLength + sizeof(int));
        return hops >= 1;
    }
}
