"""Real next hops for the relay tests (tests/test_relay*.py), all on 127.0.0.x, all stopped by PID.

    def test_x(peers):                      # the fixture: everything started through it is stopped
        port = peers.port                   # one TCP port free on every SINK_IPS address (mx_port)
        sink = peers.smtp_sink("127.0.0.2", "-f", "RCPT")  # Postfix smtp-sink, dumping each message
        aio = peers.aio_sink("127.0.0.2", auth=True, tls="starttls", cert=(cert, key))  # aiosmtpd
        drop = peers.drop_sink("127.0.0.2", drop_after=65536, drops=1) # drops the link mid-DATA
        dns = peers.dns(mx=[...], hosts={...})                 # tests/dnsmasqfix.py, started
        mta = peers.mta(relay=relay_mx(dns, port))             # tests/mtaproc.py, started
        mta = peers.mta(relay=..., names={"pair.test": ["127.0.0.6", "127.0.0.2"]})  # NamedMTA

A sink counts as up once /proc/net/tcp shows it listening: no probe connection, so session
counters start at 0.
- SmtpSink: `smtp-sink -u nobody -c -d DIR/%M.` (bench.md §1); .dumps() the files it wrote (its own
  X-* and Received lines still on top, LF line ends: strip_sink()), .counters() its -c counter
  (sess, quit, mesg). Its dump directory is a private 0777 directory under /tmp, removed at stop
  (pytest's tmp_path is not reachable by nobody).
- AioSink: the aiosmtpd sink of bench.md §4, written into the test's directory (AIO_SINK), plus:
  AUTH user/pass (auth=True; a wrong login gets 535), STARTTLS (tls="starttls") or TLS from the
  first byte (tls="implicit"); local parts tempfail* -> 451, reject* -> 550, tempfailonce* -> 451
  on the first RCPT for that address, then accepted; data_delay=s: a slow hop that waits s seconds
  after the message before it stores it and replies (a client gone meanwhile: nothing stored, an
  "abandoned" event).  Every RCPT verdict, AUTH attempt and stored message is a JSON line in its
  log (.events()); .messages() -> [Stored(sender, rcpts, tls, auth, content)], <> as "".
- DropSink: a plain-socket SMTP server (DROP_SINK) that closes the connection after drop_after
  body bytes of the first `drops` transactions and stores the others; .messages() as above.
- NamedMTA: tinymta whose getaddrinfo knows the test's names (no DNS); [] makes a name fail.

Helpers: relay_mx(dns, port, **keys) / relay_smarthost(host, port, **keys) (retry 1 s..2 s),
send(mta, sender, rcpts, msg), message(tag, ...), message_id(raw), wait_for(pred, timeout, what),
strip_sink(dump), parse_dsn(raw), pending(mta) (a stopped MTA's spool: [(sender, [recipients not
yet done])]), proc_io(pid).
"""
import email
import email.policy
import json
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from dnsmasqfix import Dnsmasq
from mtaproc import MTA, stop_process

SINK_IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6")
USER, PASSWORD = "user", "pass"


def needs(*binaries):
    missing = [b for b in binaries if shutil.which(b) is None and not os.path.exists("/usr/sbin/" + b)]
    return pytest.mark.skipif(bool(missing), reason="not installed: %s" % " ".join(missing))


def common_port(ips=SINK_IPS):
    """A TCP port free on every address in ips (MX hosts all listen on relay.mx_port)."""
    for _ in range(100):
        s = socket.socket()
        s.bind((ips[0], 0))
        port = s.getsockname()[1]
        s.close()
        ok = True
        for ip in ips:
            t = socket.socket()
            try:
                t.bind((ip, port))
            except OSError:
                ok = False
            finally:
                t.close()
        if ok:
            return port
    raise RuntimeError("no common free port")


