# Topic names and filters (protocol/topics.py): MQTT-style "+" and "#" wildcards.
from protocol.topics import matches_any, topic_matches, valid_filter, valid_topic

MATCHES = [
    ("#", "temp"),
    ("#", "a/b/c"),
    ("temp", "temp"),
    ("a/+/c", "a/b/c"),
    ("a/+", "a/b"),
    ("a/+", "a/"),
    ("+/b", "a/b"),
    ("a/#", "a"),
    ("a/#", "a/b"),
    ("a/#", "a/b/c/d"),
    ("+/+", "x/y"),
    ("+", "temp"),
]
MISSES = [
    ("temp", "temp2"),
    ("temp2", "temp"),
    ("a/+", "a"),
    ("a/+", "a/b/c"),
    ("a/+/c", "a/b/d"),
    ("a/#", "b/a"),
    ("a/#", "ab"),
    ("+", "a/b"),
    ("a", "a/b"),
    ("a/b", "a"),
]


def test_filters_select_topics():
    for pattern, topic in MATCHES:
        assert topic_matches(pattern, topic), (pattern, topic)


def test_filters_reject_other_topics():
    for pattern, topic in MISSES:
        assert not topic_matches(pattern, topic), (pattern, topic)


def test_matches_any():
    assert matches_any(["x", "a/+"], "a/b")
    assert not matches_any(["x", "y"], "a/b")
    assert not matches_any([], "a")


def test_valid_topics_and_filters():
    assert valid_topic("sensors/kitchen/temp")
    for bad in ("", "a/+", "a/#", "x" * 65, None, 5):
        assert not valid_topic(bad), bad
    for good in ("#", "+", "a/+/c", "a/#", "a"):
        assert valid_filter(good), good
    for bad in ("", "a/#/b", "a#", "a/b+", "x" * 65, None):
        assert not valid_filter(bad), bad
