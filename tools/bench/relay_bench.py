#!/usr/bin/env python3
"""Relay benchmark: end-to-end rate and idle latency, tinymta against Postfix, in one run.

Run from the repository root (Linux, as root, with the postfix package: smtp-source, smtp-sink):

    python3 tools/bench/relay_bench.py            # full run, about 40 s here (stops with an error at 170 s)
    python3 tools/bench/relay_bench.py --quick    # 200 messages, 1 trial, 10 latency samples (smoke test), ~10 s
    python3 tools/bench/relay_bench.py --rev HEAD # tinymta as committed, whatever the working tree holds

One invocation starts, on 127.0.0.81-85 (loopback only), with all storage in one temporary
directory (--dir picks its parent):

* tinymta        `python -m tinymta serve -c FILE`, relay.mode "smarthost", relay.smarthost its own
                 smtp-sink, relay.tls "none" (spool 64 MiB, sector 65536, program unit 4096,
                 max_connections 64, log level info; everything else default).  Restarted with a
                 fresh spool before every run, from a copy of the package taken once per run.
* postfix        a private Postfix (bench.md section 3, smtp_bench.py's set-up) with
                 relayhost = [its own smtp-sink], stock queue manager and smtp client settings.
* two smtp-sinks one per relay (`smtp-sink -c`, whose message counter is read incrementally).
* py-sink        a small Python SMTP sink (`relay_bench.py py-sink`) that records, on the
                 CLOCK_MONOTONIC shared by all processes, when a connection came in and when each
                 message's final dot arrived (just before its 250), for the latency part.

Smarthost routing, not MX: Postfix's relayhost = [ip]:port does no DNS either, so both relays do
the same job (one next hop, no lookups) and the figure is the relay path itself.  tinymta's MX
mode adds a blocking dnspython query per delivery, which would measure DNS, not relaying.

1. End-to-end rate.  Each trial runs `smtp-source -d -s 10 -m 1000 -l 2048` into each relay,
   alternating which goes first.  Rate = messages / (wall time from starting smtp-source, i.e. the
   first connection, until that relay's smtp-sink had counted all of them), polled every 2 ms.
   Verified per run: smtp-source exit 0, the sink got exactly N (no duplicates, re-read after the
   relay drained), and the relay's store is empty afterwards (tinymta: `spool dump --json` after a
   SIGTERM stop shows 0 live messages; Postfix: no queue files).
2. Latency.  With both relays idle, a Python client sends single messages (same 2 KiB body)
   one at a time, alternating relays; each sample is the time from the client's send of the
   body + final dot until py-sink read that message's final dot (the next hop's 250 follows
   at once).  It is split into accept (until the client got the relay's 250), queue (until the
   relay connected to py-sink) and the outbound SMTP dialogue.  Postfix routes these messages
   (domain latency.test) to py-sink through a transport map; tinymta is restarted with py-sink
   as its smarthost.

Everything started is stopped by PID.  The last line of output is one JSON object.

This script holds the relay measurements (py-sink, the counted sinks, the relay wrappers, the
end-to-end and latency parts and their report); it takes Postfix, smtp-sink and tinymta from
smtp_bench.py and the machine, process, teardown and median helpers from benchlib.py, and must
not know how those servers are configured beyond the relay settings it passes them.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import benchlib as bl           # noqa: E402  (process, machine and result helpers)
import smtp_bench as sb          # noqa: E402  (the servers)

SCRIPT = os.path.abspath(__file__)
ADDR = {"tinymta": ("127.0.0.81", 2525), "sink-tinymta": ("127.0.0.82", 2525),
        "postfix": ("127.0.0.83", 2525), "sink-postfix": ("127.0.0.84", 2525), "py-sink": ("127.0.0.85", 2525)}
SENDER, RCPT, HELO = sb.SENDER, sb.RCPT, sb.HELO
LAT_SENDER, LAT_RCPT = "lat@client.test", "lat@latency.test"
DEADLINE_S = 170
BenchError = bl.BenchError


# --- py-sink: a minimal ESMTP sink that timestamps every final dot --------------------------------

def py_sink_main(argv):
    import socketserver

    ap = argparse.ArgumentParser(prog="relay_bench.py py-sink")
    ap.add_argument("--listen", required=True)
    a = ap.parse_args(argv)
    host, port = a.listen.rsplit(":", 1)
    if not host.startswith("127."):
        sys.exit("refusing to listen outside 127.0.0.0/8")
    lock = threading.Lock()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            t_conn = time.monotonic_ns()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            w = self.connection.sendall
            rf = self.rfile
            w(b"220 py-sink.bench.test ESMTP\r\n")
            n = 0
            while True:
                line = rf.readline(65536)
                if not line:
                    return
                cmd = line[:4].upper()
                if cmd == b"EHLO":
                    w(b"250-py-sink.bench.test\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n250-8BITMIME\r\n"
                      b"250 ENHANCEDSTATUSCODES\r\n")
                elif cmd == b"HELO":
                    w(b"250 py-sink.bench.test\r\n")
                elif cmd in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    w(b"250 2.0.0 Ok\r\n")
                elif cmd == b"DATA":
                    w(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    token, size = None, 0
                    while True:
                        body = rf.readline(65536)
                        if not body:
                            return
                        if body == b".\r\n":
                            break
                        size += len(body)
                        if token is None and body.startswith(b"X-Relay-Bench: "):
                            token = body[15:].strip().decode("ascii", "replace")
                    t_dot = time.monotonic_ns()
                    n += 1
                    w(b"250 2.0.0 Ok: queued\r\n")
                    with lock:
                        sys.stdout.write("MSG %s %d %d %d %d\n" % (token or "-", t_conn, t_dot, size, n))
                        sys.stdout.flush()
                elif cmd == b"QUIT":
                    w(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    w(b"502 5.5.2 Error: command not recognized\r\n")

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 128

    srv = Server((host, int(port)), Handler)

    def _stop(signum, frame):
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    print("py-sink listening on %s pid=%d" % (a.listen, os.getpid()), flush=True)
    srv.serve_forever(poll_interval=0.2)
    srv.server_close()
    return 0


class PySink:
    """py-sink as a child process; a reader thread collects its MSG records by token."""

    def __init__(self, work):
        self.addr = ADDR["py-sink"]
        self.work = work
        self.proc = None
        self.records = {}
        self.cond = threading.Condition()

    def start(self):
        self.err = open(os.path.join(self.work, "py-sink.err"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-u", SCRIPT, "py-sink", "--listen", "%s:%d" % self.addr],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.err,
                                     start_new_session=True)
        if bl.read_line(self.proc, b"py-sink listening", 20) is None:
            self.stop()
            raise BenchError("py-sink did not start; see %s" % self.err.name)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            f = line.split()
            if len(f) == 6 and f[0] == b"MSG":
                rec = {"t_conn": int(f[2]), "t_dot": int(f[3]), "size": int(f[4]), "nth_on_conn": int(f[5])}
                with self.cond:
                    self.records[f[1].decode()] = rec
                    self.cond.notify_all()

    def wait(self, token, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while token not in self.records:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.records[token]

    def stop(self):
        if self.proc is not None:
            bl.stop_pid(self.proc.pid, self.proc)
            self.proc.stdout.close()
            self.proc = None
            self.err.close()


# --- the counted smtp-sink, the relays ----------------------------------------------------------

class CountingSink(sb.SmtpSink):
    """smtp-sink -c whose `mesg=` counter is read incrementally (cheap enough to poll every 2 ms)."""

    def __init__(self, work, name):
        super().__init__(work, ADDR[name], name + ".out")
        self.name = name
        self._pos, self._rest, self._last = 0, b"", 0
        self.sessions = 0       # `sess=` of the latest record read: connections the relay made


    def count(self):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._pos)
                data = f.read()
        except OSError:
            return self._last
        self._pos += len(data)
        recs = (self._rest + data).replace(b"\r", b"\n").split(b"\n")
        self._rest = recs.pop()            # may be a record still being written
        for rec in reversed(recs):
            i, j = rec.find(b"mesg="), rec.find(b"sess=")
            if i >= 0:
                try:
                    self._last = int(rec[i + 5:].split()[0])
                    if j >= 0:
                        self.sessions = int(rec[j + 5:].split()[0])
                    break
                except (ValueError, IndexError):
                    pass
        return self._last


class TinyRelay(sb.TinyMTA):
    """tinymta in smarthost mode; restarted with a fresh spool before every run."""

    def __init__(self, work, spool_size, src, sink_addr):
        super().__init__(work, spool_size, 65536, src, addr=ADDR["tinymta"],
                         relay={"mode": "smarthost", "smarthost": "%s:%d" % sink_addr, "tls": "none"})

    def set_smarthost(self, addr):
        self.cfg["relay"]["smarthost"] = "%s:%d" % addr
        self.write_cfg()

    def log_size(self):
        try:
            return os.path.getsize(os.path.join(self.dir, "tinymta.log"))
        except OSError:
            return 0

    def log_since(self, offset):
        try:
            with open(os.path.join(self.dir, "tinymta.log"), "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def cpu_s(self):
        return bl.proc_cpu_s(self.pid) if self.pid else None

    def drained(self, n, log_offset):
        """(sent, deferred) log lines of this run: tinymta logs status=sent per delivered recipient."""
        text = self.log_since(log_offset)
        return text.count("status=sent"), text.count("status=deferred") + text.count("status=bounced")

    def verify(self, n, log_offset, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sent, _ = self.drained(n, log_offset)
            if sent >= n:
                break
            time.sleep(0.02)
        time.sleep(0.2)         # the ack (and its sync) follows the QUIT after the last 250
        sent, bad = self.drained(n, log_offset)
        stored, detail = self.collect(n)        # SIGTERM stop, then spool dump --json
        detail.update({"log_sent": sent, "log_deferred_or_bounced": bad})
        return detail["messages"] == 0 and not detail["damage"] and sent == n and bad == 0, detail


class PostfixRelay(sb.Postfix):
    def __init__(self, work, sink, lat_addr):
        super().__init__(work, "postfix", relay=True, sink=sink, addr=ADDR["postfix"],
                         extra_cf="transport_maps = texthash:%s\n" % os.path.join(work, "postfix", "etc", "transport"))
        self.lat_addr = lat_addr

    def start(self):
        os.makedirs(self.etc, exist_ok=True)
        with open(os.path.join(self.etc, "transport"), "w") as f:
            f.write("latency.test   smtp:[%s]:%d\n" % self.lat_addr)
        super().start()

    def prepare(self):
        for p in sb.queue_files(self.spool):
            os.unlink(p)

    def cpu_s(self):
        """utime+stime+cutime+cstime over master and its children (approximate: helpers come and go)."""
        if not self.pid:
            return None
        tot = 0.0
        for p in bl.process_tree(self.pid):
            try:
                with open("/proc/%d/stat" % p) as f:
                    fl = f.read().rsplit(")", 1)[1].split()
                tot += sum(int(x) for x in fl[11:15]) / os.sysconf("SC_CLK_TCK")
            except (OSError, ValueError, IndexError):
                pass
        return tot

    def verify(self, n, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and sb.queue_files(self.spool):
            time.sleep(0.02)
        left = len(sb.queue_files(self.spool))
        return left == 0, {"queued_after": left}


def cpu_busy():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])
    return total - v[3] - v[4], total


# --- 1. end-to-end rate ---------------------------------------------------------------------------

def e2e_run(relay, sink, args, t_deadline):
    relay.prepare()             # tinymta: fresh start, fresh spool; Postfix: empty queue
    os.sync()
    time.sleep(0.1)
    n = args.messages
    c0, s0 = sink.count(), sink.sessions
    log_off = relay.log_size() if isinstance(relay, TinyRelay) else None
    cpu0, busy0 = relay.cpu_s(), cpu_busy()
    cmd = ["smtp-source", "-d", "-s", str(args.sessions), "-m", str(n), "-l", str(args.size), "-f", SENDER,
           "-t", RCPT, "-M", HELO, relay.target]
    limit = min(90.0, max(5.0, t_deadline - time.monotonic() - 10))
    out = open(os.path.join(relay.work, "smtp-source.out"), "w+b")
    t0 = time.monotonic()
    src = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    t_src = t_end = None
    got = got_at_src = 0
    while True:
        now = time.monotonic()
        if t_src is None and src.poll() is not None:
            t_src = now
            got_at_src = sink.count() - c0
            if src.returncode != 0:
                break
        if t_end is None:
            got = sink.count() - c0
            if got >= n:
                t_end = now
        if t_end is not None and t_src is not None:
            break
        if now - t0 > limit:
            break
        time.sleep(0.002)
    busy1, cpu1 = cpu_busy(), relay.cpu_s()
    if src.poll() is None:
        src.kill()
        src.wait(5)
    out.seek(0)
    src_err = out.read().decode("utf-8", "replace").strip()[-300:]
    out.close()
    # untimed: let the relay finish (acks, queue removal), then check the sink saw exactly n
    wait = max(1.0, min(15.0, t_deadline - time.monotonic() - 3))
    if isinstance(relay, TinyRelay):
        ok_store, detail = relay.verify(n, log_off, wait)
    else:
        ok_store, detail = relay.verify(n, wait)
    time.sleep(0.1)
    delivered = sink.count() - c0
    conns = sink.sessions - s0
    row = {"relay": relay.name, "messages": n, "smtp_source_rc": src.returncode,
           "accept_s": round(t_src - t0, 4) if t_src else None,
           "e2e_s": round(t_end - t0, 4) if t_end else None,
           "drain_tail_s": round(t_end - t_src, 4) if t_end and t_src else None,
           "delivered": delivered, "delivered_when_accept_ended": got_at_src, "next_hop_connections": conns,
           "msgs_per_connection": round(delivered / conns, 2) if conns > 0 else None,
           "store_empty": ok_store, "detail": detail}
    row["accept_msgs_per_s"] = round(n / row["accept_s"], 1) if row["accept_s"] else None
    row["e2e_msgs_per_s"] = round(n / row["e2e_s"], 1) if row["e2e_s"] else None
    # the relay's own pace: while smtp-source was still sending, and in the tail (nothing else to do)
    row["relay_msgs_per_s_during_accept"] = round(got_at_src / row["accept_s"], 1) if row["accept_s"] else None
    row["relay_msgs_per_s_tail"] = round((n - got_at_src) / row["drain_tail_s"], 1) \
        if row["drain_tail_s"] and n > got_at_src else None
    row["verified"] = src.returncode == 0 and t_end is not None and delivered == n and ok_store
    if cpu0 is not None and cpu1 is not None and t_end:
        row["relay_cpu_ms_per_msg"] = round(1000.0 * (cpu1 - cpu0) / n, 3)
    if busy1[1] > busy0[1]:
        row["machine_busy"] = round((busy1[0] - busy0[0]) / (busy1[1] - busy0[1]), 3)
    if src.returncode != 0:
        row["smtp_source_error"] = src_err
    return row


# --- 2. idle latency ------------------------------------------------------------------------------

class LatClient:
    """One SMTP session to a relay; single messages, no pipelining, TCP_NODELAY."""

    def __init__(self, addr, timeout=10):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.expect(220)
        self.cmd(b"EHLO " + HELO.encode(), 250)

    def reply(self):
        while True:
            i = self.buf.find(b"\r\n")
            while i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                if line[3:4] != b"-":
                    return int(line[:3]), line
                i = self.buf.find(b"\r\n")
            data = self.sock.recv(65536)
            if not data:
                raise BenchError("latency client: connection closed")
            self.buf += data

    def expect(self, code):
        got, line = self.reply()
        if got != code:
            raise BenchError("latency client: expected %d, got %r" % (code, line[:200]))

    def cmd(self, line, code):
        self.sock.sendall(line + b"\r\n")
        self.expect(code)

    def send(self, token, body):
        self.cmd(b"MAIL FROM:<%s>" % LAT_SENDER.encode(), 250)
        self.cmd(b"RCPT TO:<%s>" % LAT_RCPT.encode(), 250)
        self.cmd(b"DATA", 354)
        msg = (b"From: <%s>\r\nTo: <%s>\r\nSubject: relay latency %s\r\nDate: %s\r\nMessage-ID: <%s@client.test>\r\n"
               b"X-Relay-Bench: %s\r\n\r\n" % (LAT_SENDER.encode(), LAT_RCPT.encode(), token.encode(),
                                                time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()).encode(),
                                                token.encode(), token.encode())) + body + b".\r\n"
        t0 = time.monotonic_ns()
        self.sock.sendall(msg)
        code, line = self.reply()
        t_acc = time.monotonic_ns()
        if code != 250:
            raise BenchError("latency client: message refused: %r" % line[:200])
        return t0, t_acc

    def close(self):
        try:
            self.sock.sendall(b"QUIT\r\n")
            self.reply()
        except (OSError, BenchError):
            pass
        self.sock.close()


def body_bytes(size):
    """About `size` bytes of body in 78-character lines, like smtp-source -l."""
    line = b"x" * 76 + b"\r\n"
    return line * (size // len(line)) + b"y" * max(0, size % len(line) - 2) + b"\r\n"


def latency_phase(relays, pysink, args, t_start):
    body = body_bytes(args.size)
    clients = {}
    samples = {r.name: [] for r in relays}
    try:
        for r in relays:
            clients[r.name] = LatClient(r.addr)
        for i in range(args.latency_samples + 1):       # sample 0 of each relay is a warm-up
            order = relays if i % 2 == 0 else list(reversed(relays))
            for r in order:
                if time.monotonic() - t_start > DEADLINE_S - 5:
                    raise BenchError("time budget (%d s) exhausted in the latency part" % DEADLINE_S)
                token = "%s-%d-%d" % (r.name, os.getpid(), i)
                t0, t_acc = clients[r.name].send(token, body)
                rec = pysink.wait(token, max(1.0, min(10.0, t_start + DEADLINE_S - time.monotonic())))
                if rec is None:
                    raise BenchError("latency: %s never delivered message %s to py-sink" % (r.name, token))
                if i > 0:
                    samples[r.name].append({"total_ms": (rec["t_dot"] - t0) / 1e6, "accept_ms": (t_acc - t0) / 1e6,
                                            "queue_ms": (rec["t_conn"] - t_acc) / 1e6,
                                            "dialogue_ms": (rec["t_dot"] - rec["t_conn"]) / 1e6,
                                            "nth_on_conn": rec["nth_on_conn"], "size": rec["size"]})
                time.sleep(args.latency_gap)       # idle: the relay finishes (QUIT, ack/removal)
    finally:
        for c in clients.values():
            c.close()
    out = {}
    for name, ss in samples.items():
        tot = sorted(s["total_ms"] for s in ss)
        out[name] = {"n": len(ss), "total_ms_median": round(statistics.median(tot), 3),
                     "total_ms_p90": round(tot[min(len(tot) - 1, int(0.9 * len(tot)))], 3),
                     "total_ms_min": round(tot[0], 3), "total_ms_max": round(tot[-1], 3),
                     "reused_connections": sum(1 for s in ss if s["nth_on_conn"] > 1)}
        for part in ("accept_ms", "queue_ms", "dialogue_ms"):
            out[name][part + "_median"] = round(statistics.median(s[part] for s in ss), 3)
        out[name]["samples_total_ms"] = [round(s["total_ms"], 3) for s in ss]
    return out


# --- main -----------------------------------------------------------------------------------------

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["py-sink"]:
        return py_sink_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 messages, 1 trial, 10 latency samples (smoke test)")
    ap.add_argument("--messages", type=int, default=None, help="messages per run (default 1000, quick 200)")
    ap.add_argument("--size", type=int, default=2048, help="body bytes per message, smtp-source -l (default 2048)")
    ap.add_argument("--sessions", type=int, default=10, help="concurrent sessions, smtp-source -s (default 10)")
    ap.add_argument("--trials", type=int, default=None, help="end-to-end trials per relay (default 5, quick 1)")
    ap.add_argument("--latency-samples", type=int, default=None, help="idle latency samples per relay "
                    "(default 50, quick 10)")
    ap.add_argument("--latency-gap", type=float, default=0.1, help="idle seconds after each latency sample")
    ap.add_argument("--spool-size", default="64M", help="tinymta spool.size (default 64M)")
    ap.add_argument("--dir", default=None, help="parent of the temporary work directory (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, queues)")
    ap.add_argument("--rev", default=None, help="measure tinymta as committed at this git revision")
    args = ap.parse_args(argv)
    args.messages = args.messages or (200 if args.quick else 1000)
    args.trials = args.trials or (1 if args.quick else 5)
    args.latency_samples = args.latency_samples or (10 if args.quick else 50)
    sb.SIZE_FLOOR[0] = args.size

    cmd = "python3 tools/bench/relay_bench.py" + "".join(" " + a for a in argv)
    print("reproduce (from the repository root): %s" % cmd, flush=True)
    missing = bl.missing_tools(("smtp-source", "smtp-sink", "postfix", "postconf"))
    if missing:
        print("missing: %s (apt-get install postfix; see /work/shared/reference/bench.md)" % ", ".join(missing))
        return 2
    if os.geteuid() != 0:
        print("needs root (Postfix's master and smtp-sink -u nobody)")
        return 2
    busy = bl.busy_addresses(ADDR.values())
    if busy:
        print("addresses in use: %s" % ", ".join(busy))
        return 2
    parent = os.path.realpath(args.dir or tempfile.gettempdir())
    closed = bl.closed_dirs(parent)
    if closed:
        print("Postfix's daemons cannot reach a queue under %s (%s not searchable by others); pick another --dir"
              % (parent, ", ".join(closed)))
        return 2

    t_start = time.monotonic()
    work = tempfile.mkdtemp(prefix="tinymta-relaybench-", dir=args.dir)
    os.chmod(work, 0o755)
    mnt, fstype, fsdev, opts = bl.mount_of(work)
    head, dirty = bl.git_state()
    machine = dict(bl.machine_base(), cpu=bl.cpu_model(), fs_type=fstype, fs_device=fsdev, fs_mount=mnt, dir=work,
                   git_head=head, git_dirty=dirty)
    bl.print_machine(machine)
    src = os.path.join(work, "src")
    err = bl.take_snapshot(machine, src, args.rev)
    if err:
        print(err)
        shutil.rmtree(work, ignore_errors=True)
        return 2
    if args.rev:
        print("tinymta from git archive %s (%s); package sha256 %s" % (args.rev, machine["git_rev"],
                                                                       machine["tinymta_sha256"][:16]))
    else:
        print("tinymta at %s%s; the package is copied once (sha256 %s)" % (
            head, " + uncommitted changes to " + ", ".join(dirty) if dirty else "", machine["tinymta_sha256"][:16]))
    # deliveries in flight: relay.max_deliveries's default in that tree (MAX_ACTIVE in older ones)
    with open(os.path.join(src, "tinymta", "config.py")) as f:
        machine["relay_max_active"] = next((l.split(",")[2].strip() for l in f
                                            if '("relay", "max_deliveries",' in l), None)
    if machine["relay_max_active"] is None:
        with open(os.path.join(src, "tinymta", "relay.py")) as f:
            machine["relay_max_active"] = next((l.split("=")[1].split("#")[0].strip() for l in f
                                                if l.startswith("MAX_ACTIVE")), None)
    machine["loadavg_start"] = os.getloadavg()[0]
    print("work dir %s on %s (%s); load average (1 min) before the run: %.2f" % (
        work, fsdev, fstype, machine["loadavg_start"]))
    print("load: smtp-source -d -s %d -m %d -l %d into each relay, %d trial(s), alternating the order; "
          "tinymta relay.max_deliveries = %s" % (args.sessions, args.messages, args.size, args.trials,
                                             machine["relay_max_active"]), flush=True)

    sink_t = CountingSink(work, "sink-tinymta")
    sink_p = CountingSink(work, "sink-postfix")
    pysink = PySink(work)
    pfx = PostfixRelay(work, sink_p, ADDR["py-sink"])
    tiny = TinyRelay(work, args.spool_size, src, sink_t.addr)
    relays = [tiny, pfx]
    sinks = {"tinymta": sink_t, "postfix": sink_p}
    started, rows, failed, latency = [], [], None, {}
    result = {"bench": "relay", "command": cmd, "quick": args.quick, "machine": machine,
              "params": {"messages": args.messages, "size": args.size, "sessions": args.sessions,
                         "trials": args.trials, "latency_samples": args.latency_samples,
                         "latency_gap_s": args.latency_gap, "routing": "smarthost",
                         "addresses": {k: "%s:%d" % v for k, v in ADDR.items()}}}
    old_term = signal.signal(signal.SIGTERM, bl.interrupt)
    try:
        for s in (sink_t, sink_p, pysink, pfx):
            s.start()
            started.append(s)
        started.append(tiny)
        machine["postfix"] = pfx.version
        print("versions: postfix %s; started in %.1f s; warm-up (untimed, %d messages per relay)" % (
            pfx.version, time.monotonic() - t_start, min(200, args.messages)), flush=True)
        warm = argparse.Namespace(**vars(args))
        warm.messages = min(200, args.messages)
        for r in relays:
            w = e2e_run(r, sinks[r.name], warm, t_start + DEADLINE_S)
            if not w["verified"]:
                raise BenchError("warm-up against %s failed: %s" % (r.name, json.dumps(w)[:800]))
        print("%-8s %5s %8s %9s %9s %9s %9s %10s %7s %6s" % ("relay", "trial", "e2e s", "e2e msg/s", "accept/s",
                                                             "tail s", "CPU ms/m", "delivered", "msg/conn", "busy"),
              flush=True)
        for t in range(args.trials):
            for r in (relays if t % 2 == 0 else list(reversed(relays))):
                left = DEADLINE_S - (time.monotonic() - t_start)
                if left < 15:
                    raise BenchError("time budget (%d s) exhausted before %s trial %d" % (DEADLINE_S, r.name, t + 1))
                row = e2e_run(r, sinks[r.name], args, t_start + DEADLINE_S)
                row["trial"] = t + 1
                rows.append(row)
                print("%-8s %5d %8s %9s %9s %9s %9s %10d %7s %6s%s" % (
                    r.name, t + 1, row["e2e_s"], row["e2e_msgs_per_s"], row["accept_msgs_per_s"],
                    row["drain_tail_s"], row.get("relay_cpu_ms_per_msg"), row["delivered"],
                    row["msgs_per_connection"], row.get("machine_busy"),
                    "" if row["verified"] else "  NOT VERIFIED %s" % json.dumps(row)[:500]),
                    flush=True)
        # latency: tinymta now relays to py-sink; Postfix routes latency.test there by its transport map
        tiny.set_smarthost(ADDR["py-sink"])
        tiny.prepare()
        time.sleep(0.3)
        latency = latency_phase(relays, pysink, args, t_start)
    except BenchError as e:
        failed = str(e)
    except KeyboardInterrupt:
        failed = "interrupted"
    finally:
        leftovers = bl.teardown(started, started, old_term, work, args.keep)

    summary = {}
    for r in relays:
        rr = [x for x in rows if x["relay"] == r.name]
        e2e = [x["e2e_msgs_per_s"] for x in rr if x["e2e_msgs_per_s"]]
        summary[r.name] = {"trials": len(rr), "e2e_msgs_per_s_median": bl.med(e2e),
                           "e2e_msgs_per_s_min": min(e2e) if e2e else None,
                           "e2e_msgs_per_s_max": max(e2e) if e2e else None,
                           "accept_msgs_per_s_median": bl.med([x["accept_msgs_per_s"] for x in rr]),
                           "drain_tail_s_median": bl.med([x["drain_tail_s"] for x in rr]),
                           "relay_msgs_per_s_during_accept_median": bl.med([x["relay_msgs_per_s_during_accept"]
                                                                         for x in rr]),
                           "relay_msgs_per_s_tail_median": bl.med([x["relay_msgs_per_s_tail"] for x in rr]),
                           "relay_cpu_ms_per_msg_median": bl.med([x.get("relay_cpu_ms_per_msg") for x in rr]),
                           "machine_busy_median": bl.med([x.get("machine_busy") for x in rr]),
                           "msgs_per_connection_median": bl.med([x["msgs_per_connection"] for x in rr]),
                           "verified_runs": sum(1 for x in rr if x["verified"])}
    a, b = summary["tinymta"]["e2e_msgs_per_s_median"], summary["postfix"]["e2e_msgs_per_s_median"]
    per_trial = []
    for t in range(1, args.trials + 1):
        x = [r["e2e_msgs_per_s"] for r in rows if r["trial"] == t and r["relay"] == "tinymta"]
        y = [r["e2e_msgs_per_s"] for r in rows if r["trial"] == t and r["relay"] == "postfix"]
        if x and y and x[0] and y[0]:
            per_trial.append(round(x[0] / y[0], 3))
    ratio = {"of_medians": round(a / b, 3) if a and b else None, "per_trial": per_trial}
    lat_ratio = None
    if latency.get("tinymta") and latency.get("postfix"):
        lat_ratio = round(latency["tinymta"]["total_ms_median"] / latency["postfix"]["total_ms_median"], 3)
    aims = {"e2e_at_least_postfix": None if ratio["of_medians"] is None else ratio["of_medians"] >= 1.0}
    verified = bool(rows) and all(r["verified"] for r in rows) and failed is None and len(latency) == 2 \
        and len(rows) == 2 * args.trials
    machine["loadavg_end"] = os.getloadavg()[0]
    result.update({"runs": rows, "summary": summary, "ratio": ratio, "latency": latency,
                   "latency_ratio_tinymta_over_postfix": lat_ratio, "aims": aims, "verified": verified,
                   "error": failed, "leftover_processes": leftovers,
                   "seconds": round(time.monotonic() - t_start, 1)})

    print()
    print("end-to-end relay rate: %d messages / (start of smtp-source .. the relay's smtp-sink counted all); "
          "median [min-max] of %d trial(s)" % (args.messages, args.trials))
    print("%-8s %9s %15s %10s %8s %9s %6s %9s %9s  %s" % ("relay", "e2e msg/s", "[min-max]", "accept/s",
                                                           "tail s", "CPU ms/m", "busy", "msg/conn", "verified",
                                                           "tinymta/x (per trial)"))
    for r in relays:
        s = summary[r.name]
        if not s["trials"] or s["e2e_msgs_per_s_median"] is None:
            print("%-8s no complete run" % r.name)
            continue
        print("%-8s %9.0f %15s %10.0f %8.3f %9s %6s %9s %9s  %s" % (
            r.name, s["e2e_msgs_per_s_median"], "[%.0f-%.0f]" % (s["e2e_msgs_per_s_min"], s["e2e_msgs_per_s_max"]),
            s["accept_msgs_per_s_median"] or 0, s["drain_tail_s_median"] or 0,
            "n/a" if s["relay_cpu_ms_per_msg_median"] is None else "%.3f" % s["relay_cpu_ms_per_msg_median"],
            "n/a" if s["machine_busy_median"] is None else "%.0f%%" % (100 * s["machine_busy_median"]),
            s["msgs_per_connection_median"], "%d/%d" % (s["verified_runs"], s["trials"]),
            "-" if r.name == "tinymta" else ("%.2fx (%s)" % (ratio["of_medians"], ",".join("%.2f" % v for v in
                                                                                          per_trial))
                                             if ratio["of_medians"] else "-")))
    print("  accept/s: N / wall time of smtp-source; tail s: from smtp-source's exit until the sink had all N")
    for r in relays:
        s = summary[r.name]
        if s["relay_msgs_per_s_during_accept_median"] is not None:
            print("  %s relayed %s msg/s while smtp-source was sending and %s msg/s in the tail (medians)" % (
                r.name, "%.0f" % s["relay_msgs_per_s_during_accept_median"],
                "n/a" if s["relay_msgs_per_s_tail_median"] is None else "%.0f" % s["relay_msgs_per_s_tail_median"]))
    print("  CPU ms/m: the relay's CPU per message, accept and relay together (Postfix: all its processes, "
          "approximate);\n  busy: both cores, whole machine; msg/conn: messages per connection to the next hop")
    if latency:
        print()
        print("idle latency, ms: client's send of body + final dot -> next hop read the final dot "
              "(%d samples each, one at a time, %.2f s apart)" % (args.latency_samples, args.latency_gap))
        print("%-8s %8s %8s %8s %8s %10s %9s %11s %7s" % ("relay", "median", "p90", "min", "max", "accept 250",
                                                           "queue", "dialogue", "reused"))
        for r in relays:
            m = latency.get(r.name)
            if m:
                print("%-8s %8.2f %8.2f %8.2f %8.2f %10.2f %9.2f %11.2f %7d" % (
                    r.name, m["total_ms_median"], m["total_ms_p90"], m["total_ms_min"], m["total_ms_max"],
                    m["accept_ms_median"], m["queue_ms_median"], m["dialogue_ms_median"], m["reused_connections"]))
        print("  accept 250: until the client had the relay's 250; queue: from then until the relay connected "
              "to the next hop;\n  dialogue: connect to final dot at the next hop (medians of each part)")
    print()
    print("aim: tinymta end-to-end >= postfix: %s" % bl.verdict(aims["e2e_at_least_postfix"]))
    return bl.finish(result, verified, "smtp-source exit 0, sink got exactly %d, relay store empty" % args.messages,
                     failed, leftovers, machine["loadavg_end"], result["seconds"])


if __name__ == "__main__":
    sys.exit(main())
