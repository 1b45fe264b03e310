"""tinymta configuration: every key with its default, loading, validation, relay checks.

Holds the schema (DESIGN.md's table plus the keys the server needs), `load()` for `.toml`
(CPython: tomllib or tomli) and `.json` (every runtime; boards use JSON compiled from the same
TOML by `tinymta build-config`), `from_dict()` (unknown sections and keys, each value, then the
rules across keys), `to_json_dict()`, the `Config` object (`cfg.server.listen`), and `ip_allowed` /
`domain_allowed`, which apply it. How one value is read (sizes, durations, addresses, networks,
optional strings; the value forms) is tinymta.configvalues; address parsing and CIDR matching are
tinymta.netaddr. Names other modules use from both are re-exported here.

It must not know SMTP, sockets, the spool format or the console, and never reads the files that
keys name (password_file, tls_cert, ...): their users check them. Every error is one line naming
the file and the key: `bad.toml: server.max_connections: must be an integer >= 1, got "eight"`.

Values that mean more than their form
- server.hostname unset: the system host name ("tinymta" when there is none).
- relay.smarthost without a port: 465 when relay.tls is "implicit", else 587.
- console.socket "" disables the control socket.

Rules across keys
- relay.tls defaults to "opportunistic" for relay.mode "mx", "starttls" for "smarthost".
  relay.mode "none" keeps accepted mail in the spool and delivers nothing (maintenance, tests).
  "implicit" needs "smarthost" (MX hosts take STARTTLS on port 25); "starttls" with "mx" makes
  TLS mandatory to every MX host.
- relay.smarthost is required with "smarthost" and refused with "mx" (it would be silently
  ignored), as are relay.username and relay.password_file, which go together and need relay.tls
  "starttls" or "implicit" (no password in clear).
- server.postmaster (unset by default) is where mail to postmaster (bare or @server.hostname)
  goes; it must be a full address other than postmaster@server.hostname.
- server.tls_cert and server.tls_key go together (STARTTLS is offered when both are set);
  server.auth_users_file needs them unless server.auth_without_tls = true.
- relay.retry_min <= relay.retry_max. spool.prog_unit is a power of two, spool.sector_size a
  multiple of it, spool.size a multiple of sector_size of at least 4 sectors, and
  server.max_message_size fits in spool.size minus the spool's 2-sector reserve.
"""
import json

from tinymta import compat, configvalues, netaddr
from tinymta.compat import MICROPYTHON
from tinymta.configvalues import MIB as _MIB, convert as _convert, show as _show
from tinymta.netaddr import format_hostport, in_networks

# re-exported: the address helpers (callers and tests use them from here), and what
# tinymta.boards reads its sizes with
format_ip, parse_cidr, parse_hostport, parse_ip = (netaddr.format_ip, netaddr.parse_cidr,
                                                   netaddr.parse_hostport, netaddr.parse_ip)
_number, _SIZE_UNITS = configvalues.number, configvalues.SIZE_UNITS

SECTIONS = ("server", "spool", "relay", "console", "log", "board")
TLS_MODES = ("none", "opportunistic", "starttls", "implicit")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """A configuration problem; str(e) is one line: 'file: section.key: what is wrong'."""


# ---- relay checks ------------------------------------------------------------------------------

def ip_allowed(cfg, ip):
    """True when a client at ip may relay without AUTH (server.relay_networks)."""
    return in_networks(cfg.server.relay_networks, ip)


def domain_allowed(cfg, domain):
    """True when server.relay_domains is empty or holds domain (case-insensitive, exact match)."""
    doms = cfg.server.relay_domains
    return not doms or domain.lower().rstrip(".") in doms


