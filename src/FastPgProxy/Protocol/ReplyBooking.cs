namespace FastPgProxy.Protocol;

/// <summary>
/// What a backend owes a client for the messages sent to it so far: the ReadyForQuery messages still due
/// (one per Query, Sync and FunctionCall) and whether an extended-protocol batch is open (a Parse, Bind,
/// Describe, Execute, Close or Flush not yet ended by Sync). A backend that owes nothing can be handed
/// to another client.
/// </summary>
internal struct ReplyBooking
{
    /// <summary>ReadyForQuery messages the backend still owes.</summary>
    public int ReadyForQueryDue;

    /// <summary>Whether an extended-protocol batch is open.</summary>
    public bool BatchOpen;

    /// <summary>Books one message sent to the backend, of type <paramref name="type"/>.</summary>
    public void Note(byte type)
    {
        switch (type)
        {
            case (byte)'S':
                ReadyForQueryDue++;
                BatchOpen = false;
                break;
            case (byte)FrontendMessage.Query or (byte)'F':
                ReadyForQueryDue++;
                break;
            default:
                BatchOpen = true;
                break;
        }
    }
}
