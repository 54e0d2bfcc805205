#!/usr/bin/env python3
"""README's five-minute tour, run as printed against scripts/run-local.sh.

Starts run-local on ports nobody uses (TANDEM_LOCAL_PORT_OFFSET), takes
every command of README.md's "A five-minute tour" section from its bash
blocks, in order, and runs them in one bash session as a newcomer would
type them: only the port numbers are shifted by the offset. A command must
exit 0 (curl runs with --fail-with-body, so an HTTP error fails it too); a
few must also print what the README's comments promise (EXPECT below).
Commands that say "Ctrl-C to stop" run in the background for the rest of
the tour, as in another terminal. Then it checks what the supervisor
promises: everything the tour broke is running again, a process killed from
outside is reported and can be started again, and Ctrl-C leaves nothing
behind.

    python3 scripts/readme-tour.py        # needs the binaries built (TANDEM_LOCAL_BIN: their directory)

Run by the tandem-e2e test `tour` (so by scripts/test.sh). Exit 0: passed.
"""

import glob
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# run-local's default ports (scripts/run-local.py; checked against `ps` below):
# etcd's client and peer ports, the Patroni members' Postgres and REST ports
# (the same on each member's own 127.0.x.N), then the services'.
DEFAULT_PORTS = [12379, 12380, 12389, 12390, 12399, 12400, 15432, 18008, 15433, 18009,
                 7400, 7401, 7410, 7411, 7420, 7421, 3001, 3002, 3003,
                 8080, 8081, 8082, 8083, 8443, 8445, 7501, 7502]
# The shop database's TCP routes, which the proxies bind (no component's).
ROUTE_PORTS = [15533, 15534]

