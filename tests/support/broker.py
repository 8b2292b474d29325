"""Sync rigs: a TLS PKI, a real mosquitto with mutual TLS and a per-device ACL, and a
PostgreSQL server (and pgbouncer in front of it), all on loopback in temp folders.

The pytest fixtures over them (``pki``, ``broker``, ``postgres``) are in
``tests/conftest.py``; the campaigns (``bench/campaigns/common.py``) and ``bench/sync.py``
use the classes directly."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sync.upstream.templates import ACL

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
DEVICES = ("dev-a", "dev-b", "dev-c")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc, port: int, what: str, log) -> None:
    """Return once ``port`` on loopback accepts connections (up to about 5 s); raise with
    ``log()`` if ``proc`` exits first."""
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), 0.1):
                return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited: " + log()) from None
            time.sleep(0.025)
    raise RuntimeError(f"{what} did not start")


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)


def _cert(subject_cn, issuer_name, issuer_key, pub, *, ca=False, server=False):
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject_cn)).issuer_name(issuer_name)
         .public_key(pub).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(days=1))
         .not_valid_after(now + dt.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


class PKI:
    """A CA plus server and client certificates (client CN = MQTT username)."""

    def __init__(self, d: Path):
        self.dir = d
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("linetap-test-ca", _name("linetap-test-ca"), self.ca_key,
                   self.ca_key.public_key(), ca=True)
        self.ca = d / "ca.pem"
        self.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.server = self.client("localhost", server=True)

    def client(self, cn: str, *, server=False, ca_key=None, ca_name=None):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(cn, ca_name or _name("linetap-test-ca"), ca_key or self.ca_key,
                     key.public_key(), server=server)
        c, k = self.dir / f"{cn}.pem", self.dir / f"{cn}.key"
        c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(k, key)
        return SimpleNamespace(cert=str(c), key=str(k), cn=cn)

    def rogue(self, cn: str):
        """A client certificate from a CA the broker does not trust."""
        other = ec.generate_private_key(ec.SECP256R1())
        return self.client(cn + "-rogue", ca_key=other, ca_name=_name("rogue-ca"))




class Broker:
    """mosquitto with mutual TLS; ``restart()`` keeps the port (persistence is off, so a
    restart forgets every session, which is the point of the fault tests)."""

    def __init__(self, d: Path, pki: PKI):
        self.dir, self.pki, self.port = d, pki, free_port()
        self.proc = None
        (d / "acl").write_text(ACL.format(ingest="ingest", prefix="linetap"))
        (d / "mosquitto.conf").write_text(f"""\
user root
persistence false
log_dest file {d}/mosquitto.log
log_type error
log_type warning
log_type notice
per_listener_settings false
allow_anonymous false
acl_file {d}/acl
max_inflight_messages 100
max_queued_messages 100000
set_tcp_nodelay true
listener {self.port} 127.0.0.1
cafile {pki.ca}
certfile {pki.server.cert}
keyfile {pki.server.key}
require_certificate true
use_identity_as_username true
""")

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.dir / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.proc, self.port, "mosquitto", self.log)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return (self.dir / "mosquitto.log").read_text()
        except OSError:
            return ""


class Postgres:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="linetap-pg-"))
        self.port = free_port()
        self.root = os.geteuid() == 0
        os.chmod(self.dir, 0o777)

    def _run(self, *args):
        cmd = [str(a) for a in args]
        if self.root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self):
        data = self.dir / "data"
        self._run(PG_BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres",
                  "--no-sync")
        self._run(PG_BIN / "pg_ctl", "-D", data, "-l", self.dir / "pg.log", "-w", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start")

    def stop(self):
        self._run(PG_BIN / "pg_ctl", "-D", self.dir / "data", "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def new_db(self, name: str) -> str:
        """A new database named ``name`` (``name_2``, ``name_3``... when a parametrised
        test asks for the same name again); returns its URL."""
        import psycopg2
        used = self.__dict__.setdefault("_used", set())
        base, n = name, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


class PgBouncer:
    """pgbouncer in ``pool_mode = transaction`` in front of a :class:`Postgres`, on
    loopback, as docs/sync.md recommends (``pool`` server connections per database,
    ``server_reset_query`` empty). Run as ``postgres`` when we are root: pgbouncer
    refuses to run as root."""

    def __init__(self, pg: Postgres, *, pool: int = 2):
        self.pg, self.port, self.proc = pg, free_port(), None
        self.dir = Path(tempfile.mkdtemp(prefix="linetap-pgbouncer-"))
        os.chmod(self.dir, 0o777)
        (self.dir / "userlist.txt").write_text('"postgres" ""\n')
        (self.dir / "pgbouncer.ini").write_text(f"""\
[databases]
* = host=127.0.0.1 port={pg.port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.dir}/userlist.txt
pool_mode = transaction
default_pool_size = {pool}
max_client_conn = 200
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {self.dir}/pgbouncer.log
""")

    def start(self) -> None:
        cmd = [PGBOUNCER, str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.proc, self.port, "pgbouncer", self.log)

    def url(self, name: str) -> str:
        """The URL of database ``name`` through pgbouncer."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.dir / "pgbouncer.log").read_text()
        except OSError:
            return ""


class Replica:
    """A streaming replica of a :class:`Postgres` (``pg_basebackup -R``), named
    ``name`` to the primary (its ``application_name``), in its own temp folder and
    port. :meth:`make_synchronous` makes the primary wait for it at every commit;
    :meth:`promote` turns it into a primary, as a failover does."""

    def __init__(self, primary: Postgres, name: str = "replica1"):
        self.primary, self.name = primary, name
        self.dir = Path(tempfile.mkdtemp(prefix="linetap-pgreplica-"))
        self.port = free_port()
        os.chmod(self.dir, 0o777)

    def start(self) -> None:
        p = self.primary
        p._run(PG_BIN / "pg_basebackup", "-D", self.dir / "data", "-R", "-X", "stream",
               "-d", f"host=127.0.0.1 port={p.port} user=postgres "
                     f"application_name={self.name}")
        p._run(PG_BIN / "pg_ctl", "-D", self.dir / "data", "-l", self.dir / "pg.log", "-w",
               "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                     "-c fsync=off", "start")

    def make_synchronous(self) -> None:
        """``synchronous_standby_names`` on the primary; returns once the replica
        streams as ``sync``."""
        import psycopg2
        conn = psycopg2.connect(host="127.0.0.1", port=self.primary.port, user="postgres",
                                dbname="postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{self.name}'")
                cur.execute("SELECT pg_reload_conf()")
                for _ in range(400):
                    cur.execute("SELECT sync_state FROM pg_stat_replication "
                                "WHERE application_name = %s", (self.name,))
                    row = cur.fetchone()
                    if row and row[0] == "sync":
                        return
                    time.sleep(0.05)
        finally:
            conn.close()
        raise RuntimeError(f"{self.name} did not become a synchronous standby")

    def promote(self) -> None:
        self.primary._run(PG_BIN / "pg_ctl", "-D", self.dir / "data", "-w", "promote")

    def url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self.primary._run(PG_BIN / "pg_ctl", "-D", self.dir / "data", "-m", "immediate",
                              "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
