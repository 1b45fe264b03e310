"""tinymta.console: every command on a real Server, Spool (on the flash simulator) and Queue.

Plain asserts; runs under pytest and under MicroPython (tests/mp_runner.py).  The transports
are tested end to end elsewhere (test_console_serial.py, test_console_ctl.py,
test_console_stdin.py); here each command's effect on the queue and the spool is checked.
"""
import json

from tinymta import compat
from tinymta.flashsim import FlashSim
from tinymta.config import from_dict
from tinymta.console import Console, LogRing, Session, LOG_LINES
from tinymta.relay import Relay
from tinymta.server import Server
from tinymta.spool import Spool
from tinymta.spoolfmt import format_id

MSG = b"Subject: hello\r\nFrom: a@pi.example\r\n\r\nbody\r\n"


def make(password=None, relay_mode="none"):
    d = {"server": {"hostname": "pi.example", "listen": ["127.0.0.1:2525"], "max_message_size": 65536},
         "spool": {"size": 131072, "sector_size": 4096, "prog_unit": 256},
         "relay": {"mode": relay_mode}, "console": {"socket": ""}}
    if password:
        d["console"]["password"] = password
    cfg = from_dict(d)
    spool = Spool(FlashSim(32, 4096, 256))
    srv = Server(cfg, spool)
    srv.relay = Relay(srv, cfg)
    ring = LogRing()
    compat.set_log_tap(ring)
    return srv, Console(srv, ring)


def close(srv):
    compat.set_log_tap(None)
    srv.shutdown()


def queue_mail(srv, rcpts=("b@x.example",), sender="a@pi.example"):
    return srv.relay.submit(sender, list(rcpts), MSG)


def ask(con, line, sess=None):
    ok, text = con.execute(sess or Session(trusted=True), line)
    return ok, text


def ask_json(con, line, sess=None):
    ok, text = ask(con, line + " --json", sess)
    assert "\n" not in text, text
    return ok, json.loads(text)


def test_help_version_and_unknown_commands():
    srv, con = make()
    try:
        ok, text = ask(con, "help")
        for name in ("status", "mailq", "show", "flush", "retry", "hold", "release", "delete", "stats",
                     "log", "config", "send", "version"):
            assert ("\n" + name + " ") in "\n" + text, name
        ok, text = ask(con, "version")
        assert ok and text.startswith("tinymta ")
        for bad in ("frobnicate", "__init__", "execute", "cmd_help", "st@tus", "\x00\x01"):
            ok, text = ask(con, bad)
            assert not ok and text.startswith("error: unknown command"), (bad, text)
        ok, data = ask_json(con, "nope")
        assert not ok and data["ok"] is False and "unknown command" in data["error"]
        assert ask(con, "   ") == (True, "")
        ok, text = ask(con, "HELP")             # commands are not case-sensitive
        assert ok
    finally:
        close(srv)


def test_status_counts_and_json():
    srv, con = make()
    try:
        a = queue_mail(srv)
        b = queue_mail(srv, ("c@y.example", "d@y.example"))
        srv.relay.queue.hold(b)
        srv.relay.queue.begin(a)
        srv.relay.queue.deferred(a, compat.unix_time(), ("mx.y.example[192.0.2.1]:25", "RCPT", "451 4.7.1 later"))
        srv.relay.queue.hop_failed("mx.y.example[192.0.2.1]:25", compat.unix_time(), "RCPT", "451 4.7.1 later")
        srv.relay.queue.hop_ok("smart.example[192.0.2.9]:587", compat.unix_time() - 30)
        ok, d = ask_json(con, "status")
        assert ok and d["hostname"] == "pi.example" and d["listening"] == ["127.0.0.1:2525"]
        assert d["queue"] == {"active": 0, "deferred": 1, "held": 1, "in_flight": 0}
        assert d["spool"]["messages"] == 2 and d["spool"]["used"] > 0
        assert d["spool"]["used"] + d["spool"]["free"] == d["spool"]["capacity"]
        assert 0 <= d["oldest_age"] < 5
        hops = dict((h["hop"], h) for h in d["hops"])
        bad = hops["mx.y.example[192.0.2.1]:25"]
        assert bad["failing"] and bad["last_error_stage"] == "RCPT" and bad["last_error"] == "451 4.7.1 later"
        assert bad["next_retry"] > compat.unix_time()
        assert not hops["smart.example[192.0.2.9]:587"]["failing"]
        ok, text = ask(con, "status")
        assert "1 deferred, 1 held" in text and "at RCPT: 451 4.7.1 later" in text and "next retry in" in text
    finally:
        close(srv)


