using System.Diagnostics;
using System.Net.Sockets;

namespace FastPgProxy.Net;

/// <summary>Callbacks of a <see cref="Channel"/>; all of them run on the channel's loop.</summary>
internal interface IChannelHandler
{
    /// <summary>A receive finished: <paramref name="bytes"/> new bytes sit at the end of the receive window, or 0 at end of stream.</summary>
    void OnReceive(Channel channel, int bytes, SocketError error);

    /// <summary>The whole of the last send was written, or it failed.</summary>
    void OnSend(Channel channel, SocketError error);

    /// <summary>A connect finished, or a <see cref="TlsChannel"/>'s handshake.</summary>
    void OnConnect(Channel channel, SocketError error);
}

/// <summary>
/// A connection as the relay, the login and the backends' own code see it: a receive window, one run of
/// bytes sent at a time, waiting while idle without a buffer, and closing once. <see cref="SocketChannel"/>
/// is the plain implementation and <see cref="TlsChannel"/> the encrypted one; both derive from
/// <see cref="ClientChannel"/>, and the relay cannot tell them apart.
/// </summary>
/// <remarks>
/// <para>
/// An abstract class, not an interface: the window and the flags the relay reads for every run are state
/// here, read without a virtual call, so the plain channel costs the relay what the sealed class did; only
/// <see cref="Receive"/>, <see cref="Send"/>, <see cref="Close"/>, <see cref="Quiescent"/> and
/// <see cref="Dispose"/> are an implementation's own. Through an interface every member is a type check
/// at each call (perf/README.md, "Channel contract").
/// </para>
/// <para>What an implementation guarantees:</para>
/// <list type="bullet">
/// <item><description>Every <see cref="IChannelHandler"/> callback runs on <see cref="Loop"/>, and never
/// inside the <see cref="Receive"/> or <see cref="Send"/> call that started the operation (an operation
/// that finishes at once is posted to the loop as its next item), so a handler may start the next
/// operation from its callback without growing the stack.</description></item>
/// <item><description>The callbacks pass the channel itself, the object its owner holds: handlers tell
/// their channels apart by reference. An implementation built on another channel passes itself, not the
/// inner one.</description></item>
/// <item><description>At most one receive and one send are in flight, and they may be in flight together;
/// <see cref="ReceivePending"/> and <see cref="SendPending"/> say so from the call that starts one until
/// just before its callback. The owner calls <see cref="Receive"/> only when ReceivePending is false and
/// <see cref="Send"/> only when SendPending is false.</description></item>
/// <item><description>The window is <c>Buffer[Start..End)</c>: bytes received (after any decoding, such as
/// decryption) and not consumed. Only <see cref="Consume"/> and a finished receive change it; a receive
/// appends at the end and may first move the window to the front of its buffer or take a buffer, so the
/// owner reads positions again after each receive. <see cref="IChannelHandler.OnReceive"/> reports the
/// bytes appended; 0 means end of stream or an error, never "nothing yet".</description></item>
/// <item><description>A send writes all of its run (continuing after short writes) and then calls
/// <see cref="IChannelHandler.OnSend"/> once. The run may lie in any buffer (the relay sends straight out
/// of the peer's window); the caller keeps it intact until OnSend, and the channel may read it at any time
/// until then.</description></item>
/// <item><description><see cref="Close"/> acts once; later calls do nothing. After it no new receive
/// starts, a send fails, and outstanding operations complete on the loop with
/// <see cref="SocketError.OperationAborted"/>.</description></item>
/// <item><description><see cref="Quiescent"/> is true when no operation is outstanding, including any the
/// channel started on its own: then no completion will come, every buffer the channel's operations touched
/// may be released, and once <see cref="Closed"/> the owner calls <see cref="Dispose"/>.</description></item>
/// <item><description>Failures are reported as <see cref="SocketError"/>; an implementation whose
/// failures are not socket errors maps them to one.</description></item>
/// </list>
/// <para>
/// Not part of the contract: connecting (<see cref="SocketChannel.Connect"/>: a backend's socket, which a
/// TLS backend connection wraps in a <see cref="TlsChannel"/> after its SSLRequest), the TLS handshake, and
/// the underlying <see cref="Socket"/>. What the session does with a client connection outside the relay is
/// <see cref="ClientChannel"/>.
/// </para>
/// </remarks>
internal abstract class Channel : IDisposable
{
    private IChannelHandler _handler;

    /// <summary>Creates a channel on <paramref name="loop"/> whose completions go to <paramref name="handler"/>.</summary>
    protected Channel(EventLoop loop, IChannelHandler handler)
    {
        Loop = loop;
        _handler = handler;
    }

    /// <summary>The owning loop: every callback runs there, and only its owner calls the channel.</summary>
    public EventLoop Loop { get; protected set; }

    /// <summary>The buffer that holds the window, rented from the loop's pool; null while the channel idles without one.</summary>
    public byte[]? Buffer { get; protected set; }

    /// <summary>First unconsumed byte of the window.</summary>
    public int Start { get; protected set; }

    /// <summary>Bytes received and not consumed: the length of the window.</summary>
    public int Buffered => End - Start;

    /// <summary>Bytes of a partial message kept aside, outside <see cref="Buffer"/>, while the channel waits without a buffer.</summary>
    public int Parked { get; protected set; }

