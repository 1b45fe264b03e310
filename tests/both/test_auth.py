"""tinymta.auth on both runtimes: PBKDF2/HMAC vectors, hashes, the users file, Users.check.

Plain asserts and argument-less test_* functions: pytest collects them on CPython and
tests/mp_runner.py runs them under MicroPython.  The PBKDF2 vectors are RFC 7914 §11
and the PBKDF2-HMAC-SHA256 counterparts of RFC 6070's (widely published, and checked
against CPython's hashlib.pbkdf2_hmac); HMAC vectors are RFC 4231.  Temporary files
live under /tmp with random names and are removed.
"""
import binascii
import os
import sys

from tinymta import auth
from tinymta.auth import AuthFileError, Users, hash_password, load_users, verify

MICROPYTHON = sys.implementation.name == "micropython"

PBKDF2_VECTORS = [  # (password, salt, iterations, dk hex)
    (b"passwd", b"salt", 1,  # RFC 7914 §11
     "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
     "49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"),
    (b"Password", b"NaCl", 80000,  # RFC 7914 §11
     "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56"
     "a1d425a1225833549adb841b51c9b3176a272bdebba1d078478f62b397f33c8d"),
    (b"password", b"salt", 1, "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"),
    (b"password", b"salt", 2, "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43"),
    (b"password", b"salt", 4096, "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a"),
    (b"passwordPASSWORDpassword", b"saltSALTsaltSALTsaltSALTsaltSALTsalt", 4096,
     "348c89dbcbd32b2f32d814b8116e84cf2b17347ebc1800181c4e2a1fb8dd53e1c635518c7dac47e9"),
    (b"pass\0word", b"sa\0lt", 4096, "89b69d0516f829893c696226650a8687"),
    # computed with CPython's hashlib.pbkdf2_hmac: a key longer than the 64-byte block
    # (hashed first), an odd length, non-ASCII UTF-8 and binary salt
    (b"k" * 100, b"salt", 3, "219c68bb88f1010f4a763b7c8fd58639c2280baf6820814c6d404891fcd85c3d19"),
    ("p\u00e4ssw\u00f6rd".encode("utf-8"), b"\x00\xff", 5,
     "eb4e71ece5b6b51d42b79938210ce7a15e63d5147c4d15813d63ea00c02600c4"),
]

