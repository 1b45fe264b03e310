"""The control socket (CPython): a UNIX socket, mode 0600, that `tinymta status|mailq|...` talk to.

Wire protocol, one exchange per line, as many as the client likes on one connection:

    request   a console command line in UTF-8, ended by LF ("mailq --json\\n")
    reply     one line of JSON: {"ok": true|false, "output": "<the console's answer>"}

Only the socket's owner (the MTA's user) and root can connect: the socket is created under
umask 0177 and chmod 0600 before it listens, so no other user ever sees a moment where it is
open.  A stale socket file left by a killed MTA is replaced; a live one (another tinymta
answers on it) is a ValueError for the caller (a StartupError at `serve`).

Bad input is answered, never fatal: a line over LINE_MAX bytes gets an error reply and the
connection is closed; bytes that are not UTF-8 become an unknown command.  At most MAX_CLIENTS
connections at once, idle ones are closed after IDLE_MS.
This module must not know the commands (console.py) or SMTP.
"""
import errno
import json
import os
import socket
import stat

from tinymta import compat, netio
from tinymta.console import Session

log = compat.get_logger("console")

LINE_MAX = 4096
MAX_CLIENTS = 8
IDLE_MS = 60000
OUT_MAX = 1 << 20       # answers a client has not read; past this it is dropped (it never reads)
BUSY = b'{"ok": false, "busy": true, "output": "error: busy: too many control clients; try again"}\n'


def _stale(path):
    """True when path is a socket nobody accepts on (left by a killed MTA): safe to replace.
    Anything else at the path is a ValueError: a file there (a typo, the spool itself) is never
    removed, and a socket that answers or cannot be probed belongs to someone."""
    try:
        st = os.lstat(path)
    except OSError:
        return False                    # nothing there
    if not stat.S_ISSOCK(st.st_mode):
        raise ValueError("control socket %s: the path exists and is not a socket (console.socket"
                         " must name a path of its own)" % path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1)
    try:
        probe.connect(path)
    except OSError as e:
        if compat.oserror_errno(e) == errno.ECONNREFUSED:
            return True
        raise ValueError("control socket %s: in use or not ours (%s)" % (path, compat.os_error_text(e)))
    finally:
        probe.close()
    raise ValueError("control socket %s: another tinymta is running there" % path)


class _Client:
    __slots__ = ("sock", "inbuf", "out", "last", "session")

    def __init__(self, sock):
        self.sock, self.inbuf, self.out = sock, bytearray(), bytearray()
        self.last = compat.ticks_ms()
        self.session = Session(trusted=True)


class ControlSocket:
    def __init__(self, server, console, path):
        self.server, self.console, self.path = server, console, path
        self.clients = {}
        if _stale(path):
            os.unlink(path)         # left by an MTA that was killed
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(path)
            os.chmod(path, 0o600)
            s.listen(32)   # more than MAX_CLIENTS: extra clients are accepted and refused
        except OSError:
            s.close()
            raise
        finally:
            os.umask(old)
        s.setblocking(False)
        self.sock = s
        server.watch(s, netio.POLLIN, self._on_accept)
        server.hooks.append(self._tick)
        log.info("control socket on %s", path)

    def _on_accept(self, events):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError as e:        # EMFILE & co: this client waits; the socket stays open
                if not compat.would_block(e):
                    log.warning("control socket: accept failed: %s", compat.os_error_text(e))
                return
            if len(self.clients) >= MAX_CLIENTS:
                log.warning("control socket: %d clients already; one refused", MAX_CLIENTS)
                try:
                    conn.send(BUSY)
                except OSError:
                    pass
                conn.close()
                continue
            conn.setblocking(False)
            c = _Client(conn)
            self.clients[id(conn)] = c
            self.server.watch(conn, netio.POLLIN, lambda ev, c=c: self._on_client(c, ev))

    def _on_client(self, c, events):
        try:
            if events & netio.POLLOUT:
                self._flush(c)
            if events & (netio.POLLIN | netio.POLLERR | netio.POLLHUP):
                data = netio.recv(c.sock, 4096)
                if data is None:
                    return
                if not data:
                    self._drop(c)
                    return
                c.last = compat.ticks_ms()
                c.inbuf.extend(data)
                self._serve(c)
        except Exception as e:          # the peer died mid-exchange, or a fault of ours: this client only
            if isinstance(e, OSError):
                log.info("control socket: client gone: %s", compat.os_error_text(e))
            else:
                log.error("control socket: %r; client dropped", e)
            self._drop(c)

    def _serve(self, c):
        while c.sock is not None:
            end = c.inbuf.find(b"\n")
            if end < 0:
                if len(c.inbuf) > LINE_MAX:
                    log.warning("control socket: a request over %d bytes; connection closed", LINE_MAX)
                    self._reply(c, False, "error: request longer than %d bytes" % LINE_MAX)
                    self._flush(c)
                    self._drop(c)
                return
            line = compat.decode_utf8_replace(bytes(c.inbuf[:end])).strip("\r")
            del c.inbuf[:end + 1]
            ok, text = self.console.execute(c.session, line)
            self._reply(c, ok, text)
            if c.session.closing:
                self._flush(c)
                self._drop(c)
                return

    def _reply(self, c, ok, text):
        c.out.extend((json.dumps({"ok": ok, "output": text}) + "\n").encode())
        self._flush(c)
        if c.sock is not None and len(c.out) > OUT_MAX:     # asks and never reads: not our memory
            log.warning("control socket: a client left %d bytes of answers unread; dropped", len(c.out))
            self._drop(c)

    def _flush(self, c):
        if c.sock is None:
            return
        while c.out:
            n = netio.send(c.sock, bytes(c.out[:65536]))
            if not n:
                break
            del c.out[:n]
        self.server.watch(c.sock, netio.POLLIN | (netio.POLLOUT if c.out else 0),
                          lambda ev, c=c: self._on_client(c, ev))

    def _drop(self, c):
        if c.sock is None:
            return
        self.clients.pop(id(c.sock), None)
        self.server.unwatch(c.sock)
        c.sock.close()
        c.sock = None

    def _tick(self, now_ms):
        for c in list(self.clients.values()):
            if compat.ticks_diff(now_ms, c.last) > IDLE_MS:
                log.info("control socket: idle client closed")
                self._drop(c)

    def close(self):
        for c in list(self.clients.values()):
            self._drop(c)
        if self.sock is not None:
            self.server.unwatch(self.sock)
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except OSError:
                pass
