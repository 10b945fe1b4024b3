"""How ``publish_all`` groups a batch for the broker's middlewares without reordering a topic."""

from __future__ import annotations

from intake311.bus import Outgoing, _groups


def test_groups_keep_each_topic_in_order_and_split_it_where_headers_change() -> None:
    a1 = Outgoing("a", b"1", key="k", headers={"x-department": "a"})
    b1 = Outgoing("b", b"2", key="k", headers={"x-department": "b"})
    a2 = Outgoing("a", b"3", key="k", headers={"x-department": "a"})
    a3 = Outgoing("a", b"4", key="k", headers={"x-stage": "router"})  # other headers, same topic
    a4 = Outgoing("a", b"5", key="k", headers={"x-department": "a"})
    b2 = Outgoing("b", b"6", key="j", headers={"x-department": "b"})
    groups = _groups([a1, b1, a2, a3, a4, b2])
    assert groups == [[a1, a2], [a3], [a4], [b1, b2]]
    # Sent group after group: topic a's records go out exactly in the order they were given.
    sent = [r for g in groups for r in g]
    assert [r for r in sent if r.topic == "a"] == [a1, a2, a3, a4]
    assert sorted(sent, key=id) == sorted([a1, b1, a2, a3, a4, b2], key=id)  # each once
