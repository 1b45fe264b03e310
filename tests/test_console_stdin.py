"""`tinymta serve --console`: the console on standard input, on CPython and on the MicroPython
unix port (the way a board's USB console works), and on CPython behind a real terminal (pty).

The same command script runs on both runtimes against a real MTA holding real mail: status,
mailq, hold, release, delete and flush change the queue; bad input (unknown commands, a 10 KB
line, binary garbage, Ctrl-C, Ctrl-D) gets clear errors and changes nothing; the end of standard
input detaches the console and the MTA goes on serving SMTP.
"""
import json
import os
import threading
import time

import pytest

from mtaproc import MTA, MICROPYTHON

PROMPT = b"tinymta> "
RUNTIMES = ["cpython"] + (["micropython"] if os.path.exists(MICROPYTHON) else [])


class Output:
    """Everything the MTA writes on standard output, read by a thread (no blocking reads in the test)."""

    def __init__(self, stream):
        self.data = bytearray()
        self.lock = threading.Lock()
        self.t = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self.t.start()

    def _run(self, stream):
        while True:
            try:
                chunk = stream.read1(4096) if hasattr(stream, "read1") else os.read(stream, 4096)
            except (OSError, ValueError):
                return
            if not chunk:
                return
            with self.lock:
                self.data.extend(chunk)

    def mark(self):
        with self.lock:
            return len(self.data)

    def wait_for(self, start, needle, timeout=10):
        """The output since `start` once it contains needle (bytes)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                got = bytes(self.data[start:])
            if needle in got:
                return got
            time.sleep(0.02)
        raise AssertionError("no %r in console output: %r" % (needle, got[-2000:]))


class StdinConsole:
    def __init__(self, mta):
        self.mta = mta
        self.out = Output(mta.proc.stdout)

    def ask(self, line, timeout=10):
        """Send a command line; its answer (up to the next prompt), prompt excluded."""
        start = self.out.mark()
        self.mta.proc.stdin.write(line + b"\n")
        self.mta.proc.stdin.flush()
        got = self.out.wait_for(start, PROMPT, timeout)
        return got[:got.index(PROMPT)].decode("utf-8", "replace")

    def ask_json(self, line):
        text = self.ask(line + b" --json").strip()
        return json.loads(text)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_console_on_standard_input(tmp_path, runtime):
    mta = MTA(tmp_path, runtime=runtime, console_stdin=True, relay={"mode": "smarthost", "tls": "none",
              "smarthost": "127.0.0.1:%d" % _closed_port(), "retry_min": 3600})
    with mta:
        con = StdinConsole(mta)
        # (the banner came before READY: MTA.start read it)
        assert "tinymta" in con.ask(b"version")
        with MTA.smtp(mta) as s:
            s.sendmail("cam@lan.example", ["ops@example.org"], b"Subject: one\r\n\r\nfirst\r\n")
            s.sendmail("ups@lan.example", ["ops@example.org", "me@example.net"], b"Subject: two\r\n\r\nsecond\r\n")
        q = _wait_deferred(con, 2)      # the smarthost refuses connections: both deferred
        a, b = [m["queue_id"] for m in q]
        assert q[0]["recipients"][0]["delay_reason"]
        st = con.ask_json(b"status")
        assert st["queue"]["deferred"] == 2 and st["since_start"]["received"] == 2
        assert st["hops"] and st["hops"][0]["failing"]
        assert "2 deferred" in con.ask(b"status")

        assert "held" in con.ask(b"hold " + a.encode())
        assert [m["queue_name"] for m in con.ask_json(b"mailq")["queue"]] == ["hold", "deferred"]
        assert "released" in con.ask(b"release " + a.encode())
        assert "error: " in con.ask(b"release " + a.encode())
        attempts = dict((m["queue_id"], m["attempts"]) for m in con.ask_json(b"mailq")["queue"])
        assert "flushing" in con.ask(b"flush")
        _wait(lambda: [m for m in con.ask_json(b"mailq")["queue"] if m["attempts"] > attempts[m["queue_id"]]]
              and True, "flush made the deferred message be tried again")
        assert "deleted" in con.ask(b"delete " + b.encode())
        assert [m["queue_id"] for m in con.ask_json(b"mailq")["queue"]] == [a]

        # bad input: clear errors, no effect on the queue
        assert "error: unknown command 'frobnicate'" in con.ask(b"frobnicate")
        assert "error: " in con.ask(b"x" * 10240)
        assert "error: " in con.ask(bytes(range(32, 256)).replace(b"\n", b"").replace(b"\r", b""))
        con.ask(bytes(range(0, 32)).replace(b"\n", b"").replace(b"\r", b""))    # controls: ignored or eof
        assert "not a queue id" in con.ask(b"hold \xff\xfe")
        assert [m["queue_id"] for m in con.ask_json(b"mailq")["queue"]] == [a]

        mta.proc.stdin.close()          # end of input: the console goes, the MTA stays
        with MTA.smtp(mta) as s:
            s.sendmail("cam@lan.example", ["ops@example.org"], b"Subject: three\r\n\r\nafter\r\n")
        assert mta.proc.poll() is None
        assert mta.stop() == 0
    assert [m[2].endswith(b"first\r\n") or m[2].endswith(b"after\r\n") for m in mta.messages()] == [True, True]
    assert "standard input end of input" in mta.log()


def test_console_in_a_terminal_echoes_and_edits(tmp_path):
    """A person at a real terminal (pty): echo from the editor, backspace, Ctrl-C, arrow keys,
    and the terminal's modes are given back when the MTA stops."""
    import pty
    import termios
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    mta = MTA(tmp_path, console_stdin=True)
    mta.console_stdin = False           # stdin is the pty, not a pipe: start it by hand
    import subprocess
    import sys
    with open(mta.config_path, "w") as f:
        json.dump(mta.config, f)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-m", "tinymta", "serve", "-c", mta.config_path, "--console"],
                            stdin=slave, stdout=slave, stderr=open(mta.log_path, "ab"), cwd=str(tmp_path), env=env)
    try:
        out = Output(master)
        out.wait_for(0, b"console on mta.test (stdin); type help\r\n" + PROMPT, 20)
        out.wait_for(0, b"READY\r\n")        # serve prints it after the console's banner
        start = out.mark()
        os.write(master, b"stat\x1b[Dux\x7fs\r")        # a typo mended with DEL, an arrow key swallowed
        got = out.wait_for(start, PROMPT)
        assert got.startswith(b"statux\b \bs\r\n") and b"since start" in got
        start = out.mark()
        os.write(master, b"delete 000200000001\x03")
        got = out.wait_for(start, b"^C\r\n" + PROMPT)
        assert b"deleted" not in got and b"error" not in got
        start = out.mark()
        os.write(master, b"\x04")                        # Ctrl-D in a terminal: the console stays
        assert b"stays open" in out.wait_for(start, PROMPT)
        assert proc.poll() is None
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        after = termios.tcgetattr(slave)
        os.close(master)
        os.close(slave)
    assert after[3] & termios.ECHO and after[3] & termios.ICANON and after == before


