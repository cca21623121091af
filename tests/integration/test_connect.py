"""test_connect.py - CONNECT / CONNACK for MQTT 3.1.1 and 5.0."""

import pytest

import mqttraw as r
from clients import V311, V5, PahoClient, unique


def test_v311_connect_accepted(broker):
    c = r.RawClient(broker.port, version=4)
    ack = c.connect(unique(), clean=True)
    assert ack.rc == 0
    assert not ack.session_present
    c.disconnect()


def test_v5_connect_accepted(broker):
    c = r.RawClient(broker.port, version=5)
    ack = c.connect(unique(), clean=True)
    assert ack.rc == 0
    assert not ack.session_present
    c.disconnect()


def test_paho_both_versions_connect(broker):
    for version in (V311, V5):
        p = PahoClient(broker, version=version)
        assert p.connack["rc"] == 0
        p.disconnect()


def test_v5_connack_advertises_limits(broker_factory):
    b = broker_factory(receive_maximum=20, max_packet_size=4096, topic_alias_maximum=7)
    c = r.RawClient(b.port, version=5)
    ack = c.connect(unique())
    p = ack.props
    assert p.get(r.RECEIVE_MAXIMUM) == 20
    assert p.get(r.MAXIMUM_PACKET_SIZE) == 4096
    assert p.get(r.TOPIC_ALIAS_MAXIMUM) == 7
    # Absent means "available" (MQTT 5.0 3.2.2.3.5 ff); when sent it must be 1.
    assert p.get(r.RETAIN_AVAILABLE, 1) == 1
    assert p.get(r.WILDCARD_SUB_AVAILABLE, 1) == 1
    assert p.get(r.SUB_ID_AVAILABLE, 1) == 1
    assert p.get(r.SHARED_SUB_AVAILABLE, 1) == 1
    assert p.get(r.MAXIMUM_QOS, 2) == 2
    c.disconnect()


def test_v5_empty_client_id_gets_assigned_id(broker):
    ids = []
    for _ in range(2):
        c = r.RawClient(broker.port, version=5)
        ack = c.connect("")
        assigned = ack.props.get(r.ASSIGNED_CLIENT_ID)
        assert assigned, "no Assigned Client Identifier in %r" % ack
        ids.append(assigned)
        c.disconnect()
    assert ids[0] != ids[1]


def test_v5_assigned_id_is_usable(broker):
    c = r.RawClient(broker.port, version=5)
    ack = c.connect("")
    topic = unique("assigned")
    assert c.subscribe([(topic, 1)]).codes == [1]
    c.publish(topic, b"hi", qos=1)
    m = c.recv_publish()
    assert (m.topic, m.payload) == (topic, b"hi")
    c.disconnect()
    assert ack.props.get(r.ASSIGNED_CLIENT_ID)


def test_v311_empty_client_id_clean_session_accepted(broker):
    c = r.RawClient(broker.port, version=4)
    assert c.connect("", clean=True).rc == 0
    # The connection is usable.
    c.send(r.pingreq())
    assert c.recv(3).type == r.PINGRESP
    c.disconnect()


def test_v311_empty_client_id_persistent_session_rejected(broker):
    c = r.RawClient(broker.port, version=4)
    ack = c.connect("", clean=False, expect_rc=None)
    assert ack.rc == 2, "want CONNACK rc 2 (identifier rejected), got %r" % ack
    assert c.is_closed(3)


def test_v5_server_keep_alive_caps_client(broker_factory):
    b = broker_factory(max_keepalive=10)
    c = r.RawClient(b.port, version=5)
    ack = c.connect(unique(), keepalive=60)
    assert ack.props.get(r.SERVER_KEEP_ALIVE) == 10
    c.disconnect()
    # Within the limit: the broker need not send it, but if it does it must match.
    c = r.RawClient(b.port, version=5)
    ack = c.connect(unique(), keepalive=5)
    assert ack.props.get(r.SERVER_KEEP_ALIVE, 5) == 5
    c.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_session_present_flag(broker, version):
    cid = unique("sp")
    props = [(r.SESSION_EXPIRY, 60)] if version == 5 else None
    c = r.RawClient(broker.port, version=version)
    # 3.1.1 needs clean session 0 to keep the session; v5 keeps it by expiry.
    assert not c.connect(cid, clean=(version == 5), props=props).session_present
    c.subscribe([("sp/" + cid, 1)])
    c.disconnect()
    c = r.RawClient(broker.port, version=version)
    assert c.connect(cid, clean=False, props=props).session_present
    c.disconnect()
    # A clean start always reports no session.
    c = r.RawClient(broker.port, version=version)
    assert not c.connect(cid, clean=True, props=props).session_present
    c.disconnect()


def test_pingreq_pingresp(broker):
    for version in (4, 5):
        c = r.RawClient(broker.port, version=version)
        c.connect(unique())
        for _ in range(3):
            c.send(r.pingreq())
            assert c.recv(3).type == r.PINGRESP
        c.disconnect()


def test_unsupported_protocol_level_refused(broker):
    c = r.RawClient(broker.port, version=4)
    c.send(r.connect(unique(), version=9))
    got = c.wait_closed(3)
    # 3.1.1 3.1.2.2: CONNACK rc 0x01 then close; a v5 broker may answer 0x84.
    assert all(p.type == r.CONNACK and p.rc in (0x01, 0x84) for p in got), got


def test_v5_request_response_information_accepted(broker):
    c = r.RawClient(broker.port, version=5)
    ack = c.connect(unique(), props=[(r.REQUEST_RESPONSE_INFO, 1)])
    assert ack.rc == 0
    if r.RESPONSE_INFO in ack.props:
        assert isinstance(ack.props[r.RESPONSE_INFO], str)
    c.disconnect()


def test_connection_rejected_before_connect_timeout_other_clients_fine(broker_factory):
    """A client that opens a socket and never sends CONNECT is dropped after
    --connect-timeout, and other clients are unaffected meanwhile."""
    b = broker_factory(connect_timeout=1)
    idle = r.RawClient(b.port)
    c = r.RawClient(b.port, version=5)
    c.connect(unique())
    c.disconnect()
    from conftest import IS_MOSQUITTO
    if IS_MOSQUITTO:
        pytest.skip("mosquitto peer: no connect-timeout setting")
    assert idle.is_closed(4), "idle socket without CONNECT still open after 4 s"
