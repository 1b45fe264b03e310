"""The SMTP receiving server: one poll loop over non-blocking sockets, sessions and the spool.

    srv = Server(cfg, spool[, users, tls_context])
    srv.run()            until srv.stop() (SIGTERM): open sessions get 421, the spool closes

Each connection pairs a socket with a sans-IO Session (session.py).  Bodies stream from the
socket into a spool writer in chunks as they arrive; nothing holds a whole message.  The 250
after DATA is sent only once the message is durable: every session that finished its DATA in
one pass of the loop is committed with a single sync (group commit), then all of them get
their 250.  Hooks let other parts (the queue runner, the console) share the loop.

This module must not know the SMTP grammar (session.py), the on-media format (spool*.py), or
where mail goes next (relay).
"""
from tinymta import compat, netio
from tinymta.config import ip_allowed, domain_allowed
from tinymta.intake import Intake, R_STORAGE, text as _text
from tinymta.session import Session, Policy

log = compat.get_logger("smtpd")

R_RELAY = b"550 5.7.1 Relay access denied"
R_NOT_FQDN = b"550 5.1.2 Recipient address rejected: need a fully-qualified domain"
R_BUSY = b"421 4.7.0 %s Too many connections, try again later\r\n"
# bytes asked of one recv(): MicroPython allocates the whole size before reading, and 16 KiB
# blocks fragment a board's heap (BENCHMARKS.md, MicroPython heap); CPython reads big for speed
READ_SIZE = 2048 if compat.MICROPYTHON else 16384


class Connection:
    """One client: its socket, its session, what waits to be sent, the message being stored."""

    def __init__(self, sock, peer, session, now):
        self.sock = sock
        self.ip, self.port = peer
        self.session = session
        self.out = bytearray()
        self.last = now
        self.closing = False
        self.writer = None
        self.fixer = None
        self.failed = None          # the refusal to give at the end of DATA
        self.size_hint = 0
        self.params = b""           # envelope parameters worth keeping (BODY=8BITMIME)
        self.sender = ""
        self.rcpts = []
        self.tls_pending = False

    def name(self):
        return "[%s]:%d" % (self.ip, self.port)


