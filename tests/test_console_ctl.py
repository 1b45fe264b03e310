"""The control socket and the CLI on it: `tinymta status|mailq|flush|hold|release|delete|retry|show`.

Against a real MTA process holding real mail: each command changes the queue as it says (and
the spool after a stop agrees); exit codes scripts can use (0, 1 refused, 2 usage, 69 not
running, 77 permission); the socket is 0600 and refuses other users; a stale socket is
replaced, a live one is not stolen; bad input on the socket (10 KB lines, binary garbage,
Ctrl-C/Ctrl-D bytes, dead peers, too many clients) gets answers or a close, never a crash,
and the mail is untouched.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from mtaproc import MTA, ROOT


def cli(mta_or_cfg, *args):
    cfg = mta_or_cfg.config_path if isinstance(mta_or_cfg, MTA) else mta_or_cfg
    p = subprocess.run([sys.executable, "-m", "tinymta"] + list(args) + ["-c", cfg], capture_output=True,
                       text=True, timeout=30, env=dict(os.environ, PYTHONPATH=ROOT), cwd="/")
    return p.returncode, p.stdout, p.stderr


def mailq(mta):
    rc, out, err = cli(mta, "mailq", "--json")
    assert rc == 0, err
    return json.loads(out)["queue"]


def send(mta, n=1, rcpts=("ops@example.org",)):
    with MTA.smtp(mta) as s:
        for i in range(n):
            s.sendmail("sensor@lan.example", list(rcpts), b"Subject: %d\r\n\r\nreading %d\r\n" % (i, i))


def test_cli_commands_change_the_queue(tmp_path):
    with MTA(tmp_path) as mta:
        send(mta, 3)
        q = mailq(mta)
        assert len(q) == 3 and all(m["queue_name"] == "active" for m in q)
        a, b, c = [m["queue_id"] for m in q]
        assert q[0]["sender"] == "sensor@lan.example" and q[0]["recipients"][0]["address"] == "ops@example.org"

        rc, out, err = cli(mta, "status")
        assert rc == 0 and "3 active, 0 deferred, 0 held" in out and "3 received" in out
        rc, out, _ = cli(mta, "status", "--json")
        st = json.loads(out)
        assert st["queue"]["active"] == 3 and st["spool"]["messages"] == 3 and st["listening"]

        assert cli(mta, "hold", a, b)[0] == 0
        assert [m["queue_name"] for m in mailq(mta)] == ["hold", "hold", "active"]
        assert cli(mta, "release", b)[0] == 0
        rc, out, err = cli(mta, "release", b)                 # not held any more: refused, exit 1
        assert rc == 1 and out == "" and err.strip() == "tinymta: %s is not held" % b
        rc, out, err = cli(mta, "release", b, "--json")       # the JSON answer goes to stdout
        assert rc == 1 and json.loads(out) == {"ok": False, "error": "%s is not held" % b}
        rc, out, _ = cli(mta, "show", c)
        assert rc == 0 and "Subject: 2" in out and "to: <ops@example.org> pending" in out
        assert cli(mta, "retry", c)[0] == 0
        rc, out, _ = cli(mta, "flush", "--json")
        assert rc == 0 and json.loads(out)["ok"] is True
        rc, out, err = cli(mta, "delete", c, "0000000000FF")  # one done, one unknown: exit 1
        assert rc == 1 and "%s: deleted" % c in out and "no message 0000000000FF" in err
        assert [(m["queue_id"], m["queue_name"]) for m in mailq(mta)] == [(a, "hold"), (b, "active")]
        assert mta.stop() == 0
    assert [m[2].endswith(b"reading 0\r\n") or m[2].endswith(b"reading 1\r\n") for m in mta.messages()] == [True, True]


def test_cli_says_clearly_when_the_mta_is_down(tmp_path):
    mta = MTA(tmp_path)
    with open(mta.config_path, "w") as f:
        json.dump(mta.config, f)
    for cmd in (["status"], ["mailq", "--json"], ["hold", "000200000001"]):
        rc, out, err = cli(mta, *cmd)
        assert rc == 69 and out == "" and "the MTA is not running" in err and mta.config["console"]["socket"] in err
    with mta:
        assert cli(mta, "status")[0] == 0
    rc, _, err = cli(mta, "status")                 # stopped cleanly: the socket file is gone
    assert rc == 69 and not os.path.exists(mta.config["console"]["socket"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[console]\nsocket = 3\n")
    rc, _, err = cli(str(bad), "status")
    assert rc == 2 and "console.socket: must be a string" in err
    off = tmp_path / "off.toml"
    off.write_text('[console]\nsocket = ""\n')
    rc, _, err = cli(str(off), "mailq")
    assert rc == 2 and "the control socket is off" in err
    rc, _, err = cli(mta, "hold")                   # usage: an id is needed
    assert rc == 2 and "ID" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_socket_is_owner_only_and_refuses_other_users():
    # A world-searchable directory, so only the socket's own mode stands in the way.
    d = tempfile.mkdtemp(prefix="tinymta-ctl-")
    try:
        os.chmod(d, 0o755)
        mta = MTA(d)
        with mta:
            path = mta.config["console"]["socket"]
            assert os.stat(path).st_mode & 0o777 == 0o600
            os.chmod(mta.config_path, 0o644)
            rc, err = as_other_user(mta.config_path)
            assert rc == 77 and "permission denied on the control socket" in err
            rc, out, _ = cli(mta, "status")           # the owner (root here) gets in
            assert rc == 0
    finally:
        shutil.rmtree(d)


def as_other_user(config_path, uid=65534):
    """`tinymta status` run as user nobody: ctl.run in a forked child that dropped root
    (in-process, as the interpreter's own files may not be readable by nobody)."""
    import io
    from tinymta import ctl
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # the child: never returns into pytest
        code = 99
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            err = io.StringIO()
            code = ctl.run("status", None, False, config_path, io.StringIO(), err)
            os.write(w, err.getvalue().encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        err = f.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status), err


def test_stale_socket_replaced_live_one_kept(tmp_path):
    mta = MTA(tmp_path)
    mta.start()
    send(mta)
    mta.kill()                                      # SIGKILL: the socket file stays behind
    path = mta.config["console"]["socket"]
    assert os.path.exists(path)
    with MTA(tmp_path) as again:                    # same config: the stale socket is replaced
        again.config_path = mta.config_path
        assert len(mailq(again)) == 1
        rival = MTA(tmp_path)
        rival.config["console"]["socket"] = path
        rival.config_path = os.path.join(str(tmp_path), "rival.json")
        rival.spool_path = rival.config["spool"]["path"] = os.path.join(str(tmp_path), "rival.spool")
        with pytest.raises(RuntimeError) as info:
            rival.start()
        assert "another tinymta is running there" in str(info.value)
        assert len(mailq(again)) == 1               # the first MTA kept its socket


def raw(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


_pending = {}


def read_reply(s):
    """The next one-line JSON reply on s (replies to pipelined requests may arrive together)."""
    buf = _pending.pop(id(s), b"")
    while b"\n" not in buf:
        got = s.recv(65536)
        if not got:
            return None
        buf += got
    line, rest = buf.split(b"\n", 1)
    if rest:
        _pending[id(s)] = rest
    return json.loads(line)


def test_bad_input_on_the_socket(tmp_path):
    with MTA(tmp_path) as mta:
        send(mta, 2)
        before = mailq(mta)
        path = mta.config["console"]["socket"]

        s = raw(path)
        s.sendall(b"frobnicate\n")
        assert read_reply(s) == {"ok": False, "output": "error: unknown command 'frobnicate'; type help"}
        s.sendall(bytes(range(256)).replace(b"\n", b"") + b"\n")          # binary garbage
        r = read_reply(s)
        assert r["ok"] is False and r["output"].startswith("error: unknown command")
        s.sendall(b"\x03\x04\n")                                         # Ctrl-C, Ctrl-D as bytes
        assert read_reply(s)["ok"] is False
        s.sendall(b"mailq --json\r\nstatus\n")                            # two at once, CRLF too
        assert len(json.loads(read_reply(s)["output"])["queue"]) == 2
        assert read_reply(s)["ok"] is True
        s.sendall(b"x" * 10240)                                          # 10 KB without a newline
        r = read_reply(s)
        assert r == {"ok": False, "output": "error: request longer than 4096 bytes"}
        try:                                                             # and the connection closed
            assert s.recv(10) == b""
        except ConnectionResetError:        # (closed with the rest of the 10 KB unread: a reset)
            pass
        s.close()

        for payload in (b"mailq\n", b"hol", b""):                        # dead peers, mid-request
            d = raw(path)
            d.sendall(payload)
            d.close()
        hogs = [raw(path) for _ in range(12)]                            # more than MAX_CLIENTS
        time.sleep(0.3)
        for h in hogs:
            h.close()
        q = raw(path)
        q.sendall(b"quit\n")
        assert read_reply(q)["output"] == "bye" and q.recv(10) == b""
        q.close()

        send(mta)                                                        # SMTP is still served
        after = mailq(mta)
        assert after[:2] == before and len(after) == 3
        assert "control socket:" in mta.log()


def test_a_file_at_the_socket_path_is_never_removed(tmp_path):
    """console.socket naming an existing file (a typo; the spool itself): refused, file intact."""
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    mta = MTA(tmp_path, console={"socket": str(notes)})
    with pytest.raises(RuntimeError) as info:
        mta.start()
    assert "exists and is not a socket" in str(info.value) and notes.read_text() == "keep me\n"
    with MTA(tmp_path) as first:                    # the spool as the socket path: refused, mail kept
        send(first)
    spool_too = MTA(tmp_path, console={"socket": first.spool_path})
    with pytest.raises(RuntimeError):
        spool_too.start()
    with MTA(tmp_path) as again:
        assert len(mailq(again)) == 1


def test_ids_are_one_word_each(tmp_path):
    with MTA(tmp_path) as mta:
        send(mta)
        (qid,) = [m["queue_id"] for m in mailq(mta)]
        for bad in (qid + "\nflush", qid + " " + qid, "", "\x03"):
            rc, out, err = cli(mta, "hold", bad)
            assert rc == 2 and "is not a queue id" in err, (bad, rc, err)
        assert [m["queue_name"] for m in mailq(mta)] == ["active"]     # nothing was run


def test_busy_is_75_and_a_client_that_never_reads_is_dropped(tmp_path):
    with MTA(tmp_path) as mta:
        path = mta.config["console"]["socket"]
        hogs = [raw(path) for _ in range(8)]                            # MAX_CLIENTS
        time.sleep(0.3)
        rc, out, err = cli(mta, "status")
        assert rc == 75 and "busy" in err, (rc, err)
        for h in hogs:
            h.close()
        deadline = time.time() + 10
        while cli(mta, "status")[0] != 0 and time.time() < deadline:    # once it saw them go
            time.sleep(0.1)
        greedy = raw(path)
        greedy.settimeout(30)
        greedy.sendall(b"config --json\n" * 4000)                       # ~6 MB of answers, never read
        def dropped():
            return "unread; dropped" in mta.log()
        deadline = time.time() + 20
        while not dropped() and time.time() < deadline:
            time.sleep(0.2)
        assert dropped(), mta.log()[-2000:]
        greedy.close()
        assert cli(mta, "status")[0] == 0                              # still answering
