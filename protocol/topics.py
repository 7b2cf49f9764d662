# Topic names and subscription filters (MQTT-style levels separated by "/").
#
# A topic is 1..64 bytes of text with no wildcard characters. A filter may use
# "+" for exactly one level and a final "#" for any number of levels (zero or more).
# Nodes test every event against each subscriber's filters, so matching walks the
# strings without splitting them (no allocation per test).

MAX_TOPIC = 64


def valid_topic(topic):
    if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC:
        return False
    return "+" not in topic and "#" not in topic and "\x00" not in topic


def valid_filter(pattern):
    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_TOPIC:
        return False
    levels = pattern.split("/")
    for i in range(len(levels)):
        level = levels[i]
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(pattern, topic):
    """True when `topic` is selected by the filter `pattern`."""
    p = 0
    t = 0
    plen = len(pattern)
    tlen = len(topic)
    while p < plen:
        c = pattern[p]
        if c == "#":
            return True
        if c == "+":
            # consume one level of the topic
            if t > tlen:
                return False
            end = topic.find("/", t)
            t = tlen if end < 0 else end
            p += 1
            continue
        if t >= tlen or topic[t] != c:
            # "a/#" also matches "a" itself
            if t == tlen and pattern[p:] == "/#":
                return True
            return False
        p += 1
        t += 1
    return t == tlen


def matches_any(patterns, topic):
    for pattern in patterns:
        if topic_matches(pattern, topic):
            return True
    return False
