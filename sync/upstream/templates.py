"""Text of the files ``linetap upstream init`` writes: the mosquitto ACL and config, and
the systemd units (hardened like the box's; ``systemd-analyze security`` rates the broker
and ingest units 1.4). Filled in by :mod:`sync.upstream.setup` with ``str.format``."""

ACL = """\
# Written by `linetap upstream init`. Username = the client certificate's CN
# (use_identity_as_username), so a device is known by its certificate alone.

# The ingest workers read every device's uploads and write acks and commands.
user {ingest}
topic readwrite {prefix}/#

# Each device only in its own subtree, and only in the direction each topic flows.
pattern write {prefix}/+/%u/seg/#
pattern write {prefix}/+/%u/man/#
pattern write {prefix}/+/%u/status
pattern write {prefix}/+/%u/health
pattern write {prefix}/+/%u/report
pattern write {prefix}/+/%u/audit
pattern read {prefix}/+/%u/ack
pattern read {prefix}/+/%u/cmd
"""

MOSQ_CONF = """\
# Written by `linetap upstream init`: the broker for Linetap boxes, mutual TLS only.
# Started as root (`linetap upstream serve`), mosquitto drops to `user` before it reads
# the key, the CRL and the ACL: broker.key is therefore mode 0640, group {user}. Under
# systemd (systemd/linetap-upstream-broker.service) it never runs as root at all.
user {user}
per_listener_settings false
allow_anonymous false
acl_file {acl}
# No broker persistence: the box's SQLite outbox is the queue (unacked items are sent
# again after a restart) and the ingest resends commands until the box reports.
persistence false
log_dest stderr
log_type error
log_type warning
log_type notice
connection_messages true
max_inflight_messages 100
max_queued_messages 100000
set_tcp_nodelay true

listener {port}{bind}
cafile {ca}
certfile {cert}
keyfile {key}
crlfile {crl}
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
"""

HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={home}
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectHostname=yes
ProtectClock=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
UMask=0027
"""

BROKER_UNIT = """\
# Written by `linetap upstream init`. mosquitto for Linetap boxes (mutual TLS, ACL, CRL).
# Runs as {user} from the start (no root, so no privilege drop to get wrong).
[Unit]
Description=Linetap upstream MQTT broker (mosquitto)
Documentation=https://github.com/linetap/linetap/blob/main/docs/operations.md
After=network-online.target
Wants=network-online.target
PartOf=linetap-upstream.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={mosquitto} -c {conf}
ExecReload=/bin/kill -HUP $MAINPID
User={user}
Group={user}
Restart=on-failure
RestartSec=2
ReadOnlyPaths={root}
CapabilityBoundingSet={caps}
AmbientCapabilities={caps}
{hardening}
[Install]
WantedBy=linetap-upstream.target
"""

# The [Service] and [Install] of every Python service the upstream runs (ingest workers,
# the portal): the upstream's own user, read-only but for its data, hardened.
PYTHON_SERVICE = """\
[Service]
Type=simple
ExecStart={linetap} {command} --config {config}{args}
User={user}
Group={user}
Restart=on-failure
RestartSec=2
ReadOnlyPaths={root}
ReadWritePaths={data}
CapabilityBoundingSet=
Environment=PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
{hardening}
[Install]
WantedBy=linetap-upstream.target
"""

INGEST_UNIT = """\
# Written by `linetap upstream init`. One ingest worker; the target starts {workers}
# (linetap-ingest@1 .. @{workers}), which share the broker's subscription.
[Unit]
Description=Linetap upstream ingest worker %i
After=network-online.target linetap-upstream-broker.service
Wants=network-online.target
PartOf=linetap-upstream.target

""" + PYTHON_SERVICE.replace("{command}", "ingest").replace("{args}", "")

PORTAL_UNIT = """\
# Written by `linetap upstream init`. The practice portal (docs/portal.md) on loopback:
# put a TLS reverse proxy in front of it; it reads the store the workers write.
[Unit]
Description=Linetap practice portal
After=network-online.target
Wants=network-online.target
PartOf=linetap-upstream.target

""" + PYTHON_SERVICE.replace("{command}", "portal").replace("{args}", " --bind {bind}")

UPDATES_UNIT = """\
# Written by `linetap upstream init`. Serves RAUC bundles to boxes over HTTPS with mutual
# TLS (device certificates, CRL checked); `linetap upstream update offer` fills its folder.
[Unit]
Description=Linetap update bundles (HTTPS, mutual TLS)
After=network-online.target
Wants=network-online.target
PartOf=linetap-upstream.target

""" + PYTHON_SERVICE.replace("{command}", "upstream").replace(
    "--config {config}{args}", "--config {config} update serve")

TARGET = """\
# Written by `linetap upstream init`. `systemctl enable --now linetap-upstream.target`
# starts the broker, {workers} ingest workers, the practice portal and the bundle server.
[Unit]
Description=Linetap upstream (broker, ingest workers, portal, update bundles)
Wants=linetap-upstream-broker.service {instances} linetap-portal.service
Wants=linetap-updates.service
After=network-online.target

[Install]
WantedBy=multi-user.target
"""

SYSUSERS = """\
# Written by `linetap upstream init`: the ingest workers' system user
# (`systemd-sysusers {path}`). The broker runs as the mosquitto package's user.
u {user} - "Linetap upstream ingest" {data}
"""
