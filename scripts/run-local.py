#!/usr/bin/env python3
"""The supervisor behind scripts/run-local.sh: Tandem's whole topology as
local processes, any of which may die (or be killed on purpose) while the
rest keep running.

    run-local.py up                  start everything and supervise it; Ctrl-C stops all
    run-local.py ps [--json]         every component: state, pid, ports, readiness
    run-local.py kill NAME...        SIGKILL a component (its whole process group): a crash
    run-local.py stop NAME...        stop it gracefully (SIGTERM; Postgres: fast shutdown)
    run-local.py start NAME...       start it again and wait until it is ready
    run-local.py restart NAME...     stop, then start
    run-local.py logs NAME [-f]      its log (-f: follow)
    run-local.py primary CLUSTER     the member Patroni made primary (CLUSTER: shop-db or control-db)
    run-local.py ca                  the path of the development CA (curl --cacert) for HTTPS
    run-local.py certs               the directory of the components' certificates (mTLS; admin.pem for tandemctl)
    run-local.py down                stop everything, as Ctrl-C in the first terminal does

`up` is what scripts/run-local.sh runs after building; the other commands
talk to the running `up` over a Unix socket in its run directory, found
from TANDEM_LOCAL_PORT_OFFSET (every port is its default plus this offset,
so several runs can share a machine).

One thread does everything (start, reap, probe, answer, print logs): no
locks, and every child is started from the same thread, which matters for
PR_SET_PDEATHSIG (the kernel ties it to the thread that forked). Each child
runs in its own session, so Ctrl-C in the terminal reaches only this
supervisor, which then stops the children in order, and a `kill` takes a
component's whole process group (Postgres and its backends) at once.
"""

import ctypes
import glob
import json
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# === settings ===


def env_int(name, default):
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        die(f"{name} must be an integer (got {raw!r})", 2)


OFFSET = None  # set in main


def port(default):
    """A default port moved by TANDEM_LOCAL_PORT_OFFSET."""
    return default + OFFSET


def run_dir():
    # Not $TMPDIR: every terminal must find the same run.
    base = "/tmp" if os.access("/tmp", os.W_OK) else tempfile.gettempdir()
    return os.path.join(base, f"tandem-local-{os.getuid()}-{OFFSET}")


def sock_path():
    return os.path.join(run_dir(), "control.sock")


def offset_prefix():
    """What to put before scripts/run-local.sh in printed commands."""
    return "" if OFFSET == 0 else f"TANDEM_LOCAL_PORT_OFFSET={OFFSET} "


def die(msg, code=1):
    print(f"run-local: error: {msg}", file=sys.stderr)
    sys.exit(code)


def say(msg):
    """A line from the supervisor itself, among the components' logs."""
    out(f"[run-local] {msg}\n")


_stdout_gone = False


def out(text):
    # The terminal's reader may be gone (a `| tee` killed): keep supervising.
    global _stdout_gone
    if _stdout_gone:
        return
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        _stdout_gone = True


def pg_bin():
    """The newest PostgreSQL server's bin directory (Debian's layout)."""
    base = "/usr/lib/postgresql"
    versions = [v for v in (os.listdir(base) if os.path.isdir(base) else [])
                if v.isdigit() and os.path.isfile(os.path.join(base, v, "bin", "postgres"))]
    if not versions:
        die(f"no PostgreSQL server under {base} (scripts/run-local.sh installs it)")
    return os.path.join(base, max(versions, key=int), "bin")


def tool(name):
    return shutil.which(name) or os.path.join(pg_bin(), name)


# === probes ===

_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_probe(url, timeout=0.5):
    """(ready, note): a 2xx from `url`, and the first line of its body."""
    try:
        with _no_proxy.open(url, timeout=timeout) as r:
            body = r.read(400).decode("utf-8", "replace")
            return True, first_line(body)
    except urllib.error.HTTPError as e:
        body = e.read(400).decode("utf-8", "replace")
        return False, f"HTTP {e.code}: {first_line(body)}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return False, f"no answer within {timeout:g} s"
        return False, f"no answer ({reason})"


def first_line(text):
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 90 else line[:87] + "..."