def wait_for(pred, timeout, what="condition", interval=0.1):
    """pred()'s first true value within timeout seconds, else AssertionError naming what
    (a string, or a function giving one: called only on failure, e.g. to show what came)."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what() if callable(what) else what))
        time.sleep(interval)


def listening(ip, port):
    """True when some socket listens on ip:port (read from /proc/net/tcp: no connection is made,
    so a sink's session counter stays at 0)."""
    want = "%08X:%04X" % (int.from_bytes(socket.inet_aton(ip), "little"), port)
    with open("/proc/net/tcp") as f:
        return any(line.split()[1] == want and line.split()[3] == "0A" for line in f.readlines()[1:])


def wait_listening(ip, port, proc, timeout=10):
    def up():
        if proc.poll() is not None:
            raise RuntimeError("exited with %s" % proc.returncode)
        return listening(ip, port)
    wait_for(up, timeout, "%s:%d to listen" % (ip, port), 0.05)


class Proc:
    """A child started by the test; stop() ends it by its own PID (SIGTERM, then SIGKILL)."""
    proc = None

    def _spawn(self, cmd, log_path):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
            self._log.close()


class SmtpSink(Proc):
    def __init__(self, workdir, ip, port, flags=()):
        self.ip, self.port = ip, port
        self.dir = tempfile.mkdtemp(prefix="relay-sink-")     # nobody must reach it
        os.chmod(self.dir, 0o777)
        self._spawn(["smtp-sink", "-u", "nobody", "-c", "-d", self.dir + "/%M."] + list(flags) +
                    ["%s:%d" % (ip, port), "64"], os.path.join(str(workdir), "smtp-sink-%s.log" % ip))
        wait_listening(ip, port, self.proc)

    def dumps(self):
        """The dump files, oldest first (complete once counters() counted their message)."""
        out = []
        for name in sorted(os.listdir(self.dir), key=lambda n: os.stat(os.path.join(self.dir, n)).st_mtime_ns):
            with open(os.path.join(self.dir, name), "rb") as f:
                out.append(f.read())
        return out

    def counters(self):
        """{"sess": n, "quit": n, "mesg": n} from the -c counter (all 0 before the first session ends)."""
        last = ""
        for rec in self.log().replace("\r", "\n").split("\n"):
            if rec.startswith("sess="):
                last = rec
        got = dict(kv.split("=") for kv in last.split()) if last else {}
        return dict((k, int(got.get(k, 0))) for k in ("sess", "quit", "mesg"))

    def stop(self):
        Proc.stop(self)
        shutil.rmtree(self.dir, ignore_errors=True)


def strip_sink(dump):
    """The message as smtp-sink received it, from its dump: without smtp-sink's own leading X-*
    fields and Received field, and back in CRLF.  smtp-sink writes each line with LF and an empty
    line after the message; for content made of CRLF lines (no bare CR or LF) that is one to one."""
    assert b"\r" not in dump and dump.endswith(b"\n\n"), dump[-100:]
    lines = dump[:-1].split(b"\n")
    i = 0
    while lines[i].startswith(b"X-"):
        i += 1
    assert lines[i].startswith(b"Received: ") and b"by smtp-sink" in b"\n".join(lines[i:i + 3]), lines[:i + 3]
    i += 1
    while lines[i][:1] in (b" ", b"\t"):
        i += 1
    return b"\r\n".join(lines[i:])


class Stored:
    def __init__(self, meta, content):
        self.sender, self.rcpts = meta["from"], meta["to"]
        self.tls, self.auth, self.content = meta["tls"], meta["auth"], content

    def __repr__(self):
        return "<Stored from <%s> to %s tls=%s auth=%s %d bytes>" % (self.sender, self.rcpts, self.tls, self.auth,
                                                                      len(self.content))


class _StoringSink(Proc):
    def _start(self, script_name, source, args, workdir, ip, port):
        self.ip, self.port = ip, port
        self.dir = os.path.join(str(workdir), "%s-%s-mail" % (script_name, ip))
        os.makedirs(self.dir)
        script = os.path.join(str(workdir), script_name + ".py")
        with open(script, "w") as f:
            f.write(source)
        self._spawn([sys.executable, "-u", script, "--listen", "%s:%d" % (ip, port), "--dir", self.dir] + args,
                    os.path.join(str(workdir), "%s-%s.log" % (script_name, ip)))
        wait_listening(ip, port, self.proc)

    def messages(self):
        out = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".eml"):
                with open(os.path.join(self.dir, name), "rb") as f:
                    meta, content = f.read().split(b"\n", 1)
                out.append(Stored(json.loads(meta.decode()), content))
        return out

    def events(self):
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]


