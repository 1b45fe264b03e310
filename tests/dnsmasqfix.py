"""A private dnsmasq on 127.0.0.1:<free port> serving only the records a test gives it (bench.md §5).

    dns = Dnsmasq(tmp_path, mx=[("example.test", "mx1.example.test", 10)],
                  hosts={"mx1.example.test": ["127.0.0.2", "::2"]}, null_mx=["nullmx.test"])
    dns.start()               # returns once it answers; dns.server == ("127.0.0.1", port)
    ...                       # relay.dns_servers = [dns.server]
    dns.stop()                # by its PID; also `with Dnsmasq(...) as dns:`

or the pytest fixture `dnsmasq` (import it into the test module: `from dnsmasqfix import dnsmasq`),
a factory that starts one per call and stops them all at teardown: `dns = dnsmasq(mx=[...])`.
Skip with `needs_dnsmasq` when the binary is missing.

Records: mx (domain, host, preference); hosts {name: address or [addresses]} (IPv4 and IPv6;
dnsmasq rotates the order of several addresses between answers); null_mx [domain] ("MX 0 ."
as a raw RR); cnames (alias, target), the target one of hosts; timeout [domain]: forwarded to a
loopback socket that never answers, so a client sees a timeout. Under the local domains ("test"
by default) an unknown name is NXDOMAIN and a known name without the type asked is NOERROR with
no data (implicit MX); any other name is REFUSED (nothing is forwarded anywhere: the test's
resolver is the only DNS there is). `queries()` lists the logged questions, ("MX", "example.test"),
once the log has caught up (`sync()`).
"""
import os
import shutil
import socket
import subprocess
import time

import pytest

from mtaproc import stop_process

BINARY = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if os.path.exists("/usr/sbin/dnsmasq") else None)
needs_dnsmasq = pytest.mark.skipif(BINARY is None, reason="dnsmasq is not installed")


def free_port():
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(50):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
        finally:
            t.close()
            u.close()
    raise RuntimeError("no free port")


class Dnsmasq:
    def __init__(self, workdir, mx=(), hosts=None, null_mx=(), cnames=(), timeout=(), local=("test",), txt=()):
        self.workdir = str(workdir)
        self.mx, self.hosts, self.null_mx = list(mx), dict(hosts or {}), list(null_mx)
        self.cnames, self.timeout, self.local = list(cnames), list(timeout), list(local)
        self.txt = list(txt)        # names that exist with a TXT record only (no MX, A or AAAA)
        self.proc = self.port = self._hole = self._log = None
        self.conf = os.path.join(self.workdir, "dnsmasq.conf")
        self.logpath = os.path.join(self.workdir, "dnsmasq.log")

    @property
    def server(self):
        return ("127.0.0.1", self.port)

    def _config(self):
        lines = ["port=%d" % self.port, "listen-address=127.0.0.1", "bind-interfaces", "no-resolv",
                 "no-hosts", "no-poll", "no-negcache", "pid-file=", "log-queries", "log-facility=-"]
        lines += ["local=/%s/" % d for d in self.local]
        lines += ["mx-host=%s,%s,%d" % (d, h, p) for d, h, p in self.mx]
        lines += ["dns-rr=%s,15,000000" % d for d in self.null_mx]
        for name, addrs in self.hosts.items():
            for a in [addrs] if isinstance(addrs, str) else addrs:
                lines.append("host-record=%s,%s" % (name, a))
        lines += ["cname=%s,%s" % (a, t) for a, t in self.cnames]
        lines += ["txt-record=%s,exists" % d for d in self.txt]
        lines += ["server=/%s/127.0.0.1#%d" % (d, self._hole.getsockname()[1]) for d in self.timeout]
        return "\n".join(lines) + "\n"

    def start(self, wait=10):
        assert BINARY, "dnsmasq is not installed"
        if self.timeout and self._hole is None:
            self._hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never read
            self._hole.bind(("127.0.0.1", 0))
        for attempt in range(5):
            self.port = free_port()
            with open(self.conf, "w") as f:
                f.write(self._config())
            self._log = open(self.logpath, "ab")
            # -k: foreground, drops root to nobody (-d would stay root); --conf-file keeps /etc out
            self.proc = subprocess.Popen([BINARY, "-k", "--conf-file=" + self.conf], stdin=subprocess.DEVNULL,
                                         stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
            if self._wait_up(wait):
                return self
            self.stop()
            if "Address already in use" not in self.log():  # lost a race for the port: try another
                break
        raise RuntimeError("dnsmasq did not start:\n" + self.log())

    def _wait_up(self, wait):
        deadline = time.monotonic() + wait
        # a bare query for the root, over UDP; any reply (REFUSED) means it is serving
        q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x01"
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.1)
        try:
            while time.monotonic() < deadline and self.proc.poll() is None:
                s.sendto(q, self.server)
                try:
                    if s.recv(512)[:2] == q[:2]:
                        return True
                except OSError:  # timeout, or refused before it binds
                    time.sleep(0.05)
            return False
        finally:
            s.close()

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self):
        self.stop()
        if self._hole is not None:
            self._hole.close()
            self._hole = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def log(self):
        try:
            with open(self.logpath, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def sync(self, wait=5):
        """Return once dnsmasq has logged every query it answered before this call."""
        self._syncs = getattr(self, "_syncs", 0) + 1
        name = "sync-%d.%s" % (self._syncs, (self.local or ["test"])[0])
        q = b"\x56\x78\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        q += b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\x00\x00\x01\x00\x01"
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.2)
        deadline = time.monotonic() + wait
        try:
            while time.monotonic() < deadline:
                s.sendto(q, self.server)
                try:
                    s.recv(512)
                except OSError:
                    pass
                end = time.monotonic() + 0.5
                while time.monotonic() < end:
                    if ("query[A] %s " % name) in self.log():
                        return
                    time.sleep(0.01)
        finally:
            s.close()
        raise RuntimeError("dnsmasq did not log %s" % name)

    def queries(self, sync=True):
        """[(type, name)] asked so far, from the query log ("query[MX] example.test from ...");
        sync (the default) first waits until the log is complete (see sync()). Sync queries are
        left out."""
        if sync:
            self.sync()
        out = []
        for line in self.log().splitlines():
            i = line.find("query[")
            if i >= 0:
                rest = line[i + 6:]
                qtype, name = rest[:rest.index("]")], rest[rest.index("]") + 2:].split(" ")[0]
                if not name.startswith("sync-"):
                    out.append((qtype, name))
        return out


@pytest.fixture
def dnsmasq(tmp_path):
    """Factory: dnsmasq(mx=..., hosts=..., ...) -> a started Dnsmasq; all stopped at teardown."""
    started = []

    def make(**records):
        d = os.path.join(str(tmp_path), "dnsmasq%d" % len(started))
        os.mkdir(d)
        dm = Dnsmasq(d, **records)
        started.append(dm)
        return dm.start()

    yield make
    for dm in started:
        dm.close()