def _closed_port():
    from mtaproc import free_port
    return free_port()          # nothing listens there: connections are refused at once


def _wait(cond, what, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting: " + what)


def _wait_deferred(con, n):
    box = []

    def deferred():
        q = con.ask_json(b"mailq")["queue"]
        box[:] = q
        return len(q) == n and all(m["queue_name"] == "deferred" for m in q)
    _wait(deferred, "%d deferred messages" % n)
    return box


def test_output_nobody_reads_never_blocks_the_mta(tmp_path):
    """stdout a pipe nobody reads: the console's answers fill it, the MTA keeps serving SMTP
    and the control socket (the answers wait in a bounded buffer, the oldest dropped)."""
    import subprocess
    import sys as _sys
    with MTA(tmp_path, console_stdin=True) as mta:      # MTA.start read up to READY, then nobody
        for _ in range(20):
            mta.proc.stdin.write(b"help\nconfig\nstatus\n" * 20)
            mta.proc.stdin.flush()
        with MTA.smtp(mta, timeout=10) as s:
            assert s.sendmail("cam@lan.example", ["ops@example.org"], b"Subject: x\r\n\r\ny\r\n") == {}
        p = subprocess.run([_sys.executable, "-m", "tinymta", "status", "-c", mta.config_path],
                           capture_output=True, timeout=20,
                           env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        assert p.returncode == 0 and b"1 received" in p.stdout
        assert mta.stop() == 0


def test_a_failed_start_gives_the_terminal_back(tmp_path):
    """A second MTA on the same control socket refuses to start; the terminal it was given for
    --console must not be left in raw mode."""
    import pty
    import subprocess
    import sys as _sys
    import termios
    with MTA(tmp_path) as first:
        second = MTA(tmp_path / "..", console_stdin=True)
        second.config["console"]["socket"] = first.config["console"]["socket"]
        second.config["spool"]["path"] = str(tmp_path / "second.spool")
        second.config_path = str(tmp_path / "second.json")
        with open(second.config_path, "w") as f:
            json.dump(second.config, f)
        master, slave = pty.openpty()
        before = termios.tcgetattr(slave)
        try:
            p = subprocess.run([_sys.executable, "-m", "tinymta", "serve", "-c", second.config_path, "--console"],
                               stdin=slave, stdout=slave, stderr=subprocess.PIPE, timeout=20,
                               env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
            after = termios.tcgetattr(slave)
        finally:
            os.close(master)
            os.close(slave)
        assert p.returncode == 2 and b"another tinymta is running there" in p.stderr
        assert after == before