class AioSink(_StoringSink):
    def __init__(self, workdir, ip, port, auth=False, tls=None, cert=None, data_delay=0):
        args = ["--auth"] if auth else []
        if data_delay:
            args += ["--data-delay", str(data_delay)]
        if tls:
            args += ["--tls", tls, "--tls-cert", cert[0], "--tls-key", cert[1]]
        self._start("aio_sink", AIO_SINK, args, workdir, ip, port)


class DropSink(_StoringSink):
    def __init__(self, workdir, ip, port, drop_after, drops):
        self._start("drop_sink", DROP_SINK, ["--drop-after", str(drop_after), "--drops", str(drops)],
                    workdir, ip, port)


# ---- the aiosmtpd sink (bench.md §4, with per-recipient behaviour and TLS/AUTH variants) ---------
AIO_SINK = r'''"""aiosmtpd test sink for tinymta's relay tests: loopback only, foreground, SIGTERM stops it."""
import argparse, asyncio, itertools, json, os, signal, ssl, sys, time
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def event(**kw):
    print(json.dumps(kw), flush=True)


class Handler:
    def __init__(self, directory, data_delay):
        self.dir = directory
        self.data_delay = data_delay
        self.seq = itertools.count(1)
        self.tag = "%d.%d" % (int(time.time() * 1000), os.getpid())   # unique across restarts
        self.tempfailed = set()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname          # the 5-argument hook must set this itself
        return responses[:-1] + ["250-PIPELINING"] + responses[-1:]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        reply = "250 2.1.5 OK"
        if local.startswith("tempfailonce"):
            if address.lower() not in self.tempfailed:
                self.tempfailed.add(address.lower())
                reply = "451 4.3.0 simulated temporary failure (first attempt only)"
        elif local.startswith("tempfail"):
            reply = "451 4.3.0 simulated temporary failure"
        elif local.startswith("reject"):
            reply = "550 5.1.1 simulated permanent failure"
        event(what="rcpt", sender=envelope.mail_from, rcpt=address, reply=reply)
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay:         # a slow hop: the message is stored only after the wait
            try:
                await asyncio.sleep(self.data_delay)
            except asyncio.CancelledError:      # the client went away meanwhile: nothing stored
                event(what="abandoned", sender=envelope.mail_from, to=list(envelope.rcpt_tos))
                raise
        n = next(self.seq)
        meta = {"from": "" if envelope.mail_from == "<>" else envelope.mail_from, "to": list(envelope.rcpt_tos),
                "tls": server.transport.get_extra_info("ssl_object") is not None,
                "auth": getattr(session, "user", None)}
        path = os.path.join(self.dir, "%s.%09d.eml" % (self.tag, n))
        with open(path + ".tmp", "wb") as f:
            f.write(json.dumps(meta).encode() + b"\n" + envelope.original_content)
        os.rename(path + ".tmp", path)
        event(what="stored", file=os.path.basename(path), **meta)
        return "250 2.0.0 OK queued as %d" % n


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"user" and auth_data.password == b"pass"
    event(what="auth", mechanism=mechanism, ok=ok)
    if ok:
        session.user = "user"
    return AuthResult(success=ok, handled=False)   # handled=False, or a failure gets no reply


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--auth", action="store_true")
    ap.add_argument("--tls", choices=["starttls", "implicit"])
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--data-delay", type=float, default=0.0)
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    if not host.startswith("127."):
        sys.exit("refusing to listen outside 127.0.0.0/8")
    handler = Handler(a.dir, a.data_delay)
    kw = dict(hostname="aio.sink.test", data_size_limit=10 * 1024 * 1024)
    ctx = None
    if a.tls:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
    if a.auth:
        # with implicit TLS aiosmtpd does not know the link is encrypted: let it offer AUTH anyway
        kw.update(authenticator=authenticator, auth_require_tls=(a.tls == "starttls"))
    if a.tls == "starttls":
        kw.update(tls_context=ctx, require_starttls=False)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    srv = loop.run_until_complete(loop.create_server(lambda: SMTP(handler, loop=loop, **kw), host, int(port),
                                                     ssl=ctx if a.tls == "implicit" else None, backlog=64))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    print("aio_sink listening on %s pid=%d" % (a.listen, os.getpid()), flush=True)
    try:
        loop.run_forever()
    finally:
        srv.close()


if __name__ == "__main__":
    main()
'''

