"""test_mqtt_ws.py - MQTT over WebSocket at /mqtt on the HTTP (ws://) and
HTTPS (wss://) listeners: paho over WebSocket against mosquitto over TCP,
device credentials and ACLs, packets spanning frames and frames holding
several packets (raw frames from python3-websocket), subprotocols, wills on a
dropped socket, and persistent sessions resumed on another I/O thread."""

import socket
import ssl
import struct

import pytest
import websocket

import mqttraw as raw
from clients import V5, V311, MosquittoSub, PahoClient, mosquitto_pub, unique, wait_until
from conftest import IS_MOSQUITTO, free_port, port_open
from apiclient import admin_api, api_token, new_device

pytestmark = pytest.mark.skipif(IS_MOSQUITTO, reason="thinghz serves MQTT over WebSocket")


@pytest.fixture
def wsb(broker_factory):
    https = free_port()
    b = broker_factory(https_listen="127.0.0.1:%d" % https)
    b.https_port = https
    b.ca = b.data_dir / "tls" / "ca.pem"
    assert wait_until(lambda: port_open(https))
    return b


def ws_client(b, tls=False, **kw):
    if tls:
        return PahoClient(b, transport="websockets", port=b.https_port, ca=b.ca, **kw)
    return PahoClient(b, transport="websockets", port=b.http_port, **kw)


class RawWs:
    """MQTT over a raw WebSocket: frames exactly as the test writes them."""

    def __init__(self, b, protocols=("mqtt",), tls=False):
        if tls:
            url = "wss://127.0.0.1:%d/mqtt" % b.https_port
            sslopt = {"ca_certs": str(b.ca)}
        else:
            url = "ws://127.0.0.1:%d/mqtt" % b.http_port
            sslopt = None
        self.ws = websocket.create_connection(url, subprotocols=list(protocols), timeout=5,
                                              sslopt=sslopt)
        self.buf = bytearray()

    def send(self, *frames):
        for f in frames:
            self.ws.send_binary(bytes(f))

    def recv(self):
        """The next MQTT packet, reassembled from however many frames."""
        while True:
            if len(self.buf) >= 2:
                n, pos = raw.decode_varint(self.buf, 1)
                if len(self.buf) >= pos + n:
                    first = self.buf[0]
                    body = bytes(self.buf[pos:pos + n])
                    del self.buf[:pos + n]
                    return raw.Packet(first >> 4, first & 0x0F, body, 4)
            op, data = self.ws.recv_data()
            assert op == websocket.ABNF.OPCODE_BINARY, op
            self.buf += data

    def close(self):
        self.ws.close()


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_round_trip_with_tcp_clients(wsb, tls):
    t = unique("ws")
    c = ws_client(wsb, tls=tls, version=V311)
    assert c.subscribe(t + "/#", qos=1) == [1]
    mosquitto_pub(wsb.port, t + "/a", "from tcp", qos=1)
    m = c.get()
    assert (m.topic, m.payload, m.qos) == (t + "/a", b"from tcp", 1)
    sub = MosquittoSub(wsb.port, t + "/b", 1, qos=1).start()
    c.publish(t + "/b", b"from websocket", qos=1)
    assert sub.finish() == [(1, 0, t + "/b", "from websocket")]
    # retained, and MQTT 5 over wss too
    c.publish(t + "/r", b"kept", qos=1, retain=True)
    v5 = ws_client(wsb, tls=tls, version=V5)
    v5.subscribe(t + "/r", qos=1)
    m = v5.get()
    assert m.payload == b"kept" and m.retain
    v5.close()
    c.close()


def test_large_messages_both_ways(wsb):
    t = unique("big")
    big = bytes(range(256)) * 1200  # 300 KiB: many frames and TCP segments
    c = ws_client(wsb)
    c.subscribe(t, qos=1)
    c.publish(t, big, qos=1)
    assert c.get().payload == big
    tcp = PahoClient(wsb)
    tcp.subscribe(t + "/x", qos=1)
    c.publish(t + "/x", big, qos=1)
    assert tcp.get().payload == big
    tcp.publish(t, big[::-1], qos=1)
    assert c.get().payload == big[::-1]
    tcp.close()
    c.close()


