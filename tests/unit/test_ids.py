import pytest

from schemas.ids import (
    delivery_id_for,
    event_id_for,
    find_ticket,
    make_contact_id,
    parse_ticket,
    ticket_for,
)


def test_contact_id_is_stable_and_readable() -> None:
    assert make_contact_id("sms", "SM123") == "sms:SM123"
    assert make_contact_id("sms", " SM123 ") == "sms:SM123"


def test_long_or_spaced_provider_ids_are_hashed() -> None:
    long_id = make_contact_id("email", "<" + "x" * 200 + "@mail.example>")
    assert long_id.startswith("email:h") and len(long_id) < 60
    assert long_id == make_contact_id("email", "<" + "x" * 200 + "@mail.example>")


@pytest.mark.parametrize("channel", ["SMS", "", "sm s", "sms.x"])
def test_bad_channel_rejected(channel: str) -> None:
    with pytest.raises(ValueError):
        make_contact_id(channel, "id")


def test_ticket_is_deterministic_and_distinct() -> None:
    assert ticket_for("sms:SM1") == ticket_for("sms:SM1")
    tickets = {ticket_for(f"web:{i}") for i in range(20_000)}
    assert len(tickets) == 20_000  # 40 bits: no collision expected at this size


def test_ticket_format_avoids_ambiguous_letters() -> None:
    for i in range(2000):
        ticket = ticket_for(f"web:{i}")
        assert len(ticket) == 9 and ticket[4] == "-"
        assert not set(ticket) & set("ILOU")


def test_parse_ticket_accepts_what_residents_type() -> None:
    ticket = ticket_for("sms:SM1")
    assert parse_ticket(ticket.lower()) == ticket
    assert parse_ticket(ticket.replace("-", " ")) == ticket
    assert parse_ticket(ticket.replace("-", "")) == ticket
    assert parse_ticket("0O1I-L000") == "0011-1000"
    assert parse_ticket("hello") is None
    assert parse_ticket("ABCU-0000") is None  # U is not in the alphabet


def test_find_ticket_in_text() -> None:
    ticket = ticket_for("email:abc")
    assert find_ticket(f"Re: [311 #{ticket}] Pothole on Elm") == ticket
    assert find_ticket("nothing here about potholes") is None


def test_event_and_delivery_ids() -> None:
    a = event_id_for("K7M4-QPXA", ["sms:1", "sms:2"])
    assert a == event_id_for("K7M4-QPXA", ["sms:2", "sms:1"])
    assert a != event_id_for("K7M4-QPXA", ["sms:1"])
    assert delivery_id_for(a, "public-works", "file") != delivery_id_for(a, "public-works", "hook")


def test_consumer_groups_live_under_the_topic_prefix() -> None:
    from schemas.topics import Topics

    assert Topics().group("normalizer") == "intake311.normalizer"
    assert Topics("springfield").group("sink.parks.file") == "springfield.sink.parks.file"
