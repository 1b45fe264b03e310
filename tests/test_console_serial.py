"""The serial console end to end: a real `tinymta serve` with console.serial on one end of a
socat pty pair, and on the other end a person (picocom in a private tmux server, driven with
send-keys, read with capture-pane), pyserial, or the host client `tinymta console PORT`.

Each change made through the console is checked twice: in the console's own answer and
independently, over the control socket (`tinymta mailq --json -c CONFIG`, or ctl.Control)
or in the spool after the MTA stopped.  Mail goes in over SMTP (smtplib) and stays queued:
relay mode "none", or a smarthost on a loopback port where nothing listens with a long
retry_min, so a deferred message is only tried again when the console says so (flush,
release).  Output written while nobody has the other end open is lost on a pty, so every
peer resynchronises (Ctrl-U, a unique line, its answer and a prompt) instead of relying on
the banner.  Everything started here (socat, tmux, the MTA) is stopped by its PID.

The MTA runs on CPython (pyserial) except in test_micropython_serial_console (the unix port
with the boards' serial shim, no control socket: the spool is the independent check), and
test_device_gone_again_while_greeted is in-process, for a race a pty pair cannot time.
Pty and wait_for are also used by test_serialshim.py.
"""
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import serial

from mtaproc import MICROPYTHON, MTA, free_port, stop_process
from relaykit import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = b"tinymta> "
PASSWORD_PROMPT = b"password: "

