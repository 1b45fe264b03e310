"""SMTP AUTH users: the users file, PBKDF2-HMAC-SHA256 password hashes, and the check.

Holds: the hash format, a small HMAC and PBKDF2 over hashlib.sha256 (MicroPython has
neither hmac nor pbkdf2_hmac; CPython uses hashlib.pbkdf2_hmac: same bytes, faster),
the users-file parser and Users.check.  Must not know: SMTP, SASL, sockets, TLS or the
config; the server turns a session's ("auth", mech, user, password) event into
users.check(user, password).  Users file (UTF-8): one ``user:hash`` per line, ``#``
comment lines, blank lines; hash = ``pbkdf2-sha256$<iterations>$<salt b64>$<dk b64>``
(standard base64), as ``tinymta passwd USER`` prints it.

Iterations are stored in each hash.  The default (100000) takes ~0.02 s with CPython
on a PC and ~0.3 s on the MicroPython unix port there; a microcontroller is far slower
(not measured here), and every AUTH attempt pays it.  For a board, hash with ``tinymta
passwd --iterations N``, N such that one check takes at most ~1 s on it (time
``pbkdf2_sha256(b"x", b"salt", 1000)`` there).  Fewer iterations make a stolen users
file cheaper to crack: pair a low count with long random passwords.  An unknown user
costs as much as the dearest entry (no user-name timing oracle): use one count per file.
"""
import binascii
import hashlib
import os

from tinymta import compat

SCHEME = "pbkdf2-sha256"
DEFAULT_ITERATIONS = 100000
MAX_ITERATIONS = 10000000
SALT_BYTES = 16
DK_BYTES = 32


class AuthFileError(Exception):
    """A users file that cannot be read or has a malformed line: 'PATH:LINE: reason'."""


def _utf8(s):
    return s.encode("utf-8") if isinstance(s, str) else bytes(s)


def _pads(key):
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def _hmac(ipad, opad, msg):
    inner = hashlib.sha256(ipad)
    inner.update(msg)
    outer = hashlib.sha256(opad)
    outer.update(inner.digest())
    return outer.digest()


def hmac_sha256(key, msg):
    """HMAC-SHA256 (RFC 2104) over hashlib.sha256: MicroPython has no hmac module."""
    ipad, opad = _pads(key)
    return _hmac(ipad, opad, msg)