# (section, key, default as written in a file, kind, argument) in DESIGN.md's order
SCHEMA = (
    ("server", "listen", ["127.0.0.1:2525"], "listen", 1),
    ("server", "hostname", None, "hostname", None),  # None: the system host name
    ("server", "max_message_size", _MIB, "size", 1),
    ("server", "max_recipients", 100, "int", 1),
    ("server", "max_connections", 8, "int", 1),
    ("server", "relay_networks", ["127.0.0.0/8", "::1/128"], "networks", 0),
    ("server", "relay_domains", [], "domains", 0),
    ("server", "bare_newlines", "reject", "enum", ("reject", "normalize")),
    ("server", "timeout", 300, "duration", 1),
    ("server", "tls_cert", None, "opt", None),
    ("server", "tls_key", None, "opt", None),
    ("server", "auth_users_file", None, "opt", None),
    ("server", "auth_without_tls", False, "bool", None),
    ("server", "postmaster", None, "opt", None),     # where mail for postmaster@ goes (RFC 5321 4.5.1)
    ("spool", "path", "tinymta.spool", "str", None),
    ("spool", "size", 4 * _MIB, "size", 1),
    ("spool", "sector_size", 65536, "size", 1),
    ("spool", "prog_unit", 4096, "size", 1),
    ("relay", "mode", "mx", "enum", ("mx", "smarthost", "none")),   # none: keep mail, deliver nothing
    ("relay", "smarthost", None, "smarthost", None),
    ("relay", "tls", None, "optenum", TLS_MODES),  # None: chosen from relay.mode
    ("relay", "username", None, "opt", None),
    ("relay", "password_file", None, "opt", None),
    ("relay", "ca_file", None, "opt", None),
    ("relay", "dns_servers", [], "dns", 0),
    ("relay", "mx_port", 25, "port", None),
    ("relay", "retry_min", 300, "duration", 1),
    ("relay", "retry_max", 3600, "duration", 1),
    ("relay", "max_age", 432000, "duration", 1),
    ("relay", "max_deliveries", 4, "int", 1),       # deliveries in flight at once
    ("relay", "timeout", 300, "duration", 1),        # greeting, MAIL, RCPT, other commands (RFC 5321 4.5.3.2)
    ("relay", "data_timeout", 600, "duration", 1),   # the reply to the final dot
    ("console", "serial", None, "opt", None),
    ("console", "baud", 115200, "int", 1),
    ("console", "socket", "tinymta.sock", "opt", None),
    ("console", "password", None, "opt", None),
    ("log", "level", "info", "enum", LOG_LEVELS),
    # Boards (see board/*.toml and firmware/): unset on a plain Linux host.
    ("board", "name", None, "opt", None),           # the board/ profile this config was built from
    ("board", "led", None, "opt", None),            # status LED pin ("LED", "25", "2"); unset: none
    ("board", "watchdog_ms", 0, "int", 0),          # hardware watchdog timeout; 0: off
    ("board", "wifi_ssid", None, "opt", None),      # MicroPython boards: join this network at boot
    ("board", "wifi_password", None, "opt", None),
)
KEYS = [s + "." + k for s, k, _, _, _ in SCHEMA]
SECRET_KEYS = ("console.password", "board.wifi_password")


class Section:
    """One section's values as attributes (cfg.server.listen)."""

    def __init__(self, name):
        self._name = name

    def __repr__(self):
        return "<config section %s>" % self._name


class Config:
    """Every key of SCHEMA as cfg.<section>.<key>; `source` names where it came from."""

    def __init__(self, source):
        self.source = source
        for name in SECTIONS:
            setattr(self, name, Section(name))

    def __eq__(self, other):
        return isinstance(other, Config) and to_json_dict(self) == to_json_dict(other)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "<Config from %s>" % self.source


def _system_hostname():
    try:
        import socket
        name = socket.gethostname()  # AttributeError on MicroPython
    except (ImportError, AttributeError, OSError):
        name = ""
    return name or "tinymta"


def _suggest(word, candidates):
    best, best_d = "", 2 if len(word) < 6 else 3  # accept distance 1 for short words, else 2
    for c in candidates:  # edit distance, iterative
        prev = list(range(len(c) + 1))
        for i in range(len(word)):
            cur = [i + 1]
            for j in range(len(c)):
                cur.append(min(prev[j + 1] + 1, cur[j] + 1, prev[j] + (0 if word[i] == c[j] else 1)))
            prev = cur
        if prev[-1] < best_d:
            best, best_d = c, prev[-1]
    if not best and "." in word:  # right key, wrong section
        best = ([k for k in candidates if k.split(".")[1] == word.split(".", 1)[1]] or [""])[0]
    return " (did you mean %s?)" % best if best else ""


