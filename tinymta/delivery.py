"""One message's delivery attempt: recipient groups, hosts in order, one SMTP connection at a time.

A Delivery drives the sans-IO Client over a non-blocking socket watched by the server's loop:
connect, (STARTTLS / implicit TLS), the transaction, the body streamed from the spool with the
final dot written together with the last chunk and only after every fragment's CRC matched.
It records what each recipient got (delivered, failed for good, or still to try) and hands the
result to the Relay (relay.py), which acks, bounces or defers.

This module must not know the SMTP grammar (client.py), the spool's format, or retry policy.
"""
import socket

from tinymta import compat, netio
from tinymta.client import Client
from tinymta.netaddr import parse_ip
from tinymta.spoolfmt import SpoolCorrupt, format_id

_thread = None                  # CPython: a worker for blocking DNS lookups; boards look up inline
if not compat.MICROPYTHON:
    import _thread

log = compat.get_logger("relay")
OUT_HIGH = 16384        # body bytes buffered for the socket before reading more from the spool
# bytes asked of one recv(): replies are short, and MicroPython allocates the whole size up front
# (16 KiB blocks fragment a board's heap: a MemoryError there stalled a delivery at 408K)
RECV_SIZE = 2048 if compat.MICROPYTHON else 16384


def _domain(addr):
    return addr[addr.rfind("@") + 1:].lower() if "@" in addr else ""