# ---- a next hop that drops the connection in the middle of DATA ---------------------------------
DROP_SINK = r'''"""Plain-socket SMTP sink: drops the connection after --drop-after body bytes of the first --drops
transactions (no reply, no final dot seen), stores the others.  Loopback only; SIGTERM stops it."""
import argparse, json, os, socket, sys, threading, time

lock = threading.Lock()
state = {"drops": 0, "n": 0}


def event(**kw):
    with lock:
        print(json.dumps(kw), flush=True)


def session(conn, a):
    f = conn.makefile("rb")
    conn.sendall(b"220 drop.sink.test ESMTP\r\n")
    sender, rcpts = None, []
    while True:
        line = f.readline()
        if not line:
            return
        cmd = line.rstrip(b"\r\n")
        verb = cmd[:4].upper()
        if verb == b"EHLO":
            conn.sendall(b"250-drop.sink.test\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n")
        elif verb == b"HELO" or verb == b"NOOP":
            conn.sendall(b"250 2.0.0 ok\r\n")
        elif verb == b"RSET":
            sender, rcpts = None, []
            conn.sendall(b"250 2.0.0 ok\r\n")
        elif verb == b"MAIL":
            sender, rcpts = cmd.split(b"<", 1)[1].split(b">", 1)[0].decode(), []
            conn.sendall(b"250 2.1.0 ok\r\n")
        elif verb == b"RCPT":
            rcpts.append(cmd.split(b"<", 1)[1].split(b">", 1)[0].decode())
            conn.sendall(b"250 2.1.5 ok\r\n")
        elif verb == b"DATA":
            conn.sendall(b"354 go ahead\r\n")
            with lock:
                drop = state["drops"] < a.drops
                if drop:
                    state["drops"] += 1
            body, got = [], 0
            while True:
                line = f.readline()
                if not line:
                    event(what="eof-in-data", bytes=got)
                    return
                if line == b".\r\n":
                    break
                got += len(line)
                body.append(line[1:] if line.startswith(b".") else line)
                if drop and got >= a.drop_after:
                    event(what="dropped", bytes=got)
                    conn.close()
                    return
            with lock:
                state["n"] += 1
                n = state["n"]
            meta = {"from": sender, "to": rcpts, "tls": False, "auth": None}
            path = os.path.join(a.dir, "%d.%d.%09d.eml" % (int(time.time() * 1000), os.getpid(), n))
            with open(path + ".tmp", "wb") as out:
                out.write(json.dumps(meta).encode() + b"\n" + b"".join(body))
            os.rename(path + ".tmp", path)
            event(what="stored", bytes=got, **meta)
            conn.sendall(b"250 2.0.0 stored\r\n")
        elif verb == b"QUIT":
            conn.sendall(b"221 2.0.0 bye\r\n")
            return
        else:
            conn.sendall(b"502 5.5.2 not here\r\n")


def serve(conn, a):
    try:
        session(conn, a)
    except OSError as e:
        event(what="error", error=str(e))
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--drop-after", type=int, required=True)
    ap.add_argument("--drops", type=int, default=1)
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    if not host.startswith("127."):
        sys.exit("refusing to listen outside 127.0.0.0/8")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(16)
    print("drop_sink listening on %s pid=%d" % (a.listen, os.getpid()), flush=True)
    while True:
        conn, _ = s.accept()
        conn.settimeout(30)
        threading.Thread(target=serve, args=(conn, a), daemon=True).start()


if __name__ == "__main__":
    main()
'''


# ---- configuration and mail helpers -----------------------------------------------------------
def relay_mx(dns, port, **keys):
    cfg = {"mode": "mx", "dns_servers": ["%s:%d" % dns.server], "mx_port": port, "retry_min": 1, "retry_max": 2}
    cfg.update(keys)
    return cfg


def relay_smarthost(ip, port, **keys):
    cfg = {"mode": "smarthost", "smarthost": "%s:%d" % (ip, port), "tls": "none", "retry_min": 1, "retry_max": 2}
    cfg.update(keys)
    return cfg


def send(mta, sender, rcpts, msg):
    with smtplib.SMTP("127.0.0.1", mta.port, timeout=10) as s:
        s.ehlo("client.test")
        refused = s.sendmail(sender, rcpts, msg)
    assert not refused, refused


