"""Sockets and poll on CPython and MicroPython: listening, accepting, non-blocking send/recv.

MicroPython's unix port returns raw sockaddr bytes from accept() and the socket
objects themselves from poll(); CPython returns tuples and file descriptors.
Everything here hides that, so the server loop reads the same on both.

This module must not know SMTP, the spool or the configuration file.
"""
import socket
import select

from tinymta import compat

POLLIN = select.POLLIN
POLLOUT = select.POLLOUT
POLLERR = getattr(select, "POLLERR", 8)
POLLHUP = getattr(select, "POLLHUP", 16)


def listen_socket(host, port, backlog=64):
    """A non-blocking listening TCP socket on host:port (IPv4 or IPv6 literal, or a name)."""
    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    s = socket.socket(ai[0], socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if ai[0] == getattr(socket, "AF_INET6", -1) and hasattr(socket, "IPV6_V6ONLY"):
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(ai[-1])
        s.listen(backlog)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def _ip_text(raw):
    if len(raw) == 4:
        return "%d.%d.%d.%d" % (raw[0], raw[1], raw[2], raw[3])
    parts = ["%x" % ((raw[i] << 8) | raw[i + 1]) for i in range(0, 16, 2)]
    return ":".join(parts)


def peer_of(addr):
    """(ip text, port) from whatever accept() returned."""
    if isinstance(addr, tuple):
        ip = addr[0]
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[7:]
        return ip, addr[1]
    fam_ip_port = socket.sockaddr(addr)          # MicroPython unix: raw sockaddr bytes
    return _ip_text(bytes(fam_ip_port[1])), fam_ip_port[2]


def accept(listener):
    """(socket, (ip, port)) for a pending connection, or None when there is none."""
    try:
        conn, addr = listener.accept()
    except OSError as e:
        if compat.would_block(e) or compat.oserror_errno(e) in (compat.ECONNRESET, 103):
            return None
        raise
    conn.setblocking(False)
    return conn, peer_of(addr)


def wakeup_pair():
    """A connected non-blocking socket pair to wake poll() from a signal handler, or None."""
    if not hasattr(socket, "socketpair"):
        return None                 # MicroPython: no signal handlers to wake it from anyway
    r, w = socket.socketpair()
    r.setblocking(False)
    w.setblocking(False)
    return r, w


def _ssl_wants(e):
    return type(e).__name__ in ("SSLWantReadError", "SSLWantWriteError")


def recv(sock, n):
    """bytes, b"" at end of stream, or None when nothing is there yet."""
    try:
        data = sock.recv(n)
    except OSError as e:
        if compat.would_block(e) or _ssl_wants(e):
            return None
        raise
    return data     # MicroPython TLS sockets return None themselves while waiting


def send(sock, data):
    """Bytes sent (0 when the socket would block)."""
    try:
        n = sock.send(data)
    except OSError as e:
        if compat.would_block(e) or _ssl_wants(e):
            return 0
        raise
    return n or 0


class Poller:
    """select.poll that gives back the registered objects on both runtimes."""

    def __init__(self):
        self._p = select.poll()
        self._objs = {}

    def _key(self, obj):
        return id(obj) if compat.MICROPYTHON else obj.fileno()

    def register(self, obj, mask):
        self._p.register(obj, mask)
        self._objs[self._key(obj)] = obj

    def modify(self, obj, mask):
        self._p.modify(obj, mask)

    def unregister(self, obj):
        """Forget obj; call before closing it (a closed socket left registered polls forever)."""
        if self._objs.pop(self._key(obj), None) is not None:
            try:
                self._p.unregister(obj)
            except (KeyError, OSError, ValueError):
                pass

    def poll(self, ms):
        got = self._p.poll(ms)
        if compat.MICROPYTHON:
            return [(x[0], x[1]) for x in got]
        objs = self._objs
        return [(objs[fd], ev) for fd, ev in got if fd in objs]
