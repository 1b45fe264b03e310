"""The SMTP server under load, against a real `python -m tinymta serve` child (tests/mtaproc.py).

  - 50 clients at once, 20 messages each: every one gets 250 and is in the spool exactly once,
    byte-exact apart from the Received field the server adds;
  - server.max_connections: the connection over the limit reads 421 and is closed; a freed slot
    is served again;
  - a slowloris client (one byte a second) does not hold up another client's messages;
  - server.timeout: an idle client gets 421 4.4.2 and is disconnected; a busy one is not.

Every socket has a timeout, every thread is joined with one, and the MTA is always stopped.
"""
import collections
import random
import smtplib
import threading
import time

from mtaproc import MTA, strip_added
from smtpwire import Wire, make_message, smtp_send, stuffed

CLIENTS = 50
PER_CLIENT = 20


def _check_spool(mta, sent):
    """sent: {body: (sender, rcpt)}; each is in the spool exactly once, with its envelope."""
    got = mta.messages()
    bodies = [strip_added(b) for _, _, b in got]
    dups = [b[:80] for b, n in collections.Counter(bodies).items() if n > 1]
    assert not dups, "duplicated in the spool: %r" % dups[:5]
    unknown = [b[:120] for b in bodies if b not in sent]
    assert not unknown, "in the spool but never sent (or altered): %r" % unknown[:3]
    missing = [b[:120] for b in sent if b not in set(bodies)]
    assert not missing, "%d accepted messages missing from the spool: %r" % (len(missing), missing[:3])
    for sender, rcpts, body in got:
        assert (sender, rcpts) == (sent[strip_added(body)][0], [sent[strip_added(body)][1]])
    return got


def test_fifty_clients_at_once_all_stored_exactly_once(tmp_path):
    rng = random.Random(1)
    sent = {}
    plan = []
    for c in range(CLIENTS):
        msgs = []
        for i in range(PER_CLIENT):
            tag = "load-c%02d-m%02d-%08x" % (c, i, rng.getrandbits(32))
            body = make_message(tag, rng.choice((300, 1000, 3000, 9000)), rng)
            sender, rcpt = "c%d@client.test" % c, "m%d@example.org" % i
            msgs.append((sender, rcpt, body))
            sent[body] = (sender, rcpt)
        plan.append(msgs)
    results = [[] for _ in range(CLIENTS)]
    errors = []
    start = threading.Barrier(CLIENTS, timeout=30)

    def client(c):
        try:
            with smtplib.SMTP("127.0.0.1", mta.port, timeout=30) as s:
                s.ehlo("client%d.test" % c)
                start.wait()            # every client connected before anyone sends
                for sender, rcpt, body in plan[c]:
                    results[c].append(smtp_send(s, sender, rcpt, body))
                s.quit()
        except Exception as e:  # reported below, with the client number
            errors.append((c, repr(e)))

    with MTA(tmp_path, server={"max_connections": 64}, spool={"size": "16M"}) as mta:
        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "clients still running after 120 s"
        assert not errors, errors[:5]
        replies = [r for rs in results for r in rs]
        assert len(replies) == CLIENTS * PER_CLIENT
        bad = [r for r in replies if r[0] != 250]
        assert not bad, "%d messages not accepted: %r" % (len(bad), bad[:5])
        qids = [r[1].rsplit(b" ", 1)[-1] for r in replies]
        assert len(set(qids)) == len(qids), "queue ids reused"
        assert mta.stop() == 0, mta.log()[-3000:]
    got = _check_spool(mta, sent)
    assert len(got) == CLIENTS * PER_CLIENT


def test_max_connections_refused_with_421_then_served_again(tmp_path):
    held = []
    with MTA(tmp_path, server={"max_connections": 4}) as mta:
        try:
            for i in range(4):
                w = Wire(mta.port, timeout=10)
                assert w.greeting[0] == 220
                assert w.cmd(b"EHLO held%d.test" % i)[0] == 250
                held.append(w)
            extra = Wire(mta.port, timeout=10)
            held.append(extra)
            code, text = extra.greeting
            assert code == 421 and b"Too many connections" in text, (code, text)
            assert extra.at_eof(), "the refused connection was left open"
            # the four sessions are still served
            for w in held[:4]:
                assert w.cmd(b"NOOP")[0] == 250
            # one quits; the slot is free again
            assert held[0].cmd(b"QUIT")[0] == 221
            assert held[0].at_eof()
            again = Wire(mta.port, timeout=10)
            held.append(again)
            assert again.greeting[0] == 220, again.greeting
            assert again.cmd(b"EHLO again.test")[0] == 250
            # and we are at the limit once more
            over = Wire(mta.port, timeout=10)
            held.append(over)
            assert over.greeting[0] == 421 and over.at_eof()
        finally:
            for w in held:
                w.close()
        log = mta.log()
    assert "refused: 4 sessions already" in log, log[-2000:]