class Delivery:
    """One message's attempt: groups of recipients, each tried host by host."""

    def __init__(self, relay, msg):
        self.relay = relay
        self.msg = msg
        self.mode = relay.cfg.relay.mode
        self.groups = route_groups(self.mode, msg.recipients)
        self.delivered = []
        self.failed = []        # (rcpt, status, diagnostic, hop)
        self.last_error = None  # (hop, stage, text)
        self.sock = None
        self.connecting = False
        self.handshake = None       # "starttls" | "implicit" while a TLS handshake is under way

    # --- groups and hosts -----------------------------------------------------------
    def next_group(self):
        if not self.groups:
            self.relay.finish(self)
            return
        self.route, self.rcpts = self.groups.pop(0)
        self.group_done = False
        if _thread is not None:         # CPython: look up in a worker, the loop goes on serving
            self.dns_result = None
            _thread.start_new_thread(self._lookup_in_worker, ())
            return
        self._resolved(self._lookup())

    def _lookup(self):
        try:
            return self._hosts(), None
        except Exception as e:          # judged in the loop, by _resolved
            return None, e

    def _lookup_in_worker(self):
        self.dns_result = self._lookup()
        self.relay.server.wake()

    def poll_dns(self):
        """Called each loop pass: take a finished worker lookup."""
        got = getattr(self, "dns_result", None)
        if got is not None:
            self.dns_result = None
            self._resolved(got)

    def _resolved(self, got):
        hosts, e = got
        if e is None:
            self.hosts = hosts
            self.next_host()
            return
        # one hop name for a failed lookup, whichever resolver failed (getaddrinfo or the dns shim)
        hop = self.relay.cfg.relay.smarthost[0] if self.mode == "smarthost" else self.route
        if isinstance(e, OSError):      # the smarthost's name did not resolve (gaierror): try later
            self._record(hop, "DNS", "4.4.3 %s" % compat.os_error_text(e))
            self.next_group()
            return
        if self.relay.mx is None or not isinstance(e, self.relay.mx.DNSFailure):
            raise e
        self._record(hop, "DNS", str(e))
        if e.permanent:
            for r in self.rcpts:
                self.failed.append((r, e.status, str(e), None))
        self.next_group()

    def _hosts(self):
        r = self.relay.cfg.relay
        if self.mode == "smarthost":
            host, port = r.smarthost
            if not compat.MICROPYTHON:
                addrs = [ai[-1][0] for ai in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)]
            elif parse_ip(host) is not None:
                addrs = [host]
            else:   # not lwIP's getaddrinfo: it blocks unbounded; the dns shim is capped and feeds the watchdog
                addrs = self.relay.smarthost_addresses(host)
            return [(host, a, port) for a in addrs]
        out = []
        for name, addrs in self.relay.mx.resolve_mx(self.route, self.relay.resolver):
            for a in addrs:
                out.append((name, a, r.mx_port))
        return out

    def next_host(self):
        self._close()
        if self.group_done or not self.hosts:
            self.next_group()
            return
        self.host, addr, port = self.hosts.pop(0)
        self.hop = "%s[%s]:%d" % (self.host, addr, port)
        r = self.relay.cfg.relay
        tls = r.tls
        if self.mode == "mx" and tls == "implicit":
            tls = "starttls"
        auth = (r.username.encode(), self.relay.password) if (r.username and self.mode == "smarthost") else None
        self.client = Client(self.relay.cfg.server.hostname, tls, auth, False, self.relay.timeouts)
        self.out = bytearray()
        self.body_iter = None
        self.lookahead = None
        self.rcpt_ok = []
        self.rcpt_seen = 0
        self.sent = False
        self.progress = -1
        self.deadline = 0
        try:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            ai = socket.getaddrinfo(addr, port, 0, socket.SOCK_STREAM)[0]
            s = socket.socket(ai[0] if compat.MICROPYTHON else fam, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(ai[-1])
            except OSError as e:
                if not compat.would_block(e):
                    s.close()
                    raise
            self.sock = s
            self.connecting = True
            self.relay.server.watch(s, netio.POLLOUT, self.on_ready)
            self._arm()
        except OSError as e:
            self.client.connect_failed(compat.os_error_text(e))
            self._events()

    def _arm(self):
        if self.client.progress != self.progress:
            self.progress = self.client.progress
            self.deadline = compat.ticks_add(compat.ticks_ms(), self.client.timeout_ms() or 1000)

    def check_timeout(self, now_ms):
        if self.sock is not None and compat.ticks_diff(now_ms, self.deadline) > 0:
            self.client.timed_out()
            self._events()

    # --- socket events ------------------------------------------------------------
    def on_ready(self, ev):
        client = self.client
        if self.handshake is not None:
            self._handshake_step()
            return
        if self.connecting:
            self.connecting = False
            if ev & (netio.POLLERR | netio.POLLHUP) and not ev & netio.POLLIN:
                self.client.connect_failed("connection refused")
                self._events()
                return
            if self.relay.cfg.relay.tls == "implicit" and self.mode == "smarthost":
                if not self._wrap("implicit") or self.handshake is not None:
                    return
        if ev & netio.POLLOUT:
            self._write()
        # ev is about this connection: not about the next host's, if the write ended this one
        if self.sock is not None and self.client is client and ev & (netio.POLLIN | netio.POLLERR | netio.POLLHUP):
            try:
                data = netio.recv(self.sock, RECV_SIZE)
            except OSError:
                data = b""
            if data is not None:
                self.client.receive(data)
                self._events()
        self._watch()

    def _watch(self):
        if self.sock is not None and self.handshake is not None:
            self.relay.server.watch(self.sock, self.hs_want, self.on_ready)
        elif self.sock is not None:
            want = netio.POLLIN
            if self.connecting or self.out or self.body_iter is not None:  # connected: POLLOUT
                want |= netio.POLLOUT
            self.relay.server.watch(self.sock, want, self.on_ready)

    def _write(self):
        while self.sock is not None:
            if len(self.out) < OUT_HIGH and self.body_iter is not None:
                self._pump_body()
            if not self.out:
                return
            try:
                n = netio.send(self.sock, self.out)
            except OSError:         # reset, broken pipe: the server is gone (mid-DATA, say)
                self._lost()
                return
            if n == 0:
                return
            self.out[:n] = b""
            self._arm()

    def _lost(self):
        """The connection broke under a write: what the server said before, then end of stream."""
        self.out = bytearray()
        self.body_iter = self.lookahead = None
        try:
            data = netio.recv(self.sock, RECV_SIZE)
        except OSError:
            data = None
        self.client.receive(data)
        self.client.receive(b"")
        self._events()

    def _pump_body(self):
        """Next fragment into the output; the final dot goes with the last one, after all CRCs."""
        try:
            nxt = next(self.body_iter)
        except StopIteration:
            nxt = None
        except SpoolCorrupt as e:
            log.error("%s: %s: delivery aborted before the final dot", format_id(self.msg.id), e)
            self.body_iter = None
            self.client.body_abort()
            self._events()
            return
        if nxt is None:
            self.out.extend(self.client.body(self.lookahead or b""))
            self.out.extend(self.client.body_end())
            self.body_iter = self.lookahead = None
        else:
            if self.lookahead is not None:
                self.out.extend(self.client.body(self.lookahead))
            self.lookahead = nxt

    def _wrap(self, why):
        """Start TLS on the socket (why: "starttls" or "implicit"); False when it failed at once.

        CPython: a non-blocking handshake, stepped by the loop (on_ready).  MicroPython: blocking,
        bounded by a 30 s socket timeout, or less under a watchdog (compat.blocking)."""
        r = self.relay.cfg.relay
        verify = self.mode == "smarthost"
        try:
            ctx = compat.client_tls_context(r.ca_file, verify)
            self.relay.server.unwatch(self.sock)
            if compat.MICROPYTHON:
                self.sock.setblocking(True)
                # the handshake waits for the server about 3 times (hello, key exchange, finished):
                # under a board's watchdog all of them together stay inside its timeout
                self.sock.settimeout(compat.blocking(30, 3))
                self.sock = ctx.wrap_socket(self.sock, server_hostname=self.host)
                self.sock.setblocking(False)
            else:
                self.sock = ctx.wrap_socket(self.sock, server_hostname=self.host, do_handshake_on_connect=False)
                self.handshake, self.hs_want = why, netio.POLLOUT
                self._watch()
                return True
        except (OSError, ValueError) as e:
            self._tls_failed(e)
            return False
        self._tls_done(why)
        return True

    def _handshake_step(self):
        try:
            self.sock.do_handshake()
        except OSError as e:
            name = type(e).__name__
            if name == "SSLWantReadError":
                self.hs_want = netio.POLLIN
            elif name == "SSLWantWriteError":
                self.hs_want = netio.POLLOUT
            else:
                self.handshake = None
                self._tls_failed(e)
                return
            self._watch()
            return
        why, self.handshake = self.handshake, None
        self._tls_done(why)

    def _tls_done(self, why):
        if why == "starttls":
            self.client.tls_started()
            self._events()
        self._watch()

    def _tls_failed(self, e):
        self.client.tls_failed(compat.decode_utf8_replace(str(e).encode()))
        self._events()

    def _events(self):
        c = self.client
        while True:
            ev = c.next_event()
            if ev is None:
                break
            kind = ev[0]
            if kind == "send":
                self.out.extend(ev[1])
            elif kind == "starttls":
                self._write()
                if c is self.client:                      # (not if that write lost the link)
                    self._wrap("starttls")
                    return                                # tls_started() once the handshake is done
            elif kind == "ready":
                nxt = None
                if self.sent and not self.groups:
                    nxt = self.relay.take_same_route(self.route)
                if self.sent and nxt is None:
                    c.quit()
                else:
                    if nxt is not None:         # the connection carries the next message on
                        self._adopt(nxt[0], nxt[1])
                    self.sent = True
                    c.send_message(self.msg.sender.encode(), [r.encode() for r in self.rcpts], self.msg.size,
                                   b"BODY=8BITMIME" in self.msg.params)
            elif kind == "rcpt":
                self._rcpt(ev[1], ev[2], ev[3])
            elif kind == "body":
                self.body_iter = self.relay.spool.read(self.msg.id)
            elif kind == "done":
                self._done(ev[1], ev[2])
            elif kind == "error":
                self._error(ev[1], ev[2], ev[3], ev[4])
            elif kind == "closed":
                self.next_host()
                return
        self._arm()
        if self.sock is not None:
            self._write()

    def _adopt(self, msg, groups):
        """Finish the message just sent and take over msg on this connection (same route)."""
        self.relay.finish(self)
        self.msg = msg
        self.relay.active[msg.id] = self
        self.groups = [g for g in groups if g[0] != self.route]
        self.rcpts = [g for g in groups if g[0] == self.route][0][1]
        self.delivered, self.failed, self.last_error = [], [], None
        self.rcpt_ok, self.rcpt_seen, self.group_done = [], 0, False
        self.body_iter = self.lookahead = None

    def _rcpt(self, i, code, text):
        rcpt = self.rcpts[i]
        self.rcpt_seen += 1
        if code < 300:
            self.rcpt_ok.append(rcpt)
        elif code >= 500:
            self.failed.append((rcpt, _status(text, "5.0.0"), _reply(code, text), self.host))
        else:
            self._record(self.hop, "RCPT", "%d %s" % (code, compat.decode_utf8_replace(text)))

    def _done(self, code, text):
        t = "%d %s" % (code, compat.decode_utf8_replace(text))
        if code < 300:
            for r in self.rcpt_ok:
                log.info("%s: to=<%s>, relay=%s, status=sent (%s)", format_id(self.msg.id), r, self.hop, t)
            self.delivered.extend(self.rcpt_ok)
            self.relay.queue.hop_ok(self.hop, compat.unix_time())
        elif code >= 500 and (self.rcpt_ok or not self.rcpt_seen):
            # refused for good: after DATA the accepted recipients; before any RCPT reply (MAIL
            # refused, or the client's own 552 5.3.4 / 554 5.6.3) every recipient of the group
            for r in (self.rcpt_ok or self.rcpts):
                self.failed.append((r, _status(text, "5.0.0"), _reply(code, text), self.host))
        else:
            self._record(self.hop, "DATA" if self.rcpt_ok else "MAIL", t)
        self.group_done = True          # this group got a final answer from a server

    def _error(self, stage, code, text, temporary):
        t = "%d %s" % (code, compat.decode_utf8_replace(text))
        st = compat.decode_utf8_replace(stage)
        self._record(self.hop, st, t)
        if not temporary and not self.group_done:
            for r in self.rcpts:
                if r not in self.delivered and not [1 for f in self.failed if f[0] == r]:
                    self.failed.append((r, _status(text, "5.0.0"), _reply(code, text), self.host))
            self.group_done = True

    def _record(self, hop, stage, text):
        self.last_error = (hop, stage, text)
        log.warning("%s: relay=%s, stage=%s, status=deferred (%s)", format_id(self.msg.id), hop, stage, text)
        self.relay.queue.hop_failed(hop, compat.unix_time(), stage, text)

    def _close(self):
        self.handshake = None
        if self.sock is not None:
            self.relay.server.unwatch(self.sock)
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


def _reply(code, text):
    """The server's reply as a DSN's diagnostic: "550 5.1.1 ..." (typed smtp there), code kept."""
    return b"%d %s" % (code, text if isinstance(text, bytes) else text.encode())


def route_groups(mode, recipients):
    """[(route, [recipients])]: one group per recipient domain (mx), or one group (smarthost)."""
    if mode == "smarthost":
        return [("smarthost", list(recipients))]
    by = {}
    order = []
    for r in recipients:
        dom = _domain(r)
        if dom not in by:
            by[dom] = []
            order.append(dom)
        by[dom].append(r)
    return [(dom, by[dom]) for dom in order]


def _status(text, default):
    """The enhanced status code at the start of a reply text, or default."""
    t = compat.decode_utf8_replace(text) if isinstance(text, bytes) else text
    head = t.split(" ", 1)[0] if t else ""
    parts = head.split(".")
    if len(parts) == 3 and parts[0] in ("4", "5") and parts[1].isdigit() and parts[2].isdigit():
        return head
    return default