class Server(Intake):
    def __init__(self, cfg, spool, users=None, tls_context=None):
        self.cfg = cfg
        self.spool = spool
        self.users = users
        self.tls = tls_context
        srv = cfg.server
        self.hostname = srv.hostname
        self.policy = Policy(hostname=srv.hostname, max_message_size=srv.max_message_size,
                             max_recipients=srv.max_recipients, bare_newlines=srv.bare_newlines,
                             tls_available=tls_context is not None, auth_available=users is not None,
                             auth_without_tls=srv.auth_without_tls)
        self.poller = netio.Poller()
        self.listeners = []
        self.conns = {}             # id(sock) -> Connection
        self.to_commit = []         # connections whose DATA ended in this pass
        self.hooks = []             # callables(now_ms) run once per loop pass
        self.watched = {}           # id(obj) -> callable(events): other parts' sockets in this loop
        self.on_queued = None       # callable(msg_id) told of every message made durable (the relay)
        self.closers = []           # objects whose close() runs at shutdown (console transports)
        self.running = False
        self.stats = {"received": 0, "rejected": 0, "connections": 0}
        self._wake = netio.wakeup_pair()    # stop() from a signal handler ends a poll() at once
        if self._wake is not None:
            self.poller.register(self._wake[0], netio.POLLIN)

    # --- set-up and shutdown -------------------------------------------------
    def listen(self):
        for host, port in self.cfg.server.listen:
            s = netio.listen_socket(host, port)
            self.listeners.append(s)
            self.poller.register(s, netio.POLLIN)

    def stop(self):
        self.running = False
        self.wake()

    def wake(self):
        """End the current poll() at once (from a signal handler or a worker thread)."""
        if self._wake is not None:
            try:
                netio.send(self._wake[1], b"x")
            except OSError:
                pass

    def watch(self, obj, mask, handler):
        """Poll obj in this loop too; handler(events) runs when it is ready (relay, console)."""
        if id(obj) in self.watched:
            self.poller.modify(obj, mask)
        else:
            self.poller.register(obj, mask)
        self.watched[id(obj)] = handler

    def unwatch(self, obj):
        if self.watched.pop(id(obj), None) is not None:
            self.poller.unregister(obj)

    def close_listeners(self):
        for s in self.listeners:
            self.poller.unregister(s)
            s.close()
        self.listeners = []

    def run(self, max_wait_ms=1000):
        self.running = True
        while self.running:
            self.step(max_wait_ms)
        self.shutdown()

    def shutdown(self, interrupted=False):
        """421 to every open session, drop unfinished messages, close the spool cleanly.

        interrupted: the loop was broken off at an arbitrary point (MicroPython's SIGINT is a
        KeyboardInterrupt).  The spool's RAM state may then be mid-append, so it is not written
        to again; everything acknowledged is durable already and pending ACKs only mean a
        duplicate delivery, as after a power cut.
        """
        for c in list(self.conns.values()):
            if not c.closing:
                c.out.extend(c.session.shutdown_reply())
                c.closing = True
            if interrupted:
                c.writer = None
            self._drop_message(c)
        deadline = compat.ticks_add(compat.ticks_ms(), 2000)
        while self.conns and compat.ticks_diff(deadline, compat.ticks_ms()) > 0:
            for c in list(self.conns.values()):
                try:
                    self._flush(c)
                except OSError:         # that client is gone: the others still get their 421
                    self._close(c)
            if self.conns:
                compat.sleep_ms(10)
        for c in list(self.conns.values()):
            self._close(c)
        for part in self.closers:
            try:
                part.close()
            except Exception as e:     # a console transport must not keep the spool from closing
                log.error("closing %r: %r", part, e)
        self.close_listeners()
        if self._wake is not None:
            self.poller.unregister(self._wake[0])
            self._wake[0].close()
            self._wake[1].close()
            self._wake = None
        if not interrupted:
            self.spool.close()
        log.info("stopped")

    # --- the loop --------------------------------------------------------------
    def step(self, max_wait_ms=1000):
        """One pass: wait for sockets, serve them, commit finished messages, expire idle ones."""
        for obj, ev in self.poller.poll(self._wait_ms(max_wait_ms)):
            if self._wake is not None and obj is self._wake[0]:
                netio.recv(obj, 64)
                continue
            if obj in self.listeners:
                self._accept(obj)
                continue
            handler = self.watched.get(id(obj))
            if handler is not None:
                try:
                    handler(ev)
                except Exception as e:  # another part's failure never stops the loop
                    log.error("watched socket handler failed: %r", e)
                    self.unwatch(obj)
                continue
            c = self.conns.get(id(obj))
            if c is None:
                continue
            try:
                if ev & netio.POLLOUT:
                    self._flush(c)
                if c.sock is not None and ev & (netio.POLLIN | netio.POLLERR | netio.POLLHUP):
                    self._read(c)
            except Exception as e:  # one client's failure never stops the loop
                self._fail(c, e)
        if self.to_commit:
            self._group_commit()
        now = compat.ticks_ms()
        for c in list(self.conns.values()):
            if c.sock is not None and not c.closing and \
                    compat.ticks_diff(now, c.last) > self.cfg.server.timeout * 1000:
                log.info("%s: idle timeout", c.name())
                c.out.extend(c.session.timeout_reply())
                c.closing = True
                self._drop_message(c)
                self._flush(c)
        for hook in list(self.hooks):   # (a hook may remove itself)
            try:
                hook(now)
            except Exception as e:      # a part's failure (relay, console, LED) never stops the loop
                log.error("loop hook %r failed: %r", hook, e)

    def _fail(self, c, e):
        """Whatever went wrong with one client ends that client only."""
        log.error("%s: %r; connection closed", c.name(), e)
        self._drop_message(c)
        self._close(c)

    def _wait_ms(self, max_wait_ms):
        return 0 if self.to_commit else max_wait_ms

    def _accept(self, listener):
        while True:
            try:
                got = netio.accept(listener)
            except OSError as e:        # out of file descriptors or memory: stop taking, not serving
                self._pause_accepting(e)
                return
            if got is None:
                return
            sock, peer = got
            self.stats["connections"] += 1
            if len(self.conns) >= self.cfg.server.max_connections:
                log.warning("connect from [%s]:%d refused: %d sessions already", peer[0], peer[1],
                            len(self.conns))
                try:
                    netio.send(sock, R_BUSY % self.hostname.encode())
                except OSError:         # it left already
                    pass
                sock.close()
                continue
            c = Connection(sock, peer, Session(self.policy), compat.ticks_ms())
            self.conns[id(sock)] = c
            self.poller.register(sock, netio.POLLIN)
            log.info("connect from %s", c.name())
            c.out.extend(c.session.greeting())
            self._flush(c)

    def _pause_accepting(self, e):
        """accept() failed (EMFILE, ENFILE, ENOMEM): the pending clients wait in the kernel's
        backlog while the listeners rest for a second, instead of a busy loop or a crash."""
        log.warning("accept failed: %s; not accepting for 1 s", compat.os_error_text(e))
        for s in self.listeners:
            self.poller.unregister(s)
        resume_at = compat.ticks_add(compat.ticks_ms(), 1000)

        def resume(now_ms):
            if compat.ticks_diff(now_ms, resume_at) >= 0:
                self.hooks.remove(resume)
                for s in self.listeners:
                    self.poller.register(s, netio.POLLIN)
        self.hooks.append(resume)

    def _read(self, c):
        if not c.session.wants_data() or c.tls_pending:
            if c.tls_pending:
                self._tls_handshake(c)
            return
        try:
            data = netio.recv(c.sock, READ_SIZE)
        except OSError as e:
            if compat.oserror_errno(e) not in (compat.ECONNRESET, compat.ETIMEDOUT, compat.EPIPE):
                raise
            data = b""                  # the client reset the connection: same as a close
        if data is None:
            return
        if not data:
            if c.writer is not None:
                log.info("%s: lost connection in DATA; message dropped", c.name())
            self._drop_message(c)
            self._close(c)
            return
        c.last = compat.ticks_ms()
        c.session.receive(data)
        self._events(c)

    def _flush(self, c):
        while c.out and c.sock is not None:
            n = netio.send(c.sock, c.out)
            if n == 0:
                break
            c.out[:n] = b""
        if c.sock is None:
            return
        if c.closing and not c.out:
            self._close(c)
            return
        want = 0 if c.closing else netio.POLLIN
        if c.out:
            want |= netio.POLLOUT
        self.poller.modify(c.sock, want or netio.POLLOUT)

    def _close(self, c):
        if c.sock is None:
            return
        self.poller.unregister(c.sock)
        self.conns.pop(id(c.sock), None)
        try:
            c.sock.close()
        except OSError:
            pass
        c.sock = None
        log.info("disconnect from %s", c.name())

    # --- session events ------------------------------------------------------------
    def _events(self, c):
        s = c.session
        while c.sock is not None:
            ev = s.next_event()
            if ev is None:
                break
            kind = ev[0]
            if kind == "reply":
                c.out.extend(ev[1])
            elif kind == "mail":
                self._on_mail(c, ev[1], ev[2])
            elif kind == "rcpt":
                self._on_rcpt(c, ev[1])
            elif kind == "data_start":
                self._on_data_start(c, ev[1], ev[2])
            elif kind == "body":
                self._on_body(c, ev[1])
            elif kind == "data_abort":
                self._drop_message(c)
            elif kind == "data_end":
                self._on_data_end(c)
            elif kind == "auth":
                ok = self.users is not None and self.users.check(ev[2], ev[3])   # bytes: as given
                log.info("%s: AUTH %s user=%s %s", c.name(), _text(ev[1]), _text(ev[2]),
                         "ok" if ok else "failed")
                s.auth_result(ok)
            elif kind == "starttls":
                self._start_tls(c)
            elif kind == "close":
                c.closing = True
                if s.last_error is not None:    # the session's own fault: it answered 421, we say why
                    log.error("%s: session fault: %r", c.name(), s.last_error)
        self._flush(c)

    def _on_mail(self, c, sender, params):
        size = 0
        c.params = b""
        for k, v in params:
            if k == b"BODY" and v and v.upper() == b"8BITMIME":
                c.params = b"BODY=8BITMIME"     # kept in the envelope: the relay must honour it
            if k == b"SIZE" and v:
                try:
                    size = int(v)
                except ValueError:
                    size = 0
        if not self.spool.can_accept(size):
            log.warning("%s: MAIL from=<%s> refused: spool full", c.name(), _text(sender))
            self.stats["rejected"] += 1
            c.session.reject_mail(R_STORAGE)
            return
        c.size_hint = size
        c.session.accept_mail()

    def _on_rcpt(self, c, addr):
        domain = _text(addr[addr.rfind(b"@") + 1:]) if b"@" in addr else ""
        local = _text(addr[:addr.rfind(b"@")]) if b"@" in addr else _text(addr)
        if local.lower() == "postmaster" and domain.lower() == self.hostname.lower():
            c.session.accept_rcpt()
            return
        if "." not in domain and not domain.startswith("["):   # never guess a domain (RFC 5321 §5.1)
            log.warning("reject: RCPT from %s: <%s>: not a fully-qualified domain", c.name(), _text(addr))
            self.stats["rejected"] += 1
            c.session.reject_rcpt(R_NOT_FQDN)
            return
        trusted = c.session.auth_user or ip_allowed(self.cfg, c.ip)
        if not trusted or not domain_allowed(self.cfg, domain):
            log.warning("reject: RCPT from %s: %s <%s>: Relay access denied; auth=%s", c.name(),
                        R_RELAY[:3].decode(), _text(addr), "yes" if c.session.auth_user else "no")
            self.stats["rejected"] += 1
            c.session.reject_rcpt(R_RELAY)
            return
        c.session.accept_rcpt()

    # --- STARTTLS --------------------------------------------------------------
    def _start_tls(self, c):
        self._flush_blocking(c)
        try:
            c.sock = self.tls.wrap_socket(c.sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as e:
            log.warning("%s: TLS setup failed: %r", c.name(), e)
            c.closing = True
            return
        self.conns[id(c.sock)] = c
        self.poller.register(c.sock, netio.POLLIN)
        c.tls_pending = True
        self._tls_handshake(c)

    def _flush_blocking(self, c, ms=5000):
        deadline = compat.ticks_add(compat.ticks_ms(), ms)
        old = c.sock
        while c.out and compat.ticks_diff(deadline, compat.ticks_ms()) > 0:
            n = netio.send(old, c.out)
            c.out[:n] = b""
            if not n:
                compat.sleep_ms(5)
        self.poller.unregister(old)
        self.conns.pop(id(old), None)

    def _tls_handshake(self, c):
        try:
            if hasattr(c.sock, "do_handshake"):
                c.sock.do_handshake()
        except OSError as e:
            if netio._ssl_wants(e):
                return
            log.warning("%s: TLS handshake failed: %s", c.name(), e)
            self._close(c)
            return
        c.tls_pending = False
        c.session.tls_started()
        log.info("%s: TLS established", c.name())
        self._events(c)
