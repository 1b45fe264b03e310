"""Power-loss harness for the spool: a deterministic workload, an oracle, and a reentrant runner.

The workload accepts messages, delivers (acks) them whole or recipient by
recipient, flushes ACK batches, and wraps the spool several times so reclaim and
relocation run.  The oracle knows what was promised (commits that returned,
flushes that returned) and checks the invariants of SPOOL.md after every mount:

  I1 durability     every committed, not durably acked message is present and byte-identical
  I2 integrity      every message the spool yields reads back without a CRC error, byte-identical
  I3 no phantoms    nothing that was never written, or was torn, appears
  I4 no resurrection a durably acked message never comes back; an unflushed ACK may be lost
  I5 uniqueness     no message appears twice
  I6 liveness       after recovery the spool accepts and returns a new message

Runs on CPython and MicroPython (no pytest here).
"""
from tinymta.flashsim import FlashSim, PowerLoss  # noqa: F401  (PowerLoss re-exported for tests)
from tinymta.spool import Spool, SpoolFull

SENDER = "sensor@lan.example"


def raises(exc, fn, *args):
    """The exception fn(*args) raises, which must be an exc (no pytest.raises on MicroPython)."""
    try:
        fn(*args)
    except exc as e:
        return e
    raise AssertionError("%s not raised" % exc.__name__)


def make_body(token, length):
    """A body that names its token and holds every kind of byte, CR/LF and dots included."""
    head = b"Subject: m%d\r\n\r\n" % token
    out = bytearray(head)
    x = (token * 2654435761 + 12345) & 0xFFFFFFFF or 1
    while len(out) < length:
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out.append(x & 0xFF)
    return bytes(out)


def token_of(body):
    end = body.find(b"\r\n")
    return int(body[10:end])


class Rng:
    def __init__(self, seed):
        self.x = seed & 0xFFFFFFFF or 1

    def below(self, n):
        x = self.x
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.x = x
        return x % n


def make_script(seed, count, min_len, max_len, live_max):
    """[("accept", token, nrcpt, length) | ("ack", token, [indexes]) | ("flush",)] deterministically."""
    rng = Rng(seed)
    script = []
    live = []
    for token in range(1, count + 1):
        nrcpt = 1 + rng.below(3)
        script.append(("accept", token, nrcpt, min_len + rng.below(max_len - min_len + 1)))
        live.append((token, nrcpt))
        while len(live) > live_max or (live and rng.below(3) == 0):
            t, n = live.pop(0)
            if n > 1 and rng.below(2):
                script.append(("ack", t, [0]))
                script.append(("ack", t, list(range(1, n))))
            else:
                script.append(("ack", t, list(range(n))))
            if rng.below(3) == 0:
                script.append(("flush",))
    script.append(("flush",))
    return script


def rcpts_for(token, n):
    return ["r%d.%d@mx.example" % (token, i) for i in range(n)]