def from_dict(d, source="<dict>"):
    """Validate a {section: {key: value}} dict (parsed TOML or JSON) into a Config."""
    if not isinstance(d, dict):
        raise ConfigError("%s: must hold a table of sections, got %s" % (source, _show(d)))
    for name in sorted(d):
        if name not in SECTIONS:
            raise ConfigError("%s: %s: unknown section%s" % (source, name, _suggest(name, SECTIONS)))
        if not isinstance(d[name], dict):
            raise ConfigError("%s: %s: must be a table of keys, got %s" % (source, name, _show(d[name])))
        for key in sorted(d[name]):
            if name + "." + key not in KEYS:
                full = name + "." + key
                raise ConfigError("%s: %s: unknown key%s" % (source, full, _suggest(full, KEYS)))
    cfg = Config(source)
    for name, key, default, kind, arg in SCHEMA:
        sec = d.get(name) or {}
        if key in sec:
            try:
                v = _convert(kind, sec[key], arg)
            except ValueError as e:
                msg = str(e)
                if ", got " not in msg:
                    msg += ", got " + _show(sec[key])
                raise ConfigError("%s: %s.%s: %s" % (source, name, key, msg))
        else:
            v = _system_hostname() if kind == "hostname" else _convert(kind, default, arg)
        setattr(getattr(cfg, name), key, v)
    _check_across(cfg, source)
    return cfg


def _check_across(cfg, source):
    def fail(key, msg):
        raise ConfigError("%s: %s: %s" % (source, key, msg))

    s, sp, r = cfg.server, cfg.spool, cfg.relay
    if s.postmaster is not None:
        local, _, domain = s.postmaster.rpartition("@")
        if not local or "." not in domain or [1 for ch in s.postmaster if ch <= " " or ch in "<>"]:
            fail("server.postmaster", 'must be a mail address like "admin@example.org", got "%s"'
                 % s.postmaster)
        if domain.lower() == s.hostname.lower() and local.lower() == "postmaster":
            fail("server.postmaster", "must be another address (mail for it would come back here)")
    if r.tls is None:
        r.tls = "starttls" if r.mode == "smarthost" else "opportunistic"
    if r.mode == "smarthost":
        if r.smarthost is None:
            fail("relay.smarthost", 'required when relay.mode is "smarthost"')
        if r.smarthost[1] == 0:
            r.smarthost = (r.smarthost[0], 465 if r.tls == "implicit" else 587)
    else:
        for key in ("smarthost", "username", "password_file"):
            if getattr(r, key) is not None:
                fail("relay." + key, 'only used when relay.mode is "smarthost" (it is "%s")' % r.mode)
        if r.tls == "implicit":
            fail("relay.tls", '"implicit" needs relay.mode "smarthost": MX hosts take STARTTLS on port 25'
                 ' ("starttls" makes it mandatory)')
    if r.username is not None and r.password_file is None:
        fail("relay.password_file", "required when relay.username is set")
    if r.password_file is not None and r.username is None:
        fail("relay.username", "required when relay.password_file is set")
    if r.username is not None and r.tls not in ("starttls", "implicit"):
        fail("relay.tls", 'must be "starttls" or "implicit" when relay.username is set (no password in'
             ' clear), got "%s"' % r.tls)
    if r.retry_max < r.retry_min:
        fail("relay.retry_max", "must be >= relay.retry_min (%d), got %d" % (r.retry_min, r.retry_max))
    if (s.tls_cert is None) != (s.tls_key is None):
        fail("server.tls_key" if s.tls_key is None else "server.tls_cert",
             "server.tls_cert and server.tls_key must be set together")
    if s.auth_users_file is not None and s.tls_cert is None and not s.auth_without_tls:
        fail("server.auth_users_file", "AUTH is only offered over TLS: set server.tls_cert and"
             " server.tls_key, or server.auth_without_tls = true")
    pu, ss, size = sp.prog_unit, sp.sector_size, sp.size
    if pu & (pu - 1) or pu > 65536:
        fail("spool.prog_unit", "must be a power of two of at most 65536, got %d" % pu)
    if ss % pu or ss & (ss - 1):
        fail("spool.sector_size", "must be a power of two and a multiple of spool.prog_unit (%d), got %d"
             % (pu, ss))
    if size % ss or size < 4 * ss:
        fail("spool.size", "must be a multiple of spool.sector_size (%d) and at least 4 sectors, got %d"
             % (ss, size))
    room = spool_admission_limit(size, ss)
    if s.max_message_size > room:
        fail("server.max_message_size", "must fit in the spool: at most %d for this spool.size (the spool "
             "admits mail up to 75%% of its space less a 2-sector reserve), got %d" % (room, s.max_message_size))


