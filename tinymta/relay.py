"""The relay: delivers spooled mail to MX hosts or a smarthost from inside the server's loop.

    relay = Relay(server, cfg, resolver=None)    hooks itself into the loop; loads the queue

Each due message becomes a Delivery (delivery.py): its pending recipients are grouped by route (one group per
recipient domain in "mx" mode, one group in "smarthost" mode); each group tries its hosts in
order (MX preference, every address) over a non-blocking socket driven by the sans-IO Client.
The body streams from the spool fragment by fragment; the final dot is written together with the
last chunk, and only once every fragment's CRC matched (a corrupt message is never completed).
Delivered recipients are acked in the spool, permanent failures are bounced (a DSN queued in the
spool like any message, never for <>, rate-limited) and acked, temporary ones wait in the queue
with backoff; past max_age they are bounced.  The spool is written only on delivery or bounce.

A connection that breaks (even under a write, mid-DATA) or a name that does not resolve is a
temporary failure of that message, never of the loop.  Permanent refusals go into the DSN as the
server's reply ("550 5.1.1 ...").

Name lookups (MX and the smarthost's name) run in a worker thread on CPython, so a slow resolver
never stalls intake; on MicroPython they run inline (bounded by the resolver's lifetime).
When a message is done and another due message goes the same route, the open connection carries
it on (RSET if needed, then MAIL): one session for a backlog, not one per message.  TLS
handshakes are non-blocking on CPython; on MicroPython they block for at most 30 s.  This module must not know the SMTP grammar (client.py), sockets (delivery.py)
or the spool's format.
"""
from tinymta import compat
from tinymta.bounce import build_dsn, should_bounce, BounceLimiter
from tinymta.delivery import Delivery, route_groups
from tinymta.queue import Queue
from tinymta.spoolfmt import SpoolError, SpoolFull, format_id

log = compat.get_logger("relay")


def read_password(cfg):
    """The smarthost password from relay.password_file, or None; ValueError (one line) when the
    file cannot be read (mta.build asks before it creates anything)."""
    path = cfg.relay.password_file
    if not path:
        return None
    try:
        return compat.read_file(path).strip()
    except OSError as e:
        raise ValueError("relay.password_file %s: cannot read: %s" % (path, compat.os_error_text(e)))


