"""A 250 after DATA means durable: the server SIGKILLed right after it loses nothing.

A real `python -m tinymta serve` child (tests/mtaproc.py) is started again and again on the same
spool file; each round sends a message (random size, often many fragments, up to ~200 KiB), and
the moment its 250 arrives the server is SIGKILLed.  Some rounds also have a second client in
the middle of its DATA when the kill comes (that message must not appear half-written: absent,
or complete), or one that finished its DATA at the same time (present if it got its 250).  At the
end every acknowledged message is in the spool exactly once and byte-exact, and the spool holds
nothing else.  Group commit: several clients ending DATA at the same moment all get 250 and all
survive a SIGKILL right after the last one.

The seed is printed; TINYMTA_DURABILITY_SEED=<n> repeats a run's choices (the kill moments are
timing-dependent all the same).
"""
import collections
import os
import random
import threading
import time

from mtaproc import MTA, strip_added
from smtpwire import Wire, make_message, stuffed, wire_transaction

ROUNDS = 50
MIN_ROUNDS = 15
TIME_BUDGET = 30.0          # seconds for the kill rounds; stop early rather than overrun
SPOOL = {"size": "32M"}


def _size(rng):
    r = rng.random()
    if r < 0.3:
        return rng.randint(200, 3000)               # one fragment
    if r < 0.7:
        return rng.randint(3000, 40000)             # a few fragments
    return rng.randint(40000, 200 * 1024)           # many fragments


def _open_data(port, sender, rcpt):
    w = Wire(port, timeout=15)
    assert w.cmd(b"EHLO second.test")[0] == 250
    w.send(b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (sender.encode(), rcpt.encode()))
    assert [w.reply()[0] for _ in range(3)] == [250, 250, 354]
    return w


def _late_reply(w):
    """The reply the killed server sent to w before it died, or None."""
    try:
        return w.reply()
    except (EOFError, OSError):
        return None


def _tag(body):
    i = body.find(b"Message-ID: <")
    return body[i + 13:body.find(b"@", i)].decode() if i >= 0 else repr(body[:60])


def _check(mta, acked, attempted):
    """acked: {body: (sender, rcpt)} that got 250; attempted: every complete body sent (with envelope)."""
    got = mta.messages()
    bodies = [strip_added(b) for _, _, b in got]
    dups = [_tag(b) for b, n in collections.Counter(bodies).items() if n > 1]
    assert not dups, "in the spool more than once: %r" % dups
    stray = [(_tag(b), len(b)) for b in bodies if b not in attempted]
    assert not stray, "in the spool but never sent complete (half-written?): %r" % stray
    have = set(bodies)
    lost = [_tag(b) for b in acked if b not in have]
    assert not lost, "%d messages lost after their 250: %r" % (len(lost), lost)
    for sender, rcpts, body in got:
        assert (sender, rcpts) == (attempted[strip_added(body)][0], [attempted[strip_added(body)][1]])
    return got