_missing = [t for t in ("socat", "picocom", "tmux") if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(bool(_missing), reason="needs %s" % ", ".join(_missing))


# --- the pty pair ---------------------------------------------------------------------------
class Pty:
    """A socat pty pair in `tmp`: `dev` is the MTA's console.serial, `host` the person's side."""

    def __init__(self, tmp, tag="ser"):
        self.dev = os.path.join(str(tmp), tag + "-dev")
        self.host = os.path.join(str(tmp), tag + "-host")
        self.log_path = os.path.join(str(tmp), tag + "-socat.log")
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["socat", "-d", "-d", "pty,raw,echo=0,link=" + self.dev, "pty,raw,echo=0,link=" + self.host],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        try:
            wait_for(lambda: os.path.exists(self.dev) and os.path.exists(self.host), 5, "socat's pty links")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        """SIGTERM by PID; socat removes its links as it exits (the device vanishes)."""
        if self.proc is None:
            return
        stop_process(self.proc)
        self.proc = None


# --- the peers -------------------------------------------------------------------------------
class Peer:
    """pyserial on the host end of the pty, doing what a terminal program does."""

    _sync = 0

    def __init__(self, path):
        self.ser = serial.Serial(path, 115200, timeout=0.05)
        self.buf = b""
        self.raw = b""              # everything the device sent this peer, for leak checks

    def write(self, data):
        self.ser.write(data)
        self.ser.flush()

    def read_until(self, pred, timeout=5, what="output"):
        """Read until pred(buffer) holds; the buffer (kept: the caller consumes it)."""
        def done():
            chunk = self.ser.read(65536)
            self.buf += chunk
            self.raw += chunk
            return pred(self.buf)
        wait_for(done, timeout, lambda: "%s; got %r" % (what, self.buf[-600:]), interval=0)
        return self.buf

    def sync(self, timeout=5):
        """Ctrl-U and a unique line: drop whatever came before its answer and the prompt after it."""
        Peer._sync += 1
        tok = b"zsync%d" % Peer._sync
        want = b"unknown command '" + tok + b"'; type help\r\n" + PROMPT
        self.write(b"\x15" + tok + b"\r")
        self.read_until(lambda b: b.endswith(want), timeout, "the answer to " + tok.decode())
        self.buf = b""

    def cmd(self, line, timeout=5, secret=False):
        """Send one line; its answer without the echo and the prompt ("\\n" line ends).  The echo
        must be the line itself, or with `secret` (a password) nothing but the line end."""
        data = line.encode() if isinstance(line, str) else line
        self.buf = b""
        self.write(data + b"\r")
        got = self.read_until(lambda b: b.endswith(PROMPT) or b.endswith(PASSWORD_PROMPT), timeout,
                              "the answer to %r" % data[:60])
        self.buf = b""
        echo = b"\r\n" if secret else data + b"\r\n"
        assert got.startswith(echo), (echo, got[:200])
        got = got[len(echo):]
        for p in (PROMPT, PASSWORD_PROMPT):
            if got.endswith(p):
                got = got[:-len(p)]
                break
        return got.decode("utf-8", "replace").replace("\r\n", "\n").rstrip("\n")

    def json(self, line):
        return json.loads(self.cmd(line + " --json"))

    def close(self):
        self.ser.close()


class Person:
    """picocom on the host end, in a private tmux server: send-keys in, capture-pane out."""

    def __init__(self, path):
        self.dir = tempfile.mkdtemp(prefix="tmc-")     # short: a UNIX socket path has ~100 bytes
        self.tmux = ["tmux", "-S", os.path.join(self.dir, "sock")]
        env = dict(os.environ, TERM=os.environ.get("TERM") or "xterm")
        self._tmux("new-session", "-d", "-s", "t", "-x", "160", "-y", "50",
                   "picocom -b 115200 --nolock " + shlex.quote(path), env=env)
        self.pid = int(self._tmux("display", "-p", "-t", "t", "#{pid}").strip())
        try:
            self.wait_screen("Terminal ready")
        except BaseException:
            self.stop()
            raise

    def _tmux(self, *args, **kw):
        return subprocess.run(self.tmux + list(args), check=True, capture_output=True, text=True,
                              timeout=10, **kw).stdout

    def screen(self):
        """The pane and its history as text, wrapped lines joined."""
        return self._tmux("capture-pane", "-p", "-J", "-S", "-2000", "-t", "t")

    def wait_screen(self, text, timeout=5):
        return wait_for(lambda: text in self.screen() and self.screen(), timeout,
                        lambda: "%r on the screen:\n%s" % (text, self.screen()[-1500:]))

    def keys(self, *keys):
        self._tmux("send-keys", "-t", "t", *keys)

    def type(self, text):
        self._tmux("send-keys", "-t", "t", "-l", text)

    def _lines(self):
        return [ln.rstrip() for ln in self.screen().split("\n")]

    def prompt(self, timeout=5):
        """Press Enter until the last line is a fresh prompt (output before picocom opened is lost)."""
        def fresh():
            ls = [ln for ln in self._lines() if ln]
            return ls and ls[-1] == "tinymta>"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.keys("C-u", "Enter")
            try:
                return wait_for(fresh, 1, "a prompt")
            except AssertionError:
                pass
        raise AssertionError("no prompt on the screen:\n%s" % self.screen()[-1500:])

    def run(self, command, timeout=5, keys=(), shown=None):
        """Type a command (then `keys`, then Enter) as a person does; the lines the console answered.
        `shown`: the command line as the screen shows it at the end (after editing keys)."""
        prompts = lambda ls: sum(1 for ln in ls if ln.startswith("tinymta>"))
        before = prompts(self._lines())
        self.type(command)
        self.keys(*(tuple(keys) + ("Enter",)))
        command = command if shown is None else shown

        def answered():
            ls = self._lines()
            while ls and not ls[-1]:
                ls.pop()
            return prompts(ls) > before and ls[-1] == "tinymta>" and ls
        ls = wait_for(answered, timeout, lambda: "the answer to %r:\n%s" % (command, self.screen()[-1500:]))
        start = max(i for i, ln in enumerate(ls) if ln == ("tinymta> " + command).rstrip())
        return "\n".join(ls[start + 1:-1])

    def stop(self):
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGTERM)       # the tmux server; picocom gets SIGHUP
            except ProcessLookupError:
                pass
            wait_for(lambda: not _alive(self.pid), 5, "tmux to exit")
            self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:        # a zombie is gone for our purpose
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# --- the MTA and mail ----------------------------------------------------------------------
def control(mta, line):
    """One command over the control socket (independent of the serial console)."""
    from tinymta.ctl import Control
    c = Control(mta.config["console"]["socket"])
    try:
        ok, text = c.request(line)
    finally:
        c.close()
    return json.loads(text) if line.endswith("--json") else text


def ctl_queue(mta):
    """{queue_id: message dict} from the control socket."""
    return dict((m["queue_id"], m) for m in control(mta, "mailq --json")["queue"])