def message(tag, sender="alice@client.test", rcpt="bob@example.test", body=None):
    """A complete message (From, Date, Message-ID): tinymta adds only its Received field."""
    if body is None:
        body = b"Message %s.\r\n.A line starting with a dot.\r\n\r\nLast line.\r\n" % tag.encode()
    return (b"From: <%s>\r\nTo: <%s>\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
            b"Message-ID: <%s@client.test>\r\nSubject: relay test %s\r\n\r\n"
            % (sender.encode(), rcpt.encode(), tag.encode(), tag.encode())) + body


def message_id(raw):
    for line in raw.split(b"\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
        if line in (b"", b"\r"):
            break
    return None


def parse_dsn(raw):
    """A DSN read by Python's email parser: (message, [per-recipient field dicts]); asserts the
    RFC 6522 / RFC 3464 shape (multipart/report; report-type=delivery-status, part 2
    message/delivery-status)."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status", msg["Content-Type"]
    assert not msg.defects, msg.defects
    parts = msg.get_payload()
    assert parts[0].get_content_type() == "text/plain"
    assert parts[1].get_content_type() == "message/delivery-status"
    blocks = parts[1].get_payload()         # [per-message fields, per-recipient fields...]
    assert len(blocks) >= 2, blocks
    assert blocks[0]["Reporting-MTA"], blocks[0]
    return msg, [dict((k.lower(), str(v)) for k, v in b.items()) for b in blocks[1:]]


def pending(mta):
    """[(sender, [recipients still to do])] of a stopped MTA's spool, in arrival order."""
    sp = mta.spool()
    try:
        return [(m.sender, list(m.recipients)) for m in sp.messages()]
    finally:
        sp.dev.close()


def proc_io(pid):
    with open("/proc/%d/io" % pid) as f:
        return dict((k, int(v)) for k, v in (line.split(": ") for line in f.read().splitlines()))


class NamedMTA(MTA):
    """tinymta with host names of the test's own: names {"pair.test": ["127.0.0.7", "127.0.0.2"]}
    answer socket.getaddrinfo in the child (a smarthost name with two addresses, no DNS asked);
    a name given [] fails as when the system's resolver is unreachable (EAI_AGAIN)."""

    def __init__(self, tmp, names, **kw):
        MTA.__init__(self, tmp, **kw)
        self.names = names

    def command(self):
        shim = os.path.join(self.tmp, "names_shim.py")
        with open(shim, "w") as f:
            f.write("import socket\nNAMES = %r\n_gai = socket.getaddrinfo\n"
                    "def getaddrinfo(host, port, *a, **k):\n"
                    "    if host in NAMES:\n"
                    "        if not NAMES[host]:\n"
                    "            raise socket.gaierror(socket.EAI_AGAIN, 'Temporary failure in name resolution')\n"
                    "        return [ai for ip in NAMES[host] for ai in _gai(ip, port, *a, **k)]\n"
                    "    return _gai(host, port, *a, **k)\n"
                    "socket.getaddrinfo = getaddrinfo\n" % (self.names,))
        return [sys.executable, "-c", "import runpy, sys; runpy.run_path(%r); from tinymta.cli import main; "
                "sys.exit(main(['serve', '-c', %r]))" % (shim, self.config_path)]


# ---- the fixture --------------------------------------------------------------------------------
class Peers:
    def __init__(self, tmp):
        self.tmp = str(tmp)
        self.port = common_port()
        self.started = []

    def _add(self, thing):
        self.started.append(thing)
        return thing

    def smtp_sink(self, ip, *flags):
        return self._add(SmtpSink(self.tmp, ip, self.port, flags))

    def aio_sink(self, ip, **kw):
        return self._add(AioSink(self.tmp, ip, self.port, **kw))

    def drop_sink(self, ip, drop_after, drops=1):
        return self._add(DropSink(self.tmp, ip, self.port, drop_after, drops))

    def dns(self, **records):
        d = os.path.join(self.tmp, "dns%d" % len(self.started))
        os.mkdir(d)
        return self._add(Dnsmasq(d, **records)).start()

    def mta(self, start=True, names=None, **kw):
        m = self._add(NamedMTA(self.tmp, names, **kw) if names else MTA(self.tmp, **kw))
        return m.start() if start else m

    def stop_all(self):
        for thing in reversed(self.started):
            try:
                if isinstance(thing, Dnsmasq):
                    thing.close()
                else:
                    thing.stop()
            except Exception:
                pass


@pytest.fixture
def peers(tmp_path):
    p = Peers(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()