class Relay:
    def __init__(self, server, cfg, resolver=None, password=None):
        self.server = server
        self.cfg = cfg
        self.spool = server.spool
        r = cfg.relay
        self.queue = Queue(r.retry_min, r.retry_max, r.max_age)
        self.resolver = resolver
        self.mx = None
        if r.mode == "mx":          # dnspython (or the boards' dns shim) only where MX delivery runs
            from tinymta import mx
            self.mx = mx
            if resolver is None:
                self.resolver = mx.make_resolver(r.dns_servers)
        self.limiter = BounceLimiter(20, 3600)
        t, d = r.timeout * 1000, r.data_timeout * 1000     # RFC 5321 4.5.3.2, scaled to the config
        self.timeouts = {"greeting": t, "mail": t, "rcpt": t, "command": t, "data": min(t, 120000),
                         "block": min(t, 180000), "dot": d}
        self.password = password if password is not None else read_password(cfg)
        self.active = {}
        self.acks_unsynced = False
        self.stats = {"delivered": 0, "bounced": 0, "deferred": 0}     # recipients, since start
        now = compat.unix_time()
        for m in self.spool.messages():
            self.queue.add(m.id, m.arrived, now)          # after a restart: due at once
        server.hooks.append(self.tick)
        server.on_queued = self.queued

    def smarthost_addresses(self, host):
        """The smarthost's addresses through tinymta.mx (MicroPython: the dns shim, whose waits
        are bounded); DNSFailure when it has none.  Loads the resolver on first use."""
        if self.mx is None:
            from tinymta import mx
            self.mx = mx
            self.resolver = mx.make_resolver(self.cfg.relay.dns_servers)
        addrs, why = self.mx.host_addresses(self.resolver, host, self.mx.FAMILIES)
        if not addrs:
            raise self.mx.DNSFailure(False, "4.4.3", why or "%s: no address record" % host)
        return addrs

    def queued(self, msg_id):
        self.queue.add(msg_id, compat.unix_time(), compat.unix_time())

    def tick(self, now_ms):
        now = compat.unix_time()
        for d in list(self.active.values()):
            d.poll_dns()
            d.check_timeout(now_ms)
        if self.acks_unsynced:          # one sync for every ack of this loop pass
            self.acks_unsynced = False
            try:
                self.spool.flush()
            except SpoolError as e:
                log.error("spool sync of delivery records failed: %s", e)
        limit = self.cfg.relay.max_deliveries
        if len(self.active) < limit and self.cfg.relay.mode != "none":
            for msg_id in self.queue.due(now, limit - len(self.active)):
                if msg_id not in self.spool:
                    self.queue.remove(msg_id)
                    continue
                try:
                    msg = self.spool.message(msg_id)
                except SpoolError as e:     # its envelope no longer reads back: retry later, never stuck busy
                    log.error("%s: cannot read the envelope: %s", format_id(msg_id), e)
                    self.queue.begin(msg_id)
                    self.queue.deferred(msg_id, now, ("spool", "SPOOL", str(e)))
                    continue
                self.queue.begin(msg_id)
                d = Delivery(self, msg)
                self.active[msg_id] = d
                d.next_group()

    def take_same_route(self, route, scan=20):
        """A due message with recipients for route, begun for reuse of an open connection; or None."""
        for msg_id in self.queue.due(compat.unix_time(), scan):
            if msg_id in self.active or msg_id not in self.spool:
                continue
            msg = self.spool.message(msg_id)
            groups = route_groups(self.cfg.relay.mode, msg.recipients)
            if [1 for g in groups if g[0] == route]:
                self.queue.begin(msg_id)
                return msg, groups
        return None

    # --- results --------------------------------------------------------------
    def finish(self, d):
        """Ack what is done, bounce what failed for good, defer the rest."""
        self.active.pop(d.msg.id, None)
        now = compat.unix_time()
        done = d.delivered + [r for r, _, _, _ in d.failed]
        try:
            if d.failed:
                self._bounce(d.msg, d.failed)
            if done:
                self.spool.ack(d.msg.id, done)
                self.acks_unsynced = True     # synced at the end of this loop pass (tick)
        except SpoolError as e:
            log.error("%s: spool update failed: %s", format_id(d.msg.id), e)
        left = [r for r in d.msg.recipients if r not in done]
        st = self.stats
        st["delivered"] += len(d.delivered)
        st["bounced"] += len(d.failed)
        if left:
            st["deferred"] += len(left)
        if not left:
            self.queue.delivered(d.msg.id, now)
            return
        if self.queue.deferred(d.msg.id, now, d.last_error):
            log.warning("%s: expired after %d s in the queue: bounced", format_id(d.msg.id), now - d.msg.arrived)
            text = d.last_error[2] if d.last_error else "delivery time expired"
            try:
                self._bounce(d.msg, [(r, "4.4.7", text, d.last_error[0] if d.last_error else None) for r in left])
                self.spool.ack(d.msg.id, left)
                self.spool.flush()
            except SpoolError as e:     # as above: logged; never out of the loop (it would stop)
                log.error("%s: spool update failed: %s", format_id(d.msg.id), e)
            st["bounced"] += len(left)
            self.queue.remove(d.msg.id)

    def _bounce(self, msg, failed):
        for rcpt, status, diag, hop in failed:
            log.warning("%s: to=<%s>, relay=%s, status=bounced (%s %s)", format_id(msg.id), rcpt, hop or "none",
                        status, compat.decode_utf8_replace(diag) if isinstance(diag, bytes) else diag)
        if not should_bounce(msg.sender):
            return
        now = compat.unix_time()
        if not self.limiter.allow(now):
            log.warning("%s: bounce to <%s> suppressed by the rate limit", format_id(msg.id), msg.sender)
            return
        headers = bytearray()
        for chunk in self.spool.read(msg.id):
            headers.extend(chunk)
            end = headers.find(b"\r\n\r\n")
            if end >= 0 or len(headers) > 32768:
                headers = headers[:end + 2] if end >= 0 else headers[:32768]
                break
        dsn = build_dsn(self.cfg.server.hostname, msg.sender, msg.arrived,
                        [(r, s, d, h) for r, s, d, h in failed], bytes(headers), format_id(msg.id), now)
        try:
            bid = self.submit("", [msg.sender], dsn)
            log.info("%s: sender non-delivery notification: %s", format_id(msg.id), format_id(bid))
        except SpoolFull:
            log.error("%s: no room for the bounce to <%s>", format_id(msg.id), msg.sender)

    def submit(self, sender, recipients, data):
        """Queue a message made here (a bounce, the console's test mail); durable on return.
        Raises SpoolFull when there is no room (nothing is stored then)."""
        w = self.spool.writer(sender, recipients, len(data))
        w.write(data)
        msg_id = w.commit()
        now = compat.unix_time()
        self.queue.add(msg_id, now, now)
        return msg_id