HMAC_VECTORS = [  # RFC 4231 test cases 1, 2 and 6
    (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
]


def _hex(b):
    return binascii.hexlify(b).decode()


def _tmp(text):
    path = "/tmp/tinymta-test-auth-" + _hex(os.urandom(6))
    f = open(path, "wb")
    f.write(text if isinstance(text, bytes) else text.encode("utf-8"))
    f.close()
    return path


def _load(text):
    path = _tmp(text)
    try:
        return load_users(path)
    finally:
        os.remove(path)


def _load_error(text, lineno):
    path = _tmp(text)
    try:
        load_users(path)
    except AuthFileError as e:
        msg = str(e)
        assert "\n" not in msg, msg
        assert msg.startswith("%s:%d: " % (path, lineno)), msg
        return msg[len(path) + 3 + len(str(lineno)):]
    finally:
        os.remove(path)
    raise AssertionError("no AuthFileError for %r" % (text,))


H1 = hash_password("secret one", 3, salt=b"0123456789abcdef")
H2 = hash_password("secret two", 5)


def test_pbkdf2_vectors_pure_python():
    for password, salt, c, want in PBKDF2_VECTORS:
        got = auth.pbkdf2_sha256_py(password, salt, c, len(want) // 2)
        assert _hex(got) == want, (password, salt, c)


def test_pbkdf2_vectors_runtime_version():
    for password, salt, c, want in PBKDF2_VECTORS:
        assert _hex(auth.pbkdf2_sha256(password, salt, c, len(want) // 2)) == want, (password, salt, c)


def test_pure_python_matches_hashlib_pbkdf2_hmac():
    import hashlib
    if not hasattr(hashlib, "pbkdf2_hmac"):  # MicroPython: the vectors above are the check
        return
    for n in range(40):
        password, salt = os.urandom(n * 3 % 150), os.urandom(1 + n % 20)
        c, dklen = 1 + n % 7, 1 + (n * 11) % 70
        assert auth.pbkdf2_sha256_py(password, salt, c, dklen) == hashlib.pbkdf2_hmac(
            "sha256", password, salt, c, dklen), (password, salt, c, dklen)


def test_hmac_sha256_vectors():
    for key, msg, want in HMAC_VECTORS:
        assert _hex(auth.hmac_sha256(key, msg)) == want


def test_hash_format():
    h = hash_password("password", 4096, salt=b"salt")
    assert h == "pbkdf2-sha256$4096$c2FsdA==$xeR41ZKIyEGqUw22hFxMjZYok6ABzk4RpJY4c6qYE0o=", h
    parts = H2.split("$")
    assert parts[0] == "pbkdf2-sha256" and parts[1] == "5", H2
    assert len(binascii.a2b_base64(parts[2])) == 16 and len(binascii.a2b_base64(parts[3])) == 32
    assert ":" not in H2 and "\n" not in H2 and " " not in H2
    assert hash_password("x", 1) != hash_password("x", 1)  # random salts
    assert auth.parse_hash(h) == (4096, b"salt", binascii.a2b_base64(h.split("$")[3]))


def test_default_iterations():
    assert auth.DEFAULT_ITERATIONS == 100000
    if not MICROPYTHON:  # pure Python on MicroPython: ~0.3 s, still fine, but keep the run short
        assert hash_password("pw").split("$")[1] == "100000"


def test_verify_round_trip_and_wrong_passwords():
    assert verify(H1, "secret one") and verify(H2, "secret two")
    assert verify(H1, b"secret one")  # the bytes a session reports
    for wrong in ("secret two", "Secret one", "secret one ", "secret on", "", "secret one\n"):
        assert not verify(H1, wrong), wrong
    h = hash_password("p\u00e4ss \u20ac", 2)
    assert verify(h, "p\u00e4ss \u20ac") and verify(h, "p\u00e4ss \u20ac".encode("utf-8"))
    assert not verify(h, "pass \u20ac")


def test_bad_iterations_and_salt():
    for bad in (0, -1, auth.MAX_ITERATIONS + 1, "10", 1.5, None):
        try:
            hash_password("pw", bad)
        except ValueError:
            continue
        raise AssertionError("iterations %r accepted" % (bad,))
    try:
        hash_password("pw", 1, salt=b"")
    except ValueError:
        pass
    else:
        raise AssertionError("empty salt accepted")


def test_malformed_hashes():
    good = H1.split("$")
    bad = ["", "pbkdf2-sha256", "plain", "pbkdf2-sha1$3$%s$%s" % (good[2], good[3]),
           "pbkdf2-sha256$3$%s" % good[2], "$".join(good) + "$", "pbkdf2-sha256$$%s$%s" % (good[2], good[3]),
           "pbkdf2-sha256$0$%s$%s" % (good[2], good[3]), "pbkdf2-sha256$03$%s$%s" % (good[2], good[3]),
           "pbkdf2-sha256$-3$%s$%s" % (good[2], good[3]), "pbkdf2-sha256$ 3$%s$%s" % (good[2], good[3]),
           "pbkdf2-sha256$99999999$%s$%s" % (good[2], good[3]),
           "pbkdf2-sha256$3$$%s" % good[3], "pbkdf2-sha256$3$%s$" % good[2],
           "pbkdf2-sha256$3$%s$%s" % (good[2][:-1], good[3]), "pbkdf2-sha256$3$%s$%s" % (good[2], "!" + good[3]),
           "pbkdf2-sha256$3$%s$%s" % (good[2], good[3][:8]), "PBKDF2-SHA256$3$%s$%s" % (good[2], good[3])]
    for h in bad:
        try:
            verify(h, "secret one")
        except ValueError as e:
            assert "\n" not in str(e)
            continue
        raise AssertionError("malformed hash accepted: %r" % h)


def test_load_users_good_file():
    text = ("# tinymta users\n\nalice:%s\r\n   \n  # indented comment\n"
            "bob@example.org:%s\n  j\u00fcrgen:%s  \n" % (H1, H2, H1))
    users = _load(text)
    assert users == {"alice": H1, "bob@example.org": H2, "j\u00fcrgen": H1}, users
    assert _load("") == {} and _load("# only a comment\n\n") == {}
    assert _load("\ufeffalice:%s" % H1) == {"alice": H1}  # BOM, no final newline


def test_load_users_malformed_lines():
    head = "# users\n\nalice:%s\n" % H1
    assert "user:hash" in _load_error(head + "bob\n", 4)
    assert "hash" in _load_error("bob:\n", 1)
    assert "hash" in _load_error(head + "bob:secret\n", 4)
    assert "iteration" in _load_error("bob:pbkdf2-sha256$x$%s\n" % H1.split("$", 2)[2], 1)
    assert "salt" in _load_error("\n\n\nbob:pbkdf2-sha256$3$@@@@$%s\n" % H1.split("$")[3], 4)
    assert "empty" in _load_error(head + ":%s\n" % H1, 4)
    assert "user name" in _load_error("bob smith:%s\n" % H1, 1)
    assert "user name" in _load_error("bob\tsmith:%s\n" % H1, 1)
    assert "already defined on line 3" in _load_error(head + "bob:%s\nalice:%s\n" % (H2, H2), 5)
    assert "UTF-8" in _load_error(b"alice:" + H1.encode() + b"\nb\xffb:" + H1.encode() + b"\n", 2)


def test_load_users_unreadable():
    path = "/tmp/tinymta-test-auth-missing-" + _hex(os.urandom(6))
    try:
        load_users(path)
    except AuthFileError as e:
        assert str(e).startswith(path + ": cannot read: ") and "\n" not in str(e), str(e)
    else:
        raise AssertionError("missing file loaded")


def test_users_check():
    path = _tmp("alice:%s\nbob:%s\n" % (H1, H2))
    try:
        users = Users.from_file(path)
    finally:
        os.remove(path)
    assert len(users) == 2
    assert users.check("alice", "secret one") and users.check("bob", "secret two")
    assert users.check(b"alice", b"secret one")  # as the session's ("auth", ...) event has them
    assert not users.check("alice", "secret two") and not users.check("bob", "secret one")
    assert not users.check("Alice", "secret one") and not users.check("alice ", "secret one")
    assert not users.check("carol", "secret one") and not users.check("", "")
    assert not users.check(b"al\xffice", b"secret one")  # not UTF-8: unknown, no exception
    assert not Users().check("alice", "secret one") and len(Users()) == 0
    try:
        Users({"alice": "plain"})
    except ValueError:
        pass
    else:
        raise AssertionError("Users took a malformed hash")


def test_unknown_user_costs_the_same_hashing():
    calls = []
    real = auth.pbkdf2_sha256

    def counting(password, salt, iterations, dklen=32):
        calls.append((iterations, dklen))
        return real(password, salt, iterations, dklen)

    users = Users({"alice": H1, "bob": H2})  # 3 and 5 iterations
    auth.pbkdf2_sha256 = counting
    try:
        assert not users.check("carol", "secret one")
        assert not users.check(b"\xff", "secret one")
        assert users.check("bob", "secret two")
        assert not users.check("bob", "wrong")
    finally:
        auth.pbkdf2_sha256 = real
    assert calls == [(5, 32), (5, 32), (5, 32), (5, 32)], calls


def test_constant_time_equal():
    assert auth._equal(b"abc", b"abc") and auth._equal(b"", b"")
    assert not auth._equal(b"abc", b"abd") and not auth._equal(b"abc", b"ab")
