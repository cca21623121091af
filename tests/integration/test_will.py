"""test_will.py - Will messages: when they are and are not published, the v5
will delay, will properties and will retain."""

import time

import pytest

import mqttraw as r
from clients import unique
from conftest import skip_on_mosquitto


def subscriber(broker, topic, qos=2, version=5):
    c = r.RawClient(broker.port, version=version)
    c.connect(unique())
    c.subscribe([(topic, qos)])
    return c


def will_client(broker, version, will, client_id=None, props=None, clean=True):
    c = r.RawClient(broker.port, version=version)
    c.connect(client_id or unique("w"), will=will, props=props, clean=clean)
    return c


def publishes(c, timeout):
    return [p for p in c.recv_all(timeout) if p.type == r.PUBLISH]


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_will_sent_on_abrupt_close(broker, version, qos):
    topic = unique("will")
    s = subscriber(broker, topic, version=version)
    c = will_client(broker, version, {"topic": topic, "payload": b"gone", "qos": qos})
    c.abort()
    m = s.recv_publish(timeout=3)
    assert (m.topic, m.payload, m.qos, m.retain) == (topic, b"gone", qos, False)
    s.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_will_not_sent_on_clean_disconnect(broker, version):
    topic = unique("will")
    s = subscriber(broker, topic, version=version)
    c = will_client(broker, version, {"topic": topic, "payload": b"gone", "qos": 1})
    c.disconnect()
    assert publishes(s, 1.0) == []
    s.disconnect()


def test_v5_disconnect_with_will_message_reason(broker):
    topic = unique("will")
    s = subscriber(broker, topic)
    c = will_client(broker, 5, {"topic": topic, "payload": b"bye", "qos": 1})
    c.disconnect(rc=0x04)  # Disconnect with Will Message
    m = s.recv_publish(timeout=3)
    assert m.payload == b"bye"
    s.disconnect()


def test_will_sent_when_socket_closed_without_rst(broker):
    """A FIN without DISCONNECT is still an abnormal close."""
    topic = unique("will")
    s = subscriber(broker, topic)
    c = will_client(broker, 4, {"topic": topic, "payload": b"fin", "qos": 1})
    c.close()
    assert s.recv_publish(timeout=3).payload == b"fin"
    s.disconnect()


def test_v5_will_delay_interval(broker):
    topic = unique("willdelay")
    s = subscriber(broker, topic)
    c = will_client(broker, 5, {"topic": topic, "payload": b"late", "qos": 1,
                                "props": [(r.WILL_DELAY, 2)]},
                    props=[(r.SESSION_EXPIRY, 60)])
    t0 = time.monotonic()
    c.abort()
    assert publishes(s, 1.2) == [], "will sent before its 2 s delay"
    m = s.recv_publish(timeout=3.5)
    elapsed = time.monotonic() - t0
    assert m.payload == b"late"
    assert 1.5 <= elapsed <= 4.5, elapsed
    s.disconnect()


def test_v5_will_delay_cancelled_by_reconnect(broker):
    topic = unique("willdelay")
    cid = unique("wd")
    s = subscriber(broker, topic)
    will = {"topic": topic, "payload": b"never", "qos": 1, "props": [(r.WILL_DELAY, 2)]}
    c = will_client(broker, 5, will, client_id=cid, props=[(r.SESSION_EXPIRY, 60)])
    c.abort()
    time.sleep(0.3)
    c2 = r.RawClient(broker.port, version=5)
    ack = c2.connect(cid, clean=False, props=[(r.SESSION_EXPIRY, 60)])
    assert ack.session_present
    assert publishes(s, 3.0) == [], "will sent although the client came back in time"
    c2.disconnect()
    s.disconnect()


def test_v5_will_delay_capped_by_session_expiry(broker):
    """Session expiry 0 ends the session at close: the will goes out at once
    even though its delay is long (MQTT 5.0 3.1.3.2.2)."""
    skip_on_mosquitto("mosquitto 2.0.11 waits for the full will delay (spec: session end)")
    topic = unique("willcap")
    s = subscriber(broker, topic)
    c = will_client(broker, 5, {"topic": topic, "payload": b"now", "qos": 1,
                                "props": [(r.WILL_DELAY, 30)]})
    c.abort()
    assert s.recv_publish(timeout=2.5).payload == b"now"
    s.disconnect()


def test_v5_will_properties_passed_through(broker):
    topic = unique("willprops")
    s = subscriber(broker, topic)
    user = [("a", "1"), ("b", "2"), ("a", "3")]
    wprops = [(r.CONTENT_TYPE, "application/json"), (r.PAYLOAD_FORMAT, 1),
              (r.RESPONSE_TOPIC, "reply/here"), (r.CORRELATION_DATA, b"\x00\x01corr"),
              (r.MESSAGE_EXPIRY, 100)] + [(r.USER_PROPERTY, u) for u in user]
    c = will_client(broker, 5, {"topic": topic, "payload": b'{"x":1}', "qos": 1,
                                "props": wprops})
    c.abort()
    m = s.recv_publish(timeout=3)
    assert m.payload == b'{"x":1}'
    assert m.props.get(r.CONTENT_TYPE) == "application/json"
    assert m.props.get(r.PAYLOAD_FORMAT) == 1
    assert m.props.get(r.RESPONSE_TOPIC) == "reply/here"
    assert m.props.get(r.CORRELATION_DATA) == b"\x00\x01corr"
    assert m.props.get(r.USER_PROPERTY) == user
    assert 0 < m.props.get(r.MESSAGE_EXPIRY, 0) <= 100
    s.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_will_retain(broker, version):
    topic = unique("willret")
    c = will_client(broker, version, {"topic": topic, "payload": b"offline", "qos": 1,
                                      "retain": True})
    c.abort()
    time.sleep(0.5)
    late = r.RawClient(broker.port, version=version)
    late.connect(unique())
    late.subscribe([(topic, 1)])
    m = late.recv_publish(timeout=3)
    assert (m.payload, m.retain) == (b"offline", True)
    late.disconnect()


def test_will_not_sent_twice_and_client_can_reconnect(broker):
    topic = unique("willonce")
    cid = unique("w")
    s = subscriber(broker, topic)
    c = will_client(broker, 4, {"topic": topic, "payload": b"x", "qos": 1}, client_id=cid)
    c.abort()
    assert s.recv_publish(timeout=3).payload == b"x"
    c2 = will_client(broker, 4, {"topic": topic, "payload": b"y", "qos": 1}, client_id=cid)
    c2.disconnect()
    assert publishes(s, 0.8) == []
    s.disconnect()
