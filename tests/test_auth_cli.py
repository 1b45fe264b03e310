"""`tinymta passwd` and the TLS context helpers of tinymta.compat (CPython).

passwd is run as a user runs it (`python -m tinymta passwd USER`, password on a pipe or
typed on a terminal) and its line must load and verify with tinymta.auth; bad input
gives one `tinymta: ...` line and exit status 2.  The TLS tests make a self-signed
certificate with the openssl command and complete handshakes between
server_tls_context and client_tls_context, over a socketpair on CPython and over
127.0.0.1 between CPython and the MicroPython unix port (its PEM-to-DER path).
"""
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from tinymta import auth, compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPENSSL = shutil.which("openssl")
MICROPYTHON = shutil.which("micropython") or os.path.join(os.path.dirname(sys.executable), "micropython")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
needs_mp = pytest.mark.skipif(not os.path.exists(MICROPYTHON), reason="MicroPython unix port not installed")


def _passwd(args, stdin=b"", **kw):
    return subprocess.run([sys.executable, "-m", "tinymta", "passwd"] + list(args), input=stdin, cwd=ROOT,
                          capture_output=True, timeout=60, **kw)


def _load_line(tmp_path, line):
    path = tmp_path / "users"
    path.write_bytes(b"# generated\n" + line)
    return auth.Users.from_file(str(path)), auth.load_users(str(path))


def test_passwd_from_pipe_default_iterations(tmp_path):
    proc = _passwd(["alice"], b"correct horse battery\n")
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    out = proc.stdout
    assert out.count(b"\n") == 1 and out.startswith(b"alice:pbkdf2-sha256$100000$"), out
    users, raw = _load_line(tmp_path, out)
    assert list(raw) == ["alice"]
    assert users.check("alice", "correct horse battery")
    assert not users.check("alice", "correct horse battery\n") and not users.check("bob", "correct horse battery")


def test_passwd_iterations_utf8_and_line_endings(tmp_path):
    for stdin, password in ((b"p\xc3\xa4ss \xe2\x82\xac\r\n", "p\u00e4ss \u20ac"), (b"no-newline", "no-newline"),
                            (b" spaced \nsecond line ignored\n", " spaced ")):
        proc = _passwd(["--iterations", "7", "j\u00fcrgen@example.org"], stdin)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("j\u00fcrgen@example.org:pbkdf2-sha256$7$".encode()), proc.stdout
        users, _ = _load_line(tmp_path, proc.stdout)
        assert users.check("j\u00fcrgen@example.org", password), stdin
        assert auth.verify(proc.stdout.decode().strip().split(":", 1)[1], password)


@pytest.mark.parametrize("args,stdin,words", [
    (["--iterations", "0", "alice"], b"pw\n", "--iterations"),
    (["--iterations", "10000001", "alice"], b"pw\n", "--iterations"),
    (["bad:name"], b"pw\n", "user name"),
    (["two words"], b"pw\n", "user name"),
    (["#alice"], b"pw\n", "user name"),
    (["alice"], b"", "no password"),
    (["alice"], b"\n", "empty password"),
    (["alice"], b"\xff\xfe\n", "UTF-8"),
])
def test_passwd_bad_input_one_line_exit_2(args, stdin, words):
    proc = _passwd(args, stdin)
    err = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, err)
    assert proc.stdout == b""
    assert err.startswith("tinymta: ") and err.count("\n") == 1 and words in err, err


@pytest.mark.parametrize("args", [[], ["--iterations", "abc", "alice"], ["alice", "bob"], ["--nope", "alice"]])
def test_passwd_bad_arguments_exit_2(args):
    proc = _passwd(args, b"pw\n")
    assert proc.returncode == 2 and proc.stdout == b"", proc
    err = proc.stderr.decode()
    assert err.startswith("tinymta: ") and err.count("\n") == 1 and "--help" in err, err