def spool_admission_limit(size, sector):
    """The largest message an empty spool of this geometry admits (spool.Spool's rule, conservatively)."""
    capacity = (size // sector - 3) * (sector - 40)
    return int(capacity * 3 // 4) - 32 * (2 + capacity // 4000) - 4096


def to_json_dict(cfg, redact=False):
    """Every key as a plain {section: {key: value}} dict that from_dict() reads back equal.

    Unset optional strings are "". With redact, set secrets (console.password) read "***".
    """
    out = {}
    for name, key, _, kind, _ in SCHEMA:
        v = getattr(getattr(cfg, name), key)
        if kind in ("listen", "dns"):
            v = [format_hostport(hp) for hp in v]
        elif kind == "smarthost":
            v = format_hostport(v) if v else ""
        elif kind == "networks":
            v = [n[3] for n in v]
        elif isinstance(v, list):
            v = list(v)
        elif v is None:
            v = ""
        if redact and v and name + "." + key in SECRET_KEYS:
            v = "***"
        out.setdefault(name, {})[key] = v
    return out


def _toml_module():
    for name in ("tomllib", "tomli"):
        try:
            return __import__(name)
        except ImportError:
            pass
    return None


def _one_line(e):
    return " ".join(str(e).split())


def load(path=None):
    """Load and validate a .toml or .json config file; None gives the defaults."""
    if path is None:
        return from_dict({}, "<defaults>")
    return from_dict(read_dict(path), path)


def read_dict(path, shown=None):
    """The tables of a .toml or .json file, unvalidated (board profiles use it too).
    Errors are ConfigError, one line starting with `shown` (default: the path)."""
    name, path = path, shown or path        # read `name`; speak of `path`
    toml = name.lower().endswith(".toml")
    if not toml and not name.lower().endswith(".json"):
        raise ConfigError("%s: unknown config format: the name must end in .toml or .json" % path)
    try:
        data = compat.read_file(name)
    except OSError as e:
        raise ConfigError("%s: cannot read: %s" % (path, compat.os_error_text(e)))
    try:
        text = data.decode("utf-8")
    except UnicodeError:
        raise ConfigError("%s: not valid UTF-8" % path)
    if text.startswith("\ufeff"):
        text = text[1:]
    if toml:
        mod = _toml_module()
        if mod is None and MICROPYTHON:
            raise ConfigError("%s: MicroPython cannot read TOML: compile it to JSON on a host with"
                              " `tinymta build-config` and load the .json file" % path)
        if mod is None:
            raise ConfigError("%s: reading TOML needs Python 3.11+ or the tomli package (pip install"
                              " tomli), or compile it to JSON with `tinymta build-config`" % path)
        try:
            d = mod.loads(text)
        except ValueError as e:  # tomllib.TOMLDecodeError is a ValueError
            raise ConfigError("%s: %s" % (path, _one_line(e)))
    else:
        try:
            d = json.loads(text)
        except ValueError as e:
            raise ConfigError("%s: bad JSON: %s" % (path, _one_line(e)))
    return d
