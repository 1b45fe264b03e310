"""FileBlockDevice durability against SIGKILL: a real writer process killed at random moments.

A child process (CPython, the real FileBlockDevice on a real file) writes messages
of varied sizes, many of them several fragments long, and delivers (acks) older
ones, whole or recipient by recipient, so that it runs for ever and the spool
wraps many times over the test: reclaim and relocation run.  It reports on
stdout, flushed line by line:

    READY <n>                 mounted; n messages recovered from earlier runs
    WRITING <token>           about to open a writer for this token
    COMMITTED <token> <id>    commit() returned: the message is durable
    SPOOLFULL <token> ...     the write raised SpoolFull (the message was aborted)
    ACKING <token> <i,j>      about to ack these recipient indexes
    ACKED <token> <i,j>       a flush() after that ack returned: the ack is durable

The parent kills it with SIGKILL after a random delay, mounts the same file
in-process (as a restart would) and checks, against a model built from the
lines above and from what earlier mounts showed:

  - every COMMITTED message whose ack was never begun is present, with the same
    id, envelope and body, and the recipients not durably acked;
  - a message seen at a mount stays until it is acked (mount never writes);
  - a durably acked message (or one a mount showed gone) never comes back;
  - nothing appears that was never written (at most the one in-flight token),
    nor a message whose write was aborted;
  - no SpoolFull: the workload keeps the spool at most about a third full;
  - no token appears twice; every message present reads back byte-identical.

The same file is used across all cycles, so each child recovers the state the
previous kill left.  The seed is printed; TINYMTA_KILL_SEED=<n> repeats a run's
choices (the kill moments are timing-dependent all the same).
"""
import hashlib
import inspect
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

from tinymta import spoolfmt as fmt
from tinymta.blockdev import FileBlockDevice
from tinymta.spool import Spool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SECTOR = 16384
UNIT = 4096
SIZE = 64 * SECTOR          # 1 MiB: the spool wraps many times over the test
HOLD_EVERY = 8              # every 8th message waits HOLD_MIN..HOLD_MAX commits (about one to three laps)
HOLD_MIN = 40
HOLD_MAX = 400
CYCLES = 40
TIME_BUDGET = 45.0          # seconds for the kill cycles; the test stops early rather than overrun
MIN_CYCLES = 10


# --- the workload, shared by parent and child (the child gets these functions' source) ---

def envelope(token):
    """Sender and recipients of a token's message: one to three recipients."""
    return ("s%d@lan.example" % token,
            ["r%d.%d@dst.example" % (token, i) for i in range(1 + token % 3)])


def body_length(token):
    x = (token * 2654435761 + 97) % 4294967296
    kind = x % 10
    if kind < 3:
        return 20 + x % 500               # one small fragment
    if kind < 6:
        return 500 + x % 3500             # one or two fragments
    return 4000 + x % 16481               # several fragments, up to 20 KiB


def make_body(token):
    """A body that names its token and length, then a pattern holding every byte value."""
    n = body_length(token)
    out = bytearray(b"TOKEN %d LEN %d\r\n" % (token, n))
    i = 0
    while len(out) < n:
        out.extend(hashlib.sha256(b"%d:%d" % (token, i)).digest())
        i += 1
    return bytes(out[:n])


def token_of(sender):
    return int(sender.split("@")[0][1:])


