"""Broker security: mutual TLS is required and each device is confined to its own
subtree by the ACL."""

from __future__ import annotations

import ssl
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.syncbox import wait_for


class Client:
    """A small synchronous-ish test client over paho."""

    def __init__(self, broker, pki, cert=None, client_id="t"):
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        self.c.tls_set(ca_certs=str(pki.ca), certfile=cert and cert.cert,
                       keyfile=cert and cert.key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.connected = threading.Event()
        self.got: list[tuple[str, bytes]] = []
        self.subacks: list = []
        self.c.on_connect = lambda c, u, f, rc, p: (not rc.is_failure) and \
            self.connected.set()
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, bytes(m.payload)))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.append(rcs)
        self.broker = broker

    def connect(self) -> bool:
        try:
            self.c.connect("127.0.0.1", self.broker.port, keepalive=10)
        except (ssl.SSLError, OSError):
            return False
        for _ in range(40):
            try:
                if self.c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                    return False
            except (ssl.SSLError, OSError):
                return False
            if self.connected.is_set():
                return True
        return False

    def start(self):
        assert self.connect()
        self.c.loop_start()
        return self

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_no_client_certificate_refused(broker, pki):
    assert not Client(broker, pki, None, "anon").connect()


def test_untrusted_client_certificate_refused(broker, pki):
    assert not Client(broker, pki, pki.rogue("dev-a"), "rogue").connect()


def test_device_confined_to_its_subtree(broker, pki):
    ing = Client(broker, pki, pki.ingest, "ingest-sec").start()
    a = Client(broker, pki, pki.devices["dev-a"], "dev-a").start()
    b = Client(broker, pki, pki.devices["dev-b"], "dev-b").start()
    try:
        ing.c.subscribe("linetap/#", qos=1)
        wait_for(lambda: ing.subacks, what="ingest suback")
        # dev-a subscribes to dev-b's commands and acks: mosquitto grants the filter
        # but the ACL stops every delivery (checked below)...
        a.c.subscribe([("linetap/site1/dev-b/cmd", 1), ("linetap/site1/dev-b/ack", 1),
                       ("linetap/site1/dev-a/cmd", 1)])
        wait_for(lambda: a.subacks, what="dev-a suback")
        # ...may not publish into dev-b's subtree, nor forge acks or commands to itself.
        for t in ("linetap/site1/dev-b/seg/c/0", "linetap/site1/dev-b/health",
                  "linetap/site1/dev-a/ack", "linetap/site1/dev-a/cmd"):
            a.c.publish(t, b"forged", qos=1).wait_for_publish(5)
        a.c.publish("linetap/site1/dev-a/health", b"legit", qos=1).wait_for_publish(5)
        wait_for(lambda: any(p == b"legit" for _t, p in ing.got), what="legit message")
        assert [t for t, p in ing.got if p == b"forged"] == []
        # Commands for dev-b reach dev-b and not dev-a.
        b.c.subscribe("linetap/site1/dev-b/cmd", qos=1)
        wait_for(lambda: b.subacks, what="dev-b suback")
        ing.c.publish("linetap/site1/dev-b/cmd", b"for-b", qos=1).wait_for_publish(5)
        ing.c.publish("linetap/site1/dev-b/ack", b"ack-b", qos=1).wait_for_publish(5)
        ing.c.publish("linetap/site1/dev-a/cmd", b"for-a", qos=1).wait_for_publish(5)
        wait_for(lambda: b.got and any(p == b"for-a" for _t, p in a.got), what="commands")
        assert [p for _t, p in b.got] == [b"for-b"]
        assert [p for _t, p in a.got] == [b"for-a"]
    finally:
        for c in (ing, a, b):
            c.close()


def test_device_cannot_read_other_uploads(broker, pki):
    a = Client(broker, pki, pki.devices["dev-a"], "dev-a").start()
    b = Client(broker, pki, pki.devices["dev-b"], "dev-b").start()
    try:
        a.c.subscribe([("linetap/#", 1), ("$share/ingest/linetap/+/+/seg/#", 1),
                       ("linetap/site1/dev-a/cmd", 1)])
        wait_for(lambda: a.subacks, what="suback")
        b.c.publish("linetap/site1/dev-b/seg/c/0", b"upload-b", qos=1).wait_for_publish(5)
        b.c.publish("linetap/site1/dev-b/status", b"online", qos=1,
                    retain=True).wait_for_publish(5)
        # A marker dev-a may read, sent after dev-b's messages through the same broker.
        ing = Client(broker, pki, pki.ingest, "ingest-sec2").start()
        ing.c.publish("linetap/site1/dev-a/cmd", b"marker", qos=1).wait_for_publish(5)
        wait_for(lambda: any(p == b"marker" for _t, p in a.got), what="marker")
        assert {p for _t, p in a.got} == {b"marker"}   # overlapping filters: twice
        ing.close()
    finally:
        a.close()
        b.close()
