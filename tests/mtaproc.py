"""Run a real tinymta as a child process for tests: write its config, start it, wait for READY, stop it.

    with MTA(tmp_path, server={...}, spool={...}) as mta:      # CPython: python -m tinymta serve -c
        mta.port, mta.spool_path, mta.log()                     # ...
    with MTA(tmp_path, runtime="micropython") as mta: ...       # micropython -m tinymta serve -c x.json
    MTA(tmp_path, runtime="micropython", heap="408K", mpypath=DIR)   # -X heapsize, MICROPYPATH

Ports are chosen by the test (MicroPython cannot bind port 0 and report it).  The child is
stopped with SIGTERM (or killed with mta.kill()) and always reaped; nothing outlives the test.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICROPYTHON = shutil.which("micropython") or os.path.join(os.path.dirname(sys.executable), "micropython")


def free_port(host="127.0.0.1"):
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def stop_process(proc, sig=signal.SIGTERM, wait=5):
    """End a child the test started, by its own PID: sig, then SIGKILL after `wait` seconds.
    It is always reaped; its exit status is returned."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class MTA:
    def __init__(self, tmp, runtime="cpython", server=None, spool=None, relay=None, console=None,
                 log_level="info", heap="2M", console_stdin=False, mpypath=None):
        self.tmp = str(tmp)
        self.runtime = runtime
        self.port = free_port()
        self.spool_path = os.path.join(self.tmp, "tinymta.spool")
        cfg = {"server": {"listen": ["127.0.0.1:%d" % self.port], "hostname": "mta.test"},
               "spool": {"path": self.spool_path},
               "console": {"socket": os.path.join(self.tmp, "tinymta.sock")},
               "log": {"level": log_level}}
        # No relay unless a test asks for one: mail stays in the spool and nothing ever asks the
        # system's DNS (network rule).
        cfg["relay"] = {"mode": "none"}
        for name, extra in (("server", server), ("spool", spool), ("relay", relay), ("console", console)):
            if extra:
                cfg.setdefault(name, {}).update(extra)
        if runtime == "micropython":    # small spool and sectors, as on a board
            cfg["spool"].setdefault("size", "1M")
            cfg["spool"].setdefault("sector_size", 4096)
            cfg["spool"].setdefault("prog_unit", 256)
            cfg["server"].setdefault("max_message_size", "256K")
        self.config = cfg
        self.config_path = os.path.join(self.tmp, "tinymta.json")
        self.heap = heap
        self.mpypath = mpypath      # MicroPython: MICROPYPATH (e.g. .mpy files and the lib/ shims)
        self.console_stdin = console_stdin      # serve --console: the test writes commands to .proc.stdin
        self.proc = None
        self.log_path = os.path.join(self.tmp, "tinymta.log")

    def command(self):
        extra = ["--console"] if self.console_stdin else []
        if self.runtime == "micropython":
            return [MICROPYTHON, "-X", "heapsize=" + self.heap, "-m", "tinymta", "serve", "-c", self.config_path] + extra
        return [sys.executable, "-m", "tinymta", "serve", "-c", self.config_path] + extra

    def start(self, timeout=20):
        with open(self.config_path, "w") as f:
            json.dump(self.config, f)
        env = dict(os.environ, PYTHONPATH=ROOT, MICROPYPATH=self.mpypath or ROOT + ":.frozen")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=self.tmp, env=env, stdout=subprocess.PIPE,
                                     stderr=self._log,
                                     stdin=subprocess.PIPE if self.console_stdin else subprocess.DEVNULL)
        deadline = time.time() + timeout
        line = b""
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if line.strip().endswith(b"READY") or not line:     # (a stdin console's prompt may come first)
                break
        if not line.strip().endswith(b"READY"):
            self.stop()
            raise RuntimeError("tinymta did not start: %r\n%s" % (line, self.log()))
        return self

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, timeout=10):
        """Stop cleanly and wait; returns the exit status.  SIGTERM on CPython; SIGINT on
        MicroPython, which has no signal handlers (SIGTERM would end it like a power cut)."""
        if self.proc is None:
            return None
        stop_process(self.proc, signal.SIGINT if self.runtime == "micropython" else signal.SIGTERM, timeout)
        self.proc.stdout.close()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._log.close()
        rc, self.proc = self.proc.returncode, None
        return rc

    def kill(self):
        """SIGKILL: a crash, as far as the spool can tell."""
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self._log.close()
        self.proc = None

    def spool(self):
        """The spool as a stopped tinymta would find it (read-only mount)."""
        from tinymta.blockdev import FileBlockDevice
        from tinymta.config import from_dict
        from tinymta.spool import Spool
        sc = from_dict(self.config).spool
        dev = FileBlockDevice(self.spool_path, size=sc.size, block_size=sc.sector_size,
                              prog_unit=sc.prog_unit, create=False, readonly=True)
        return Spool(dev, readonly=True)

    def messages(self):
        """[(sender, [recipients], body bytes)] in arrival order."""
        sp = self.spool()
        out = [(m.sender, m.all_recipients, b"".join(sp.read(m.id))) for m in sp.messages()]
        sp.dev.close()
        return out

    @staticmethod
    def smtp(mta, timeout=10):
        """An smtplib client connected to mta."""
        import smtplib
        return smtplib.SMTP("127.0.0.1", mta.port, timeout=timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def strip_added(body):
    """The message as the client sent it, when it had Date, Message-ID and From: without the Received field."""
    head_end = body.find(b"\r\n\r\n")
    head, rest = body[:head_end + 2], body[head_end + 2:]
    lines, out, skip = head.split(b"\r\n"), [], False
    for i, line in enumerate(lines):
        if line[:1] in (b" ", b"\t"):
            if skip:
                continue
        else:
            skip = line.lower().startswith(b"received:") and i == 0
        if not skip:
            out.append(line)
    return b"\r\n".join(out) + rest
