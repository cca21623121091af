"""test_mtls.py - mutual TLS for devices, as AWS IoT does it: a CA per tenant
(GET /api/v1/ca), registered customer CAs (/api/v1/cas), certificates that
the server creates, signs from a CSR or binds
(/api/v1/devices/{id}/certificates), devices connecting with them over
mqtts-listen without a password (mosquitto_pub/sub and paho), ACLs and
presence as with secrets, revocation closing the connection, and every kind
of wrong certificate refused with CONNACK 0x86 / 4 and a log line."""

import json
import signal
import subprocess

import pytest

from clients import V5, V311, MosquittoSub, PahoClient, mosquitto_pub, unique, wait_until
from conftest import IS_MOSQUITTO, free_port, port_open
from apiclient import Api, admin_api, expect, new_device

pytestmark = pytest.mark.skipif(IS_MOSQUITTO, reason="thinghz device certificates")

BAD_AUTH_V5 = 0x86
BAD_AUTH_V311 = 4


class Mtls:
    """A daemon with an MQTT/TLS listener, no anonymous access, and an admin."""

    def __init__(self, b, d):
        self.b = b
        self.port = int(b.opts["mqtts_listen"].rsplit(":", 1)[1])
        self.ca = b.data_dir / "tls" / "ca.pem"
        self.dir = d
        assert wait_until(lambda: port_open(self.port))
        self.api = admin_api(b)

    def files(self, name, cert_pem, key_pem=None):
        c = self.dir / (name + ".pem")
        c.write_text(cert_pem)
        k = None
        if key_pem is not None:
            k = self.dir / (name + ".key")
            k.write_text(key_pem)
            k.chmod(0o600)
        return c, k

    def device_cert(self, api=None, body=None):
        """A device and a server-made certificate for it: (device, cert, certfile, keyfile)."""
        api = api or self.api
        d = new_device(api)
        r = expect(api.post("/devices/%s/certificates" % d["id"], body), 201).json()
        c, k = self.files(d["id"], r["certificate_pem"], r["private_key_pem"])
        return d, r, c, k

    def paho(self, cert, key, version=V5, expect_rc=0, client_id=None, username=None):
        p = PahoClient(self.b, port=self.port, version=version, connect=False,
                       client_id=client_id, username=username)
        p.c.tls_set(ca_certs=str(self.ca), certfile=str(cert), keyfile=str(key))
        p.connect(expect_rc=expect_rc)
        return p

    def tls_args(self, cert, key):
        return ["--cafile", str(self.ca), "--cert", str(cert), "--key", str(key)]


@pytest.fixture
def m(broker_factory, tmp_path):
    b = broker_factory(allow_anonymous=False, mqtts_listen="127.0.0.1:%d" % free_port())
    return Mtls(b, tmp_path)


def openssl(*args, stdin=None):
    r = subprocess.run(["openssl", *args], input=stdin, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def make_ca(d, name):
    """A customer CA made with the openssl CLI: (cert, key)."""
    cert, key = d / (name + ".pem"), d / (name + ".key")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "30", "-subj", "/CN=" + name, "-keyout", str(key), "-out", str(cert),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def sign_with(d, ca, cn, days=None, start=None, end=None):
    """A key and a certificate for cn signed by ca (cert, key); start/end as
    YYYYMMDDHHMMSSZ give an explicit validity period (openssl ca)."""
    cacert, cakey = ca
    key, csr, cert = d / (cn + ".key"), d / (cn + ".csr"), d / (cn + ".pem")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=" + cn, "-keyout", str(key), "-out", str(csr))
    if start is None:
        openssl("x509", "-req", "-in", str(csr), "-CA", str(cacert), "-CAkey", str(cakey),
                "-CAcreateserial", "-days", str(days or 30), "-out", str(cert))
    else:
        # openssl ca sets exact dates (x509 -req cannot go into the past)
        db = d / ("db-" + cn)
        db.mkdir()
        (db / "index.txt").write_text("")
        (db / "serial").write_text("01\n")
        conf = d / ("ca-" + cn + ".cnf")
        conf.write_text("[ca]\ndefault_ca=c\n[c]\ndir=%s\ndatabase=$dir/index.txt\n"
                        "serial=$dir/serial\nnew_certs_dir=$dir\ndefault_md=sha256\n"
                        "policy=p\n[p]\ncommonName=supplied\n" % db)
        openssl("ca", "-batch", "-config", str(conf), "-cert", str(cacert), "-keyfile",
                str(cakey), "-in", str(csr), "-out", str(cert), "-startdate", start,
                "-enddate", end, "-notext")
    return cert, key


def mosquitto_sub_once(m, topic, cert, key, version="mqttv5"):
    r = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(m.port), "-V", version,
                        "-t", topic, "-C", "1", "-W", "5", *m.tls_args(cert, key)],
                       capture_output=True, text=True, timeout=15)
    return r


