"""The delivery queue: which spooled messages are due, backoff, expiry, hold, and hop health.

Retry state lives in RAM only: the spool is written when recipients are delivered or bounced,
never per attempt, so flash wear follows mail, not failures.  After a restart every message
is due at once (with fresh backoff).  When a delivery succeeds after failures (the link is
back), everything deferred becomes due at once instead of waiting out its backoff.

    q = Queue(retry_min, retry_max, max_age)
    q.add(msg_id, arrived, now)          a committed message (due now)
    q.due(now) -> [msg_id]               oldest first; not held, not in flight
    q.begin(msg_id)                      an attempt starts
    q.deferred(msg_id, now, error) -> True when the message is past max_age (bounce it)
    q.delivered(msg_id, now)             all recipients done (delivered or bounced): forget it
    q.hold(msg_id) / q.release(msg_id) / q.flush(now) / q.remove(msg_id)
    q.hop_ok(hop, now) / q.hop_failed(hop, now, error); q.hops

Times are integer seconds (compat.unix_time()); the queue never reads a clock itself.  Errors
are (hop, stage, text) tuples for the console.  This module must not know sockets, SMTP or the
spool's format.
"""


class Entry:
    __slots__ = ("id", "arrived", "next_try", "attempts", "last_error", "held", "busy")

    def __init__(self, msg_id, arrived, now):
        self.id = msg_id
        self.arrived = arrived
        self.next_try = now
        self.attempts = 0
        self.last_error = None
        self.held = False
        self.busy = False


class Queue:
    def __init__(self, retry_min=300, retry_max=3600, max_age=432000):
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.max_age = max_age
        self.entries = {}
        self.hops = {}          # hop -> [last success, last error time, last error (stage, text)]

    def __len__(self):
        return len(self.entries)

    def __contains__(self, msg_id):
        return msg_id in self.entries

    def add(self, msg_id, arrived, now):
        if msg_id not in self.entries:
            self.entries[msg_id] = Entry(msg_id, arrived, now)

    def backoff(self, attempts):
        """Seconds to wait after `attempts` failed attempts: doubling from retry_min to retry_max."""
        delay = self.retry_min
        for _ in range(attempts - 1):
            delay *= 2
            if delay >= self.retry_max:
                return self.retry_max
        return min(delay, self.retry_max)

    def due(self, now, limit=0):
        """Due message ids, oldest first: all of them, or the `limit` oldest without sorting the rest."""
        if not limit:
            got = [(e.next_try, e.id) for e in self.entries.values()
                   if not e.held and not e.busy and e.next_try <= now]
            got.sort()                                  # a full key: MicroPython's sort is not stable
            return [k[1] for k in got]
        best = []                                       # the `limit` smallest (next_try, id), sorted
        for e in self.entries.values():
            if e.held or e.busy or e.next_try > now:
                continue
            key = (e.next_try, e.id)
            if len(best) >= limit:
                if key >= best[-1]:
                    continue
                best.pop()
            i = len(best)
            while i and best[i - 1] > key:              # insertion into a short sorted list
                i -= 1
            best.insert(i, key)
        return [k[1] for k in best]

    def next_due(self):
        """The earliest next_try of a message that could be tried, or None."""
        best = None
        for e in self.entries.values():
            if not e.held and not e.busy and (best is None or e.next_try < best):
                best = e.next_try
        return best

    def begin(self, msg_id):
        self.entries[msg_id].busy = True

    def deferred(self, msg_id, now, error=None):
        """A temporary failure: back off.  True when the message has outlived max_age."""
        e = self.entries.get(msg_id)
        if e is None:
            return False
        e.busy = False
        e.attempts += 1
        if error is not None:
            e.last_error = error
        e.next_try = now + self.backoff(e.attempts)
        return now - e.arrived >= self.max_age

    def expired(self, msg_id, now):
        e = self.entries.get(msg_id)
        return e is not None and now - e.arrived >= self.max_age

    def delivered(self, msg_id, now):
        """The message is done.  If others were waiting out a backoff, the link is back: try them now."""
        e = self.entries.pop(msg_id, None)
        if e is None:
            return
        if e.attempts:
            self.flush(now)

    def flush(self, now):
        """Everything not held is due now (console `flush`, or the link came back)."""
        for e in self.entries.values():
            if not e.busy and e.next_try > now:
                e.next_try = now

    def retry(self, msg_id, now):
        e = self.entries[msg_id]
        e.next_try = now

    def hold(self, msg_id):
        self.entries[msg_id].held = True

    def release(self, msg_id, now):
        e = self.entries[msg_id]
        e.held = False
        e.next_try = now

    def remove(self, msg_id):
        self.entries.pop(msg_id, None)

    def hop_ok(self, hop, now):
        h = self.hops.get(hop)
        if h is None:
            h = self.hops[hop] = [None, None, None]
        h[0] = now

    def hop_failed(self, hop, now, stage, text):
        h = self.hops.get(hop)
        if h is None:
            h = self.hops[hop] = [None, None, None]
        h[1] = now
        h[2] = (stage, text)

    def counts(self):
        """(active, deferred, held) for the console's status."""
        active = deferred = held = 0
        for e in self.entries.values():
            if e.held:
                held += 1
            elif e.attempts:
                deferred += 1
            else:
                active += 1
        return active, deferred, held