def test_sigkill_right_after_250_loses_nothing(tmp_path):
    seed = int(os.environ.get("TINYMTA_DURABILITY_SEED") or random.randrange(1 << 30))
    print("seed", seed)
    rng = random.Random(seed)
    acked, attempted, kinds = {}, {}, collections.Counter()
    t_start = time.monotonic()
    rounds = 0
    while rounds < ROUNDS and (rounds < MIN_ROUNDS or time.monotonic() - t_start < TIME_BUDGET):
        kind = rng.choice(("single", "single", "second_in_data", "second_racing"))
        kinds[kind] += 1
        tag = "r%02d-%s-%08x" % (rounds, kind, rng.getrandbits(32))
        body = make_message(tag, _size(rng), rng)
        env = ("r%d@client.test" % rounds, "ops%d@example.org" % rounds)
        attempted[body] = env
        mta = MTA(tmp_path, spool=SPOOL).start()
        conns = []
        sender_thread = None
        try:
            first = Wire(mta.port)
            conns.append(first)
            assert first.cmd(b"EHLO first.test")[0] == 250
            first.send(b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (env[0].encode(), env[1].encode()))
            assert [first.reply()[0] for _ in range(3)] == [250, 250, 354]
            payload = stuffed(body)
            first.send(payload[:-3])                # all but the final ".\r\n"
            second = None
            if kind != "single":
                tag2 = tag + "-second"
                body2 = make_message(tag2, _size(rng), rng)
                env2 = ("second%d@client.test" % rounds, "ops@example.org")
                second = _open_data(mta.port, *env2)
                conns.append(second)
                payload2 = stuffed(body2)
                if kind == "second_in_data":
                    # part of its body (often several fragments) reaches the server, no end
                    cut = rng.randint(1, len(payload2) - 6)
                    second.send(payload2[:cut])
                    time.sleep(0.05)
                else:
                    attempted[body2] = env2
                    def push(w=second, data=payload2):
                        try:
                            w.send(data)
                        except OSError:
                            pass
                    sender_thread = threading.Thread(target=push, daemon=True)
                    sender_thread.start()
            first.send(b".\r\n")
            code, text = first.reply()
            mta.kill()                              # at once: nothing after the 250 may matter
            assert code == 250, (code, text, mta.log()[-2000:])
            acked[body] = env
            if kind == "second_racing":
                sender_thread.join(15)
                late = _late_reply(second)
                if late is not None and late[0] == 250:
                    acked[body2] = env2
                    kinds["second_racing_acked"] += 1
        finally:
            for w in conns:
                w.close()
            if mta.proc is not None:
                mta.kill()
            if sender_thread is not None:
                sender_thread.join(15)
        rounds += 1
    print("rounds", rounds, dict(kinds), "%.1f s" % (time.monotonic() - t_start))
    assert rounds >= MIN_ROUNDS
    got = _check(mta, acked, attempted)
    assert len(got) >= len(acked)
    # the spool still mounts read-write and takes mail after all those kills
    rng2 = random.Random(seed + 1)
    body = make_message("after-the-kills", 5000, rng2)
    with MTA(tmp_path, spool=SPOOL) as mta:
        w = Wire(mta.port)
        try:
            assert w.cmd(b"EHLO last.test")[0] == 250
            assert wire_transaction(w, "last@client.test", "ops@example.org", body)[0] == 250
            assert w.cmd(b"QUIT")[0] == 221
        finally:
            w.close()
        assert mta.stop() == 0
    attempted[body] = acked[body] = ("last@client.test", "ops@example.org")
    _check(mta, acked, attempted)


def test_group_commit_all_survive_sigkill_after_last_250(tmp_path):
    rng = random.Random(7)
    acked, attempted = {}, {}
    for rnd in range(3):
        n = 8
        msgs = []
        for i in range(n):
            body = make_message("group-%d-%d-%08x" % (rnd, i, rng.getrandbits(32)), _size(rng), rng)
            env = ("g%d@client.test" % i, "ops%d@example.org" % rnd)
            attempted[body] = env
            msgs.append((body, env))
        mta = MTA(tmp_path, spool=SPOOL).start()
        conns = []
        try:
            for body, env in msgs:
                w = _open_data(mta.port, *env)
                conns.append(w)
                w.send(stuffed(body)[:-3])          # everything but the final ".\r\n"
            # let the server drain the bodies, then end every DATA at the same moment
            time.sleep(0.3)
            for w in conns:
                w.send(b".\r\n")
            replies = [w.reply() for w in conns]
            mta.kill()                              # right after the last 250
            assert [r[0] for r in replies] == [250] * n, replies
            assert len({r[1] for r in replies}) == n
            for body, env in msgs:
                acked[body] = env
        finally:
            for w in conns:
                w.close()
            if mta.proc is not None:
                mta.kill()
        got = _check(mta, acked, attempted)
        assert len(got) == len(acked)