def test_mailq_has_postqueue_fields_and_last_error():
    srv, con = make()
    try:
        ok, d = ask_json(con, "mailq")
        assert d == {"queue": []}
        assert ask(con, "mailq")[1] == "queue is empty"
        a = queue_mail(srv, ("b@x.example", "c@x.example"))
        q = srv.relay.queue
        q.begin(a)
        q.deferred(a, compat.unix_time(), ("mx.x.example[192.0.2.1]:25", "CONNECT", "connection refused"))
        ok, d = ask_json(con, "mailq")
        (m,) = d["queue"]
        assert m["queue_id"] == format_id(a) and m["queue_name"] == "deferred" and m["sender"] == "a@pi.example"
        assert m["message_size"] == len(MSG) and m["attempts"] == 1 and m["arrival_time"] > 0
        assert [r["address"] for r in m["recipients"]] == ["b@x.example", "c@x.example"]
        assert "connection refused" in m["recipients"][0]["delay_reason"]
        srv.spool.ack(a, ["b@x.example"])        # one delivered: only the other is listed as pending
        ok, d = ask_json(con, "mailq")
        assert [r["address"] for r in d["queue"][0]["recipients"]] == ["c@x.example"]
        assert d["queue"][0]["delivered"] == ["b@x.example"]
        text = ask(con, "mailq")[1]
        assert format_id(a) in text and "<c@x.example>" in text and "connection refused" in text
    finally:
        close(srv)


def test_hold_release_retry_flush_change_the_queue():
    srv, con = make()
    try:
        q = srv.relay.queue
        a = queue_mail(srv)
        ida = format_id(a)
        now = compat.unix_time()
        assert q.due(now) == [a]
        assert ask(con, "hold " + ida)[0]
        assert q.due(now) == [] and q.counts()[2] == 1
        assert ask(con, "retry " + ida) == (False, "error: %s is held; release it first" % ida)
        ok, d = ask_json(con, "release " + ida)
        assert ok and d["queue_id"] == ida and q.due(now) == [a]
        assert ask(con, "release " + ida)[0] is False         # not held
        q.begin(a)
        q.deferred(a, now)                                    # backs off retry_min (300 s)
        assert q.due(now) == []
        assert ask(con, "retry " + ida.lower())[0]           # ids are read in any case
        assert q.due(now) == [a]
        q.begin(a)
        q.deferred(a, now)
        ok, d = ask_json(con, "flush")
        assert ok and d["due"] == 1 and q.due(now) == [a]
        assert ask(con, "flush now")[0] is False
    finally:
        close(srv)


def test_bad_ids_are_clear_errors():
    srv, con = make()
    try:
        for line, words in (("hold", "needs a queue id"), ("hold 1 2", "needs a queue id"),
                            ("hold zz-top", "is not a queue id"), ("delete 00000000BEEF", "no message"),
                            ("show " + "f" * 500, "no message"), ("release -1", "no message")):
            ok, text = ask(con, line)
            assert not ok and words in text and len(text) < 120, (line, text)
    finally:
        close(srv)


def test_delete_removes_for_good_but_never_a_message_in_delivery():
    srv, con = make()
    try:
        a, b = queue_mail(srv), queue_mail(srv)
        srv.relay.queue.begin(b)
        ok, text = ask(con, "delete " + format_id(b))
        assert not ok and "being delivered" in text and b in srv.spool
        ok, d = ask_json(con, "delete " + format_id(a))
        assert ok and a not in srv.spool and a not in srv.relay.queue
        dev = srv.spool.dev
        again = Spool(dev)                  # the deletion is on flash before the answer
        assert a not in again and b in again
    finally:
        close(srv)


def test_show_gives_envelope_state_and_headers():
    srv, con = make()
    try:
        a = queue_mail(srv)
        ok, d = ask_json(con, "show " + format_id(a))
        assert ok and d["headers"] == "Subject: hello\r\nFrom: a@pi.example"
        text = ask(con, "show " + format_id(a))[1]
        assert "from: <a@pi.example>" in text and "to: <b@x.example> pending" in text and "Subject: hello" in text
    finally:
        close(srv)