def refused(m, cert, key, version=V5):
    p = m.paho(cert, key, version=version, expect_rc=None)
    rc = p.connack["rc"]
    p.close()
    return rc


# ---------------------------------------------------------------- the API

def test_tenant_ca_and_created_certificate(m):
    ca = expect(m.api.get("/ca"), 200).json()
    assert ca["certificate_pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert len(ca["fingerprint"]) == 64
    # the same CA on every call, with its key in the data dir, mode 0600
    assert expect(m.api.get("/ca"), 200).json()["fingerprint"] == ca["fingerprint"]
    key = m.b.data_dir / "tls" / "tenants" / "1" / "ca.key"
    assert key.exists() and (key.stat().st_mode & 0o777) == 0o600

    d, r, certfile, keyfile = m.device_cert(body={"validity_days": 10})
    assert r["ca_pem"] == ca["certificate_pem"]
    assert r["source"] == "created" and r["status"] == "active" and r["ca_id"] is None
    text = openssl("x509", "-in", str(certfile), "-noout", "-subject", "-fingerprint",
                   "-sha256", "-enddate")
    assert "CN = " + d["id"] in text
    assert r["fingerprint"] == text.split("Fingerprint=")[1].split()[0].replace(":", "").lower()
    # it verifies against the tenant CA, for client authentication
    cafile = m.dir / "tenant-ca.pem"
    cafile.write_text(ca["certificate_pem"])
    assert "OK" in openssl("verify", "-CAfile", str(cafile), "-purpose", "sslclient",
                           str(certfile))
    # listing never shows a private key
    items = expect(m.api.get("/devices/%s/certificates" % d["id"]), 200).json()["items"]
    assert [i["fingerprint"] for i in items] == [r["fingerprint"]]
    assert "private_key_pem" not in items[0] and "PRIVATE" not in json.dumps(items)
    # nor is it stored anywhere in the registry
    db = (m.b.data_dir / "registry.db").read_bytes()
    assert r["private_key_pem"].splitlines()[1].encode() not in db


def test_roles_and_bad_bodies(m):
    d = new_device(m.api)
    u = {"email": unique("v") + "@x.io", "password": "password123", "role": "viewer"}
    expect(m.api.post("/users", u), 201)
    viewer = Api(m.b).login(u["email"], u["password"])
    expect(viewer.get("/ca"), 200)
    expect(viewer.post("/devices/%s/certificates" % d["id"]), 403)
    expect(viewer.post("/cas", {"certificate_pem": "x"}), 403)
    expect(m.api.post("/devices/nosuch/certificates"), 404)
    expect(m.api.post("/devices/%s/certificates" % d["id"], {"csr_pem": "garbage"}), 400)
    expect(m.api.post("/devices/%s/certificates" % d["id"], {"validity_days": 0}), 400)
    expect(m.api.post("/devices/%s/certificates" % d["id"],
                      {"certificate_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n"}), 400)
    expect(m.api.delete("/devices/%s/certificates/%s" % (d["id"], "0" * 64)), 404)
    doc = m.api.get("/openapi.json").json()
    assert "/api/v1/devices/{id}/certificates/{fingerprint}" in doc["paths"]


# ---------------------------------------------------------------- connecting

def test_mosquitto_and_paho_connect_with_a_certificate(m):
    d, r, cert, key = m.device_cert()
    own = "devices/%s/state" % d["id"]
    # mosquitto, no -u/-P: subscribe and publish with the certificate alone
    sub = MosquittoSub(m.port, own, 1, qos=1, extra=m.tls_args(cert, key)).start()
    mosquitto_pub(m.port, own, "on", qos=1, extra=m.tls_args(cert, key))
    assert [x[3] for x in sub.finish()] == ["on"]
    # paho v5 and 3.1.1: own topics work, another device's topic is denied
    p = m.paho(cert, key)
    assert p.subscribe(own, qos=1) == [1]
    assert p.subscribe("devices/other/#", qos=1) == [0x87]
    p.publish(own, b"x", qos=1)
    assert p.get().payload == b"x"
    assert wait_until(lambda: m.api.get("/devices/" + d["id"]).json()["online"] is True)
    p.close()
    p3 = m.paho(cert, key, version=V311)
    assert p3.subscribe("devices/other/#", qos=1) == [0x80]
    p3.close()
    # a user name, when given, must be the device id (as with secrets)
    assert m.paho(cert, key, username="someone-else", expect_rc=None).connack["rc"] == \
        BAD_AUTH_V5
    ok = m.paho(cert, key, username=d["id"])
    ok.close()


def test_presence_event_names_the_device(m):
    d, r, cert, key = m.device_cert()
    tok = expect(m.api.post("/tokens", {"name": unique("t")}), 201).json()["token"]
    w = PahoClient(m.b, port=m.port, connect=False, username="app", password=tok)
    w.c.tls_set(ca_certs=str(m.ca))  # a password client on the same listener
    w.connect()
    assert w.subscribe("$aws/events/presence/connected/+", qos=1) == [1]
    p = m.paho(cert, key, client_id="cid-" + d["id"])
    ev = json.loads(w.get().payload)
    assert ev["principalIdentifier"] == d["id"] and ev["clientId"] == "cid-" + d["id"]
    p.close()
    w.close()


def test_csr_signed_and_cn_forced(m):
    d = new_device(m.api)
    key, csr = m.dir / "csr.key", m.dir / "req.csr"
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=not-the-device/O=evil", "-keyout", str(key), "-out", str(csr))
    r = expect(m.api.post("/devices/%s/certificates" % d["id"], {"csr_pem": csr.read_text()}),
               201).json()
    assert "private_key_pem" not in r and r["source"] == "csr"
    assert r["subject"] == "CN=" + d["id"]
    cert, _ = m.files("csr-cert", r["certificate_pem"])
    p = m.paho(cert, key)
    assert p.subscribe("devices/%s/x" % d["id"], qos=1) == [1]
    p.close()
    # a CSR whose signature does not verify is refused
    bad = csr.read_text().splitlines()
    mid = len(bad) // 2
    bad[mid] = bad[mid][:-4] + ("AAAA" if bad[mid][-4:] != "AAAA" else "BBBB")
    r = m.api.post("/devices/%s/certificates" % d["id"], {"csr_pem": "\n".join(bad) + "\n"})
    assert r.status_code == 400, r.text


def test_registered_customer_ca_and_expiry(m):
    ca = make_ca(m.dir, "acme-ca")
    d = new_device(m.api)
    cert, key = sign_with(m.dir, ca, d["id"])
    # not yet registered: binding is refused (chain failure, clearly said)
    r = m.api.post("/devices/%s/certificates" % d["id"], {"certificate_pem": cert.read_text()})
    assert r.status_code == 400 and "chain" in r.text, r.text
    assert "does not chain to the tenant CA or a registered CA" in m.b.log_text()
    reg = expect(m.api.post("/cas", {"certificate_pem": ca[0].read_text()}), 201).json()
    expect(m.api.post("/cas", {"certificate_pem": ca[0].read_text()}), 409)
    assert [c["id"] for c in expect(m.api.get("/cas"), 200).json()["items"]] == [reg["id"]]
    b = expect(m.api.post("/devices/%s/certificates" % d["id"],
                          {"certificate_pem": cert.read_text()}), 201).json()
    assert b["ca_id"] == reg["id"] and b["source"] == "registered"
    assert b["ca_pem"] == ca[0].read_text()
    p = m.paho(cert, key)
    assert p.subscribe("devices/%s/x" % d["id"], qos=1) == [1]
    # an expired certificate of the same CA is bound, listed as expired, refused
    e = new_device(m.api)
    ecert, ekey = sign_with(m.dir, ca, e["id"], start="20200101000000Z", end="20200201000000Z")
    eb = expect(m.api.post("/devices/%s/certificates" % e["id"],
                           {"certificate_pem": ecert.read_text()}), 201).json()
    assert eb["status"] == "expired"
    assert refused(m, ecert, ekey) == BAD_AUTH_V5
    assert refused(m, ecert, ekey, version=V311) == BAD_AUTH_V311
    assert wait_until(lambda: "expired at" in m.b.log_text())
    # deleting the CA closes the connection it anchored and refuses it afterwards
    expect(m.api.delete("/cas/%d" % reg["id"]), 204)
    assert p.wait_disconnected() == 0x98
    assert refused(m, cert, key) == BAD_AUTH_V5
    assert "no longer registered" in m.b.log_text()


def test_revoke_disconnects_and_refuses(m):
    d, r, cert, key = m.device_cert()
    # a second certificate of the same device and a password connection stay
    r2 = expect(m.api.post("/devices/%s/certificates" % d["id"]), 201).json()
    cert2, key2 = m.files("second", r2["certificate_pem"], r2["private_key_pem"])
    p = m.paho(cert, key)
    p2 = m.paho(cert2, key2)
    pw = PahoClient(m.b, port=m.port, connect=False, username=d["id"], password=d["secret"])
    pw.c.tls_set(ca_certs=str(m.ca))
    pw.connect()
    expect(m.api.delete("/devices/%s/certificates/%s" % (d["id"], r["fingerprint"])), 204)
    assert p.wait_disconnected() == 0x98
    assert refused(m, cert, key) == BAD_AUTH_V5
    assert wait_until(lambda: "was revoked" in m.b.log_text())
    res = mosquitto_sub_once(m, "devices/%s/x" % d["id"], cert, key)
    assert res.returncode != 0
    # the others are untouched
    assert p2.subscribe("devices/%s/y" % d["id"], qos=1) == [1]
    assert pw.subscribe("devices/%s/z" % d["id"], qos=1) == [1]
    items = m.api.get("/devices/%s/certificates" % d["id"]).json()["items"]
    st = {i["fingerprint"]: i["status"] for i in items}
    assert st == {r["fingerprint"]: "revoked", r2["fingerprint"]: "active"}
    p2.close()
    pw.close()
    # deleting the device ends its certificates too
    expect(m.api.delete("/devices/" + d["id"]), 204)
    new_device(m.api, d["id"])
    assert refused(m, cert2, key2) == BAD_AUTH_V5


def test_other_tenant_and_self_signed_certificates_refused(m):
    t = {"name": unique("ten"), "admin_email": unique("a") + "@t.io",
         "admin_password": "password123"}
    expect(m.api.post("/tenants", t), 201)
    other = Api(m.b).login(t["admin_email"], t["admin_password"])
    assert other.get("/ca").json()["fingerprint"] != m.api.get("/ca").json()["fingerprint"]
    od, orr, ocert, okey = m.device_cert(api=other)
    # the other tenant's device connects, in its own tenant
    p = m.paho(ocert, okey)
    assert p.subscribe("devices/%s/x" % od["id"], qos=1) == [1]
    p.close()
    # its certificate cannot be bound in our tenant (another tenant's CA)
    mine = new_device(m.api)
    r = m.api.post("/devices/%s/certificates" % mine["id"], {"certificate_pem": orr["certificate_pem"]})
    assert r.status_code == 400, r.text
    # nor can our admin see or revoke the other tenant's device certificates
    expect(m.api.get("/devices/%s/certificates" % od["id"]), 404)
    expect(m.api.delete("/devices/%s/certificates/%s" % (od["id"], orr["fingerprint"])), 404)
    # a self-signed random certificate is refused, over mosquitto and paho
    sc, sk = m.dir / "self.pem", m.dir / "self.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "2", "-subj", "/CN=" + mine["id"], "-keyout", str(sk), "-out", str(sc))
    assert refused(m, sc, sk) == BAD_AUTH_V5
    res = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(m.port), "-t",
                          "devices/%s/x" % mine["id"], "-m", "x", *m.tls_args(sc, sk)],
                         capture_output=True, text=True, timeout=15)
    assert res.returncode != 0
    assert "not bound to any device" in m.b.log_text()


def test_password_clients_unaffected_and_reload(m):
    d = new_device(m.api)
    pw = PahoClient(m.b, port=m.port, connect=False, username=d["id"], password=d["secret"])
    pw.c.tls_set(ca_certs=str(m.ca))
    pw.connect()
    assert pw.subscribe("devices/%s/#" % d["id"], qos=1) == [1]
    pw.close()
    # no certificate and no password: refused as before
    nobody = PahoClient(m.b, port=m.port, connect=False)
    nobody.c.tls_set(ca_certs=str(m.ca))
    nobody.connect(expect_rc=None)
    assert nobody.connack["rc"] == BAD_AUTH_V5
    nobody.close()
    # SIGHUP reloads the server contexts; certificate clients still connect
    dd, r, cert, key = m.device_cert()
    loaded = lambda: m.b.log_text().count("[tls] certificate")
    assert loaded() == 1
    m.b.signal(signal.SIGHUP)
    assert wait_until(lambda: loaded() == 2)
    p = m.paho(cert, key)
    assert p.subscribe("devices/%s/x" % dd["id"], qos=1) == [1]
    p.close()
