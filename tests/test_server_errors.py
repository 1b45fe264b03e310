"""What a user or a bad client can do wrong to `python -m tinymta serve`, against the real command.

Bad config files and bad arguments end with exit status 2 and exactly one `tinymta: ...` line on
stderr, never a traceback (cli.py, mta.py StartupError; config.py: "every error is one line").
The same for a spool file of the wrong size or content, a missing certificate and a port in use.
Garbage from clients (random bytes, a 10 KB line, NULs, a connect-and-close, a reset, half a DATA,
a failed TLS handshake) never stops the server: the next smtplib message still gets 250, nothing
half-written is queued, the log says what happened (DESIGN invariant 7, protocol.md G16, G17).
"""
import hashlib
import json
import os
import random
import re
import shutil
import smtplib
import socket
import struct
import subprocess
import sys
import time

import pytest

from mtaproc import MTA, ROOT, free_port, strip_added
from serverkit import Wire, assert_spool_clean, complete_message, make_cert, run

SPOOL = {"size": "1M", "sector_size": 4096, "prog_unit": 256}


def serve(tmp_path, *args, timeout=30):
    """`python -m tinymta serve ARGS` that must fail: (exit status, stderr text, stdout)."""
    try:
        p = run([sys.executable, "-m", "tinymta", "serve"] + list(args), cwd=str(tmp_path), timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("tinymta serve %s did not exit within %d s (it started?)" % (args, timeout))
    return p.returncode, p.stderr.decode("utf-8", "replace"), p.stdout.decode("utf-8", "replace")


def assert_one_line_error(rc, err, out, *words):
    assert rc == 2, (rc, err)
    assert "Traceback" not in err and "READY" not in out, err
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith("tinymta: "), repr(err)
    for w in words:
        assert w in err, (w, err)


def base_config(tmp_path, **server):
    cfg = {"server": dict({"listen": ["127.0.0.1:%d" % free_port()], "hostname": "mta.test",
                           "max_message_size": "256K"}, **server),
           "spool": dict(SPOOL, path=str(tmp_path / "tinymta.spool")), "console": {"socket": ""},
           "relay": {"mode": "none"}}   # never the system DNS
    return cfg


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---- config files and arguments ------------------------------------------------------------------

BAD_CONFIGS = {
    "toml-syntax": ("bad.toml", '[server]\nlisten = ["127.0.0.1:2525"\nhostname = "x"\n', ["bad.toml"]),
    "toml-duplicate-key": ("dup.toml", '[server]\nhostname = "a"\nhostname = "b"\n', ["dup.toml"]),
    "unknown-key": ("key.toml", '[server]\nhostnme = "mta.test"\n', ["server.hostnme", "server.hostname"]),
    "unknown-section": ("sec.toml", '[servre]\nhostname = "mta.test"\n', ["servre"]),
    "bad-value": ("val.toml", '[server]\nmax_connections = "eight"\n', ["server.max_connections", "eight"]),
    "bad-port": ("port.toml", '[server]\nlisten = ["127.0.0.1:0"]\n', ["server.listen"]),
    "bad-size": ("size.toml", '[spool]\nsize = "4MB"\n', ["spool.size"]),
    "bad-network": ("net.toml", '[server]\nrelay_networks = ["10.0.0.1/8"]\n', ["server.relay_networks"]),
    "across-keys": ("auth.toml", '[server]\nauth_users_file = "users"\n', ["server.auth_users_file"]),
    "json-syntax": ("bad.json", '{"server": {"hostname": "x",}}', ["bad.json"]),
    "json-not-a-table": ("list.json", '[1, 2]', ["list.json"]),
    "not-utf8": ("latin.toml", None, ["latin.toml"]),
    "wrong-extension": ("tinymta.yaml", "server: {}\n", ["tinymta.yaml"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_file(tmp_path, case):
    name, text, words = BAD_CONFIGS[case]
    if text is None:
        (tmp_path / name).write_bytes(b'[server]\nhostname = "caf\xe9"\n')
    else:
        write(tmp_path, name, text)
    rc, err, out = serve(tmp_path, "-c", name)
    assert_one_line_error(rc, err, out, *words)
    assert not (tmp_path / "tinymta.spool").exists()        # nothing was created


def test_missing_config_file(tmp_path):
    rc, err, out = serve(tmp_path, "-c", str(tmp_path / "nowhere" / "tinymta.toml"))
    assert_one_line_error(rc, err, out, "nowhere/tinymta.toml")


@pytest.mark.parametrize("args", [["--bogus"], ["-c"], ["--config"], ["extra-arg"], ["-c", "a.toml", "b.toml"],
                                  ["-x", "a.toml"]])
def test_bad_arguments(tmp_path, args):
    rc, err, out = serve(tmp_path, *args)
    assert_one_line_error(rc, err, out)


# ---- start-up problems: spool, TLS files, port ---------------------------------------------------

def test_unreadable_relay_password_file(tmp_path):
    cfg = base_config(tmp_path)
    cfg["relay"] = {"mode": "smarthost", "smarthost": "127.0.0.1:%d" % free_port(), "tls": "implicit",
                    "username": "alerts", "password_file": str(tmp_path / "missing-password")}
    write(tmp_path, "c.json", json.dumps(cfg))
    rc, err, out = serve(tmp_path, "-c", "c.json")
    assert_one_line_error(rc, err, out, "relay.password_file", "missing-password", "cannot read: no such file")
    (tmp_path / "missing-password").mkdir()             # a directory where the file should be
    rc, err, out = serve(tmp_path, "-c", "c.json")
    assert_one_line_error(rc, err, out, "relay.password_file", "cannot read")
    assert not (tmp_path / "tinymta.spool").exists()        # nothing was created


def test_spool_file_of_the_wrong_size_is_refused_untouched(tmp_path):
    with MTA(tmp_path, spool=SPOOL, server={"max_message_size": "256K"}) as mta:
        pass
    path = mta.spool_path
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    cfg = base_config(tmp_path)
    cfg["spool"]["size"] = "2M"
    rc, err, out = serve(tmp_path, "-c", write(tmp_path, "big.json", json.dumps(cfg)))
    assert_one_line_error(rc, err, out, "1048576", "2097152", "tinymta.spool")
    cfg["spool"]["size"], cfg["spool"]["sector_size"] = "1M", 8192
    rc, err, out = serve(tmp_path, "-c", write(tmp_path, "sector.json", json.dumps(cfg)))
    assert_one_line_error(rc, err, out, "tinymta.spool")
    assert os.path.getsize(path) == 1 << 20 and hashlib.sha256(open(path, "rb").read()).hexdigest() == digest
    assert_spool_clean(path)


@pytest.mark.parametrize("content,words", [("short", ["1000 bytes"]), ("garbage", ["no tinymta spool"]),
                                           ("no-directory", ["missing"])])
def test_spool_file_not_a_spool(tmp_path, content, words):
    cfg = base_config(tmp_path)
    if content == "no-directory":
        cfg["spool"]["path"] = str(tmp_path / "missing" / "tinymta.spool")
    else:
        with open(cfg["spool"]["path"], "wb") as f:
            f.write(random.Random(1).randbytes(1000 if content == "short" else 1 << 20))
    rc, err, out = serve(tmp_path, "-c", write(tmp_path, "c.json", json.dumps(cfg)))
    assert_one_line_error(rc, err, out, "tinymta.spool", *words)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest.mark.parametrize("broken,words", [("missing-cert", ["nocert.pem"]), ("key-is-cert", ["cert.pem"]),
                                          ("missing-users", ["nousers"])])
def test_tls_and_users_files(tmp_path, broken, words):
    cert, key = make_cert(tmp_path)
    server = {"tls_cert": cert, "tls_key": key, "auth_users_file": write(tmp_path, "users", "")}
    if broken == "missing-cert":
        server["tls_cert"] = str(tmp_path / "nocert.pem")
    elif broken == "key-is-cert":
        server["tls_key"] = cert
    else:
        server["auth_users_file"] = str(tmp_path / "nousers")
    rc, err, out = serve(tmp_path, "-c", write(tmp_path, "c.json", json.dumps(base_config(tmp_path, **server))))
    assert_one_line_error(rc, err, out, *words)


def _serve_on_taken_port(tmp_path):
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        cfg = base_config(tmp_path)
        cfg["server"]["listen"] = ["127.0.0.1:%d" % port]
        rc, err, out = serve(tmp_path, "-c", write(tmp_path, "c.json", json.dumps(cfg)))
    finally:
        holder.close()
    return port, cfg["spool"]["path"], rc, err, out


def test_port_already_in_use(tmp_path):
    with MTA(tmp_path, spool=SPOOL, server={"max_message_size": "256K"}):   # an existing spool
        pass
    port, path, rc, err, out = _serve_on_taken_port(tmp_path)
    assert_one_line_error(rc, err, out, "cannot listen on 127.0.0.1:%d" % port, "in use")
    assert_spool_clean(path)


def test_port_already_in_use_fresh_spool(tmp_path):
    """The port is bound before the spool is opened: a busy port creates no spool file."""
    port, path, rc, err, out = _serve_on_taken_port(tmp_path)
    assert not os.path.exists(path), "a spool file was created although the MTA could not start"
    assert [ln for ln in err.splitlines() if ln.startswith("tinymta: ")] == [
        ln for ln in err.splitlines() if "cannot listen on 127.0.0.1:%d" % port in ln and "in use" in ln]
    assert_one_line_error(rc, err, out, "cannot listen on 127.0.0.1:%d" % port, "in use")


# ---- garbage from clients --------------------------------------------------------------------------

def smtplib_send(port, tag):
    msg = complete_message(tag=tag)
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as s:
        assert s.sendmail("alice@client.test", ["bob@example.test"], msg) == {}
    return msg


def reset(w):
    """Close with an RST instead of a FIN."""
    w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.close()


def drain(w, seconds=3):
    """Read until the server closes or `seconds` pass; the bytes read."""
    deadline, out = time.time() + seconds, b""
    try:
        while time.time() < deadline:
            w.sock.settimeout(max(0.01, deadline - time.time()))
            data = w.sock.recv(65536)
            if not data:
                break
            out += data
    except (socket.timeout, OSError):
        pass
    return out


def test_garbage_clients_do_not_stop_the_server(tmp_path):
    rnd = random.Random(1234)
    sent, ports = [], {}
    server = {}
    if shutil.which("openssl"):
        cert, key = make_cert(tmp_path)
        server = {"tls_cert": cert, "tls_key": key}
    with MTA(tmp_path, server=server) as mta:
        port = mta.port

        # random bytes, in several writes, while another session is served
        w = Wire(port)
        ports["random"] = w.local_port
        assert w.reply()[0] == 220
        for _ in range(8):
            try:
                w.send(rnd.randbytes(8192))
            except OSError:             # the server may hang up first (too many errors)
                break
        sent.append(smtplib_send(port, "after-random"))
        out = w.buf + drain(w)
        assert out and all(re.match(rb"^[245]\d\d[ -]", ln) for ln in out.split(b"\r\n")[:-1]), out
        w.close()

        # a 10 KB command line: one 500, and the session goes on
        with Wire(port) as w:
            ports["long-line"] = w.local_port
            w.ehlo()
            code, lines = w.cmd(b"NOOP " + b"A" * 10240)
            assert lines == [b"500 5.5.6 Error: line too long"], lines
            w.expect(b"NOOP", 250)
            # and a 10 KB body line (no CRLF for 10 KB): refused at the real end, nothing queued
            w.expect(b"MAIL FROM:<alice@client.test>", 250)
            w.expect(b"RCPT TO:<bob@example.test>", 250)
            w.expect(b"DATA", 354)
            w.send(b"Subject: long\r\n\r\n" + b"B" * 10240 + b"\r\n.\r\n")
            assert w.reply()[1][0].startswith(b"554 5.6.0"), w.buf
            w.expect(b"QUIT", 221)
        sent.append(smtplib_send(port, "after-long-line"))

        # NULs in commands
        with Wire(port) as w:
            ports["nul"] = w.local_port
            assert w.reply()[0] == 220
            assert w.cmd(b"EHLO a\x00b")[0] == 500
            assert w.cmd(b"\x00" * 1000)[0] == 500
            assert w.cmd(b"MAIL FROM:<a\x00@client.test>")[0] in (500, 501, 503)
            w.expect(b"EHLO client.test", 250)
            assert w.cmd(b"MAIL FROM:<alice@client.test>\x00")[0] in (500, 501)
            w.expect(b"QUIT", 221)
        sent.append(smtplib_send(port, "after-nul"))

        # connect and close at once; connect, read the banner, reset
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        ports["connect-close"] = s.getsockname()[1]
        s.close()
        w = Wire(port)
        ports["connect-reset"] = w.local_port
        assert w.reply()[0] == 220
        reset(w)
        sent.append(smtplib_send(port, "after-connect-close"))

        # half a DATA, left open while another client sends, then closed; another reset mid-DATA
        halves = []
        for how in ("fin", "rst"):
            w = Wire(port)
            ports["half-data-" + how] = w.local_port
            w.ehlo()
            w.expect(b"MAIL FROM:<half-%s@client.test>" % how.encode(), 250)
            w.expect(b"RCPT TO:<bob@example.test>", 250)
            w.expect(b"DATA", 354)
            w.send(complete_message(tag="half", body=b"half a message\r\n" * 2000)[:20000])
            halves.append((how, w))
        sent.append(smtplib_send(port, "during-half-data"))
        for how, w in halves:
            if how == "fin":
                w.close()
            else:
                reset(w)
        sent.append(smtplib_send(port, "after-half-data"))

        # STARTTLS, then plaintext garbage instead of a handshake
        if server:
            w = Wire(port)
            ports["tls-garbage"] = w.local_port
            w.ehlo()
            w.expect(b"STARTTLS", 220)
            w.send(b"EHLO not-a-client-hello\r\n" + rnd.randbytes(2000))
            drain(w)
            w.close()
            sent.append(smtplib_send(port, "after-tls-garbage"))

        # many sessions of garbage at once, then a good one
        many = [Wire(port) for _ in range(5)]
        for w in many:
            try:
                w.send(rnd.randbytes(3000) + b"\r\n")
            except OSError:
                pass
        sent.append(smtplib_send(port, "beside-5-garbage"))
        for w in many:
            reset(w)
        time.sleep(0.2)
        sent.append(smtplib_send(port, "last"))
    assert mta.proc is None
    msgs = mta.messages()
    assert [(m[0], m[1]) for m in msgs] == [("alice@client.test", ["bob@example.test"])] * len(sent)
    assert [strip_added(m[2]) for m in msgs] == sent
    log = mta.log()
    assert "Traceback" not in log
    for what, p in ports.items():                        # each bad client left a trace in the log
        assert "disconnect from [127.0.0.1]:%d" % p in log, (what, p, log)
    assert "[127.0.0.1]:%d: lost connection in DATA; message dropped" % ports["half-data-fin"] in log, log
    p = ports["half-data-rst"]          # a reset: logged (today as an error with the exception), dropped
    assert "[127.0.0.1]:%d: lost connection in DATA" % p in log or \
        "[127.0.0.1]:%d: ConnectionResetError" % p in log, log
    if server:
        assert "[127.0.0.1]:%d: TLS handshake failed" % ports["tls-garbage"] in log, log
    assert_spool_clean(mta.spool_path)


def test_spool_full_in_the_middle_of_data(tmp_path):
    """Two sessions admitted at MAIL together, when the spool holds only one of their messages:
    the second runs out of space mid-DATA and gets 452 (the client keeps it); nothing is half
    stored, the first is intact, and the server goes on."""
    body = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 875           # about 70 KB
    with MTA(tmp_path, spool={"size": 131072, "sector_size": 4096, "prog_unit": 256},
             server={"max_message_size": 83130}) as mta:
        one, two = MTA.smtp(mta), MTA.smtp(mta)
        for s in (one, two):
            s.ehlo("client.test")
            assert s.mail("a@lan.example", ["SIZE=%d" % len(body)])[0] == 250     # both admitted
            assert s.rcpt("b@example.org")[0] == 250
        assert one.data(body)[0] == 250
        code, text = two.data(body)
        assert code == 452 and b"Insufficient system storage" in text
        two.rset()
        assert two.sendmail("a@lan.example", ["c@example.org"], b"Subject: small\r\n\r\nok\r\n") == {}
        one.quit()
        two.quit()
        log = mta.log()
    msgs = mta.messages()
    assert "to=<b@example.org> refused: 452 4.3.1 Insufficient system storage" in log, log
    assert [m[1] for m in msgs] == [["b@example.org"], ["c@example.org"]]
    assert msgs[0][2].endswith(body[body.index(b"\r\n\r\n") + 4:])


def test_out_of_file_descriptors_pauses_accepting_never_stops(tmp_path):
    """With few file descriptors, a burst of clients makes accept() fail (EMFILE): the MTA
    rests its listeners for a second and goes on; nothing is lost, nothing crashes."""
    import resource
    cfg = base_config(tmp_path, max_connections=50)
    write(tmp_path, "c.json", json.dumps(cfg))
    port = cfg["server"]["listen"][0].rsplit(":", 1)[1]
    proc = subprocess.Popen([sys.executable, "-m", "tinymta", "serve", "-c", "c.json"], cwd=str(tmp_path),
                            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24)))
    try:
        assert proc.stdout.readline().strip() == b"READY"
        clients = []
        for _ in range(30):                             # more than the descriptors left
            c = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
            clients.append(c)
        time.sleep(1.5)
        for c in clients:
            c.close()
        deadline = time.time() + 20                     # it takes clients again, and mail
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", int(port), timeout=10) as s:
                    assert s.sendmail("a@lan.example", ["b@example.org"], b"Subject: x\r\n\r\ny\r\n") == {}
                break
            except (OSError, smtplib.SMTPException):
                assert time.time() < deadline
                time.sleep(0.5)
        assert proc.poll() is None
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"accept failed: too many open files" in err or b"accept failed" in err, err.decode()[-2000:]
    assert b"Traceback" not in err