def _read_until(fd, want, timeout=20):
    data = b""
    deadline = time.monotonic() + timeout
    while want not in data:
        r, _, _ = select.select([fd], [], [], max(0, deadline - time.monotonic()))
        if not r:
            raise AssertionError("timed out waiting for %r, got %r" % (want, data))
        chunk = os.read(fd, 1024)
        if not chunk:
            break
        data += chunk
    return data


def _drain(fd):
    data = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # EIO once the child has closed the pty
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("second,ok", [(b"typed secret\n", True), (b"other\n", False)])
def test_passwd_on_a_terminal_asks_twice_without_echo(tmp_path, second, ok):
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    try:  # a new session has no /dev/tty, so getpass uses stdin (the pty) and turns echo off there
        proc = subprocess.Popen([sys.executable, "-m", "tinymta", "passwd", "--iterations", "3", "alice"], cwd=ROOT,
                                stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        os.close(slave)
        _read_until(proc.stderr.fileno(), b"Password: ")
        os.write(master, b"typed secret\n")
        _read_until(proc.stderr.fileno(), b"Again: ")
        os.write(master, second)
        out, err = proc.communicate(timeout=30)
        echoed = _drain(master)
    finally:
        os.close(master)
    assert b"secret" not in echoed and b"other" not in echoed, echoed
    if ok:
        assert proc.returncode == 0, err
        users, _ = _load_line(tmp_path, out)
        assert users.check("alice", "typed secret")
    else:
        assert proc.returncode == 2 and out == b"" and b"tinymta: passwords do not match\n" in err, err


# --- TLS ------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key, der = str(d / "cert.pem"), str(d / "key.pem"), str(d / "cert.der")
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    subprocess.run([OPENSSL, "x509", "-in", cert, "-outform", "DER", "-out", der], check=True, capture_output=True)
    return {"cert": cert, "key": key, "der": der, "dir": str(d)}


def _handshake(server_ctx, client_ctx, hostname="localhost"):
    """Handshake over a socketpair; returns (client result, server result): the echoed
    bytes or the exception each side raised."""
    a, b = socket.socketpair()
    a.settimeout(20)
    b.settimeout(20)
    result = {}

    def serve():
        try:
            with server_ctx.wrap_socket(a, server_side=True) as t:
                t.sendall(b"pong " + t.recv(100))
                result["server"] = "ok"
        except Exception as e:
            result["server"] = e

    th = threading.Thread(target=serve)
    th.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=hostname) as t:
            t.sendall(b"ping")
            client = t.recv(100)
            assert t.version() in ("TLSv1.2", "TLSv1.3")
    except Exception as e:
        client = e
        b.close()
    th.join(20)
    a.close()
    return client, result.get("server")


def test_pem_to_der(certs):
    pem = open(certs["cert"], "rb").read()
    der = open(certs["der"], "rb").read()
    assert compat.pem_to_der(pem) == der == ssl.PEM_cert_to_DER_cert(pem.decode())
    assert compat.pem_to_der(pem + b"\n" + pem, "CERTIFICATE") == der + der
    key = open(certs["key"], "rb").read()
    both = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n" + key
    assert compat.pem_to_der(both, "PRIVATE KEY") == compat.pem_to_der(key) != compat.pem_to_der(both)
    with pytest.raises(ValueError):
        compat.pem_to_der(pem, "PRIVATE KEY")
    with pytest.raises(ValueError):
        compat.pem_to_der(b"not pem at all")


@needs_openssl
def test_tls_handshake_cpython(certs):
    server = compat.server_tls_context(certs["cert"], certs["key"])
    client = compat.client_tls_context(certs["cert"])
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert _handshake(server, client) == (b"pong ping", "ok")
    # a DER CA file works too (the form boards use)
    assert _handshake(server, compat.client_tls_context(certs["der"])) == (b"pong ping", "ok")


