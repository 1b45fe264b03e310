#!/usr/bin/env python3
"""SMTP accept-rate benchmark: tinymta against a private Postfix and an fsyncing aiosmtpd, in one run.

Run from the repository root (Linux, as root, with the postfix package and aiosmtpd installed):

    python3 tools/bench/smtp_bench.py            # full run, 65-90 s here (stops with an error at 170 s)
    python3 tools/bench/smtp_bench.py --quick    # 200 messages, 1 trial, ~13 s (the smoke test uses it)
    python3 tools/bench/smtp_bench.py --rev HEAD # tinymta as committed, whatever the working tree holds

One invocation starts every server itself, on 127.0.0.x loopback addresses only, with all of
their storage in one temporary directory (--dir picks its parent), so every server writes to
the same filesystem:

* postfix        Postfix (the Debian package's binaries) with a private main.cf/master.cf and
                 queue.  Every message is put on hold (`check_client_access static:HOLD`):
                 cleanup writes and fsyncs the queue file as always, finishes it in hold/ and
                 does not wake the queue manager.  This is Postfix's durable accept path alone
                 (smtpd -> cleanup -> fsync), with nothing delivered, like the other servers.
* postfix+relay  a second private Postfix, with its queue manager running, relaying everything
                 to smtp-sink while it accepts (bench.md's recipe; accept figures include the
                 concurrent relay).
* aiosmtpd       aiosmtpd with a handler that writes each message to its own file and fsyncs
                 it before the 250 (bench.md's aio_sink.py, run by this script: `aio-sink`).
* tinymta        `python -m tinymta serve -c FILE` (spool 64 MiB, sector 65536, program unit 4096,
                 max_message_size 1M, max_connections 64 since the default 8 would refuse two of
                 the 10 sessions, log level info), restarted with a fresh spool before every run
                 (it has no delivery yet, so a restart is the only way to empty its spool).  It
                 runs from a copy of the tinymta package taken once at the start of the run.

For each mode (persistent sessions `smtp-source -d`, then one connection per message), each
trial runs the same smtp-source command against every server, rotating which server goes first.
Before every timed run the target's store is emptied and os.sync() is called.  A run's rate is
messages / wall time of smtp-source.  After every run the script checks that the server really
stored all the messages (tinymta: `python -m tinymta spool dump --json` after a SIGTERM stop;
aiosmtpd: files in its directory; postfix: queue files; postfix+relay: queue files plus
smtp-sink's message counter).  It also records block-device flushes per message, tinymta's CPU
time, and tinymta's VmRSS when idle, sampled under load, and its VmHWM peak.

Everything started is stopped by PID.  The last line of output is one JSON object.

This script holds the servers (Postfix, smtp-sink, the aiosmtpd sink, tinymta), one timed run and
the accept-rate report; relay_bench.py reuses the servers.  The machine, process, teardown and
median helpers are benchlib.py's; this script must not grow its own copies of them.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import (BenchError, BlockStat, busy_addresses, closed_dirs, cpu_model, finish, git_state, interrupt,
                      machine_base, med, missing_tools, mount_of, print_machine, proc_cpu_s, proc_status,
                      process_tree, pss_kib, read_line, reset_hwm, stop_pid, take_snapshot, teardown, verdict,
                      wait_port, zombie)

SCRIPT = os.path.abspath(__file__)
KiB, MiB = 1024, 1024 * 1024

# loopback addresses (127.0.0.0/8 needs no set-up); one per server
ADDR = {"postfix": ("127.0.0.71", 2525), "postfix+relay": ("127.0.0.72", 2525), "smtp-sink": ("127.0.0.73", 2525),
        "aiosmtpd": ("127.0.0.74", 2525), "tinymta": ("127.0.0.75", 2525)}
SERVERS = ("postfix", "postfix+relay", "aiosmtpd", "tinymta")
MODES = (("persistent", ["-d"]), ("conn/msg", []))
SENDER, RCPT, HELO = "bench@client.test", "rcpt@example.test", "client.test"
DEADLINE_S = 170          # the whole run stays under 3 minutes, or stops with an error
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


# --- the aiosmtpd sink (bench.md section 4, fsync per message in the event loop) --------------

def aio_sink_main(argv):
    import asyncio
    import itertools
    import aiosmtpd
    from aiosmtpd.smtp import SMTP

    ap = argparse.ArgumentParser(prog="smtp_bench.py aio-sink")
    ap.add_argument("--listen", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--no-fsync", action="store_true")
    a = ap.parse_args(argv)
    host, port = a.listen.rsplit(":", 1)
    if not host.startswith("127."):
        sys.exit("refusing to listen outside 127.0.0.0/8")

    class FileHandler:
        def __init__(self):
            self.seq = itertools.count(1)
            self.start = int(time.time())
            self.accepted = 0

        async def handle_EHLO(self, server, session, envelope, hostname, responses):
            session.host_name = hostname
            return responses[:-1] + ["250-PIPELINING"] + responses[-1:]

        async def handle_DATA(self, server, session, envelope):
            n = next(self.seq)
            path = os.path.join(a.dir, "%d.%d.%09d.eml" % (self.start, os.getpid(), n))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                hdr = "X-Env-From: <%s>\r\nX-Env-To: %s\r\n" % (
                    envelope.mail_from, ", ".join("<%s>" % r for r in envelope.rcpt_tos))
                os.write(fd, hdr.encode() + envelope.original_content)
                if not a.no_fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            self.accepted += 1
            return "250 2.0.0 OK queued as %d" % n

    handler = FileHandler()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    srv = loop.run_until_complete(loop.create_server(
        lambda: SMTP(handler, hostname="aio.bench.test", data_size_limit=50 * MiB, loop=loop),
        host, int(port), backlog=256))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    print("aio_sink listening on %s pid=%d aiosmtpd=%s fsync=%s" % (a.listen, os.getpid(), aiosmtpd.__version__,
                                                                    not a.no_fsync), flush=True)
    try:
        loop.run_forever()
    finally:
        srv.close()
        print("aio_sink stopping, accepted=%d" % handler.accepted, flush=True)
    return 0


# --- small helpers --------------------------------------------------------------------------

def queue_files(root, dirs=("maildrop", "incoming", "active", "deferred", "hold")):
    out = []
    for d in dirs:
        for base, _, files in os.walk(os.path.join(root, d)):
            out.extend(os.path.join(base, f) for f in files)
    return out


def bare_python_rss_kib():
    """VmRSS of an idle `python -c` with nothing imported: the interpreter's own share of tinymta's RSS."""
    p = subprocess.Popen([sys.executable, "-c", "import sys, time; print('up', flush=True); time.sleep(30)"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        if read_line(p, b"up", 10) is None:
            return None
        time.sleep(0.2)
        return proc_status(p.pid).get("VmRSS")
    finally:
        stop_pid(p.pid, p)
        p.stdout.close()


# --- the servers ------------------------------------------------------------------------------

class Server:
    name = "?"
    pid = None          # the process whose memory is sampled (tinymta, aiosmtpd), or the master

    def __init__(self, work, addr=None):
        self.work = work
        self.addr = addr or ADDR[self.name]
        self.target = "%s:%d" % self.addr

    def prepare(self):
        """Empty the store before a timed run."""

    def collect(self, n):
        """After a run: (messages stored by this run, details); empties nothing."""
        raise NotImplementedError

    def memory_kib(self):
        st = proc_status(self.pid) if self.pid else {}
        return st.get("VmRSS")


POSTFIX_MASTER_CF = """\
{ip}:{port} inet  n    -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