def cli(mta, *args):
    """`python -m tinymta ARGS -c CONFIG`: (exit code, stdout)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "tinymta"] + list(args) + ["-c", mta.config_path],
                       capture_output=True, text=True, env=env, timeout=20)
    return p.returncode, p.stdout


def submit(mta, rcpt, subject):
    """Send one message over SMTP; its queue id.  Asserts each step was accepted (250)."""
    with MTA.smtp(mta) as s:
        assert s.ehlo()[0] == 250
        assert s.mail("alice@example.org")[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        code, text = s.data(("From: alice@example.org\r\nTo: %s\r\nSubject: %s\r\n\r\nhello\r\n"
                             % (rcpt, subject)).encode())
        assert code == 250, (code, text)
    m = re.match(rb"2\.0\.0 Ok: queued as (\S+)$", text)
    assert m, text
    return m.group(1).decode()


def queued_id(mta, rcpt, said=None):
    """The id of the one queued message to [rcpt], as the control socket lists it (and as SMTP said)."""
    ids = [m["queue_id"] for m in ctl_queue(mta).values() if [r["address"] for r in m["recipients"]] == [rcpt]]
    assert len(ids) == 1, ctl_queue(mta)
    if said is not None:
        assert ids[0] == said.upper(), (ids, said)
    return ids[0]


@pytest.fixture
def stack(tmp_path):
    """Start things in order, stop them in reverse order whatever the test did."""
    things = []
    yield things
    for t in reversed(things):
        try:
            t.stop() if hasattr(t, "stop") else t.close()
        except Exception:
            pass


@pytest.fixture
def pty(tmp_path, stack):
    p = Pty(tmp_path).start()
    stack.append(p)
    return p


def serial_mta(tmp_path, stack, pty, relay=None, console=None, runtime="cpython"):
    cons = {"serial": pty.dev}
    cons.update(console or {})
    extra = {}
    if runtime == "micropython":
        extra["mpypath"] = ":".join((ROOT, os.path.join(ROOT, "firmware", "micropython", "lib"), ".frozen"))
    mta = MTA(tmp_path, runtime=runtime, relay=relay, console=cons, **extra).start()
    stack.append(mta)
    return mta


def dead_smarthost():
    """A smarthost on loopback where nothing listens: every attempt defers, retried only on demand."""
    return {"mode": "smarthost", "smarthost": "127.0.0.1:%d" % free_port(), "tls": "none",
            "retry_min": 3600, "retry_max": 3600}


def wait_attempts(mta, qid, n, timeout=10):
    return wait_for(lambda: ctl_queue(mta).get(qid, {}).get("attempts", 0) >= n and ctl_queue(mta)[qid],
                    timeout, lambda: "%s to have %d attempts: %r" % (qid, n, ctl_queue(mta).get(qid)))


# --- 1. a person at picocom ---------------------------------------------------------------------
def test_person_at_picocom_manages_the_queue(tmp_path, stack, pty):
    mta = serial_mta(tmp_path, stack, pty, relay=dead_smarthost())
    bob = queued_id(mta, "bob@example.net", submit(mta, "bob@example.net", "one"))
    carol = queued_id(mta, "carol@example.net", submit(mta, "carol@example.net", "two"))
    wait_attempts(mta, bob, 1)
    wait_attempts(mta, carol, 1)

    person = Person(pty.host)
    stack.append(person)
    person.prompt()

    out = person.run("status")
    assert "relay smarthost" in out and "queue: 0 active, 2 deferred, 0 held, 0 in delivery" in out, out
    assert "spool:" in out and "2 messages" in out, out

    out = person.run("mailq")
    assert bob in out and carol in out and "<bob@example.net>" in out and "<alice@example.org>" in out, out
    assert "-- 2 messages" in out, out
    assert "deferred" in out, out

    out = person.run("hold " + bob)
    assert out == "%s: held" % bob, out
    assert ctl_queue(mta)[bob]["queue_name"] == "hold"
    assert "queue: 0 active, 1 deferred, 1 held, 0 in delivery" in person.run("status")

    out = person.run("release " + bob)
    assert out == "%s: released, will be tried now" % bob, out
    m = wait_attempts(mta, bob, 2)          # released: tried at once, and deferred again
    assert m["queue_name"] == "deferred", m
    assert "1 held" not in person.run("status")

    # editing keys: Ctrl-C drops a typed command; arrows are swallowed; Backspace erases
    person.type("delete " + carol)
    person.keys("C-c")
    person.wait_screen("tinymta> delete %s^C" % carol)
    person.type("sta")
    person.keys("Left", "Up", "Right", "F1", "Home")
    assert "queue: 0 active, 2 deferred, 0 held" in person.run("tus", shown="status")
    assert carol in ctl_queue(mta)
    out = person.run("delete " + carol[:-1] + "Z", keys=("BSpace", carol[-1]), shown="delete " + carol)
    assert out == "%s: deleted" % carol, out
    assert carol not in ctl_queue(mta)
    out = person.run("mailq")
    assert carol not in out and bob in out and "-- 1 message" in out, out

    out = person.run("flush")
    assert out == "flushing: 1 message due now", out
    wait_attempts(mta, bob, 3)              # retry_min is an hour: only flush explains attempt 3
    assert "3 attempts" in person.run("show " + bob)

    # bad commands typed by the person: an answer, nothing changed
    assert person.run("frobnicate").startswith("error: unknown command 'frobnicate'")
    assert person.run("hold xyz").startswith("error: 'xyz' is not a queue id")

    # independently: the CLI over the control socket, then the spool of the stopped MTA
    code, text = cli(mta, "mailq", "--json")
    assert code == 0
    q = json.loads(text)["queue"]
    assert [m["queue_id"] for m in q] == [bob] and q[0]["attempts"] >= 3 and q[0]["queue_name"] == "deferred"
    person.stop()
    assert mta.stop() == 0
    assert [(s, r) for s, r, _ in mta.messages()] == [("alice@example.org", ["bob@example.net"])]


# --- 2. pyserial and --json ---------------------------------------------------------------------
def test_pyserial_json_answers(tmp_path, stack, pty):
    mta = serial_mta(tmp_path, stack, pty, relay=dead_smarthost())
    peer = Peer(pty.host)
    stack.append(peer)
    peer.sync()
    t0 = time.time()
    bob = queued_id(mta, "bob@example.net", submit(mta, "bob@example.net", "json one"))
    carol = queued_id(mta, "carol@example.net", submit(mta, "carol@example.net", "json two"))
    wait_attempts(mta, bob, 1)
    wait_attempts(mta, carol, 1)

    st = peer.json("status")
    assert st["relay"] == "smarthost" and st["hostname"] == "mta.test"
    assert st["queue"] == {"active": 0, "deferred": 2, "held": 0, "in_flight": 0}, st
    assert st["spool"]["messages"] == 2 and 0 < st["spool"]["used"] <= st["spool"]["capacity"]
    assert st["listening"] == ["127.0.0.1:%d" % mta.port]
    assert [h["hop"] for h in st["hops"]] and st["hops"][0]["failing"] is True, st["hops"]

    q = peer.json("mailq")["queue"]
    assert sorted(m["queue_id"] for m in q) == sorted([bob, carol])
    for m in q:
        assert m["queue_name"] == "deferred" and m["sender"] == "alice@example.org"
        assert t0 - 2 <= m["arrival_time"] <= time.time() + 2
        assert isinstance(m["message_size"], int) and m["message_size"] > 50
        assert len(m["recipients"]) == 1
        r = m["recipients"][0]
        assert r["address"] == ("bob@example.net" if m["queue_id"] == bob else "carol@example.net")
        assert r["delay_reason"] and "127.0.0.1" in r["delay_reason"], r
    assert q == list(ctl_queue(mta)[m["queue_id"]] for m in q)       # the same as the control socket

    assert peer.json("hold " + bob) == {"ok": True, "queue_id": bob}
    assert ctl_queue(mta)[bob]["queue_name"] == "hold" and ctl_queue(mta)[bob]["next_try"] is None
    assert peer.json("status")["queue"]["held"] == 1
    assert peer.json("hold " + bob) == {"ok": True, "queue_id": bob}            # again: still fine
    assert peer.json("release " + bob) == {"ok": True, "queue_id": bob}
    wait_attempts(mta, bob, 2)
    assert peer.json("release " + bob) == {"ok": False, "error": "%s is not held" % bob}
    assert peer.json("delete " + carol) == {"ok": True, "queue_id": carol}
    assert peer.json("delete " + carol) == {"ok": False, "error": "no message %s in the queue" % carol}
    assert peer.json("flush") == {"ok": True, "due": 1}
    wait_attempts(mta, bob, 3)
    err = peer.json("frobnicate")
    assert err == {"ok": False, "error": "unknown command 'frobnicate'; type help"}
    assert set(ctl_queue(mta)) == {bob}


# --- 3. the pty vanishes and comes back ---------------------------------------------------------
def test_pty_vanishes_and_comes_back(tmp_path, stack, pty):
    mta = serial_mta(tmp_path, stack, pty)
    said = submit(mta, "before@example.net", "before")
    before = queued_id(mta, "before@example.net", said)
    peer = Peer(pty.host)
    stack.append(peer)
    peer.sync()
    assert before in peer.cmd("mailq")

    pty.stop()                  # socat gone: both ends of the pair vanish
    peer.close()
    assert not os.path.exists(pty.dev)
    wait_for(lambda: "lost" in mta.log(), 5, lambda: "the MTA to notice:\n" + mta.log()[-800:])
    said = submit(mta, "during@example.net", "while the console is gone")
    during = queued_id(mta, "during@example.net", said)
    assert "queue: 2 active" in control(mta, "status")

    pty.start()                 # the same link names, new ptys
    peer = Peer(pty.host)
    stack.append(peer)
    if "is back" not in mta.log():      # reopened after we opened our end: its greeting reaches us
        greeting = b"console on mta.test (serial %s); type help\r\n%s" % (pty.dev.encode(), PROMPT)
        peer.read_until(lambda b: greeting in b, 8, "the greeting")
    wait_for(lambda: "is back" in mta.log(), 8, lambda: "the console to reopen:\n" + mta.log()[-800:])
    peer.sync()
    out = peer.cmd("mailq")
    assert before in out and during in out and "-- 2 messages" in out, out
    assert peer.json("status")["queue"]["active"] == 2
    assert "queue: 2 active" in control(mta, "status")
    assert mta.log().count("lost") == 1 and mta.log().count("is back") == 1, mta.log()
    assert mta.stop() == 0
    assert [r for _, r, _ in mta.messages()] == [["before@example.net"], ["during@example.net"]]
    assert "Traceback" not in mta.log()


# --- 4. bad input -----------------------------------------------------------------------------
def _still_fine(mta, peer, snapshot, tag):
    """The console and SMTP both answer, and the queue is what it was (plus one probe, removed)."""
    peer.sync()
    assert "queue:" in peer.cmd("status")
    assert ctl_queue(mta) == snapshot
    rcpt = "probe-%s@example.net" % tag
    qid = queued_id(mta, rcpt, submit(mta, rcpt, "probe"))
    assert control(mta, "delete %s --json" % qid)["ok"]
    assert ctl_queue(mta) == snapshot


def test_bad_input_on_serial(tmp_path, stack, pty):
    mta = serial_mta(tmp_path, stack, pty)
    said = submit(mta, "bob@example.net", "keep me")
    bob = queued_id(mta, "bob@example.net", said)
    control(mta, "hold %s --json" % bob)
    snapshot = ctl_queue(mta)
    peer = Peer(pty.host)
    stack.append(peer)
    peer.sync()

    for line, want in (("frobnicate", "error: unknown command 'frobnicate'; type help"),
                       ("HOLD", "error: needs a queue id (see mailq)"),
                       ("delete", "error: needs a queue id (see mailq)"),
                       ("delete zzzz", "error: 'zzzz' is not a queue id (12 hex digits, see mailq)"),
                       ("delete 000000000000", "error: no message 000000000000 in the queue"),
                       ("delete %s %s" % (bob, bob), "error: needs a queue id (see mailq)"),
                       ("log 0", "error: log takes one number from 1 to 64"),
                       ("flush now", "error: flush takes no arguments (retry ID tries one message)"),
                       ("release " + bob.lower() + "x", None),
                       ("send not-an-address", "error: 'not-an-address' is not a mail address")):
        out = peer.cmd(line)
        if want is None:
            assert out.startswith("error: "), (line, out)
        else:
            assert out == want, (line, out)
    _still_fine(mta, peer, snapshot, "words")

    # a 10 KB line: echoed up to the limit, one BEL, then refused whole
    peer.buf = b""
    peer.write(b"A" * 10240 + b"\r")
    got = peer.read_until(lambda b: b.endswith(PROMPT), 10, "the answer to a 10 KB line")
    assert got == b"A" * 512 + b"\x07\r\nerror: line too long (at most 512 bytes); ignored\r\n" + PROMPT, got[-200:]
    _still_fine(mta, peer, snapshot, "long")

    # every byte value, then random bytes (a fixed seed, so a failure can be replayed); garbage
    # that ends inside an escape sequence must not swallow the next Ctrl-U and Enter (sync)
    peer.write(bytes(range(256)) * 4)
    rnd = random.Random(4242)
    peer.write(bytes(rnd.randrange(256) for _ in range(8192)))
    _still_fine(mta, peer, snapshot, "binary")
    for tail in (b"\x1b", b"\x1b[", b"\x1b[1;2", b"\x1bO"):
        peer.write(bytes(rnd.randrange(256) for _ in range(300)) + tail)
        _still_fine(mta, peer, snapshot, "esc%d" % len(tail))

    # Ctrl-C drops a half-typed command; Ctrl-D on an empty line is explained, not an exit
    peer.buf = b""
    peer.write(b"delete " + bob.encode() + b"\x03")
    peer.read_until(lambda b: b.endswith(b"^C\r\n" + PROMPT), 5, "^C and a prompt")
    assert peer.cmd("") == ""                           # the dropped line is gone for good
    peer.buf = b""
    peer.write(b"\x04")
    got = peer.read_until(lambda b: b.endswith(PROMPT), 5, "the answer to Ctrl-D")
    assert got == b"(Ctrl-D: this console stays open; type help, or quit to lock it)\r\n" + PROMPT, got
    peer.buf = b""
    peer.write(b"hel\x04p\r")                          # inside a line Ctrl-D is nothing
    got = peer.read_until(lambda b: b.endswith(PROMPT), 5, "the answer to help")
    assert got.startswith(b"help\r\nhelp ") and b"Ctrl-D" not in got, got[:200]
    assert peer.cmd("quit") == "bye"
    assert "queue:" in peer.cmd("status")               # quit only locks a terminal
    _still_fine(mta, peer, snapshot, "ctrl")

    # a peer that stops reading and goes away mid-command: the MTA must not stall on it
    peer.write(b"config\r" * 300 + b"delete " + bob.encode())      # ~60 KB of answers nobody reads
    peer.close()
    stack.remove(peer)
    rcpt = "while-dead@example.net"
    assert control(mta, "delete %s --json" % queued_id(mta, rcpt, submit(mta, rcpt, "peer dead")))["ok"]
    assert ctl_queue(mta) == snapshot
    peer = Peer(pty.host)           # the next person: Ctrl-U first, so the stale half line is dropped
    stack.append(peer)
    peer.sync(timeout=10)
    _still_fine(mta, peer, snapshot, "dead")

    # the same with picocom: the terminal program killed while a command is half typed
    peer.close()
    stack.remove(peer)
    person = Person(pty.host)
    stack.append(person)
    person.prompt()
    person.type("hold " + bob[:6])
    person.stop()
    peer = Peer(pty.host)
    stack.append(peer)
    peer.sync()
    _still_fine(mta, peer, snapshot, "picocom")

    assert mta.stop() == 0
    assert "Traceback" not in mta.log()
    assert [r for _, r, _ in mta.messages()] == [["bob@example.net"]]


# --- 5. console.password ----------------------------------------------------------------------
def test_password_guards_changes(tmp_path, stack, pty):
    mta = serial_mta(tmp_path, stack, pty, console={"password": "s3cret-pw"})
    said = submit(mta, "bob@example.net", "guarded")
    bob = queued_id(mta, "bob@example.net", said)
    peer = Peer(pty.host)
    stack.append(peer)
    peer.sync()

    assert "queue: 1 active" in peer.cmd("status")          # reading needs no password
    refused = "error: delete changes the queue: type unlock and the console password first"
    assert peer.cmd("delete " + bob) == refused
    assert peer.json("hold " + bob) == {"ok": False, "error": refused.replace("delete", "hold")[7:]}
    assert bob in ctl_queue(mta)

    assert peer.cmd("unlock") == "type the console password (it is not echoed)"
    assert peer.cmd("not-it", secret=True) == "error: wrong password"
    assert peer.cmd("delete " + bob) == refused
    assert peer.cmd("unlock") == "type the console password (it is not echoed)"
    peer.write(b"s3cret\x03")                               # Ctrl-C while typing it: no longer asked
    peer.read_until(lambda b: b.endswith(b"^C\r\n" + PROMPT), 5, "^C")
    assert peer.cmd("delete " + bob) == refused

    assert peer.cmd("unlock") == "type the console password (it is not echoed)"
    assert peer.cmd("s3cret-pw", secret=True) == "unlocked: changes allowed until lock or quit"
    assert peer.cmd("lock") == "locked"
    assert peer.cmd("delete " + bob) == refused
    assert bob in ctl_queue(mta)

    # pasted in one go (one read on the MTA's side): the password still not echoed
    peer.buf = b""
    peer.write(b"unlock\rs3cret-pw\r")
    peer.read_until(lambda b: b.endswith(b"unlocked: changes allowed until lock or quit\r\n" + PROMPT), 5, "unlock")
    assert peer.cmd("delete " + bob) == "%s: deleted" % bob
    assert bob not in ctl_queue(mta)
    for secret in (b"s3cret", b"not-it"):
        at = peer.raw.find(secret)
        assert at < 0, "the password was echoed: %r" % peer.raw[max(0, at - 80):at + 40]

    assert peer.cmd("quit") == "bye"                      # quit locks again
    said = submit(mta, "carol@example.net", "guarded again")
    carol = queued_id(mta, "carol@example.net", said)
    assert peer.cmd("delete " + carol) == refused
    assert "s3cret" not in peer.cmd("config")             # secrets hidden
    assert mta.stop() == 0
    assert "s3cret" not in mta.log()
    assert [r for _, r, _ in mta.messages()] == [["carol@example.net"]]


# --- 6. the host client -------------------------------------------------------------------------
def test_host_client_tinymta_console(tmp_path, stack, pty):
    mta = serial_mta(tmp_path, stack, pty, console={"password": "pw-42"})
    said = submit(mta, "bob@example.net", "via the client")
    bob = queued_id(mta, "bob@example.net", said)
    env = dict(os.environ, PYTHONPATH=ROOT)
    script = "mailq\nstatus --json\nhold %s\nunlock\npw-42\nhold %s\nfrobnicate\nquit\nmailq\n" % (bob, bob)
    p = subprocess.run([sys.executable, "-m", "tinymta", "console", pty.host], input=script,
                       capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "tinymta>" not in out and "\r" not in out, out          # prompts and CRs stripped
    lines = out.split("\n")
    assert "mailq" not in lines and "frobnicate" not in lines and "pw-42" not in out, out   # no echo
    assert bob in out and "<bob@example.net>" in out and "-- 1 message" in out, out
    st = json.loads([ln for ln in lines if ln.startswith("{")][0])
    assert st["queue"]["active"] == 1
    assert "error: hold changes the queue: type unlock and the console password first" in lines
    assert "unlocked: changes allowed until lock or quit" in lines
    assert "%s: held" % bob in lines
    assert "error: unknown command 'frobnicate'; type help" in lines
    assert "bye" in lines
    assert lines.count("-- 1 message, %d bytes" % ctl_queue(mta)[bob]["message_size"]) == 1, out  # stopped at quit
    assert ctl_queue(mta)[bob]["queue_name"] == "hold"


def test_host_client_after_a_dead_peer(tmp_path, stack, pty):
    """A terminal that died mid-output leaves answers in the pipe: the client must not show them
    as the answers to its own commands, nor fall one answer behind."""
    mta = serial_mta(tmp_path, stack, pty)
    submit(mta, "bob@example.net", "stale")
    peer = Peer(pty.host)
    peer.sync()
    # answers nobody reads, half a command and half a key's escape sequence (killed mid-keystroke)
    peer.write(b"config\r" * 300 + b"hold 0002\x1b[1;")
    peer.read_until(lambda b: len(b) > 4096, 5, "some of the answers")
    peer.close()
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "tinymta", "console", pty.host], input="mailq\nversion\n",
                       capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 0, p.stderr
    want = "\n" + control(mta, "mailq") + "\n" + control(mta, "version") + "\n"
    assert p.stdout == want, p.stdout[-1500:]


def test_device_gone_again_while_greeted(monkeypatch):
    """In-process, for a race the pty pair cannot time: the device opens, then fails on the first
    write (unplugged at that moment).  The console must count it as lost and retry, not raise:
    raised from the reopen hook, it would stop the MTA's loop."""
    from tinymta import consoleio

    class Server:
        hostname = "mta.test"

        def __init__(self):
            self.hooks, self.watched = [], {}

        def watch(self, obj, mask, handler):
            self.watched[id(obj)] = handler

        def unwatch(self, obj):
            self.watched.pop(id(obj), None)

    r, w = os.pipe()
    opened = []

    class BrokenSerial:         # readable, but writing fails (EBADF on a pipe's read end)
        def __init__(self, device, baud, timeout=None):
            opened.append(device)

        def fileno(self):
            return r

        def close(self):
            pass

    monkeypatch.setattr(serial, "Serial", BrokenSerial)
    try:
        srv = Server()
        sc = consoleio.SerialConsole(srv, console=None, device="/dev/ttyGONE", baud=115200)
        assert opened == ["/dev/ttyGONE"] and sc.term is None and sc.retry_at is not None
        assert srv.watched == {}                    # not left watching a dead port
        srv.hooks[0](consoleio.compat.ticks_add(sc.retry_at, 1))  # the retry: the same again, no raise
        assert len(opened) == 2 and sc.term is None and sc.retry_at is not None
    finally:
        os.close(r)
        os.close(w)