def test_send_queues_a_test_message_and_rejects_bad_addresses():
    srv, con = make()
    try:
        ok, d = ask_json(con, "send ops@example.org")
        assert ok
        m = srv.spool.message(int(d["queue_id"], 16))
        assert m.recipients == ["ops@example.org"] and m.sender == "postmaster@pi.example"
        body = b"".join(srv.spool.read(m.id))
        assert b"Subject: tinymta test message from pi.example" in body and b"Auto-Submitted:" in body
        for bad in ("send", "send nobody", "send a@b", "send a b@c.d", "send <x@y.z>>", "send a\x01@b.c"):
            ok, text = ask(con, bad)
            assert not ok and text.startswith("error: "), bad
        assert len(srv.spool) == 1
    finally:
        close(srv)


def test_log_ring_and_config_hides_secrets():
    srv, con = make(password="s3cret")
    try:
        queue_mail(srv)
        ask(con, "hold " + format_id(next(srv.spool.messages()).id))
        ok, text = ask(con, "log 5")
        assert ok and "hold " in text
        ok, d = ask_json(con, "log")
        assert len(d["log"]) <= 20 and d["log"][-1]["line"].startswith("tinymta/")
        for bad in ("log 0", "log %d" % (LOG_LINES + 1), "log x", "log 1 2"):
            assert ask(con, bad)[0] is False, bad
        for i in range(LOG_LINES * 2):
            con.log_ring("line %d %s" % (i, "x" * 500))
        assert len(con.log_ring.lines) == LOG_LINES and len(con.log_ring.lines[-1][1]) <= 160
        ok, text = ask(con, "config")
        assert "console.password = \"***\"" in text and "s3cret" not in text
        assert "server.hostname = \"pi.example\"" in text
        ok, d = ask_json(con, "config")
        assert d["console"]["password"] == "***"
    finally:
        close(srv)


def test_password_guards_changes_on_untrusted_sessions():
    srv, con = make(password="s3cret")
    try:
        a = queue_mail(srv)
        ida = format_id(a)
        serial = Session(trusted=False)
        ok, text = ask(con, "delete " + ida, serial)
        assert not ok and "unlock" in text and a in srv.spool
        for cmd in ("hold " + ida, "flush", "send x@y.example", "release " + ida, "retry " + ida):
            assert ask(con, cmd, serial)[0] is False, cmd
        assert ask(con, "status", serial)[0] and ask(con, "mailq", serial)[0]      # reading is free
        assert ask(con, "unlock", serial) == (True, "type the console password (it is not echoed)") and serial.reading_password
        ok, text = ask(con, "guess", serial)
        assert not ok and text == "error: wrong password" and not serial.unlocked
        ask(con, "unlock", serial)
        ok, text = ask(con, "s3cret", serial)
        assert ok and serial.unlocked and not serial.reading_password
        assert ask(con, "hold " + ida, serial)[0]
        assert ask(con, "lock", serial)[0] and ask(con, "release " + ida, serial)[0] is False
        ask(con, "unlock", serial)
        ask(con, "s3cret", serial)
        assert ask(con, "quit", serial)[0] and not serial.unlocked       # quit locks again
        trusted = Session(trusted=True)                  # control socket, stdin
        assert ask(con, "delete " + ida, trusted)[0] and a not in srv.spool
    finally:
        close(srv)


def test_stats_after_traffic():
    srv, con = make()
    try:
        srv.stats["received"] += 3
        srv.relay.stats["delivered"] += 2
        ok, d = ask_json(con, "stats")
        assert d["since_start"]["received"] == 3 and d["since_start"]["delivered"] == 2
        assert len(d["spool"]["erase_counts"]) == d["spool"]["sectors"]
        assert "delivered: 2" in ask(con, "stats")[1]
    finally:
        close(srv)


def test_a_fault_inside_a_command_is_an_answer_not_a_crash():
    srv, con = make()
    try:
        def broken(sess, args):
            raise MemoryError("memory allocation failed, allocating 4096 bytes")
        con.cmd_mailq = broken
        ok, text = ask(con, "mailq")
        assert not ok and text.startswith("error: mailq failed: MemoryError")
        ok, d = ask_json(con, "mailq")
        assert not ok and "MemoryError" in d["error"]
        assert ask(con, "status")[0]                     # the console goes on
    finally:
        close(srv)


def test_enter_alone_calls_off_an_unlock_and_send_checks_the_domain():
    srv, con = make(password="s3cret")
    try:
        serial = Session(trusted=False)
        ask(con, "unlock", serial)
        assert ask(con, "", serial) == (True, "unlock called off") and not serial.reading_password
        assert "wrong password" not in "\n".join(s for _, s in con.log_ring.lines)
        for bad in ("send a@.com", "send a@b..c", "send a@com."):
            assert ask(con, bad)[0] is False, bad
    finally:
        close(srv)