    /// <summary>The unconsumed bytes.</summary>
    public Span<byte> Window => Buffer.AsSpan(Start, End - Start);

    /// <summary>Whether a receive is outstanding.</summary>
    public bool ReceivePending { get; protected set; }

    /// <summary>Whether a send is outstanding.</summary>
    public bool SendPending { get; protected set; }

    /// <summary>Whether <see cref="Close"/> was called.</summary>
    public bool Closed { get; protected set; }

    /// <summary>No operation is outstanding: no completion will come, and buffers the channel's operations touched may be released.</summary>
    public virtual bool Quiescent => !ReceivePending && !SendPending;

    /// <summary>
    /// When set, the channel holds no buffer while it waits with an empty window (an idle client costs no
    /// buffer memory), and a window holding only the start of a message is kept aside in a small array of
    /// its own (<see cref="Parked"/>) rather than in a buffer.
    /// </summary>
    public bool IdleWithoutBuffer { get; set; }

    /// <summary>One past the last received byte of the window.</summary>
    protected int End { get; set; }

    /// <summary>Where completions go.</summary>
    protected IChannelHandler Handler => _handler;

    /// <summary>Sends later completions to <paramref name="handler"/> (for example a backend going from login to relay).</summary>
    public void SetHandler(IChannelHandler handler) => _handler = handler;

    /// <summary>Marks <paramref name="count"/> bytes at the start of the window consumed.</summary>
    public void Consume(int count)
    {
        Debug.Assert(count <= End - Start);
        Start += count;
    }

    /// <summary>Gives the window's buffer back to the loop's pool and empties the window. Only while no operation of any channel reads it.</summary>
    public void ReleaseBuffer()
    {
        if (Buffer is not null)
        {
            Loop.Buffers.Return(Buffer);
            Buffer = null;
            Start = End = 0;
        }
    }

    /// <summary>Starts a receive that appends to the window; <see cref="IChannelHandler.OnReceive"/> reports it. Does nothing once closed.</summary>
    public abstract void Receive();

    /// <summary>Sends <paramref name="count"/> bytes of <paramref name="buffer"/> from <paramref name="offset"/>; the caller keeps them intact until <see cref="IChannelHandler.OnSend"/>.</summary>
    public abstract void Send(byte[] buffer, int offset, int count);

    /// <summary>Closes the connection once; outstanding operations then complete with an error on the loop.</summary>
    public abstract void Close();

    /// <summary>Frees everything, the window's buffer included; only once closed and quiescent.</summary>
    public abstract void Dispose();
}

/// <summary>
/// What a client session does with its client's connection beyond <see cref="Channel"/>: moves it, with its
/// unread bytes, to the loop of its pool after StartupMessage, and hands the connection of a CancelRequest
/// to the cancel path.
/// </summary>
internal abstract class ClientChannel : Channel
{
    /// <summary>Creates a client channel on <paramref name="loop"/>.</summary>
    protected ClientChannel(EventLoop loop, IChannelHandler handler)
        : base(loop, handler)
    {
    }

    /// <summary>
    /// Moves the channel to <paramref name="loop"/>; its next operations complete there. Only while it is
    /// <see cref="Channel.Quiescent"/> and holds no buffer; the caller owns the current loop and hands the
    /// session over by posting to the new one.
    /// </summary>
    public virtual void MoveTo(EventLoop loop)
    {
        Debug.Assert(Quiescent && Buffer is null);
        Loop = loop;
    }

    /// <summary>Puts <paramref name="bytes"/> back as the unconsumed window after a move (at most one buffer); the caller owns the loop.</summary>
    public virtual void Restore(ReadOnlySpan<byte> bytes)
    {
        Debug.Assert(Buffer is null && bytes.Length <= Loop.Buffers.BufferSize);
        if (bytes.IsEmpty)
        {
            return;
        }

        Buffer = Loop.Buffers.Rent();
        bytes.CopyTo(Buffer);
        Start = 0;
        End = bytes.Length;
    }

    /// <summary>The connection's socket; null once given to the cancel path (or, for a backend's plain channel, until connected).</summary>
    public Socket? Socket { get; protected set; }

    /// <summary>Closes the socket once; outstanding operations then complete with an error on the loop.</summary>
    public override void Close()
    {
        if (Closed)
        {
            return;
        }

        Closed = true;
        if (Socket is { } socket)
        {
            CloseSocket(socket);
        }
    }

    /// <summary>Takes the socket from the channel for the cancel path and marks the channel closed; null when it has none.</summary>
    protected Socket? TakeSocket()
    {
        Debug.Assert(Quiescent);
        Socket? socket = Socket;
        Socket = null;
        Closed = true;
        return socket;
    }

    /// <summary>Shuts <paramref name="socket"/> down both ways and closes it; a peer that reset it first is no error.</summary>
    private static void CloseSocket(Socket socket)
    {
        try
        {
            socket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
            // Already reset by the peer: closing is all that is left.
        }
        catch (ObjectDisposedException)
        {
        }

        socket.Dispose();
    }

    /// <summary>
    /// Gives up the connection without closing it, for the cancel path, which writes nothing to it and
    /// disposes it once PostgreSQL has acted (a TLS connection then ends with close_notify); the channel is
    /// closed afterwards. Only while quiescent.
    /// </summary>
    public abstract IDisposable? DetachForCancel();
}