def test_half_typed_line_of_a_gone_terminal_is_dropped(monkeypatch):
    """In-process: picocom closed mid-command leaves "delete ID" half typed; minutes later the
    next person's Enter must not run it (a pty gives no sign the peer went away)."""
    from tinymta import consoleio

    class Server:
        hostname = "mta.test"

        def watch(self, obj, mask, handler):
            pass

    class Port:
        pollable = object()
        written = bytearray()

        def write(self, data):
            self.written.extend(data)
            return len(data)

    class Console:
        lines = []

        def execute(self, sess, line):
            self.lines.append(line)
            return True, "ran " + line

    clock = [1000]
    monkeypatch.setattr(consoleio.compat, "ticks_ms", lambda: clock[0])
    con = Console()
    term = consoleio.Terminal(Server(), con, Port(), "serial test", trusted=True)
    term.feed(b"delete 000200000001")                 # ... and the terminal went away
    clock[0] += consoleio.STALE_LINE_MS - 1000
    term.feed(b"x\x7f")                                # still the same person, still typing
    clock[0] += consoleio.STALE_LINE_MS + 1
    term.feed(b"\r")                                   # the next person, much later
    assert con.lines == [""]
    assert b"half-typed line from 5 minutes ago was dropped" in term.port.written
    term.feed(b"status\r")
    assert con.lines == ["", "status"]