# (a piece of the README line, regexes its output must match, seconds to
# retry a read-only command while they do not). A piece that matches no
# line fails the run: the README changed and so must this list.
EXPECT = [
    # The status page answers and shows the three shop servers healthy.
    ("curl -s http://127.0.0.1:7401/ui/ | grep -o",
     [r'(?m)^data-backend="shop/127\.0\.0\.1:\d+" data-health="healthy"$',
      r'(?s)(data-health="healthy".*){3}'], 20),
    ("scripts/run-local.sh ps       # every process", [r"(?m)^agent-2\s+ready"], 10),
    ("tandemctl status              # revision;",
     [r"(?m)^proxy-1\s+proxy\s+zone-a\s", r"(?m)^proxy-2\s+proxy\s+zone-b\s",
      r"(?m)^agent-1\s+agent\s+zone-a\s", r"(?m)^agent-2\s+agent\s+zone-b\s", r"healthy"], 20),
    ("tandemctl cluster status      # the raft group",
     [r"(?m)^leader:\s+control-[123]$"] + [rf"(?m)^{i}\s+\S+\s+(leader|follower)\s+yes\s" for i in (1, 2, 3)], 10),
    ("scripts/run-local.sh kill shop-2", [r"shop-2 \(pid \d+\) killed with SIGKILL"], 0),
    ("scripts/run-local.sh ps               # shop-2",
     [r"(?m)^shop-2\s+exited\s.*killed by SIGKILL"] +
     [rf"(?m)^{n}\s+ready\s" for n in ("etcd-1", "etcd-2", "etcd-3", "control-db-1", "control-db-2",
                                        "control-db-3", "shop-db-1", "shop-db-2", "shop-db-3",
                                        "control-1", "control-2", "control-3",
                                        "shop-1", "shop-3", "proxy-1", "proxy-2", "agent-1", "agent-2")], 10),
    ("tandemctl status                      # its backend",
     [r"(?m)^shop\s+127\.0\.0\.1:\d+\s+unhealthy\s.*connect"], 15),
    ("scripts/run-local.sh start shop-2", [r"shop-2: ready after"], 0),
    ("scripts/run-local.sh kill $(tandemctl cluster status", [r"control-[123] \(pid \d+\) killed with SIGKILL"], 0),
    ("tandemctl cluster status              # seconds later",
     [r"(?m)^role:\s+leader$", r"(?m)^\d\s+\S+\s+follower\s+NO\s", r"unreachable: control-[123] \(the leader"], 15),
    ("scripts/run-local.sh start control-1 control-2 control-3   # starts whichever",
     [r"already running", r"ready after"], 0),
    ("scripts/run-local.sh restart proxy-2", [r"proxy-2: ready after .*from disk; control plane unreachable"], 0),
    ("scripts/run-local.sh kill $(scripts/run-local.sh primary control-db)",
     [r"control-db-[123] \(pid \d+\) killed with SIGKILL"], 0),
    ("tandemctl status                      # database: UNREACHABLE", [r"database:\s+UNREACHABLE"], 10),
    ("scripts/run-local.sh start control-db-1", [r"already running", r"control-db-[123]: ready after"], 0),
    ("sleep 16; tandemctl status", [r"(?m)^agent-2\s.*STALE", r"(?m)^agent-1\s+agent\s+zone-a\s(?!.*STALE)"], 0),
    # Within 2 s proxy-2 binds the shop database's TCP routes proxy-1 held.
    ("http://127.0.0.1:8082/", [r"^200 shop-[123]$"], 10),
    # The shop database's failover: browsing answers, checkout resumes.
    ("scripts/run-local.sh kill $(scripts/run-local.sh primary shop-db)",
     [r"shop-db-[123] \(pid \d+\) killed with SIGKILL"], 0),
    ("# 200: browsing goes on", [r"^200$"], 0),
    ("[ \"$code\" = 201 ] && break", [r"(?m)checkout: 201$"], 0),
    ("scripts/run-local.sh primary shop-db  # the promoted", [r"^shop-db-[123]$"], 0),
    ("scripts/run-local.sh start shop-db-1", [r"already running", r"shop-db-[123]: ready after"], 0),
    ("curl -H 'Host: api.local'", [r'"widgets"', r'"slug":"sprocket"'], 10),
    ("curl -s http://127.0.0.1:8080/api/widgets/sprocket", [r'"slug":"sprocket"'], 0),
    ("curl -s -b \"$jar\" http://127.0.0.1:8080/api/cart", [r'"item_count":2'], 0),
    ("curl -si -b \"$jar\" -H 'Idempotency-Key", [r"^HTTP/1\.1 201", r"(?im)^location: /api/orders/\S+"], 0),
    ("curl -s -b \"$jar\" http://127.0.0.1:8080$order", [r'"code":"', r'"customer_name":"Ada"', r'"sprocket"'], 0),
]

BACKGROUND_MARK = "Ctrl-C to stop"
# Commands that break something.
PAUSE_AFTER = r"run-local\.sh kill |curl -X PUT "


def log(msg):
    print(msg, flush=True)


class Failed(Exception):
    pass


# === the README ===


def tour_commands(readme):
    """The tour section's bash blocks, as commands (continuation lines
    joined, comment-only and blank lines dropped), in order."""
    start = readme.index("## A five-minute tour")
    end = readme.find("\n## ", start + 1)
    section = readme[start:end if end > 0 else None]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    if not blocks:
        raise Failed("README.md: no bash blocks in the tour section")
    commands = []
    for block in blocks:
        current = ""
        for line in block.splitlines():
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            current += line + "\n"
            if not line.endswith("\\"):
                commands.append(current.rstrip("\n"))
                current = ""
        if current:
            commands.append(current.rstrip("\n"))
    return commands


def shift_ports(command, offset):
    def move(m):
        p = int(m.group(1))
        return f":{p + offset}" if p in all_ports() else m.group(0)

    return re.sub(r":(\d{4,5})\b", move, command)


def all_ports():
    return DEFAULT_PORTS + ROUTE_PORTS


# === run-local ===