POSTFIX_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory  = {dir}/data
meta_directory  = /etc/postfix
command_directory = /usr/sbin
daemon_directory  = /usr/lib/postfix/sbin
shlib_directory   = /usr/lib/postfix
mail_owner   = postfix
setgid_group = postdrop
myhostname = {host}
mydomain   = bench.test
myorigin   = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery disabled
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols  = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [{sink_ip}]:{sink_port}
maillog_file = /dev/stdout
biff = no
smtputf8_enable = no
{extra}"""


class Postfix(Server):
    """A private Postfix: `postfix -c DIR start-fg`, stopped by SIGTERM to its master's PID."""

    def __init__(self, work, name, relay, sink=None, addr=None, extra_cf=""):
        self.name = name
        super().__init__(work, addr)
        self.relay, self.sink = relay, sink
        self.extra_cf = extra_cf    # more main.cf lines (relay_bench.py: a transport map)
        self.dir = os.path.join(work, name.replace("+", "-"))
        self.etc = os.path.join(self.dir, "etc")
        self.spool = os.path.join(self.dir, "spool")
        self.proc = None
        self.log = None
        self.version = None

    def start(self):
        for d in (self.etc, self.spool, os.path.join(self.dir, "data")):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.dir, 0o755)
        shutil.chown(os.path.join(self.dir, "data"), "postfix", "postfix")
        os.chmod(os.path.join(self.dir, "data"), 0o700)
        ip, port = self.addr
        sink_ip, sink_port = self.sink.addr if self.sink is not None else ADDR["smtp-sink"]
        # accept-only: every message is put on hold (cleanup finishes it in hold/ and does not
        # wake the queue manager), so nothing is delivered and the mail stays on disk
        extra = "" if self.relay else "smtpd_client_restrictions = check_client_access static:HOLD\n"
        extra += self.extra_cf
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(POSTFIX_MAIN_CF.format(dir=self.dir, host=self.name.replace("+", "-") + ".bench.test", ip=ip,
                                           sink_ip=sink_ip, sink_port=sink_port, extra=extra))
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(POSTFIX_MASTER_CF.format(ip=ip, port=port))
        r = subprocess.run(["postfix", "-c", self.etc, "check"], capture_output=True, text=True, timeout=60)
        if r.returncode:
            raise BenchError("postfix check (%s) failed (Postfix logs the reason to syslog): %s"
                             % (self.name, (r.stdout + r.stderr).strip()[-500:]))
        self.version = subprocess.run(["postconf", "-c", self.etc, "-h", "mail_version"], capture_output=True,
                                      text=True, timeout=30).stdout.strip() or None
        self.log = open(os.path.join(self.dir, "postfix.out"), "wb")
        self.proc = subprocess.Popen(["postfix", "-c", self.etc, "start-fg"], cwd=self.dir, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        pidfile = os.path.join(self.spool, "pid", "master.pid")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.pid is None:
            if self.proc.poll() is not None:
                break
            try:
                with open(pidfile) as f:
                    pid = int(f.read().split()[0])
                if os.path.exists("/proc/%d" % pid):
                    self.pid = pid
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        if self.pid is None or not wait_port(self.addr, 20, self.proc):
            raise BenchError("%s did not start; log %s" % (self.name, self.log.name))

    def prepare(self):
        for p in queue_files(self.spool):
            os.unlink(p)

    def collect(self, n):
        if self.relay:
            # wait (untimed) until the relay drained: smtp-sink got them all and the queue is empty
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                got = self.sink.count() - self.sink_before
                if got >= n and not queue_files(self.spool):
                    break
                time.sleep(0.05)
            queued = len(queue_files(self.spool))
            relayed = self.sink.count() - self.sink_before
            return queued + relayed, {"queued": queued, "relayed": relayed}
        files = queue_files(self.spool)
        small = sum(1 for p in files if os.path.getsize(p) < SIZE_FLOOR[0])
        return len(files) - small, {"queued": len(files), "too_small": small}

    def before_run(self):
        if self.relay:
            self.sink_before = self.sink.count()

    def memory_kib(self):
        """PSS summed over the master and all its children (shared pages counted once)."""
        if not self.pid:
            return None
        procs = process_tree(self.pid)
        return sum(pss_kib(p) for p in procs)

    def stop(self):
        if self.proc is None:
            return
        tree = process_tree(self.pid) if self.pid else []
        stop_pid(self.pid)
        stop_pid(self.proc.pid, self.proc)
        for p in tree:          # any child the master left behind
            if os.path.exists("/proc/%d" % p) and not zombie(p):
                stop_pid(p)
        self.proc = None
        self.log.close()


class SmtpSink:
    """smtp-sink as the relay target of postfix+relay; counts messages (-c)."""

    def __init__(self, work, addr=None, log_name="smtp-sink.out"):
        self.addr = addr or ADDR["smtp-sink"]
        self.log_path = os.path.join(work, log_name)
        self.proc = None

    def start(self):
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["smtp-sink", "-u", "nobody", "-c", "%s:%d" % self.addr, "256"],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if not wait_port(self.addr, 10, self.proc):
            raise BenchError("smtp-sink did not start; log %s" % self.log_path)

    def count(self):
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except OSError:
            return 0
        last = 0
        for rec in data.replace(b"\r", b"\n").split(b"\n"):
            i = rec.find(b"mesg=")
            if i >= 0:
                try:
                    last = int(rec[i + 5:].split()[0])
                except (ValueError, IndexError):
                    pass
        return last

    def stop(self):
        if self.proc is not None:
            stop_pid(self.proc.pid, self.proc)
            self.proc = None
            self.log.close()


class AioSink(Server):
    name = "aiosmtpd"

    def __init__(self, work, python):
        super().__init__(work)
        self.python = python
        self.dir = os.path.join(work, "aio-mail")
        self.proc = None
        self.version = None

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        self.err = open(os.path.join(self.work, "aio.err"), "wb")
        self.proc = subprocess.Popen([self.python, "-u", SCRIPT, "aio-sink", "--listen", self.target,
                                      "--dir", self.dir], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.err, start_new_session=True)
        line = read_line(self.proc, b"aio_sink listening", 30)
        if line is None:
            self.stop()
            with open(self.err.name, "rb") as f:
                raise BenchError("aiosmtpd sink did not start: %s" % f.read().decode("utf-8", "replace")[-500:])
        self.pid = self.proc.pid
        self.version = line.split("aiosmtpd=")[1].split()[0]

    def prepare(self):
        for f in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, f))

    def collect(self, n):
        files = os.listdir(self.dir)
        small = sum(1 for f in files if os.path.getsize(os.path.join(self.dir, f)) < SIZE_FLOOR[0])
        return len(files) - small, {"files": len(files), "too_small": small}

    def stop(self):
        if self.proc is not None:
            stop_pid(self.proc.pid, self.proc)
            self.proc.stdout.close()
            self.proc = None
            self.err.close()