CHILD_MAIN = '''
import random
import sys

from tinymta import spoolfmt as fmt
from tinymta.blockdev import FileBlockDevice
from tinymta.spool import Spool, SpoolFull


def out(line):
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()


def idx_text(idxs):
    return ",".join(str(i) for i in idxs)


def main():
    path, token, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    sp = Spool(FileBlockDevice(path, size=SIZE, block_size=SECTOR, prog_unit=UNIT))
    queue = []      # [token, msg id, recipient indexes not yet acked], oldest first: delivered soon
    held = []       # [commit count when due, entry]: delivered a lap or more later (reclaim relocates them)
    commits = 0
    for m in sp.messages():
        entry = [token_of(m.sender), m.id, [i for i, r in enumerate(m.all_recipients) if r in m.recipients]]
        if entry[0] % HOLD_EVERY == 0:
            held.append([rng.randint(0, HOLD_MAX), entry])
        else:
            queue.append(entry)
    out("READY %d" % (len(queue) + len(held)))
    unflushed = []
    keep = rng.randint(0, 12)

    def ack(entry, idxs):
        out("ACKING %d %s" % (entry[0], idx_text(idxs)))
        sp.ack(entry[1], idxs)
        unflushed.append((entry[0], idxs))
        for j in idxs:
            entry[2].remove(j)

    while True:
        sender, rcpts = envelope(token)
        body = make_body(token)
        out("WRITING %d" % token)
        try:
            w = sp.writer(sender, rcpts)
            i = 0
            while i < len(body):
                k = rng.randint(1, 9000)
                w.write(body[i:i + k])
                i += k
            msg_id = w.commit()
        except SpoolFull as e:      # an MTA answers 452 and carries on; the parent judges it
            st = sp.stats()
            out("SPOOLFULL %d %d %d %s" % (token, st["used"], st["capacity"], str(e).replace(" ", "_")))
            token += 1
            continue
        out("COMMITTED %d %s" % (token, fmt.format_id(msg_id)))
        commits += 1
        entry = [token, msg_id, list(range(len(rcpts)))]
        if token % HOLD_EVERY == 0:
            if len(rcpts) > 1 and rng.random() < 0.7:
                ack(entry, [rng.choice(entry[2])])     # partly delivered: reclaim must restate the ACK
            held.append([commits + rng.randint(HOLD_MIN, HOLD_MAX), entry])
        else:
            queue.append(entry)
        token += 1
        st = sp.stats()
        crowded = st["used"] > st["capacity"] // 3
        for h in list(held):
            if h[0] <= commits or crowded:
                held.remove(h)
                queue.insert(0, h[1])
                crowded = False
        if rng.random() < 0.03:     # the backlog drifts: up to a dozen messages wait for delivery
            keep = rng.randint(0, 12)
        while len(queue) > keep:
            entry = queue[0]
            left = entry[2]
            ack(entry, [rng.choice(left)] if len(left) > 1 and rng.random() < 0.4 else list(left))
            if not left:
                queue.pop(0)
            if rng.random() < 0.5 or len(unflushed) > 4:
                sp.flush()
                for t, ix in unflushed:
                    out("ACKED %d %s" % (t, idx_text(ix)))
                del unflushed[:]


main()
'''


def _child_source():
    parts = ["SIZE = %d\nSECTOR = %d\nUNIT = %d\nHOLD_EVERY = %d\nHOLD_MIN = %d\nHOLD_MAX = %d\n"
             "import hashlib\n" % (SIZE, SECTOR, UNIT, HOLD_EVERY, HOLD_MIN, HOLD_MAX)]
    for fn in (envelope, body_length, make_body, token_of):
        parts.append(textwrap.dedent(inspect.getsource(fn)))
    parts.append(CHILD_MAIN)
    return "\n\n".join(parts)


# --- the parent ------------------------------------------------------------------------