@needs_openssl
def test_tls_client_verifies(certs):
    server = compat.server_tls_context(certs["cert"], certs["key"])
    client, _ = _handshake(server, compat.client_tls_context(certs["cert"]), "mail.example.org")
    assert isinstance(client, ssl.SSLCertVerificationError) and "mismatch" in str(client), client
    client, _ = _handshake(server, compat.client_tls_context())  # system store: self-signed is refused
    assert isinstance(client, ssl.SSLCertVerificationError), client
    unverified = compat.client_tls_context(verify=False)
    assert unverified.verify_mode == ssl.CERT_NONE and not unverified.check_hostname
    assert _handshake(server, unverified, "mail.example.org") == (b"pong ping", "ok")


@needs_openssl
def test_tls_bad_files(certs):
    with pytest.raises(OSError):
        compat.server_tls_context(certs["dir"] + "/missing.pem", certs["key"])
    with pytest.raises(ssl.SSLError):
        compat.server_tls_context(certs["cert"], certs["cert"])  # a certificate is not a key


MP_SERVER = """
import socket, sys
from tinymta import compat
ctx = compat.server_tls_context(sys.argv[1], sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(socket.getaddrinfo("127.0.0.1", int(sys.argv[3]))[0][-1])
s.listen(1)
print("listening")
c, _ = s.accept()
t = ctx.wrap_socket(c, server_side=True)
t.write(b"pong " + t.readline())
t.close()
s.close()
"""

MP_CLIENT = """
import socket, sys
from tinymta import compat
ctx = compat.client_tls_context(sys.argv[1])
s = socket.socket()
s.connect(socket.getaddrinfo("127.0.0.1", int(sys.argv[2]))[0][-1])
try:
    t = ctx.wrap_socket(s, server_hostname=sys.argv[3])
except Exception as e:
    print("handshake failed: %r" % (e,))
    sys.exit(3)
t.write(b"ping\\n")
print(t.readline())
t.close()
"""


def _mp(script, args, **kw):
    env = dict(os.environ, MICROPYPATH=ROOT + ":.frozen")
    return subprocess.Popen([MICROPYTHON, "-c", script] + [str(a) for a in args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@needs_openssl
@needs_mp
@pytest.mark.parametrize("form", ["pem", "der"])
def test_tls_micropython_server_cpython_client(certs, form):
    cert, key = certs["cert"], certs["key"]
    if form == "der":
        cert, key = certs["der"], certs["dir"] + "/key.der"
        subprocess.run([OPENSSL, "pkey", "-in", certs["key"], "-outform", "DER", "-out", key], check=True)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # MicroPython has no getsockname: it listens on a port found free here
    proc = _mp(MP_SERVER, [cert, key, port])
    try:
        assert proc.stdout.readline() == b"listening\n", proc.stderr.read()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            with compat.client_tls_context(certs["cert"]).wrap_socket(raw, server_hostname="localhost") as t:
                t.sendall(b"ping\n")
                assert t.recv(100) == b"pong ping\n"
        assert proc.wait(20) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@needs_openssl
@needs_mp
@pytest.mark.parametrize("hostname,ok", [("localhost", True), ("mail.example.org", False)])
def test_tls_micropython_client_verifies(certs, hostname, ok):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(20)
    server = compat.server_tls_context(certs["cert"], certs["key"])

    def serve():
        try:
            c, _ = listener.accept()
            c.settimeout(20)
            with server.wrap_socket(c, server_side=True) as t:
                t.sendall(b"pong " + t.recv(100))
        except (OSError, ssl.SSLError):
            pass

    th = threading.Thread(target=serve)
    th.start()
    proc = _mp(MP_CLIENT, [certs["cert"], listener.getsockname()[1], hostname])
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        th.join(20)
        listener.close()
    if ok:
        assert proc.returncode == 0 and out == b"b'pong ping\\n'\n", (out, err)
    else:
        assert proc.returncode == 3 and b"CN" in out, (out, err)