class Oracle:
    def __init__(self, script):
        self.script = script
        self.pos = 0
        self.spec = {}          # token -> (recipients, body) for every accept in the script
        for act in script:
            if act[0] == "accept":
                self.spec[act[1]] = (rcpts_for(act[1], act[2]), make_body(act[1], act[3]))
        self.committed = {}     # token -> msg_id: commit returned
        self.inflight = {}      # token -> True: a commit was interrupted (may or may not survive)
        self.done = {}          # token -> set of rcpt indexes durably acked
        self.unflushed = {}     # token -> set of rcpt indexes acked since the last sync
        self.mounts = 0

    def _synced(self):
        for t in self.unflushed:
            self.done[t] = self.done.get(t, set()) | self.unflushed[t]
        self.unflushed = {}

    def check(self, sp):
        """The invariants after a mount; then the oracle adopts what survived."""
        self.mounts += 1
        assert sp.scan.corrupt == 0, "a power cut was reported as damage: %r" % (sp.scan.damage,)
        seen = {}
        for m in sp.messages():
            body = b"".join(sp.read(m.id))                       # I2: no CRC error may surface
            t = token_of(body)
            assert t not in seen, "I5: token %d appears twice" % t
            seen[t] = m
            assert t in self.committed or t in self.inflight, "I3: phantom message %d" % t
            rcpts, want = self.spec[t]
            assert body == want, "I2: message %d differs from what was accepted" % t
            assert m.sender == SENDER and m.all_recipients == rcpts, "I2: envelope of %d differs" % t
            assert m.size == len(want)
            durable = self.done.get(t, set())
            assert len(durable) < len(rcpts), "I4: durably delivered message %d came back" % t
            maybe = durable | self.unflushed.get(t, set())
            for i in range(len(rcpts)):
                if i in durable:
                    assert rcpts[i] not in m.recipients, "I4: recipient %d of %d came back" % (i, t)
                elif i not in maybe:
                    assert rcpts[i] in m.recipients, "I1: recipient %d of %d lost" % (i, t)
        for t in self.committed:
            if len(self.done.get(t, ())) < len(self.spec[t][0]) and t not in self.unflushed:
                assert t in seen, "I1: committed message %d lost" % t
        # adopt reality: survivors are live, unflushed ACKs that were lost must be redone
        self.committed = {}
        self.done = {}
        for t in seen:
            m = seen[t]
            self.committed[t] = m.id
            self.done[t] = set(i for i in range(len(m.all_recipients)) if m.all_recipients[i] not in m.recipients)
        self.unflushed = {}
        self.inflight = {}
        return seen

    def step(self, sp):
        act = self.script[self.pos]
        if act[0] == "accept":
            t = act[1]
            if t not in self.committed:
                rcpts, body = self.spec[t]
                self.inflight[t] = True
                try:
                    w = sp.writer(SENDER, rcpts)
                    i = 0
                    while i < len(body):               # uneven chunks, like a socket delivers them
                        k = 1 + (t * 7 + i) % 700
                        w.write(body[i:i + k])
                        i += k
                    self.committed[t] = w.commit()
                    self._synced()
                except SpoolFull:
                    pass                                # 452: the client keeps the message
                del self.inflight[t]
        elif act[0] == "ack":
            t = act[1]
            if t in self.committed and self.committed[t] in sp:
                rcpts = self.spec[t][0]
                todo = [rcpts[i] for i in act[2] if i not in self.done.get(t, ())]
                if todo:
                    self.unflushed[t] = self.unflushed.get(t, set()) | set(act[2])
                    sp.ack(self.committed[t], todo)
                    if not sp.stats()["pending_acks"]:
                        self._synced()
        else:
            sp.flush()
            self._synced()
        self.pos += 1


def run(dev, oracle, opts, finish=True):
    """Mount, check, and carry the script on to its end; PowerLoss propagates from any write."""
    sp = Spool(dev, **opts)
    oracle.check(sp)
    while oracle.pos < len(oracle.script):
        oracle.step(sp)
    if finish:
        sp.flush()
        oracle.check(Spool(dev, **opts))
        sp = Spool(dev, **opts)                         # I6: still writable, new mail reads back
        for m in list(sp.messages()):                   # (deliver what came back first: room returns)
            sp.ack(m.id, m.recipients)
        sp.flush()
        body = make_body(0, 100)
        w = sp.writer(SENDER, ["last@mx.example"])
        w.write(body)
        mid = w.commit()
        assert b"".join(Spool(dev, **opts).read(mid)) == body, "I6: spool not writable after recovery"
    return sp


def new_device(geo):
    return FlashSim(geo["sectors"], geo["sector"], geo["unit"], seed=geo.get("seed", 1))


def count_ops(geo, script, opts):
    dev = new_device(geo)
    run(dev, Oracle(script), opts, finish=False)
    return dev.ops


def cut_once(geo, script, opts, fault, cut, second=None):
    """Power cut at op `cut` (and, if given, again at op `second` of the recovery); then run to the end."""
    dev = new_device(geo)
    oracle = Oracle(script)
    for at in (cut, second):
        if at is None:
            continue
        dev.arm(at, fault)
        try:
            run(dev, oracle, opts, finish=False)
        except PowerLoss:
            pass
        dev.power_on()
    run(dev, oracle, opts)
    return oracle.mounts