def _file_hash(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _parse_log(path):
    """Complete lines only: a line cut short by the kill was never acted on."""
    with open(path, "rb") as f:
        data = f.read().decode("ascii")
    lines = data.split("\n")
    return [line.split(" ") for line in lines[:-1]]


def _wait_ready(proc, log, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            if b"\n" in f.read(200):
                return
        if proc.poll() is not None:
            return
        time.sleep(0.005)
    raise AssertionError("the writer did not mount within %.0f s" % timeout)


class Model:
    """What the spool must hold: per token, the recipient indexes still to deliver."""

    def __init__(self):
        self.present = {}       # token -> [msg id, set of recipient indexes not durably acked]
        self.gone = set()       # tokens that must never appear again
        self.highest = 0        # highest token ever handed to a writer
        self.committed = 0
        self.in_flight = [0, 0]     # kills during a commit: the message found / not found
        self.acks_in_flight = [0, 0]  # unflushed acks at a kill: took effect / did not
        self.spool_full = []        # (token, used, capacity, message) of writes refused with SpoolFull

    def cycle(self, records):
        """Apply one child's log; returns (maybe-acked indexes per token, the in-flight token)."""
        maybe = {}
        writing = None
        for rec in records:
            kind = rec[0]
            if kind == "READY":
                continue
            tok = int(rec[1])
            if kind == "WRITING":
                assert tok > self.highest, "token %d reused" % tok
                self.highest = tok
                writing = tok
            elif kind == "COMMITTED":
                assert tok == writing and tok not in self.present, rec
                _rcpts = envelope(tok)[1]
                self.present[tok] = [fmt.parse_id(rec[2]), set(range(len(_rcpts)))]
                self.committed += 1
                writing = None
            elif kind == "SPOOLFULL":
                assert tok == writing, rec
                self.gone.add(tok)      # aborted: must never appear
                self.spool_full.append((tok, int(rec[2]), int(rec[3]), rec[4].replace("_", " ")))
                writing = None
            elif kind in ("ACKING", "ACKED"):
                idxs = set(int(x) for x in rec[2].split(","))
                assert tok in self.present and idxs <= self.present[tok][1] | maybe.get(tok, set()), rec
                if kind == "ACKING":
                    maybe.setdefault(tok, set()).update(idxs)
                else:
                    self.present[tok][1] -= idxs
                    maybe[tok] -= idxs
                    if not self.present[tok][1]:
                        del self.present[tok]
                        self.gone.add(tok)
            else:
                raise AssertionError("unexpected child output %r" % (rec,))
        return maybe, writing


def _check_mount(path, model, maybe, writing, where):
    """Mount the spool as a restart would and hold it against the model; then adopt what it shows."""
    before = _file_hash(path)
    dev = FileBlockDevice(path, size=SIZE, block_size=SECTOR, prog_unit=UNIT)
    try:
        sp = Spool(dev)
        seen = {}
        for m in sp.messages():
            tok = token_of(m.sender)
            assert tok not in seen, "%s: token %d appears twice (%s and %s)" % (
                where, tok, fmt.format_id(seen[tok][0].id), fmt.format_id(m.id))
            body = b"".join(sp.read(m.id))
            seen[tok] = (m, body)
        stats = sp.stats()
    finally:
        dev.close()
    assert _file_hash(path) == before, "%s: mounting and reading changed the file" % where

    for tok, (m, body) in seen.items():
        sender, rcpts = envelope(tok)
        assert tok not in model.gone, "%s: token %d was durably acked but came back" % (where, tok)
        assert m.sender == sender and m.all_recipients == rcpts, "%s: token %d envelope differs: %r %r" % (
            where, tok, m.sender, m.all_recipients)
        expect = make_body(tok)
        assert m.size == len(expect) and body == expect, "%s: token %d body differs (%d bytes, expected %d)" % (
            where, tok, len(body), len(expect))
        left = set(i for i, r in enumerate(rcpts) if r in m.recipients)
        if tok in model.present:
            msg_id, must_left = model.present[tok]
            assert m.id == msg_id, "%s: token %d has id %s, committed as %s" % (
                where, tok, fmt.format_id(m.id), fmt.format_id(msg_id))
            may_go = maybe.get(tok, set())
            assert must_left - may_go <= left <= must_left, (
                "%s: token %d has recipients %s left; expected %s, of which %s may be acked" % (
                    where, tok, sorted(left), sorted(must_left), sorted(may_go)))
            for i in may_go & must_left:
                model.acks_in_flight[i in left] += 1
        else:
            assert tok == writing, "%s: token %d present but never written or committed (in flight: %s)" % (
                where, tok, writing)
            model.in_flight[0] += 1
            assert left == set(range(len(rcpts))), "%s: in-flight token %d has acked recipients" % (where, tok)
        model.present[tok] = [m.id, left]   # what a mount shows is the state from now on

    for tok in list(model.present):
        if tok not in seen:
            must_left, may_go = model.present[tok][1], maybe.get(tok, set())
            assert must_left <= may_go, "%s: committed token %d (id %s) is missing; %s not acked" % (
                where, tok, fmt.format_id(model.present[tok][0]), sorted(must_left - may_go))
            model.acks_in_flight[0] += len(must_left)
            del model.present[tok]
            model.gone.add(tok)
    if writing is not None and writing not in seen:
        model.in_flight[1] += 1
    return stats


def test_file_spool_survives_sigkill(tmp_path):
    seed = int(os.environ.get("TINYMTA_KILL_SEED", random.randrange(1 << 31)))
    rng = random.Random(seed)
    print("seed %d (TINYMTA_KILL_SEED=%d repeats the choices)" % (seed, seed))
    script = tmp_path / "writer.py"
    script.write_text(_child_source())
    spool_path = str(tmp_path / "kill.spool")
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")

    model = Model()
    kills = checked = present_max = 0
    stats = None
    start = time.monotonic()
    for cycle in range(CYCLES):
        if time.monotonic() - start > TIME_BUDGET:
            break
        where = "seed %d cycle %d" % (seed, cycle)
        log = str(tmp_path / ("child%d.out" % cycle))
        err = str(tmp_path / ("child%d.err" % cycle))
        with open(log, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen([sys.executable, str(script), spool_path, str(model.highest + 1),
                                     str(rng.randrange(1 << 31))], stdout=fo, stderr=fe, env=env, cwd=ROOT)
        try:
            _wait_ready(proc, log)
            time.sleep(rng.uniform(0.05, 0.5))
            alive = proc.poll() is None
            if alive:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        with open(err, "rb") as f:
            stderr = f.read().decode("utf-8", "replace")
        assert alive and proc.returncode == -signal.SIGKILL, "%s: the writer stopped by itself (status %s):\n%s" % (
            where, proc.returncode, stderr[-3000:])
        kills += 1
        records = _parse_log(log)
        assert records and records[0][0] == "READY", "%s: no READY line:\n%s" % (where, stderr[-3000:])
        before = model.committed
        maybe, writing = model.cycle(records)
        assert model.committed > before or cycle < 3, "%s: the writer committed nothing" % where
        stats = _check_mount(spool_path, model, maybe, writing, where)
        assert not model.spool_full, "%s: SpoolFull with the spool far from full: %s" % (where, "; ".join(
            "token %d: %r at %d of %d bytes used (%d%%)" % (t, msg, used, cap, 100 * used // cap)
            for t, used, cap, msg in model.spool_full[:5]))
        checked += len(model.present)
        present_max = max(present_max, len(model.present))

    wear = stats["erase_counts"]
    laps = sum(wear) / float(len(wear))
    print("%d kills, %d commits acknowledged by the writer, %d message checks after recovery "
          "(up to %d live at once), %d durably gone; spool wrapped %.1f times (erase counts %d..%d), %.1f s"
          % (kills, model.committed, checked, present_max, len(model.gone), laps, min(wear), max(wear),
             time.monotonic() - start))
    print("kills during a commit: %d found the message, %d did not; acks begun but not flushed at a kill: "
          "%d took effect, %d did not" % (model.in_flight[0], model.in_flight[1], model.acks_in_flight[0],
                                          model.acks_in_flight[1]))
    assert kills >= MIN_CYCLES
    assert model.committed >= 10 * kills
    assert min(wear) >= 3, "the spool did not wrap several times: erase counts %s" % wear
