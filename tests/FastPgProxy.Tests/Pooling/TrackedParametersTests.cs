using FastPgProxy.Pooling;
using Xunit;

namespace FastPgProxy.Tests.Pooling;

/// <summary>The comparison before each transaction: the SETs that bring a backend's tracked values to the client's.</summary>
public class TrackedParametersTests
{
    private static ParameterStatus?[] Slots(params (string Name, string Value)[] values)
    {
        ParameterStatus?[] slots = TrackedParameters.NewSlots();
        foreach ((string name, string value) in values)
        {
            TrackedParameters.Record(slots, name, ParameterStatus.Create(name, value));
        }

        return slots;
    }

    [Fact]
    public void Equal_values_from_different_messages_need_no_SET()
    {
        Assert.Null(TrackedParameters.BuildSync(
            Slots(("client_encoding", "UTF8"), ("TimeZone", "UTC")),
            Slots(("client_encoding", "UTF8"), ("TimeZone", "UTC"), ("DateStyle", "ISO, MDY"))));
    }

    [Fact]
    public void A_differing_or_missing_value_is_SET_and_quoted_and_a_value_the_client_never_had_is_left_alone()
    {
        string? sql = TrackedParameters.BuildSync(
            Slots(("TimeZone", "Europe/Paris"), ("application_name", "o'brien"), ("IntervalStyle", "iso_8601")),
            Slots(("TimeZone", "UTC"), ("DateStyle", "ISO, MDY"), ("IntervalStyle", "iso_8601")));

        Assert.Equal("SET TimeZone = 'Europe/Paris';SET application_name = 'o''brien';", sql);
    }

    [Fact]
    public void Names_are_recorded_whatever_their_letter_case_and_untracked_ones_are_ignored()
    {
        ParameterStatus?[] slots = Slots(("timezone", "UTC"), ("server_version", "15.0"));

        Assert.Equal("UTC", slots[Array.IndexOf(TrackedParameters.Names, "TimeZone")]!.Value);
        Assert.Single(slots, s => s is not null);
        Assert.Equal("application_name", TrackedParameters.Names[TrackedParameters.ApplicationNameSlot]);
    }
}