def test_micropython_serial_console(tmp_path, stack, pty):
    """The MTA under the MicroPython unix port, its console on the pty through the boards' serial
    shim: answers, JSON, garbage, a pasted password, the pty vanishing while SMTP goes on.  (No
    control socket there: the spool of the stopped MTA is the independent check.)"""
    if not os.path.exists(MICROPYTHON):
        pytest.skip("no micropython binary at %s" % MICROPYTHON)
    mta = serial_mta(tmp_path, stack, pty, console={"password": "mp-secret"}, runtime="micropython")
    keep = submit(mta, "keep@example.net", "kept")
    gone = submit(mta, "gone@example.net", "deleted")
    peer = Peer(pty.host)
    stack.append(peer)
    peer.sync()
    assert "queue: 2 active, 0 deferred, 0 held" in peer.cmd("status")
    assert peer.json("version")["runtime"].startswith("micropython")
    q = dict((m["queue_id"], m) for m in peer.json("mailq")["queue"])
    assert sorted(q) == sorted([keep, gone]), q
    assert [r["address"] for r in q[keep]["recipients"]] == ["keep@example.net"]
    assert q[keep]["sender"] == "alice@example.org" and q[keep]["message_size"] > 50

    peer.write(bytes(range(256)) + bytes(random.Random(7).randrange(256) for _ in range(3000)) + b"\x1b[")
    peer.sync(timeout=10)
    peer.buf = b""
    peer.write(b"B" * 2000 + b"\r")
    got = peer.read_until(lambda b: b.endswith(PROMPT), 10, "the answer to a long line")
    assert got.endswith(b"\x07\r\nerror: line too long (at most 512 bytes); ignored\r\n" + PROMPT), got[-100:]
    assert peer.cmd("delete " + gone).startswith("error: delete changes the queue: type unlock")
    peer.buf = b""
    peer.write(b"unlock\rmp-secret\r")                  # pasted: one read
    peer.read_until(lambda b: b.endswith(b"unlocked: changes allowed until lock or quit\r\n" + PROMPT), 5, "unlock")
    assert peer.cmd("delete " + gone) == "%s: deleted" % gone
    assert b"mp-secret" not in peer.raw

    pty.stop()
    peer.close()
    wait_for(lambda: "lost" in mta.log(), 5, lambda: "the MTA to notice:\n" + mta.log()[-800:])
    during = submit(mta, "during@example.net", "while the console is gone")
    pty.start()
    peer = Peer(pty.host)
    stack.append(peer)
    wait_for(lambda: "is back" in mta.log(), 8, lambda: "the console to reopen:\n" + mta.log()[-800:])
    peer.sync()
    out = peer.cmd("mailq")
    assert keep in out and during in out and gone not in out and "-- 2 messages" in out, out
    assert peer.cmd("delete " + keep).startswith("error: delete changes the queue")    # a new session: locked
    assert mta.stop() == 0
    assert "Traceback" not in mta.log() and "mp-secret" not in mta.log()
    assert [r for _, r, _ in mta.messages()] == [["keep@example.net"], ["during@example.net"]]