SIZE_FLOOR = [0]     # the smallest stored size that counts as a whole message (the body size)


class TinyMTA(Server):
    """`python -m tinymta serve -c FILE`, restarted with a fresh spool before every timed run."""
    name = "tinymta"

    def __init__(self, work, spool_size, sector, src, addr=None, relay=None):
        super().__init__(work, addr)
        self.src = src          # the directory holding the tinymta package snapshot
        self.dir = os.path.join(work, "tinymta")
        os.makedirs(self.dir, exist_ok=True)
        self.spool_path = os.path.join(self.dir, "tinymta.spool")
        self.cfg_path = os.path.join(self.dir, "tinymta.json")
        self.cfg = {
            "server": {"listen": [self.target], "hostname": "tinymta.bench.test", "max_connections": 64,
                       "max_message_size": "1M"},
            "spool": {"path": self.spool_path, "size": spool_size, "sector_size": sector, "prog_unit": 4096},
            "console": {"socket": ""},
            "relay": relay or {"mode": "none"},     # accept rate only (like Postfix on hold); never DNS
            "log": {"level": "info"},
        }
        self.write_cfg()
        self.proc = None
        self.idle = []          # VmRSS right after READY, one per start
        self.start_hwm = []     # VmHWM then: the peak of start-up (creating and mounting the spool)
        self.starts = 0
        self.start_s = []
        self.stop_rcs = []

    def write_cfg(self):
        """(Re)write the config file from self.cfg; the next start reads it."""
        with open(self.cfg_path, "w") as f:
            json.dump(self.cfg, f, indent=1)

    def env(self):
        return dict(os.environ, PYTHONPATH=self.src)

    def start(self):
        if os.path.exists(self.spool_path):
            os.unlink(self.spool_path)
        self.err = open(os.path.join(self.dir, "tinymta.log"), "ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "tinymta", "serve", "-c", self.cfg_path], cwd=self.dir,
                                     env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.err, start_new_session=True)
        if read_line(self.proc, b"READY", 60) is None:
            self.stop()
            with open(os.path.join(self.dir, "tinymta.log"), "rb") as f:
                raise BenchError("tinymta did not start: %s" % f.read().decode("utf-8", "replace")[-800:])
        self.start_s.append(time.monotonic() - t0)
        self.pid = self.proc.pid
        self.starts += 1
        time.sleep(0.2)
        st = proc_status(self.pid)
        self.idle.append(st.get("VmRSS"))
        self.start_hwm.append(st.get("VmHWM"))

    def prepare(self):
        self.stop()
        self.start()

    def collect(self, n):
        st = proc_status(self.pid)
        self.after = {"rss_after_kib": st.get("VmRSS"), "hwm_kib": st.get("VmHWM")}
        rc = self.stop()
        r = subprocess.run([sys.executable, "-m", "tinymta", "spool", "dump", "--json", self.spool_path], cwd=self.dir,
                           env=self.env(), capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise BenchError("tinymta spool dump failed: %s" % r.stderr.strip()[-500:])
        d = json.loads(r.stdout)
        ok = [m for m in d["queue"] if m["sender"] == SENDER and m["size"] >= SIZE_FLOOR[0]
              and [x["address"] for x in m["recipients"]] == [RCPT]]
        return len(ok), {"messages": d["messages"], "used_bytes": d["used"], "capacity": d["capacity"],
                         "stop_rc": rc, "damage": d["damage"], **self.after}

    def stop(self):
        if self.proc is None:
            return None
        stop_pid(self.proc.pid, self.proc)
        rc = self.proc.returncode
        self.stop_rcs.append(rc)
        self.proc.stdout.close()
        self.proc = None
        self.pid = None
        self.err.close()
        return rc


# --- one timed run ------------------------------------------------------------------------------

class Sampler(threading.Thread):
    """Samples a server's memory every `every` s (the first sample at once) while smtp-source runs."""

    def __init__(self, server, every):
        super().__init__(daemon=True)
        self.server, self.every = server, every
        self.samples = []
        self.halt = threading.Event()

    def run(self):
        while True:
            v = self.server.memory_kib()
            if v:
                self.samples.append(v)
            if self.halt.wait(self.every):
                break


def run_smtp_source(target, flags, n, size, sessions, timeout):
    cmd = ["smtp-source"] + flags + ["-s", str(sessions), "-m", str(n), "-l", str(size), "-f", SENDER, "-t", RCPT,
                                     "-M", HELO, target]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        rc, err = r.returncode, (r.stdout + r.stderr).strip()
    except subprocess.TimeoutExpired:
        rc, err = None, "timed out after %.0f s" % timeout
    return time.perf_counter() - t0, rc, err, cmd


def timed_run(srv, mode, flags, args, blk, remaining):
    srv.prepare()
    os.sync()
    time.sleep(0.1)
    if hasattr(srv, "before_run"):
        srv.before_run()
    if isinstance(srv, TinyMTA):
        reset_hwm(srv.pid)          # VmHWM then holds the peak of this run, not of start-up
    cpu0 = proc_cpu_s(srv.pid) if isinstance(srv, TinyMTA) else None
    fl0 = blk.flushes()
    sampler = Sampler(srv, 0.05 if isinstance(srv, TinyMTA) else 0.2)
    sampler.start()
    wall, rc, err, cmd = run_smtp_source(srv.target, flags, args.messages, args.size, args.sessions,
                                         min(60.0, max(5.0, remaining)))
    sampler.halt.set()
    sampler.join()
    fl1 = blk.flushes()
    cpu1 = proc_cpu_s(srv.pid) if isinstance(srv, TinyMTA) else None
    stored, detail = srv.collect(args.messages)
    row = {"server": srv.name, "mode": mode, "messages": args.messages, "wall_s": round(wall, 4),
           "msgs_per_s": round(args.messages / wall, 1), "smtp_source_rc": rc, "stored": stored,
           "verified": rc == 0 and stored == args.messages,
           "flushes_per_msg": round((fl1 - fl0) / args.messages, 3) if fl0 is not None and fl1 is not None else None,
           "mem_samples_kib": sampler.samples, "detail": detail}
    if cpu0 is not None and cpu1 is not None:
        row["cpu_s"] = round(cpu1 - cpu0, 3)
        row["cpu_share"] = round((cpu1 - cpu0) / wall, 3)
    if rc != 0:
        row["smtp_source_error"] = err[-300:]
    return row


# --- report -------------------------------------------------------------------------------------

def fmt_kib(v):
    return "n/a" if v is None else "%.1f MiB" % (v / 1024.0)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["aio-sink"]:
        return aio_sink_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 messages, 1 trial per mode (smoke test)")
    ap.add_argument("--messages", type=int, default=None, help="messages per run (default 2000, quick 200)")
    ap.add_argument("--size", type=int, default=2048, help="body bytes per message, smtp-source -l (default 2048)")
    ap.add_argument("--sessions", type=int, default=10, help="concurrent sessions, smtp-source -s (default 10)")
    ap.add_argument("--trials", type=int, default=None, help="trials per mode and server (default 3, quick 1)")
    ap.add_argument("--spool-size", default="64M", help="tinymta spool.size (default 64M)")
    ap.add_argument("--dir", default=None, help="parent of the temporary work directory (default: system temp)")
    ap.add_argument("--aio-python", default=None, help="python with aiosmtpd (default: this one, or "
                    "/tmp/venv-bench/bin/python)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, queues)")
    ap.add_argument("--rev", default=None, help="measure tinymta as committed at this git revision (git archive; "
                    "default: the working tree as it is when the run starts)")
    args = ap.parse_args(argv)
    args.messages = args.messages or (200 if args.quick else 2000)
    args.trials = args.trials or (1 if args.quick else 3)
    SIZE_FLOOR[0] = args.size

    cmd = "python3 tools/bench/smtp_bench.py" + "".join(" " + a for a in argv)
    print("reproduce (from the repository root): %s" % cmd, flush=True)

    # --- what is needed ---
    missing = missing_tools(("smtp-source", "smtp-sink", "postfix", "postconf"))
    if missing:
        print("missing: %s (apt-get install postfix; see /work/shared/reference/bench.md)" % ", ".join(missing))
        return 2
    aio_py = args.aio_python
    if aio_py is None:
        for cand in (sys.executable, "/tmp/venv-bench/bin/python"):
            if os.path.exists(cand) and \
                    subprocess.run([cand, "-c", "import aiosmtpd"], capture_output=True).returncode == 0:
                aio_py = cand
                break
    if aio_py is None:
        print("missing: aiosmtpd (pip install aiosmtpd)")
        return 2
    if os.geteuid() != 0:
        print("needs root (Postfix's master and smtp-sink -u nobody)")
        return 2
    busy = busy_addresses(ADDR.values())
    if busy:
        print("addresses in use: %s" % ", ".join(busy))
        return 2

    parent = os.path.realpath(args.dir or tempfile.gettempdir())
    closed = closed_dirs(parent)
    if closed:
        print("Postfix's daemons (user postfix) cannot reach a queue under %s: %s not searchable by others; "
              "pick another --dir" % (parent, ", ".join(closed)))
        return 2

    t_start = time.monotonic()
    work = tempfile.mkdtemp(prefix="tinymta-smtpbench-", dir=args.dir)
    os.chmod(work, 0o755)       # Postfix's daemons run as postfix and must reach their queue
    mnt, fstype, fsdev, opts = mount_of(work)
    blk = BlockStat(work)
    head, dirty = git_state()
    machine = dict(machine_base(), cpu=cpu_model(), fs_type=fstype, fs_device=fsdev, fs_mount=mnt, fs_options=opts,
                   dir=work, block_device=blk.name, git_head=head, git_dirty=dirty)
    print_machine(machine)
    src = os.path.join(work, "src")
    err = take_snapshot(machine, src, args.rev)
    if err:
        print(err)
        shutil.rmtree(work, ignore_errors=True)
        return 2
    if args.rev:
        print("tinymta from git archive %s (%s), not the working tree; package sha256 %s"
              % (args.rev, machine["git_rev"], machine["tinymta_sha256"][:16]))
    else:
        print("tinymta at %s%s; the package is copied once (sha256 %s), so every start runs the same code" % (
            head, " + uncommitted changes to " + ", ".join(dirty) if dirty else "", machine["tinymta_sha256"][:16]))
    print("work dir %s on %s (%s, mounted at %s); flush counter: %s" % (
        work, fsdev, fstype, mnt, blk.path if blk.name else "unavailable"))
    machine["loadavg_start"] = os.getloadavg()[0]
    print("load average (1 min) before the run: %.2f (other work on the machine skews every figure)"
          % machine["loadavg_start"])
    print("load: smtp-source -s %d -m %d -l %d, %d trial(s) per mode and server, rotating the order"
          % (args.sessions, args.messages, args.size, args.trials), flush=True)

    sink = SmtpSink(work)
    pfx = Postfix(work, "postfix", relay=False)
    pfx_relay = Postfix(work, "postfix+relay", relay=True, sink=sink)
    aio = AioSink(work, aio_py)
    tiny = TinyMTA(work, args.spool_size, 65536, src)
    servers = [pfx, pfx_relay, aio, tiny]
    started = []
    rows, failed = [], None
    result = {"bench": "smtp", "command": cmd, "quick": args.quick, "machine": machine,
              "params": {"messages": args.messages, "size": args.size, "sessions": args.sessions,
                         "trials": args.trials, "tinymta_spool_size": args.spool_size,
                         "addresses": {k: "%s:%d" % v for k, v in ADDR.items()}}}
    old_term = signal.signal(signal.SIGTERM, interrupt)     # a SIGTERM still stops every server
    try:
        for s in (sink, pfx, pfx_relay, aio):
            s.start()
            started.append(s)
        started.append(tiny)        # started (with a fresh spool) before every run
        machine["postfix"], machine["aiosmtpd"] = pfx.version, aio.version
        machine["bare_python_rss_kib"] = bare_python_rss_kib()
        print("versions: postfix %s, aiosmtpd %s (%s)" % (pfx.version, aio.version, aio_py))
        print("started in %.1f s; warm-up (untimed, %d messages per server and mode)" % (
            time.monotonic() - t_start, min(200, args.messages)), flush=True)
        warm = argparse.Namespace(**vars(args))
        warm.messages = min(200, args.messages)
        for mode, flags in MODES:
            for s in servers:
                r = timed_run(s, mode, flags, warm, blk, DEADLINE_S - (time.monotonic() - t_start))
                if not r["verified"]:
                    raise BenchError("warm-up against %s (%s) failed: %s" % (s.name, mode, json.dumps(r)[:800]))
        print("%-10s %-14s %5s %8s %8s %7s %9s" % ("mode", "server", "trial", "wall s", "msg/s", "stored",
                                                   "flush/msg"), flush=True)
        for mode, flags in MODES:
            for t in range(args.trials):
                order = servers[t % len(servers):] + servers[:t % len(servers)]
                for s in order:
                    left = DEADLINE_S - (time.monotonic() - t_start)
                    if left < 10:
                        raise BenchError("time budget (%d s) exhausted before %s %s trial %d"
                                         % (DEADLINE_S, s.name, mode, t + 1))
                    r = timed_run(s, mode, flags, args, blk, left)
                    r["trial"] = t + 1
                    rows.append(r)
                    print("%-10s %-14s %5d %8.3f %8.0f %7d %9s%s" % (
                        mode, s.name, t + 1, r["wall_s"], r["msgs_per_s"], r["stored"],
                        "n/a" if r["flushes_per_msg"] is None else "%.2f" % r["flushes_per_msg"],
                        "" if r["verified"] else "  NOT VERIFIED rc=%s %s" % (r["smtp_source_rc"],
                                                                              r.get("smtp_source_error", ""))),
                          flush=True)
    except BenchError as e:
        failed = str(e)
    except KeyboardInterrupt:
        failed = "interrupted"
    finally:
        leftovers = teardown(started, servers + [sink], old_term, work, args.keep, unnamed="smtp-sink")

    # --- summary ---
    summary, ratios = {}, {}
    for mode, _ in MODES:
        summary[mode] = {}
        for s in servers:
            rs = [r["msgs_per_s"] for r in rows if r["mode"] == mode and r["server"] == s.name]
            fl = [r["flushes_per_msg"] for r in rows if r["mode"] == mode and r["server"] == s.name
                  and r["flushes_per_msg"] is not None]
            summary[mode][s.name] = {"msgs_per_s_median": med(rs), "msgs_per_s_min": min(rs) if rs else None,
                                     "msgs_per_s_max": max(rs) if rs else None, "trials": len(rs),
                                     "flushes_per_msg_median": med(fl)}
        ratios[mode] = {}
        for other in ("postfix", "postfix+relay", "aiosmtpd"):
            a, b = summary[mode]["tinymta"]["msgs_per_s_median"], summary[mode][other]["msgs_per_s_median"]
            per_trial = []
            for t in range(1, args.trials + 1):
                this = [r for r in rows if r["mode"] == mode and r["trial"] == t]
                x = [r["msgs_per_s"] for r in this if r["server"] == "tinymta"]
                y = [r["msgs_per_s"] for r in this if r["server"] == other]
                if x and y:
                    per_trial.append(round(x[0] / y[0], 3))
            ratios[mode]["tinymta/" + other] = {"of_medians": round(a / b, 3) if a and b else None,
                                                "per_trial": per_trial}
    machine["loadavg_end"] = os.getloadavg()[0]
    tiny_rows = [r for r in rows if r["server"] == "tinymta"]
    load_samples = [v for r in tiny_rows for v in r["mem_samples_kib"]]
    rss = {"idle_kib_median": med([v for v in tiny.idle if v]), "idle_kib_all": tiny.idle,
           "load_kib_median": med(load_samples), "load_kib_max_sampled": max(load_samples) if load_samples else None,
           "peak_hwm_kib": max((r["detail"].get("hwm_kib") or 0 for r in tiny_rows), default=None),
           "after_load_kib_median": med([r["detail"].get("rss_after_kib") for r in tiny_rows
                                         if r["detail"].get("rss_after_kib")]),
           "startup_hwm_kib_max": max([v for v in tiny.start_hwm if v] or [0]) or None,
           "page_kib": PAGE_KIB}
    for mode, _ in MODES:
        rr = [r for r in tiny_rows if r["mode"] == mode]
        rss[mode] = {"hwm_kib_max": max((r["detail"].get("hwm_kib") or 0 for r in rr), default=None),
                     "load_kib_median": med([v for r in rr for v in r["mem_samples_kib"]]),
                     "cpu_share_median": med([r["cpu_share"] for r in rr if "cpu_share" in r]),
                     "cpu_ms_per_msg_median": med([1000.0 * r["cpu_s"] / r["messages"] for r in rr if "cpu_s" in r])}
    others_mem = {}
    for name, label in (("aiosmtpd", "VmRSS"), ("postfix", "PSS of all processes"),
                        ("postfix+relay", "PSS of all processes")):
        samp = [v for r in rows if r["server"] == name for v in r["mem_samples_kib"]]
        others_mem[name] = {"what": label, "load_kib_median": med(samp), "load_kib_max": max(samp) if samp else None}
    verified = bool(rows) and all(r["verified"] for r in rows) and failed is None
    aims = {}
    for mode, _ in MODES:
        x = ratios[mode]["tinymta/postfix"]["of_medians"]
        y = ratios[mode]["tinymta/postfix+relay"]["of_medians"]
        aims[mode] = {"at_least_postfix_accept_only": None if x is None else x >= 1.0,
                      "at_least_postfix_with_relay": None if y is None else y >= 1.0}
    for r in rows:   # keep the JSON line short: samples are summarised above
        n = len(r["mem_samples_kib"])
        r["mem_samples_kib"] = {"n": n, "median": med(r["mem_samples_kib"]),
                                "max": max(r["mem_samples_kib"]) if n else None}
    result.update({"runs": rows, "summary": summary, "ratios": ratios, "tinymta_rss": rss,
                   "other_memory": others_mem, "tinymta_starts": tiny.starts,
                   "tinymta_stop_rcs": sorted(set(tiny.stop_rcs), key=str), "aims": aims, "verified": verified,
                   "error": failed, "leftover_processes": leftovers,
                   "seconds": round(time.monotonic() - t_start, 1)})

    print()
    print("accept rate, messages/s = %d / wall time of smtp-source; median [min-max] of %d trial(s)"
          % (args.messages, args.trials))
    print("%-22s %-14s %8s %15s %9s %12s %16s %13s" % ("mode", "server", "msg/s", "[min-max]", "flush/msg",
                                                      "tinymta/x", "per-trial ratios", "stored ok"))
    for mode, _ in MODES:
        label = "%s (-s %d)" % ("persistent -d" if mode == "persistent" else "conn/msg", args.sessions)
        for name in ("tinymta", "postfix", "postfix+relay", "aiosmtpd"):
            sm = summary[mode][name]
            if not sm["trials"]:
                continue
            rt = ratios[mode].get("tinymta/" + name)
            ok = sum(1 for r in rows if r["mode"] == mode and r["server"] == name and r["verified"])
            print("%-22s %-14s %8.0f %15s %9s %12s %16s %13s" % (
                label, name, sm["msgs_per_s_median"], "[%.0f-%.0f]" % (sm["msgs_per_s_min"], sm["msgs_per_s_max"]),
                "n/a" if sm["flushes_per_msg_median"] is None else "%.2f" % sm["flushes_per_msg_median"],
                "%.2fx" % rt["of_medians"] if rt and rt["of_medians"] else "-",
                ",".join("%.2f" % v for v in rt["per_trial"]) if rt else "",
                "%d/%d" % (ok, sm["trials"])))
            label = ""
    print()
    print("tinymta memory: idle VmRSS %s (median of %d starts); under load VmRSS %s median of %d samples "
          "(max %s); peak VmHWM %s; after a run (%d messages queued) %s"
          % (fmt_kib(rss["idle_kib_median"]), len(tiny.idle), fmt_kib(rss["load_kib_median"]), len(load_samples),
             fmt_kib(rss["load_kib_max_sampled"]), fmt_kib(rss["peak_hwm_kib"]), args.messages,
             fmt_kib(rss["after_load_kib_median"])))
    print("  (VmHWM is reset through /proc/PID/clear_refs before each run; start-up alone peaked at %s)"
          % fmt_kib(rss["startup_hwm_kib_max"]))
    for mode, _ in MODES:
        m = rss[mode]
        if m["cpu_share_median"] is not None:
            print("tinymta %-10s CPU %.0f%% of one core during the run, %.3f ms CPU per message, peak VmHWM %s"
                  % (mode, 100 * m["cpu_share_median"], m["cpu_ms_per_msg_median"], fmt_kib(m["hwm_kib_max"])))
    for mode, _ in MODES:
        f = summary[mode]["tinymta"]["flushes_per_msg_median"]
        if f:
            print("tinymta %-10s group commit: %.2f device flushes per message, i.e. about %.1f messages per "
                  "fdatasync" % (mode, f, 1.0 / f))
    print("bare CPython %s, idle (python -c, nothing imported): VmRSS %s" % (
        machine["python"], fmt_kib(machine.get("bare_python_rss_kib"))))
    print("context, under load: aiosmtpd VmRSS %s median; postfix PSS (all processes) %s median, "
          "postfix+relay %s" % (fmt_kib(others_mem["aiosmtpd"]["load_kib_median"]),
                                 fmt_kib(others_mem["postfix"]["load_kib_median"]),
                                 fmt_kib(others_mem["postfix+relay"]["load_kib_median"])))
    print("aims: tinymta >= postfix (accept only): %s | tinymta >= postfix+relay: %s" % (
        " ".join("%s %s" % (m, verdict(aims[m]["at_least_postfix_accept_only"]))
                 for m, _ in MODES),
        " ".join("%s %s" % (m, verdict(aims[m]["at_least_postfix_with_relay"]))
                 for m, _ in MODES)))
    return finish(result, verified, "smtp-source exit 0 and %d messages stored" % args.messages, failed, leftovers,
                  machine["loadavg_end"], result["seconds"])


if __name__ == "__main__":
    sys.exit(main())