def test_packets_spanning_frames_and_frames_holding_packets(wsb):
    t = unique("frames")
    r = RawWs(wsb)
    conn = raw.connect(unique("raw"), version=4)
    # one CONNECT cut into three frames
    r.send(conn[:3], conn[3:9], conn[9:])
    assert r.recv().type == raw.CONNACK
    # SUBSCRIBE + PUBLISH(QoS 1) + PINGREQ in one frame
    r.send(raw.subscribe(1, [(t, 1)]) + raw.publish(t, b"one frame", qos=1, pid=7) +
           raw.pingreq())
    types = set()
    got = None
    while len(types) < 4:
        p = r.recv()
        types.add(p.type)
        if p.type == raw.PUBLISH:
            got = p
    assert types == {raw.SUBACK, raw.PUBACK, raw.PINGRESP, raw.PUBLISH}
    assert got.body.endswith(b"one frame")
    # a PUBLISH split across frames with the next packet starting in the last one
    pub = raw.publish(t, b"x" * 5000, qos=0)
    r.send(pub[:1], pub[1:2000], pub[2000:] + raw.pingreq())
    p = r.recv()
    assert p.type == raw.PUBLISH and p.body.endswith(b"x" * 5000)
    assert r.recv().type == raw.PINGRESP
    r.close()


def test_subprotocols(wsb):
    for offered, chosen in ((["mqtt"], "mqtt"), (["mqttv3.1"], "mqttv3.1"),
                            (["foo", "mqtt"], "mqtt")):
        r = RawWs(wsb, protocols=offered)
        assert r.ws.getsubprotocol() == chosen
        r.send(raw.connect(unique("sp"), version=3 if chosen == "mqttv3.1" else 4))
        assert r.recv().type == raw.CONNACK
        r.close()
    # a text frame is not MQTT: the WebSocket is closed
    r = RawWs(wsb)
    r.ws.send("hello")
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        for _ in range(5):
            r.ws.recv()
    assert "text WebSocket message" in wsb.log_text()


def test_closing_the_socket_sends_the_will(wsb):
    t = unique("will")
    sub = MosquittoSub(wsb.port, t, 1, qos=1).start()
    r = RawWs(wsb)
    r.send(raw.connect(unique("w"), version=4,
                       will={"topic": t, "payload": b"gone", "qos": 1}))
    assert r.recv().type == raw.CONNACK
    r.ws.sock.shutdown(socket.SHUT_RDWR)  # no DISCONNECT, no close frame
    r.ws.sock.close()
    assert sub.finish() == [(1, 0, t, "gone")]
    # a clean DISCONNECT does not
    r = RawWs(wsb)
    r.send(raw.connect(unique("w"), version=4, will={"topic": t, "payload": b"no"}))
    assert r.recv().type == raw.CONNACK
    c = PahoClient(wsb)
    c.subscribe(t)
    r.send(raw.disconnect())
    r.close()
    c.expect_none(0.5)
    c.close()


def test_device_auth_and_acl_over_websocket(broker_factory):
    b = broker_factory(allow_anonymous=False)
    api = admin_api(b)
    d1, d2 = new_device(api), new_device(api)
    c = ws_client(b, username=d1["id"], password=d1["secret"])
    assert c.subscribe("devices/%s/#" % d1["id"], qos=1) == [1]
    assert c.subscribe("devices/%s/#" % d2["id"], qos=1) == [0x87]
    c.publish("devices/%s/state" % d1["id"], b"ok", qos=1)
    assert c.get().payload == b"ok"
    watcher = PahoClient(b, username="app", password=api_token(api)["token"])
    watcher.subscribe("devices/#", qos=1)
    info = c.c.publish("devices/%s/state" % d2["id"], b"not mine", qos=1)
    info.wait_for_publish(5)
    watcher.expect_none(0.5)
    watcher.close()
    c.close()
    bad = ws_client(b, username=d1["id"], password="wrong", expect_rc=None)
    assert bad.connack["rc"] == 0x86
    bad.close()
    anon = ws_client(b, expect_rc=None)
    assert anon.connack["rc"] != 0
    anon.close()


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_persistent_session_resumed_over_websocket(broker_factory, tls):
    """With several I/O threads a reconnect usually lands on another thread
    than the session's: the WebSocket connection moves there."""
    https = free_port()
    b = broker_factory(threads=4, https_listen="127.0.0.1:%d" % https)
    b.https_port, b.ca = https, b.data_dir / "tls" / "ca.pem"
    assert wait_until(lambda: port_open(https))
    t = unique("resume")
    cid = unique("ps")
    c = ws_client(b, tls=tls, client_id=cid, version=V311, clean=False)
    c.subscribe(t, qos=1)
    c.disconnect()
    for i in range(8):
        mosquitto_pub(b.port, t, "m%d" % i, qos=1)
        c = ws_client(b, tls=tls, client_id=cid, version=V311, clean=False)
        assert c.session_present
        m = c.get()
        assert m.payload == b"m%d" % i
        # the moved connection keeps working both ways
        c.publish(t, b"echo%d" % i, qos=1)
        assert c.get().payload == b"echo%d" % i
        c.disconnect()
    assert "moves to thread" in b.log_text()  # the move did happen