def pg_probe(port_, timeout):
    r = subprocess.run(
        [tool("pg_isready"), "-h", "127.0.0.1", "-p", str(port_), "-U", "postgres", "-d", "postgres", "-t", str(max(1, round(timeout)))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    return r.returncode == 0, first_line(r.stdout.replace(f"127.0.0.1:{port_} - ", ""))


def port_in_use(p, ip="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As the services bind: TIME_WAIT left by an earlier run is no conflict.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((ip, p))
        s.listen(1)
        return False
    except OSError:
        return True
    finally:
        s.close()


# === components ===


class Component:
    def __init__(self, name, kind, argv, env=None, ports=(), probe=None, as_postgres=False, cwd=None,
                 stop_signal=signal.SIGTERM, ports_text="", ip="127.0.0.1", pg_data=None, setup=None):
        self.name = name
        # The loopback address its ports are on (a database "host" has one
        # of its own, 127.0.x.y, as Patroni's REST port is the same on every
        # member).
        self.ip = ip
        # A Patroni member: the Postgres data directory whose postmaster is
        # part of its "host" (Postgres runs in a session of its own, outside
        # Patroni's process group), and what writes its configuration.
        self.pg_data = pg_data
        self.setup = setup
        self.kind = kind
        self.argv = argv
        self.env = env or {}
        self.ports = list(ports)
        self.ports_text = ports_text or ", ".join(str(p) for p in ports)
        self.probe = probe
        self.as_postgres = as_postgres
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.proc = None
        self.pgid = None
        self.new_run(started_at=None)
        self.log_path = None
        self.log_pos = 0
        self.log_partial = b""

    def new_run(self, started_at):
        """Forgets what the last run did: a run started at `started_at`."""
        self.started_at = started_at
        self.ready_at = None
        self.last_probe = 0.0
        self.exit_desc = None
        self.exited_at = None
        self.requested = None  # "kill" / "stop": why it is going away
        self.stop_deadline = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def state(self):
        if self.proc is None:
            return "not started"
        if self.alive():
            if self.stop_deadline is not None:
                return "stopping"
            return "ready" if self.ready_at else "starting"
        return "exited"


def describe_exit(code):
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


# === the data tier ===
#
# DATA_TIER "patroni" (the default): both databases are Patroni clusters of
# three (Debian's patroni, Postgres streaming replication) on one
# three-member etcd (Debian's etcd-server) under two scopes, failsafe_mode
# on; the shop's with synchronous_mode_strict. Each member is a database
# "host" of its own: a loopback address (127.0.1.N for the shop's, 127.0.2.N
# for the control plane's) with its Patroni, the Postgres it runs, and
# Patroni's REST API on the same port on every member, as HAProxy checks
# port 8008 of each host in Patroni's reference setup. The shop reaches its
# database through the proxies' TCP routes (writes: a single_active pool
# checked on /primary; reads: a pool checked on /replica). The control
# plane cannot sit behind its own proxies: its DATABASE_URL names the three
# members (target_session_attrs=read-write). DATA_TIER "single": one plain
# Postgres each (control-db, shop-db), as before the data tier got spares.

DATA_TIER = None  # set in main

ETCD_CLIENT = (12379, 12389, 12399)  # peer ports: these + 1
CLUSTERS = {
    # scope: (subnet of its hosts' 127.0.<subnet>.N, Postgres port, REST port, synchronous_mode_strict)
    "control-db": (2, 15432, 18008, False),
    "shop-db": (1, 15433, 18009, True),
}
SHOP_PRIMARY_ROUTE = 15533  # the TCP routes' ports on 127.0.0.1 (plus the offset)
SHOP_REPLICA_ROUTE = 15534
# Patroni's timers set the failover time (its defaults are 30/10/10).
PATRONI_TTL, PATRONI_LOOP_WAIT, PATRONI_RETRY_TIMEOUT = 10, 1, 3


def member_ip(cluster, i):
    return f"127.0.{CLUSTERS[cluster][0]}.{i}"


def member_pg(cluster, i):
    return f"{member_ip(cluster, i)}:{port(CLUSTERS[cluster][1])}"


def member_rest(cluster, i):
    return f"{member_ip(cluster, i)}:{port(CLUSTERS[cluster][2])}"


def control_db_url():
    hosts = ",".join(member_pg("control-db", i) for i in (1, 2, 3))
    return f"postgres://postgres@{hosts}/postgres?target_session_attrs=read-write"


def etcd_endpoints():
    return [f"127.0.0.1:{port(c)}" for c in ETCD_CLIENT]


def single_databases(work):
    comps = []
    for name, default in (("control-db", 15432), ("shop-db", 15433)):
        p = port(default)
        d = os.path.join(work, name)
        comps.append(Component(
            name, "postgres",
            [os.path.join(pg_bin(), "postgres"), "-D", os.path.join(d, "data"), "-p", str(p),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={d}", "-c", "fsync=off"],
            ports=[p], probe=lambda timeout=0.5, p=p: pg_probe(p, timeout), as_postgres=os.getuid() == 0, cwd=d,
            # SIGTERM is a "smart" shutdown that waits for every client.
            stop_signal=signal.SIGINT,
        ))
    return comps


def data_tier(work):
    comps = []
    cluster = ",".join(f"etcd-{i}=http://127.0.0.1:{port(c) + 1}" for i, c in enumerate(ETCD_CLIENT, 1))
    for i, c in enumerate(ETCD_CLIENT, 1):
        client, peer = port(c), port(c) + 1
        d = os.path.join(work, f"etcd-{i}")
        comps.append(Component(
            f"etcd-{i}", "etcd",
            [shutil.which("etcd") or "/usr/bin/etcd", "--name", f"etcd-{i}", "--data-dir", os.path.join(d, "data"),
             "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", cluster, "--initial-cluster-state", "new",
             "--initial-cluster-token", f"tandem-local-{OFFSET}", "--log-level", "warn"],
            ports=[client, peer], ports_text=f"{client}, peer {peer}", cwd=d,
            probe=lambda timeout=0.5, client=client: http_probe(f"http://127.0.0.1:{client}/health", timeout),
        ))
    for scope, (_subnet, pg, rest, strict) in CLUSTERS.items():
        for i in (1, 2, 3):
            name = f"{scope}-{i}"
            d = os.path.join(work, name)
            ip = member_ip(scope, i)
            comps.append(Component(
                name, "patroni", [shutil.which("patroni") or "/usr/bin/patroni", os.path.join(d, "patroni.yml")],
                ports=[port(pg), port(rest)], ports_text=f"{ip}:{port(pg)}, REST :{port(rest)}", ip=ip,
                probe=lambda timeout=0.5, scope=scope, i=i: patroni_probe(member_rest(scope, i), timeout),
                as_postgres=os.getuid() == 0, cwd=d, pg_data=os.path.join(d, "data"),
                setup=lambda d=d, scope=scope, i=i, strict=strict: patroni_config(d, scope, i, strict),
            ))
    return comps


def patroni_config(d, scope, i, strict):
    """Member i's Patroni configuration (JSON is YAML), written into d."""
    dcs = {
        "ttl": PATRONI_TTL, "loop_wait": PATRONI_LOOP_WAIT, "retry_timeout": PATRONI_RETRY_TIMEOUT,
        "maximum_lag_on_failover": 1048576,
        # The two clusters share one etcd: losing its quorum demotes neither
        # primary while it still reaches its replicas.
        "failsafe_mode": True,
        "postgresql": {"use_pg_rewind": True,
                       "parameters": {"wal_log_hints": "on", "max_connections": 200, "wal_keep_size": "128MB"}},
    }
    if strict:
        # A commit waits for a synchronous replica; with none left, writes
        # wait (plain synchronous_mode would quietly go asynchronous).
        dcs["synchronous_mode"] = True
        dcs["synchronous_mode_strict"] = True
    superuser = {"username": "postgres", "password": "postgres"}
    config = {
        "scope": scope, "name": f"{scope}-{i}", "namespace": "/tandem-local/",
        "log": {"level": "WARNING"},
        "restapi": {"listen": member_rest(scope, i), "connect_address": member_rest(scope, i)},
        "etcd3": {"hosts": etcd_endpoints()},
        "bootstrap": {"dcs": dcs, "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}]},
        "postgresql": {
            "listen": member_pg(scope, i), "connect_address": member_pg(scope, i),
            "data_dir": os.path.join(d, "data"), "bin_dir": pg_bin(), "pgpass": os.path.join(d, "pgpass"),
            # Loopback only, and throwaway: trust.
            "pg_hba": ["local all all trust", "host all all 127.0.0.0/8 trust",
                       "host replication all 127.0.0.0/8 trust"],
            "authentication": {"superuser": superuser,
                               "replication": {"username": "replicator", "password": "replicator"},
                               "rewind": superuser},
            "parameters": {"unix_socket_directories": d, "fsync": "off"},
        },
    }
    path = os.path.join(d, "patroni.yml")
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def patroni_probe(rest, timeout=0.5):
    """(running, "primary" / "replica, streaming" / ...) from a member's
    REST API: GET /patroni answers 200 while its Postgres runs."""
    try:
        with _no_proxy.open(f"http://{rest}/patroni", timeout=timeout) as r:
            v = json.loads(r.read(4000).decode("utf-8", "replace"))
    except urllib.error.HTTPError as e:
        try:
            v = json.loads(e.read(4000).decode("utf-8", "replace"))
        except ValueError:
            return False, f"HTTP {e.code}"
        return False, f"{v.get('role', '?')}, {v.get('state', '?')}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return False, f"no answer ({getattr(e, 'reason', e)})"
    role = {"master": "primary"}.get(v.get("role"), v.get("role", "?"))
    note = role
    if v.get("replication_state"):
        note += f", {v['replication_state']}"
    if v.get("state") != "running":
        return False, f"{note}, {v.get('state')}"
    return True, note


def patroni_role(rest, path, timeout=1.0):
    """Does the member answer 200 on `path` (/primary, /replica, /sync)?"""
    try:
        with _no_proxy.open(f"http://{rest}{path}", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def primary_of(scope):
    """The member of `scope` that answers /primary, if exactly one does."""
    found = [f"{scope}-{i}" for i in (1, 2, 3) if patroni_role(member_rest(scope, i), "/primary")]
    return found[0] if len(found) == 1 else None


def patroni_noise(line):
    """The traceback Patroni's REST API prints each time a checker hangs up
    before reading the whole answer (a health check that read the status
    line): kept in its log file, left out of the terminal."""
    return (line.startswith((b" ", b"Traceback", b"ConnectionResetError", b"BrokenPipeError",
                             b"Exception happened during processing"))
            or line.strip() == b"-" * 40)


def kill_postmaster(data_dir):
    """SIGKILL of a member's postmaster and every process it forked: each
    Postgres child runs in a session of its own, so no process group holds
    them. The postmaster is stopped first so that it forks no more."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid")) as f:
            pid = int(f.readline().strip())
        # A pid left in the file by a postmaster long gone may be another
        # process's now: only a postgres of this data directory is killed.
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if data_dir.encode() not in f.read():
                return
        os.kill(pid, signal.SIGSTOP)
    except (OSError, ValueError):
        return
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            if int(stat[stat.rindex(")") + 1:].split()[1]) == pid:
                children.append(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    for p in [pid] + children:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def topology(bin_dir, work):
    """Every component in start order. Zones as in docker-compose.yml:
    proxy-1 and agent-1 in zone-a, proxy-2 and agent-2 in zone-b."""
    admin = os.environ["TANDEM_ADMIN_TOKEN"]
    node = os.environ["TANDEM_NODE_TOKEN"]
    comps = []
    if DATA_TIER == "patroni":
        comps += data_tier(work)
        control_db = control_db_url()
        shop_db = f"postgres://postgres@127.0.0.1:{port(SHOP_PRIMARY_ROUTE)}/shop"
        shop_replica_db = f"postgres://postgres@127.0.0.1:{port(SHOP_REPLICA_ROUTE)}/shop"
    else:
        comps += single_databases(work)
        control_db = f"postgres://postgres@127.0.0.1:{port(15432)}/postgres"
        shop_db = f"postgres://postgres@127.0.0.1:{port(15433)}/shop"
        shop_replica_db = None
    peers = ",".join(f"{i}=127.0.0.1:{port(7400 + 10 * (i - 1))}" for i in (1, 2, 3))
    for i in (1, 2, 3):
        grpc, adm = port(7400 + 10 * (i - 1)), port(7401 + 10 * (i - 1))
        comps.append(Component(
            f"control-{i}", "control", [os.path.join(bin_dir, "tandem-control")],
            env={"DATABASE_URL": control_db, "TANDEM_LISTEN": f"127.0.0.1:{grpc}",
                 "TANDEM_ADMIN_LISTEN": f"127.0.0.1:{adm}", "TANDEM_RAFT_ID": str(i),
                 "TANDEM_PEERS": peers, "TANDEM_STATE_DIR": os.path.join(work, f"control-{i}"),
                 "TANDEM_ADMIN_TOKEN": admin, "TANDEM_NODE_TOKEN": node,
                 "TANDEM_SECRETS_KEY_FILE": os.path.join(work, "tls", "secrets.key"),
                 **mtls_env(work, f"control-{i}")},
            ports=[grpc, adm], ports_text=f"{grpc}, admin {adm}",
            probe=lambda timeout=0.5, adm=adm: http_probe(f"http://127.0.0.1:{adm}/readyz", timeout),
        ))
    for i in (1, 2, 3):
        p = port(3000 + i)
        comps.append(Component(
            f"shop-{i}", "shop", [os.path.join(bin_dir, "widget-shop")],
            env={"DATABASE_URL": shop_db, "SHOP_LISTEN": f"127.0.0.1:{p}", "SHOP_INSTANCE": f"shop-{i}",
                 "SHOP_ADMIN_TOKEN": os.environ["SHOP_ADMIN_TOKEN"],
                 **({"SHOP_REPLICA_DATABASE_URL": shop_replica_db} if shop_replica_db else {})},
            ports=[p], probe=lambda timeout=0.5, p=p: http_probe(f"http://127.0.0.1:{p}/readyz", timeout),
        ))
    for i, zone in ((1, "zone-a"), (2, "zone-b")):
        p, adm = port(8080 + 2 * (i - 1)), port(8081 + 2 * (i - 1))
        tls = port(8443 + 2 * (i - 1))
        comps.append(Component(
            f"proxy-{i}", "proxy", [os.path.join(bin_dir, "tandem-proxy")],
            env={"TANDEM_LISTEN": f"127.0.0.1:{p}", "TANDEM_ADMIN_LISTEN": f"127.0.0.1:{adm}",
                 "TANDEM_TLS_LISTEN": f"127.0.0.1:{tls}",
                 "TANDEM_CONTROL": control_endpoints(), "TANDEM_TOKEN": node,
                 "TANDEM_NODE_ID": f"proxy-{i}", "TANDEM_ZONE": zone,
                 "TANDEM_STATE_DIR": os.path.join(work, f"proxy-{i}"), "TANDEM_WORKERS": "1",
                 **mtls_env(work, f"proxy-{i}")},
            ports=[p, adm, tls], ports_text=f"{p}, https {tls}, admin {adm}",
            probe=lambda timeout=0.5, adm=adm: http_probe(f"http://127.0.0.1:{adm}/readyz", timeout),
        ))
    for i, zone in ((1, "zone-a"), (2, "zone-b")):
        adm = port(7500 + i)
        comps.append(Component(
            f"agent-{i}", "agent", [os.path.join(bin_dir, "tandem-agent")],
            env={"TANDEM_CONTROL": control_endpoints(), "TANDEM_TOKEN": node,
                 "TANDEM_NODE_ID": f"agent-{i}", "TANDEM_ZONE": zone,
                 "TANDEM_ADMIN_LISTEN": f"127.0.0.1:{adm}", **mtls_env(work, f"agent-{i}")},
            ports=[adm], ports_text=f"admin {adm}",
            probe=lambda timeout=0.5, adm=adm: http_probe(f"http://127.0.0.1:{adm}/readyz", timeout),
        ))
    return comps


def dev_tls(d):
    """A development CA, a certificate it signs for localhost and 127.0.0.1
    (the `shop` certificate the proxies serve), and the key the control
    replicas seal private keys under: all made here, for this run only."""
    os.makedirs(d)
    steps = [
        ["openssl", "rand", "-hex", "-out", "secrets.key", "32"],
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", "/CN=Tandem run-local development CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
        ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "shop.key"],
        ["openssl", "req", "-new", "-key", "shop.key", "-subj", "/CN=localhost", "-out", "shop.csr"],
        ["openssl", "x509", "-req", "-in", "shop.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "30", "-extfile", "shop.ext", "-out", "shop.pem"],
    ]
    with open(os.path.join(d, "shop.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,DNS:shop.localhost,IP:127.0.0.1\n"
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    for argv in steps:
        r = subprocess.run(argv, cwd=d, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise Abort(f"{' '.join(argv[:2])} failed (the development certificate needs openssl): {r.stdout.strip()}")
    for secret in ("secrets.key", "ca.key", "shop.key"):
        os.chmod(os.path.join(d, secret), 0o600)


def control_endpoints():
    return ",".join(f"https://127.0.0.1:{port(7400 + 10 * i)}" for i in range(3))


def certs_dir(work):
    """Where `tandemctl certs init` writes this run's component certificates."""
    return os.path.join(work, "tls", "components")


def mtls_env(work, name):
    """TANDEM_TLS_* for a component presenting `name`'s certificate."""
    d = certs_dir(work)
    return {"TANDEM_TLS_CA_FILE": os.path.join(d, "ca.pem"),
            "TANDEM_TLS_CERT_FILE": os.path.join(d, f"{name}.pem"),
            "TANDEM_TLS_KEY_FILE": os.path.join(d, f"{name}-key.pem")}


def component_certs(bin_dir, work):
    """A CA and one certificate per component for mTLS between them
    (`tandemctl certs init`), for this run only."""
    argv = [os.path.join(bin_dir, "tandemctl"), "certs", "init", certs_dir(work),
            "--replica", "control-1", "--replica", "control-2", "--replica", "control-3",
            "--proxy", "proxy-1,proxy-2", "--agent", "agent-1,agent-2"]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise Abort(f"tandemctl certs init failed: {r.stdout.strip()}")


# === the supervisor ===


class Abort(Exception):
    """Start-up cannot go on; the message says why."""


class Interrupted(Exception):
    """Ctrl-C (or TERM, HUP, `down`) during start-up."""


def set_pdeathsig():
    # Runs in the child between fork and exec: if the supervisor dies
    # without cleaning up (SIGKILL), the kernel kills the child too.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Supervisor:
    def __init__(self, bin_dir):
        self.bin_dir = bin_dir
        self.work = run_dir()
        self.comps = {}
        self.order = []
        self.listener = None
        self.stopping = False
        self.hurry = False
        self.booted = False
        # Set once the run directory is ours to remove.
        self.owned = False
        # What stopped us, for the exit code (128 + signal, as a shell says).
        self.signal = None

    # --- signals

    def on_signal(self, signum, _frame):
        if self.stopping:
            self.hurry = True
        self.stopping = True
        self.signal = signum

    # --- set-up

    def prepare(self):
        if os.path.exists(self.work):
            if client_request({"cmd": "ping"}, quiet=True) is not None:
                raise PortInUse(f"a run-local with port offset {OFFSET} is already running "
                                f"(see: {offset_prefix()}scripts/run-local.sh ps); "
                                "pick other ports with TANDEM_LOCAL_PORT_OFFSET=N")
            owner = supervisor_of(self.work)
            if owner is not None:
                raise PortInUse(f"the run-local with port offset {OFFSET} (pid {owner}) is still stopping; "
                                "try again in a moment")
            # Left by a run that was killed outright; its children died with it.
            shutil.rmtree(self.work, ignore_errors=True)
        for trash in glob.glob(glob.escape(self.work) + ".stopped-*"):
            if supervisor_of(trash) is None:
                shutil.rmtree(trash, ignore_errors=True)
        comps = topology(self.bin_dir, self.work)
        for c in comps:
            for p in c.ports:
                if port_in_use(p, c.ip):
                    raise PortInUse(f"port {p} ({c.name}) is in use on {c.ip}: another run-local "
                                    f"or service holds it; move every port with TANDEM_LOCAL_PORT_OFFSET=N "
                                    f"(e.g. TANDEM_LOCAL_PORT_OFFSET=1000 scripts/run-local.sh)")
        for c in comps:
            exe = c.argv[0]
            if c.kind in ("etcd", "patroni") and not os.access(exe, os.X_OK):
                raise Abort(f"{exe} is missing: apt-get install patroni etcd-server "
                            "(scripts/run-local.sh installs them), or run the single-database tier "
                            "with TANDEM_LOCAL_DATA_TIER=single")
            if not os.access(exe, os.X_OK):
                raise Abort(f"{exe} is missing: build first (cargo build --workspace --bins), "
                            "or set TANDEM_LOCAL_BIN to where the binaries are")
        os.makedirs(os.path.join(self.work, "logs"))
        self.owned = True
        dev_tls(os.path.join(self.work, "tls"))
        component_certs(self.bin_dir, self.work)
        # Postgres runs as `postgres` when we are root: let it in.
        os.chmod(self.work, 0o755)
        for c in comps:
            self.comps[c.name] = c
            self.order.append(c.name)
            c.log_path = os.path.join(self.work, "logs", f"{c.name}.log")
            open(c.log_path, "ab").close()
        with open(os.path.join(self.work, "supervisor.pid"), "w") as f:
            f.write(f"{os.getpid()}\n")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(sock_path())
        self.listener.listen(16)
        self.listener.setblocking(False)

    def make_dir(self, c):
        """A Patroni member's or etcd member's directory, owned by whom it
        runs as, with the member's configuration."""
        os.makedirs(c.cwd, exist_ok=True)
        if c.setup is not None:
            c.setup()
        if c.as_postgres:
            pw = pwd.getpwnam("postgres")
            for path in [c.cwd] + [os.path.join(c.cwd, f) for f in os.listdir(c.cwd)]:
                os.chown(path, pw.pw_uid, pw.pw_gid)
            os.chmod(c.cwd, 0o700)

    def initdb(self, c):
        d = c.cwd
        os.makedirs(d, exist_ok=True)
        kwargs = {}
        if c.as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(d, pw.pw_uid, pw.pw_gid)
            kwargs = {"user": "postgres", "group": "postgres", "extra_groups": []}
        with open(c.log_path, "ab") as log:
            r = subprocess.run(
                [os.path.join(pg_bin(), "initdb"), "-D", os.path.join(d, "data"), "-U", "postgres",
                 "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=d, **kwargs)
        if r.returncode != 0:
            raise Abort(f"initdb for {c.name} failed; see {c.log_path}")

    # --- processes

    def spawn(self, c):
        if c.alive():
            return
        if c.pgid is not None:
            kill_component(c)  # leftovers of its last run
            self.settle(c, wait=2)
        env = dict(os.environ)
        env.update(c.env)
        kwargs = {}
        if c.as_postgres:
            kwargs = {"user": "postgres", "group": "postgres", "extra_groups": []}
        with open(c.log_path, "ab") as log:
            c.proc = subprocess.Popen(
                c.argv, env=env, cwd=c.cwd or ROOT, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=set_pdeathsig, **kwargs)
        c.pgid = c.proc.pid
        c.new_run(started_at=time.monotonic())

    def reap(self):
        for name in self.order:
            c = self.comps[name]
            # `exit_desc` is set once per run: a `kill` may have reaped the
            # process already (poll), the exit is still to be told.
            if c.proc is None or c.exit_desc is not None:
                continue
            code = c.proc.poll()
            if code is None:
                continue
            self.tail(c)
            # Whatever it left in its group (Postgres backends) goes too,
            # and a Patroni member's Postgres: the "host" dies as one.
            kill_component(c)
            self.settle(c, wait=0.5)
            ran = time.monotonic() - c.started_at
            desc = describe_exit(code)
            if c.requested:
                desc += f" (run-local {c.requested})"
            c.exit_desc = desc
            c.exited_at = time.monotonic()
            c.stop_deadline = None
            if self.stopping or not self.booted:
                continue  # start-up fails in check_boot
            say(f"{name} (pid {c.proc.pid}) {desc} after {human(ran)}; everything else keeps running. "
                f"Start it again: {offset_prefix()}scripts/run-local.sh start {name}")

    def check_boot(self):
        """During start-up a component that exits is fatal."""
        self.reap()
        for c in self.comps.values():
            if c.exit_desc is not None:
                tail = log_tail(c.log_path, 15)
                # Taken between the check and the bind: say so the same way.
                kind = PortInUse if "Address already in use" in tail else Abort
                raise kind(f"{c.name} {c.exit_desc} while starting; its log ends with:\n{tail}")

    def settle(self, c, wait=0.0):
        """Forgets the process group of a component that has exited once
        the group is empty, so its number (free for reuse) is never
        signalled again."""
        deadline = time.monotonic() + wait
        while c.pgid is not None and not c.alive():
            if not group_exists(c.pgid):
                c.pgid = None
                return
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)

    def probe_starting(self):
        now = time.monotonic()
        for name in self.order:
            c = self.comps[name]
            if not c.alive() or c.ready_at or c.stop_deadline or now - c.last_probe < 0.3:
                continue
            ok, _ = c.probe()
            now = c.last_probe = time.monotonic()
            if ok:
                c.ready_at = now
                if self.booted:
                    say(f"{name} (pid {c.proc.pid}) is ready after {human(now - c.started_at)}")

    def escalate(self):
        now = time.monotonic()
        for c in self.comps.values():
            if c.alive() and c.stop_deadline is not None and now > c.stop_deadline:
                say(f"{c.name} did not stop within its deadline: SIGKILL")
                kill_component(c)
                c.stop_deadline = None

    # --- logs

    def tail(self, c):
        try:
            with open(c.log_path, "rb") as f:
                f.seek(c.log_pos)
                data = f.read(1 << 20)
        except OSError:
            return
        if not data:
            return
        c.log_pos += len(data)
        data = c.log_partial + data
        lines = data.split(b"\n")
        c.log_partial = lines.pop()
        if c.kind == "patroni":
            lines = [line for line in lines if not patroni_noise(line)]
        if lines:
            out("".join(f"[{c.name}] {line.decode('utf-8', 'replace')}\n" for line in lines))

    def tail_all(self):
        for name in self.order:
            self.tail(self.comps[name])

    # --- the loop

    def tick(self, timeout):
        try:
            readable, _, _ = select.select([self.listener], [], [], timeout)
        except InterruptedError:
            readable = []
        if readable:
            self.accept()
        self.reap()
        for c in self.comps.values():
            self.settle(c)
        self.probe_starting()
        self.escalate()
        self.tail_all()

    def wait_for(self, check, timeout, failure, interval=0.1):
        """Runs the supervisor (every `interval` s) until `check()` is true;
        after `timeout` s, aborts with the message `failure()` gives."""
        deadline = time.monotonic() + timeout
        while True:
            if self.stopping:
                raise Interrupted()
            self.tick(interval)
            self.check_boot()
            if check():
                return
            if time.monotonic() > deadline:
                raise Abort(failure())

    def wait_ready(self, names, timeout=90):
        def failure():
            late = [n for n in names if not self.comps[n].ready_at]
            notes = "; ".join(f"{n}: {self.comps[n].probe()[1]}" for n in late)
            return f"not ready within {timeout} s: {notes}"
        self.wait_for(lambda: all(self.comps[n].ready_at for n in names), timeout, failure)

    def wait_http(self, url, what, timeout=60):
        last = {"note": ""}

        def answers():
            ok, last["note"] = http_probe(url)
            return ok
        self.wait_for(answers, timeout,
                      lambda: f"{what} did not answer within {timeout} s ({url}: {last['note']})")

    def start(self, names, timeout=90, prepare=None):
        """Starts the components `names` (after `prepare(component)`, when
        given) and waits until all are ready."""
        for n in names:
            if prepare is not None:
                prepare(self.comps[n])
            self.spawn(self.comps[n])
        self.wait_ready(names, timeout=timeout)

    def boot(self):
        if DATA_TIER == "patroni":
            self.boot_data_tier()
        else:
            self.boot_single_databases()
        self.boot_services()

    def boot_data_tier(self):
        etcds = ["etcd-1", "etcd-2", "etcd-3"]
        step(f"starting a three-member etcd on :{port(ETCD_CLIENT[0])}, :{port(ETCD_CLIENT[1])}, "
             f":{port(ETCD_CLIENT[2])}")
        self.start(etcds, prepare=self.make_dir)
        step("starting two Patroni clusters of three: control-db (127.0.2.1-3) and shop-db (127.0.1.1-3, "
             f"synchronous_mode_strict); ttl {PATRONI_TTL} s, loop_wait {PATRONI_LOOP_WAIT} s, "
             f"retry_timeout {PATRONI_RETRY_TIMEOUT} s")
        # The first member of each bootstraps (initdb); the others clone it.
        firsts = [f"{scope}-1" for scope in CLUSTERS]
        self.start(firsts, timeout=120, prepare=self.make_dir)
        for scope in CLUSTERS:
            self.wait_until(lambda scope=scope: primary_of(scope) == f"{scope}-1", f"{scope}-1 to be primary", 60)
        rest = [f"{scope}-{i}" for scope in CLUSTERS for i in (2, 3)]
        self.start(rest, timeout=120, prepare=self.make_dir)
        # Only a synchronous standby may be promoted, and until there is
        # one a commit waits: the shop starts once there is.
        self.wait_until(lambda: any(patroni_role(member_rest("shop-db", i), "/sync") for i in (2, 3)),
                        "a synchronous standby in shop-db", 60)
        self.psql(member_pg("shop-db", 1), "CREATE DATABASE shop")

    def wait_until(self, check, what, timeout):
        if not check():
            self.wait_for(check, timeout, lambda: f"no {what} within {timeout} s", interval=0.2)

    def psql(self, host_port, sql):
        host, p = host_port.rsplit(":", 1)
        r = subprocess.run(
            [tool("psql"), "-h", host, "-p", p, "-U", "postgres", "-d", "postgres",
             "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise Abort(f"{sql} on {host_port} failed: {r.stdout.strip()}")

    def boot_single_databases(self):
        dbs = ["control-db", "shop-db"]
        step(f"starting throwaway Postgres clusters: control-db on :{port(15432)}, shop-db on :{port(15433)}")
        self.start(dbs, prepare=self.initdb)
        self.psql(f"127.0.0.1:{port(15433)}", "CREATE DATABASE shop")

    def boot_services(self):
        controls = ["control-1", "control-2", "control-3"]
        step(f"starting three tandem-control replicas (one raft group) on "
             f":{port(7400)}, :{port(7410)}, :{port(7420)}")
        self.start(controls)

        shops = ["shop-1", "shop-2", "shop-3"]
        if DATA_TIER == "single":
            self.start_shops(shops)

        step("configuring the shop's pool and route through the control API (tandemctl)")
        # Probe /healthz every second (two failures out, two successes
        # back in); a failed connect is retried once elsewhere; three
        # consecutive failures eject a backend locally for 5 s.
        self.ctl("pool", "create", "shop", "--policy", "round_robin",
                 "--health-path", "/healthz", "--health-interval", "1s", "--health-timeout", "500ms",
                 "--health-rise", "2", "--health-fall", "2",
                 "--connect-timeout", "1s", "--per-try-timeout", "5s", "--retries", "1",
                 "--outlier-failures", "3", "--outlier-ejection", "5s")
        for i in (1, 2, 3):
            self.ctl("backend", "add", "shop", f"127.0.0.1:{port(3000 + i)}")
        self.ctl("route", "add", "--host", "*", "--prefix", "/", "--pool", "shop")
        tls = os.path.join(self.work, "tls")
        self.ctl("cert", "add", "shop", "--cert-file", os.path.join(tls, "shop.pem"),
                 "--key-file", os.path.join(tls, "shop.key"))
        if DATA_TIER == "patroni":
            self.route_shop_database()

        proxies = ["proxy-1", "proxy-2"]
        step(f"starting two proxies on :{port(8080)} (zone-a) and :{port(8082)} (zone-b)")
        self.start(proxies)
        if DATA_TIER == "single":
            self.wait_shop_through_proxies()

        agents = ["agent-1", "agent-2"]
        step("starting two health agents (zone-a, zone-b)")
        self.start(agents)
        if DATA_TIER == "patroni":
            # The agents' checks on Patroni's REST API open the routes.
            self.start_shops(shops, timeout=120)
            self.wait_shop_through_proxies()
        self.booted = True

    def start_shops(self, shops, timeout=90):
        step(f"starting three widget-shop instances on :{port(3001)}, :{port(3002)}, :{port(3003)}")
        self.start(shops, timeout=timeout)

    def wait_shop_through_proxies(self):
        for i, p in ((1, port(8080)), (2, port(8082))):
            self.wait_http(f"http://127.0.0.1:{p}/healthz", f"the shop through proxy-{i}")

    def route_shop_database(self):
        """The shop database's two addresses through the proxies, as HAProxy
        gives them in Patroni's reference setup: writes to a single_active
        pool of the members checked on /primary (connections to a demoted
        primary closed), reads to a pool checked on /replica."""
        rest = str(port(CLUSTERS["shop-db"][2]))
        for pool, policy, check, route, on_unhealthy in (
                ("shop-db-primary", "single_active", "/primary", SHOP_PRIMARY_ROUTE, "close"),
                ("shop-db-replica", "least_connections", "/replica", SHOP_REPLICA_ROUTE, "keep")):
            self.ctl("pool", "create", pool, "--policy", policy, "--health-path", check, "--health-port", rest,
                     "--health-interval", "1s", "--health-timeout", "800ms", "--health-rise", "1",
                     "--health-fall", "2", "--connect-timeout", "1s", "--on-unhealthy", on_unhealthy)
            for i in (1, 2, 3):
                self.ctl("backend", "add", pool, member_pg("shop-db", i))
            self.ctl("route", "add", "--tcp", "--listen", f"127.0.0.1:{port(route)}", "--pool", pool)

    def ctl(self, *args):
        out(f"  tandemctl {' '.join(args)}\n")
        env = dict(os.environ, TANDEM_ENDPOINT=control_endpoints(), TANDEM_TOKEN=os.environ["TANDEM_ADMIN_TOKEN"],
                   **mtls_env(self.work, "admin"))
        for attempt in range(20):
            r = subprocess.run([os.path.join(self.bin_dir, "tandemctl"), *args], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if r.returncode == 0:
                return
            # A replica that just became ready may still be electing: retry
            # what says "unavailable", fail on anything else.
            if "UNAVAILABLE" not in r.stdout or self.stopping:
                break
            self.tick(0.5)
            self.check_boot()
        raise Abort(f"tandemctl {' '.join(args)} failed: {r.stdout.strip()}")

    def banner(self):
        p = offset_prefix()
        token = os.environ["SHOP_ADMIN_TOKEN"]
        out(f"""
Tandem is running (Ctrl-C stops everything):
  status page         http://127.0.0.1:{port(7401)}/ui/   (live, read-only; every control replica serves it: :{port(7411)}/ui/  :{port(7421)}/ui/)
  the shop            http://127.0.0.1:{port(8080)}/   (through proxy-1, zone-a; proxy-2, zone-b: http://127.0.0.1:{port(8082)}/)
  ... over HTTPS      https://localhost:{port(8443)}/  :{port(8445)}   (development CA: curl --cacert $({p}scripts/run-local.sh ca))
  shop servers        http://127.0.0.1:{port(3001)}/  :{port(3002)}  :{port(3003)}   (direct; /healthz /readyz /metrics)
  proxy admin         http://127.0.0.1:{port(8081)}/config  http://127.0.0.1:{port(8083)}/config   (/config needs -H "Authorization: Bearer $TANDEM_NODE_TOKEN"; /metrics /readyz open)
  control API (gRPC)  {control_endpoints()}   (three replicas, one raft group; mTLS: certificates in {certs_dir(self.work)})
  control admin       http://127.0.0.1:{port(7401)}/metrics  :{port(7411)}  :{port(7421)}   (/healthz /readyz /ui/)
  health agents       agent-1 (zone-a) http://127.0.0.1:{port(7501)}/metrics, agent-2 (zone-b) http://127.0.0.1:{port(7502)}/metrics
{self.databases_text()}
  logs                {self.work}/logs/

Break it from another terminal; everything else keeps running:
  {p}scripts/run-local.sh ps                # every component: state, pid, ports
  {p}scripts/run-local.sh kill shop-2       # kill -9 (also {self.others_text()})
  {p}scripts/run-local.sh start shop-2      # start it again, waiting until it is ready
{self.failover_text()}
Break a shop server without killing it, then heal it:
  curl -X PUT -H "authorization: Bearer {token}" -H 'content-type: application/json' \\
       -d '{{"mode":"error"}}' http://127.0.0.1:{port(3002)}/admin/fault     # or "slow" (+ "delay_ms"), "hang"
  curl -X DELETE -H "authorization: Bearer {token}" http://127.0.0.1:{port(3002)}/admin/fault

Operate Tandem:
  export TANDEM_ENDPOINT={control_endpoints()} TANDEM_TOKEN={os.environ["TANDEM_ADMIN_TOKEN"]}
  export TANDEM_TLS_CA_FILE={certs_dir(self.work)}/ca.pem TANDEM_TLS_CERT_FILE={certs_dir(self.work)}/admin.pem TANDEM_TLS_KEY_FILE={certs_dir(self.work)}/admin-key.pem
  {self.bin_dir}/tandemctl status            # proxies, agents and backend health
  {self.bin_dir}/tandemctl cluster status    # the raft group: leader, term, each member's reachability and lag

""")

    def databases_text(self):
        if DATA_TIER == "single":
            return (f"  databases           control-db postgres://postgres@127.0.0.1:{port(15432)}/postgres\n"
                    f"                      shop-db    postgres://postgres@127.0.0.1:{port(15433)}/shop")
        members = lambda scope: "  ".join(member_pg(scope, i) for i in (1, 2, 3))
        return (f"  shop database       postgres://postgres@127.0.0.1:{port(SHOP_PRIMARY_ROUTE)}/shop (writes: TCP route, "
                f"single_active on /primary), 127.0.0.1:{port(SHOP_REPLICA_ROUTE)} (reads: /replica)\n"
                f"                      shop-db-1..3 {members('shop-db')}   (Patroni, synchronous_mode_strict)\n"
                f"  control database    control-db-1..3 {members('control-db')}   (Patroni; the control plane names all three)\n"
                f"  etcd                {'  '.join(etcd_endpoints())}   (both clusters' store; failsafe_mode)\n"
                f"  Patroni REST        http://{member_rest('shop-db', 1)}/cluster  http://{member_rest('control-db', 1)}/cluster")

    def others_text(self):
        if DATA_TIER == "single":
            return "control-1..3, proxy-1..2, agent-1..2, control-db, shop-db"
        return "control-1..3, proxy-1..2, agent-1..2, shop-db-1..3, control-db-1..3, etcd-1..3"

    def failover_text(self):
        if DATA_TIER == "single":
            return ""
        p = offset_prefix()
        return (f"  {p}scripts/run-local.sh kill $({p}scripts/run-local.sh primary shop-db)   "
                "# the shop database's primary host: Patroni promotes a replica\n")

    def run(self):
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, self.on_signal)
        code = 0
        try:
            self.prepare()
        except PortInUse as e:
            print(f"run-local: error: {e}", file=sys.stderr)
            return 3
        except Abort as e:
            print(f"run-local: error: {e}", file=sys.stderr)
            if self.owned:
                shutil.rmtree(self.work, ignore_errors=True)
            return 1
        try:
            self.boot()
            self.banner()
            while not self.stopping:
                self.tick(0.2)
        except Interrupted:
            pass
        except PortInUse as e:
            out(f"\nrun-local: error: {e}\n")
            code = 3
        except Abort as e:
            out(f"\nrun-local: error: {e}\n")
            code = 1
        self.shutdown()
        if code == 0 and self.signal is not None:
            code = 128 + self.signal
        return code

    # --- shutdown

    def shutdown(self):
        self.stopping = True
        step("stopping")
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            try:
                os.unlink(sock_path())
            except OSError:
                pass
        services = [n for n in reversed(self.order) if self.comps[n].kind not in ("postgres", "patroni", "etcd")]
        dbs = [n for n in reversed(self.order) if self.comps[n].kind in ("postgres", "patroni")]
        etcd = [n for n in reversed(self.order) if self.comps[n].kind == "etcd"]
        for names in (services, dbs, etcd):
            for n in names:
                c = self.comps[n]
                if c.alive():
                    signal_leader(c, signal.SIGKILL if self.hurry else c.stop_signal)
            deadline = time.monotonic() + 10
            while any(self.comps[n].alive() for n in names):
                if self.hurry or time.monotonic() > deadline:
                    for n in names:
                        if self.comps[n].alive():
                            kill_component(self.comps[n])
                    self.hurry = True
                self.reap_quietly(names)
                self.tail_all()
                time.sleep(0.05)
        # Nothing may outlive us: every process group is empty.
        left = []
        for c in self.comps.values():
            if c.pg_data is not None:
                kill_postmaster(c.pg_data)
            if c.pgid is not None:
                kill_group(c.pgid, signal.SIGKILL)
                self.settle(c, wait=2)
                if c.pgid is not None:
                    left.append(f"{c.name} (process group {c.pgid})")
        self.tail_all()
        # Renamed first, so that the name is free at once for the next run
        # while this one deletes the files (slow on some disks).
        trash = f"{self.work}.stopped-{os.getpid()}"
        try:
            os.rename(self.work, trash)
        except OSError:
            trash = self.work
        shutil.rmtree(trash, ignore_errors=True)
        if left:
            out(f"run-local: could not stop: {', '.join(left)}\n")
        else:
            out("stopped; nothing left running\n")

    def reap_quietly(self, names):
        for n in names:
            c = self.comps[n]
            if c.proc is not None and c.proc.returncode is None and c.proc.poll() is not None:
                kill_component(c)
                self.settle(c, wait=0.5)

    # --- requests from other terminals

    def accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            with conn:
                conn.setblocking(True)
                conn.settimeout(2)
                try:
                    req = json.loads(read_line(conn))
                    reply = self.handle(req)
                except Exception as e:  # a bad request must not stop the supervisor
                    reply = {"ok": False, "error": str(e)}
                try:
                    conn.sendall((json.dumps(reply) + "\n").encode())
                except OSError:
                    pass

    def handle(self, req):
        cmd = req.get("cmd")
        names = req.get("names", [])
        if cmd == "ping":
            return {"ok": True}
        if cmd == "ps":
            self.reap()  # every exit known before it is shown
            # Probed side by side: a replica whose database is gone may
            # take its whole timeout to say it is not ready.
            alive = [c for c in self.comps.values() if c.alive() and c.stop_deadline is None]
            with ThreadPoolExecutor(max_workers=len(alive) or 1) as pool:
                probes = dict(zip([c.name for c in alive], pool.map(lambda c: c.probe(timeout=2), alive)))
            return {"ok": True, "components": [self.row(self.comps[n], probes.get(n)) for n in self.order],
                    "booted": self.booted}
        if cmd == "down":
            self.stopping = True
            return {"ok": True, "lines": ["stopping everything"]}
        unknown = [n for n in names if n not in self.comps]
        if unknown or not names:
            return {"ok": False, "usage": True,
                    "error": f"unknown component {', '.join(unknown) or '(none given)'}; "
                             f"components: {' '.join(self.order)}"}
        if not self.booted and cmd in ("start", "kill", "stop"):
            return {"ok": False, "error": "still starting up; try again once the first terminal says it is running"}
        lines = []
        if cmd == "kill":
            for n, c in self.running(names, lines):
                c.requested = "kill"
                kill_component(c)
                for _ in range(200):
                    if c.proc.poll() is not None:
                        break
                    time.sleep(0.01)
                lines.append(f"{n} (pid {c.proc.pid}) killed with SIGKILL")
            self.reap()
        elif cmd == "stop":
            for n, c in self.running(names, lines):
                c.requested = "stop"
                signal_leader(c, c.stop_signal)
                c.stop_deadline = time.monotonic() + 15
                lines.append(f"{n} (pid {c.proc.pid}): {signal.Signals(c.stop_signal).name} sent")
        elif cmd == "start":
            for n in names:
                c = self.comps[n]
                if c.alive():
                    lines.append(f"{n} is already running (pid {c.proc.pid})")
                    continue
                self.spawn(c)
                say(f"{n} started (pid {c.proc.pid})")
                lines.append(f"{n} started (pid {c.proc.pid})")
        else:
            return {"ok": False, "usage": True, "error": f"unknown command {cmd!r}"}
        return {"ok": True, "lines": lines}

    def running(self, names, lines):
        """The named components that are running, as (name, component);
        a line in `lines` for each that is not."""
        up = []
        for n in names:
            c = self.comps[n]
            if c.alive():
                up.append((n, c))
            else:
                lines.append(f"{n} is not running ({c.exit_desc or 'not started'})")
        return up

    def row(self, c, probe):
        now = time.monotonic()
        state = c.state()
        note = ""
        if probe is not None:
            ok, note = probe
            if ok and not c.ready_at:
                c.ready_at = now
            state = "ready" if ok else ("starting" if not c.ready_at else "not ready")
        elif state == "exited" and c.exit_desc is not None:
            note = f"{c.exit_desc} {human(now - c.exited_at)} ago"
        return {
            "name": c.name, "kind": c.kind, "state": state,
            "pid": c.proc.pid if c.alive() else None,
            "ports": c.ports, "ports_text": c.ports_text,
            "up_seconds": round(now - c.started_at, 1) if c.alive() else None,
            "note": note, "log": c.log_path,
        }


class PortInUse(Abort):
    pass


def step(msg):
    out(f"\n\033[1m==> {msg}\033[0m\n" if sys.stdout.isatty() else f"\n==> {msg}\n")


def signal_leader(c, sig):
    # Postgres takes its shutdown signal on the postmaster alone, which
    # then stops its backends in order; the services have no children.
    try:
        os.kill(c.proc.pid, sig)
    except ProcessLookupError:
        pass


def supervisor_of(work):
    """The pid of the live supervisor that owns `work`, if any."""
    try:
        with open(os.path.join(work, "supervisor.pid")) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, ValueError):
        return None
    return pid if b"run-local.py" in cmdline else None


def kill_component(c):
    """SIGKILL of everything a component runs: its process group and, for a
    Patroni member, the Postgres it started (a "host" dies as one)."""
    kill_group(c.pgid, signal.SIGKILL)
    if c.pg_data is not None:
        kill_postmaster(c.pg_data)


def kill_group(pgid, sig):
    if pgid is None:
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_exists(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def human(seconds):
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def log_tail(path, n):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(f"    {line}" for line in lines[-n:])


def read_line(conn):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > 1 << 20:
            raise ValueError("request too long")
    return buf.decode()


# === the client side (another terminal) ===


def client_request(req, quiet=False):
    """Sends one request to the running supervisor; None when none runs."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(15)
    try:
        s.connect(sock_path())
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        if quiet:
            return None
        die(f"no run-local is running with port offset {OFFSET} (no {sock_path()}); "
            "start one with scripts/run-local.sh, or set TANDEM_LOCAL_PORT_OFFSET as it was", 3)
    with s:
        s.sendall((json.dumps(req) + "\n").encode())
        line = read_line(s)
    if not line:
        if quiet:
            return None
        die("the supervisor closed the connection without answering", 1)
    reply = json.loads(line)
    if not reply.get("ok") and not quiet:
        die(reply.get("error", "failed"), 2 if reply.get("usage") else 1)
    return reply


def print_ps(rows):
    headers = ["NAME", "STATE", "PID", "PORTS", "UP", "NOTE"]
    table = [headers] + [
        [r["name"], r["state"], str(r["pid"] or "-"), r["ports_text"] or "-",
         human(r["up_seconds"]) if r["up_seconds"] is not None else "-", r["note"] or "-"]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers) - 1)]
    for row in table:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "   " + row[-1])


def wait_for(names, want, timeout):
    """Polls `ps` until each of `names` is in a state `want` accepts."""
    start = time.monotonic()
    pending = list(names)
    failed = False
    while pending:
        rows = {r["name"]: r for r in client_request({"cmd": "ps"})["components"]}
        for n in list(pending):
            r = rows[n]
            verdict = want(r)
            if verdict is True:
                print(f"{n}: {r['state']} after {human(time.monotonic() - start)}"
                      + (f" (pid {r['pid']})" if r["pid"] else "") + (f": {r['note']}" if r["note"] else ""))
                pending.remove(n)
            elif verdict is False:
                print(f"{n}: {r['state']}: {r['note']}; its log ends with:\n{log_tail(r['log'], 10)}")
                pending.remove(n)
                failed = True
        if pending and time.monotonic() - start > timeout:
            for n in pending:
                r = rows[n]
                print(f"{n}: still {r['state']} after {timeout} s: {r['note']}")
            return False
        if pending:
            time.sleep(0.25)
    return not failed


def started(r):
    if r["state"] == "ready":
        return True
    if r["state"] == "exited":
        return False
    return None


def stopped(r):
    return True if r["state"] in ("exited", "not started") else None


def client(cmd, args):
    if cmd == "ps":
        reply = client_request({"cmd": "ps"})
        if "--json" in args:
            print(json.dumps(reply["components"], indent=2))
        else:
            print_ps(reply["components"])
            if not reply["booted"]:
                print("(still starting up)")
        return 0
    if cmd == "logs":
        if not args:
            die("usage: scripts/run-local.sh logs NAME [-f]", 2)
        path = os.path.join(run_dir(), "logs", f"{args[0]}.log")
        if not os.path.exists(path):
            die(f"no log for {args[0]!r} in {run_dir()}/logs", 2)
        os.execvp("tail", ["tail", "-n", "100", *(["-f"] if "-f" in args else []), path])
    if cmd == "primary":
        if len(args) != 1 or args[0] not in CLUSTERS:
            die(f"usage: scripts/run-local.sh primary {'|'.join(CLUSTERS)}", 2)
        # Asked of the members' REST APIs directly: it works while the
        # supervisor is busy, and says what Patroni says.
        deadline = time.monotonic() + 30
        while True:
            name = primary_of(args[0])
            if name is not None:
                print(name)
                return 0
            if time.monotonic() > deadline:
                die(f"{args[0]} has no primary now (a failover under way, or run-local runs "
                    "TANDEM_LOCAL_DATA_TIER=single)", 1)
            time.sleep(0.5)
    if cmd == "certs":
        path = certs_dir(run_dir())
        if not os.path.exists(path):
            die(f"no run-local with port offset {OFFSET} is running (no {path})", 1)
        print(path)
        return 0
    if cmd == "ca":
        path = os.path.join(run_dir(), "tls", "ca.pem")
        if not os.path.exists(path):
            die(f"no run-local with port offset {OFFSET} is running (no {path})", 1)
        print(path)
        return 0
    if cmd == "down":
        client_request({"cmd": "down"})
        deadline = time.monotonic() + 60
        while os.path.exists(sock_path()) or os.path.exists(run_dir()):
            if time.monotonic() > deadline:
                die("still stopping after 60 s", 1)
            time.sleep(0.2)
        print("stopped")
        return 0
    if cmd in ("kill", "stop", "start", "restart"):
        if not args:
            die(f"usage: scripts/run-local.sh {cmd} NAME...", 2)
        ok = True
        if cmd in ("stop", "restart"):
            for line in client_request({"cmd": "stop", "names": args})["lines"]:
                print(line)
            ok = wait_for(args, stopped, 30)
        if cmd in ("start", "restart") and ok:
            for line in client_request({"cmd": "start", "names": args})["lines"]:
                print(line)
            ok = wait_for(args, started, 90)
        if cmd == "kill":
            for line in client_request({"cmd": "kill", "names": args})["lines"]:
                print(line)
        return 0 if ok else 1
    die(f"unknown command {cmd!r}\n{__doc__}", 2)


def main(argv):
    global OFFSET, DATA_TIER
    OFFSET = env_int("TANDEM_LOCAL_PORT_OFFSET", 0)
    # Every port is its default (3001 to 18009) plus the offset.
    if not -1900 <= OFFSET <= 47000:
        die(f"TANDEM_LOCAL_PORT_OFFSET must be between -1900 and 47000 (got {OFFSET}): "
            "every port is its default (3001 to 18009) plus the offset", 2)
    DATA_TIER = os.environ.get("TANDEM_LOCAL_DATA_TIER") or "patroni"
    if DATA_TIER not in ("patroni", "single"):
        die(f"TANDEM_LOCAL_DATA_TIER must be patroni (Patroni clusters of three, the default) "
            f"or single (one plain Postgres per database); got {DATA_TIER!r}", 2)
    cmd = argv[1] if len(argv) > 1 else "up"
    if cmd in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    if cmd == "up":
        bin_dir = os.environ.get("TANDEM_LOCAL_BIN") or os.path.join(ROOT, "target", "debug")
        for var, default in (("TANDEM_ADMIN_TOKEN", "local-admin-token-change-me"),
                             ("TANDEM_NODE_TOKEN", "local-node-token-change-me"),
                             ("SHOP_ADMIN_TOKEN", "local-shop-admin-token-change-me"),
                             # Development mode: the services accept the
                             # *-change-me tokens above (they refuse them
                             # otherwise).
                             ("TANDEM_DEV", "1")):
            os.environ.setdefault(var, default)
        return Supervisor(os.path.abspath(bin_dir)).run()
    return client(cmd, argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