def test_slowloris_does_not_slow_other_clients(tmp_path):
    rng = random.Random(2)
    slow_body = make_message("slowloris", 200, rng)
    payload = stuffed(slow_body)
    head, dribble = payload[:-9], payload[-9:]      # the last 9 bytes go one a second: 8 s
    state = {"reply": None, "error": None, "dribbling": threading.Event(), "done": threading.Event()}

    def slowloris():
        w = None
        try:
            w = Wire(mta.port, timeout=30)
            w.cmd(b"EHLO slow.test")
            assert w.cmd(b"MAIL FROM:<slow@client.test>")[0] == 250
            assert w.cmd(b"RCPT TO:<ops@example.org>")[0] == 250
            assert w.cmd(b"DATA")[0] == 354
            w.send(head)
            for i in range(len(dribble)):
                w.send(dribble[i:i + 1])
                state["dribbling"].set()
                if i < len(dribble) - 1:
                    time.sleep(1.0)
            state["done"].set()
            state["reply"] = w.reply()
            w.cmd(b"QUIT")
        except Exception as e:
            state["error"] = repr(e)
        finally:
            state["done"].set()
            if w is not None:
                w.close()

    sent = {slow_body: ("slow@client.test", "ops@example.org")}
    timings = []
    with MTA(tmp_path) as mta:
        t = threading.Thread(target=slowloris, daemon=True)
        t.start()
        try:
            assert state["dribbling"].wait(10), state["error"]
            with smtplib.SMTP("127.0.0.1", mta.port, timeout=10) as s:
                s.ehlo("fast.test")
                for i in range(20):
                    body = make_message("fast-%02d" % i, rng.choice((500, 5000, 50000)), rng)
                    t0 = time.monotonic()
                    code, text = smtp_send(s, "fast@client.test", "ops@example.org", body)
                    timings.append(time.monotonic() - t0)
                    assert code == 250, (code, text)
                    sent[body] = ("fast@client.test", "ops@example.org")
                s.quit()
            still_dribbling = not state["done"].is_set()
        finally:
            t.join(30)
        assert not t.is_alive()
        assert state["error"] is None, state["error"]
        assert state["reply"][0] == 250, state["reply"]
        assert mta.stop() == 0
    assert still_dribbling, "the 20 messages took longer than the slowloris' 8 s: %r" % timings
    assert max(timings) < 2.0, "a message took %.2f s while a slowloris was connected: %r" % (
        max(timings), timings)
    _check_spool(mta, sent)


def test_idle_client_gets_421_timeout_busy_one_does_not(tmp_path):
    busy_result = {"codes": [], "error": None}

    def keep_busy():
        try:
            for _ in range(9):          # 4.5 s of commands, each well inside the 2 s timeout
                busy_result["codes"].append(busy.cmd(b"NOOP")[0])
                time.sleep(0.5)
            busy_result["codes"].append(busy.cmd(b"QUIT")[0])
        except Exception as e:
            busy_result["error"] = repr(e)

    with MTA(tmp_path, server={"timeout": 2}) as mta:
        idle = Wire(mta.port, timeout=10)
        busy = Wire(mta.port, timeout=10)
        t = threading.Thread(target=keep_busy, daemon=True)
        try:
            assert idle.greeting[0] == 220 and busy.greeting[0] == 220
            assert busy.cmd(b"EHLO busy.test")[0] == 250
            assert idle.cmd(b"EHLO idle.test")[0] == 250
            t0 = time.monotonic()
            t.start()
            code, text = idle.reply()
            waited = time.monotonic() - t0
            assert code == 421 and text.startswith(b"4.4.2"), (code, text)
            assert 1.9 < waited < 5, "421 after %.2f s with a 2 s timeout" % waited
            assert idle.at_eof(), "the timed-out client was not disconnected"
        finally:
            if t.ident is not None:
                t.join(15)
            idle.close()
            busy.close()
        assert busy_result["error"] is None, busy_result
        assert busy_result["codes"] == [250] * 9 + [221], busy_result
        assert "idle timeout" in mta.log()