def ports_free(offset):
    for p in all_ports():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", p + offset))
            s.listen(1)
        except OSError:
            return False
        finally:
            s.close()
    return True


def pick_offset():
    # Ports 13001-32709: above every other run-local's defaults and below
    # Linux's ephemeral range (32768-60999), where any outgoing connection
    # (other tests', Docker's published ports) may take a port at any time.
    for _ in range(200):
        offset = random.randrange(10000, 14700)
        if ports_free(offset):
            return offset
    raise Failed("no port offset with all run-local ports free")


class RunLocal:
    def __init__(self, bin_dir, workdir):
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.proc = None
        self.offset = None
        self.log_path = os.path.join(workdir, "run-local.log")

    def env(self):
        return dict(os.environ, TANDEM_LOCAL_PORT_OFFSET=str(self.offset), TANDEM_LOCAL_BIN=self.bin_dir)

    def start(self):
        for attempt in range(3):
            self.offset = pick_offset()
            log(f"== run-local with TANDEM_LOCAL_PORT_OFFSET={self.offset}")
            logf = open(self.log_path, "wb")
            self.proc = subprocess.Popen(["bash", "scripts/run-local.sh", "up", "--no-build"], cwd=ROOT,
                                         env=self.env(), stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            logf.close()
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                code = self.proc.poll()
                if code == 3 and attempt < 2:
                    log("   a port was taken meanwhile: another offset")
                    break
                if code is not None:
                    raise Failed(f"run-local exited with {code} while starting:\n{self.log_tail(40)}")
                if "Tandem is running" in self.log():
                    return
                time.sleep(0.5)
            else:
                raise Failed(f"run-local not running after 180 s:\n{self.log_tail(40)}")
        raise Failed("run-local could not get its ports")

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, n):
        return "\n".join(self.log().splitlines()[-n:])

    def cmd(self, *args, check=True):
        r = subprocess.run(["bash", "scripts/run-local.sh", *args], cwd=ROOT, env=self.env(),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=150)
        if check and r.returncode != 0:
            raise Failed(f"scripts/run-local.sh {' '.join(args)} exited {r.returncode}:\n{r.stdout}")
        return r.stdout

    def ps(self):
        return json.loads(self.cmd("ps", "--json"))

    def stop(self, sig=signal.SIGINT, timeout=60):
        """Ctrl-C, as in its terminal; returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Its children die with it (PR_SET_PDEATHSIG).
            self.proc.kill()
            self.proc.wait()
            raise Failed(f"run-local did not stop within {timeout} s of {sig.name}:\n{self.log_tail(30)}")


def wait_all_ready(rl, timeout):
    deadline = time.monotonic() + timeout
    while True:
        rows = rl.ps()
        late = [f"{r['name']}: {r['state']} ({r['note']})" for r in rows if r["state"] != "ready"]
        if not late:
            return rows
        if time.monotonic() > deadline:
            raise Failed("not every component is ready again:\n  " + "\n  ".join(late))
        time.sleep(0.5)


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# === the tour in one bash session ===


class Session:
    """One bash process fed command by command, as a terminal would."""

    def __init__(self, env, outdir):
        self.outdir = outdir
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.buf = b""
        self.n = 0
        self.background = []
        # An HTTP error answer fails the command, as a non-zero exit would.
        self.send("curl() { command curl --fail-with-body \"$@\"; }\n")

    def send(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def read_until(self, marker, timeout):
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failed(f"no answer within {timeout} s")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise Failed("the bash session ended")
                self.buf += chunk
        before, _, self.buf = self.buf.partition(marker)
        line, _, self.buf = self.buf.partition(b"\n")
        return before.decode("utf-8", "replace"), line.decode()

    def run(self, command, timeout=150):
        """(exit code, output) of `command` run in this session."""
        self.n += 1
        out = os.path.join(self.outdir, f"{self.n}.out")
        marker = f"__TOUR_DONE_{self.n}__"
        self.send(f"{{\n{command}\n}} </dev/null >{out} 2>&1; echo \"{marker} $?\"\n")
        _, code = self.read_until(marker.encode(), timeout)
        with open(out, "rb") as f:
            return int(code), f.read().decode("utf-8", "replace")

    def start_background(self, command):
        self.n += 1
        out = os.path.join(self.outdir, f"{self.n}.bg")
        marker = f"__TOUR_BG_{self.n}__"
        self.send(f"(\n{command}\n) </dev/null >{out} 2>&1 &\necho \"{marker} $!\"\n")
        _, pid = self.read_until(marker.encode(), 10)
        self.background.append((command, out, int(pid)))
        return out

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def run_tour(rl, commands):
    bin_rel = os.path.relpath(rl.bin_dir, ROOT)
    outdir = os.path.join(rl.workdir, "out")
    os.makedirs(outdir)
    used = set()
    # The tour's own temporary files (the cookie jar) go with the run.
    tmp = os.path.join(rl.workdir, "tmp")
    os.makedirs(tmp)
    session = Session(dict(rl.env(), TMPDIR=tmp), outdir)
    try:
        for original in commands:
            command = shift_ports(original, rl.offset)
            if bin_rel != "target/debug":
                command = command.replace("target/debug/", bin_rel + "/")
            first = command.split()[0]
            if re.fullmatch(r"[a-z][a-z0-9_-]*", first) and first not in ("tandemctl", "curl", "scripts") \
                    and shutil.which(first) is None and first not in ("export", "while", "for", "sleep"):
                log(f"-- skipped (no {first} installed): {original}")
                continue
            if BACKGROUND_MARK in original:
                log(f"&& {original}")
                session.start_background(command)
                time.sleep(1)
                continue
            expect = [e for e in EXPECT if e[0] in original]
            used.update(e[0] for e in expect)
            patterns = [p for e in expect for p in e[1]]
            retry = max([e[2] for e in expect], default=0)
            log(f"$ {original}")
            started = time.monotonic()
            while True:
                code, output = session.run(command)
                missing = [p for p in patterns if not re.search(p, output)]
                if code == 0 and not missing:
                    break
                if time.monotonic() - started >= retry:
                    raise Failed(f"README command failed (exit {code}"
                                 + (f"; output lacks {missing}" if missing else "")
                                 + f"):\n  {original}\nas run:\n  {command}\noutput:\n{output}")
                time.sleep(1)
            shown = output.rstrip()
            if shown:
                log("  " + "\n  ".join(shown.splitlines()[-25:]))
            if re.search(PAUSE_AFTER, original):
                # A person breaking something watches the third terminal
                # for a moment before the next command.
                time.sleep(2)
        unused = [e[0] for e in EXPECT if e[0] not in used]
        if unused:
            raise Failed(f"README's tour no longer has these commands (update EXPECT): {unused}")
        return [(c, out) for c, out, _ in session.background]
    finally:
        session.close()


def check_failover_loop(background):
    loops = [out for c, out in background if c.startswith("while ")]
    if not loops:
        raise Failed("the tour has no failover loop")
    with open(loops[0]) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    bad = [line for line in lines if not re.fullmatch(r"\d{3} (shop-[123])?", line)]
    if len(lines) < 50 or bad:
        raise Failed(f"the failover loop printed {len(lines)} lines, {len(bad)} not 'STATUS SERVER': {bad[:5]}")
    for shop in ("shop-1", "shop-2", "shop-3"):
        if f"200 {shop}" not in lines:
            raise Failed(f"the failover loop never saw '200 {shop}'")
    failures = [line for line in lines if not line.startswith("200 ")]
    if not failures:
        raise Failed("the failover loop showed no failure, though proxy-1 was killed under it")
    log(f"== failover loop: {len(lines)} lines, {len(failures)} failures shown "
        f"({', '.join(sorted(set(f.split()[0] for f in failures)))}), every shop seen")


def main():
    bin_dir = os.path.abspath(os.environ.get("TANDEM_LOCAL_BIN") or os.path.join(ROOT, "target", "debug"))
    with open(os.path.join(ROOT, "README.md")) as f:
        commands = tour_commands(f.read())
    workdir = tempfile.mkdtemp(prefix="tandem-tour-")
    rl = RunLocal(bin_dir, workdir)
    started = time.monotonic()
    try:
        rl.start()
        log(f"== running ({time.monotonic() - started:.0f} s); the tour: {len(commands)} commands")
        background = run_tour(rl, commands)
        check_failover_loop(background)

        rows = wait_all_ready(rl, 90)
        # A set: every Patroni member of a cluster has the same ports.
        ports = sorted({p for r in rows for p in r["ports"]})
        if ports != sorted(p + rl.offset for p in DEFAULT_PORTS):
            raise Failed(f"run-local's ports changed: {ports}; update DEFAULT_PORTS")
        log("== everything the tour broke is ready again")

        # A process killed from outside run-local: reported, the rest runs,
        # it starts again by name.
        victim = next(r for r in rows if r["name"] == "proxy-2")
        os.kill(victim["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        said = f"proxy-2 (pid {victim['pid']}) killed by SIGKILL"
        while said not in rl.log():
            if time.monotonic() > deadline:
                raise Failed(f"run-local did not report the killed proxy-2:\n{rl.log_tail(20)}")
            time.sleep(0.2)
        states = {r["name"]: r["state"] for r in rl.ps()}
        if states.pop("proxy-2") != "exited" or set(states.values()) != {"ready"}:
            raise Failed(f"after kill -9 of proxy-2 from outside: {states}")
        rl.cmd("start", "proxy-2")
        rows = wait_all_ready(rl, 30)
        log("== a process killed from outside was reported and started again by name")

        # A graceful restart by name: a new process, ready again.
        before = next(r["pid"] for r in rows if r["name"] == "shop-1")
        said = rl.cmd("restart", "shop-1")
        after = next(r for r in rl.ps() if r["name"] == "shop-1")
        if not re.search(r"shop-1: exited .*\n(.*\n)*shop-1: ready after", said) \
                or after["state"] != "ready" or after["pid"] == before:
            raise Failed(f"restart shop-1 (was pid {before}): {after}\n{said}")

        # A second run on the same ports is refused, and leaves this one be.
        second = subprocess.run(["bash", "scripts/run-local.sh", "up", "--no-build"], cwd=ROOT, env=rl.env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=60)
        if second.returncode != 3 or "already running" not in second.stdout:
            raise Failed(f"a second run-local on the same ports: exit {second.returncode}\n{second.stdout}")
        rows = wait_all_ready(rl, 10)
        log("== restart by name works; a second run-local on the same ports is refused")

        # Ctrl-C: everything stops, nothing is left.
        pids = [r["pid"] for r in rows]
        run_dir = f"/tmp/tandem-local-{os.getuid()}-{rl.offset}"
        code = rl.stop(signal.SIGINT)
        left = [p for p in pids if alive(p)]
        if code != 130 or left or glob.glob(glob.escape(run_dir) + "*") or not ports_free(rl.offset) \
                or "stopped; nothing left running" not in rl.log():
            raise Failed(f"after Ctrl-C: exit {code}, still running {left}, run dir left: "
                         f"{os.path.exists(run_dir)}, ports free: {ports_free(rl.offset)}\n{rl.log_tail(15)}")
        log(f"== Ctrl-C stopped all {len(pids)} components and left nothing; "
            f"the whole tour took {time.monotonic() - started:.0f} s")
        return 0
    except Failed as e:
        log(f"\nFAILED: {e}\n--- run-local's output, last lines ---\n{rl.log_tail(60) if os.path.exists(rl.log_path) else ''}")
        return 1
    finally:
        try:
            rl.stop(signal.SIGINT)
        except Failed as e:
            log(str(e))
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