def pbkdf2_sha256_py(password, salt, iterations, dklen=DK_BYTES):
    """PBKDF2-HMAC-SHA256 (RFC 8018 §5.2) in plain Python; runs on MicroPython."""
    ipad, opad = _pads(password)
    out = b""
    while len(out) < dklen:
        u = salt + (len(out) // 32 + 1).to_bytes(4, "big")
        acc = 0
        for _ in range(iterations):
            u = _hmac(ipad, opad, u)
            acc ^= int.from_bytes(u, "big")
        out += acc.to_bytes(32, "big")
    return out[:dklen]


def pbkdf2_sha256(password, salt, iterations, dklen=DK_BYTES):
    """PBKDF2-HMAC-SHA256 of bytes: hashlib's C version when there is one, else the Python one."""
    fast = getattr(hashlib, "pbkdf2_hmac", None)
    if fast is not None:
        return fast("sha256", password, salt, iterations, dklen)
    return pbkdf2_sha256_py(password, salt, iterations, dklen)


def _b64(raw):
    return binascii.b2a_base64(raw)[:-1].decode()


def _unb64(s):
    """Strict standard base64 (CPython's a2b_base64 skips stray characters): bytes or None."""
    try:
        raw = binascii.a2b_base64(s)
    except Exception:  # binascii.Error (a ValueError) on CPython, ValueError on MicroPython
        return None
    return raw if _b64(raw) == s else None


def _equal(a, b):  # constant time for equal lengths
    if len(a) != len(b):
        return False
    r = 0
    for x, y in zip(a, b):
        r |= x ^ y
    return r == 0


def _check_iterations(n):
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_ITERATIONS:
        raise ValueError("iterations must be an integer from 1 to %d" % MAX_ITERATIONS)


def parse_hash(hash_str):
    """(iterations, salt, dk) from a hash string; ValueError says what is wrong."""
    parts = hash_str.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        raise ValueError("hash must look like %s$<iterations>$<salt>$<key>" % SCHEME)
    it = parts[1]
    if not it or len(it) > 8 or it[0] == "0" or [c for c in it if not "0" <= c <= "9"]:
        raise ValueError("bad iteration count %r" % it)
    it = int(it)
    _check_iterations(it)
    salt, dk = _unb64(parts[2]), _unb64(parts[3])
    if salt is None or not salt:
        raise ValueError("salt is not valid base64")
    if dk is None or not 16 <= len(dk) <= 64:
        raise ValueError("key is not valid base64 of 16 to 64 bytes")
    return it, salt, dk


def hash_password(password, iterations=DEFAULT_ITERATIONS, salt=None):
    """'pbkdf2-sha256$N$salt$key' for password (str, UTF-8); a random 16-byte salt by default."""
    _check_iterations(iterations)
    salt = os.urandom(SALT_BYTES) if salt is None else _utf8(salt)
    if not salt:
        raise ValueError("salt must not be empty")
    dk = pbkdf2_sha256(_utf8(password), salt, iterations, DK_BYTES)
    return "%s$%d$%s$%s" % (SCHEME, iterations, _b64(salt), _b64(dk))


def _verify_parsed(parsed, password):
    it, salt, dk = parsed
    return _equal(pbkdf2_sha256(_utf8(password), salt, it, len(dk)), dk)


def verify(hash_str, password):
    """True when password (str or UTF-8 bytes) matches; ValueError for a malformed hash."""
    return _verify_parsed(parse_hash(hash_str), password)


def check_username(user):
    """ValueError unless user can stand in a users file: not empty, no ':', space or control
    characters, and not starting with '#'."""
    if not user:
        raise ValueError("empty user name")
    if user[0] == "#":
        raise ValueError("user name must not start with '#'")
    for c in user:
        if c == ":" or ord(c) <= 0x20 or ord(c) == 0x7F:
            raise ValueError("user name %r must not contain ':', spaces or control characters" % user)


def load_users(path):
    """{user: hash string} from a users file; AuthFileError 'PATH:LINE: reason' on any fault."""
    try:
        data = compat.read_file(path)
    except OSError as e:
        raise AuthFileError("%s: cannot read: %s" % (path, compat.os_error_text(e)))
    users = {}
    first = {}
    lineno = 0
    for raw in data.split(b"\n"):
        lineno += 1
        where = "%s:%d: " % (path, lineno)
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeError:
            raise AuthFileError(where + "not valid UTF-8")
        if lineno == 1 and line.startswith("\ufeff"):
            line = line[1:].strip()
        if not line or line[0] == "#":
            continue
        user, sep, h = line.partition(":")
        if not sep:
            raise AuthFileError(where + "expected user:hash")
        try:
            check_username(user)
            parse_hash(h)
        except ValueError as e:
            raise AuthFileError(where + str(e))
        if user in users:
            raise AuthFileError(where + "user %r already defined on line %d" % (user, first[user]))
        users[user] = h
        first[user] = lineno
    return users


class Users:
    """The accounts allowed to AUTH; check() costs the same for known and unknown users."""

    def __init__(self, users=None):
        self._entries = {}
        for user in (users or {}):
            self._entries[user] = parse_hash(users[user])
        dearest = max([e[0] for e in self._entries.values()] or [1])
        # An unknown user is hashed against this entry, which no password matches.
        self._dummy = (dearest, os.urandom(SALT_BYTES), os.urandom(DK_BYTES))

    @classmethod
    def from_file(cls, path):
        return cls(load_users(path))

    def __len__(self):
        return len(self._entries)

    def check(self, user, password):
        """True when user (str or UTF-8 bytes, as a session reports it) has this password."""
        if not isinstance(user, str):
            try:
                user = bytes(user).decode("utf-8")
            except UnicodeError:
                user = None  # never a key
        entry = self._entries.get(user)
        ok = _verify_parsed(entry or self._dummy, password)
        return ok and entry is not None
