"""Board profiles (board/*.toml): finding, loading and validating them, and the tinymta config
a profile gives (CPython only: host-side, for `tinymta install` and `tinymta flash`).

A profile describes one board: its runtime ("linux" or "micropython"), console port, spool
geometry, status LED, watchdog, heap budget and the config defaults that suit its RAM and flash
(board/README.md has the format).  `load_profile()` checks every key and type and raises
ProfileError with one line: `board/foo.toml: spool.size: must be ...`.  `config_dict()` turns a
profile (plus a user's config dict laid over it) into the {section: {key: value}} dict that
tinymta.config.from_dict() accepts.

It must not know how a board is flashed or installed, nor systemd, nor the spool format: it
holds facts about boards and maps them onto config keys, nothing else.
"""
import os
import re
import sys

from tinymta import config
from tinymta.config import ConfigError, _suggest, read_dict

RUNTIMES = ("linux", "micropython")
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ProfileError(Exception):
    """A profile that cannot be used; str(e) is one line: 'board/foo.toml: section.key: what'."""


def board_dirs():
    """Where profiles are looked for, in order: $TINYMTA_BOARD_DIR, board/ next to the package
    (a checkout or an editable install), then the data directories an installed copy may use
    (profiles are not package data: they are meant to be read and edited as files)."""
    dirs = []
    if os.environ.get("TINYMTA_BOARD_DIR"):
        dirs.append(os.environ["TINYMTA_BOARD_DIR"])
    dirs.append(os.path.join(_PKG_PARENT, "board"))
    dirs.append(os.path.join(sys.prefix, "share", "tinymta", "board"))
    dirs.append("/usr/share/tinymta/board")
    return dirs


def _find_board_dir():
    for d in board_dirs():
        if os.path.isdir(d):
            return d
    return os.path.join(_PKG_PARENT, "board")


BOARD_DIR = _find_board_dir()


def list_boards(directory=None):
    """The names of the profiles in directory (default BOARD_DIR), sorted."""
    d = directory or BOARD_DIR
    try:
        names = os.listdir(d)
    except OSError:
        return []
    return sorted(n[:-5] for n in names if n.endswith(".toml") and not n.startswith("."))


def _display(path):
    """A path as errors show it: relative when under the current directory (board/foo.toml)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path


def profile_path(name_or_path, directory=None):
    """The file for a board name ("pico-w") or a path ("my/board.toml"); ProfileError if none."""
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        if not os.path.isfile(name_or_path):
            raise ProfileError("%s: no such board profile" % name_or_path)
        return name_or_path
    d = directory or BOARD_DIR
    path = os.path.join(d, name_or_path + ".toml")
    if not os.path.isfile(path):
        known = list_boards(d)
        hint = _suggest(name_or_path, known)
        raise ProfileError("unknown board \"%s\"%s; known boards: %s" % (
            name_or_path, hint, ", ".join(known) or "none (no profiles in %s)" % d))
    return path


# ---- the profile schema --------------------------------------------------------------------------
# (section, key, kind, required, runtimes): runtimes are those that use the key (the others refuse
# it); required is True (every runtime that uses it needs it), False, or the one runtime that
# needs it.  A MicroPython spool is spool.path (a file) or spool.partition: _check_spool.

_ALL, _MP = RUNTIMES, ("micropython",)
SCHEMA = (
    ("board", "name", "str", True, _ALL),
    ("board", "description", "str", True, _ALL),
    ("board", "runtime", "runtime", True, _ALL),
    ("board", "mcu", "str", True, _ALL),
    ("board", "micropython_board", "str", True, _MP),   # the MicroPython firmware to flash
    ("board", "ram", "size", True, _ALL),
    ("board", "flash", "size", True, _MP),
    ("board", "heap", "size", True, _ALL),
    ("console", "port", "str", True, _ALL),
    ("console", "baud", "int", True, _ALL),
    ("spool", "path", "str", "linux", _ALL),            # micropython: a file, or spool.partition
    ("spool", "partition", "str", False, _MP),
    ("spool", "offset", "size0", False, _MP),           # only with spool.partition
    ("spool", "size", "size", True, _ALL),
    ("spool", "sector_size", "size", True, _ALL),
    ("spool", "prog_unit", "size", True, _ALL),
    ("led", "pin", "optstr", True, _ALL),
    ("watchdog", "timeout_ms", "int0", True, _ALL),
)
SECTIONS = ("board", "console", "spool", "led", "watchdog", "defaults")
_KEYS = [s + "." + k for s, k, _, _, _ in SCHEMA]
# Config keys a profile fills from its own tables: [defaults] may not set them too.
FILLED = ("board.name", "board.led", "board.watchdog_ms", "console.serial", "console.baud",
          "spool.path", "spool.size", "spool.sector_size", "spool.prog_unit")
_UART = re.compile(r"^uart[0-9]$")


def _value(kind, v):
    """A profile value -> its checked form, or ValueError saying what it must be."""
    if kind in ("str", "runtime"):
        if not isinstance(v, str) or not v:
            raise ValueError("must be a non-empty string")
        if kind == "runtime" and v not in RUNTIMES:
            raise ValueError("must be one of " + ", ".join('"%s"' % r for r in RUNTIMES))
    elif kind == "optstr":
        if not isinstance(v, str):
            raise ValueError('must be a string ("" for none)')
    elif kind in ("int", "int0"):
        lo = 1 if kind == "int" else 0
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError("must be an integer >= %d" % lo)
    else:  # sizes, as tinymta config writes them: 4096, "64K", "4M", "1MiB"
        lo = 0 if kind == "size0" else 1
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ValueError('must be a size >= %d bytes: an integer or "64K", "4M", "1MiB"...' % lo)
        v = config._number(v, lo, config._SIZE_UNITS,
                           'must be a size >= %d bytes: an integer or "64K", "4M", "1MiB"...')
    return v


def _parse_toml(path, shown):
    try:
        return read_dict(path, shown)
    except ConfigError as e:
        raise ProfileError(str(e))


def load_profile(name_or_path, directory=None):
    """Load and check a profile; returns {section: {key: value}} with sizes as integers, every
    key of SCHEMA present (None where not set or not used by the runtime; spool.offset is 0 for
    a MicroPython partition), the [defaults] table as written, and "source": the file it came from."""
    path = profile_path(name_or_path, directory)
    shown = _display(path)
    raw = _parse_toml(path, shown)
    return check_profile(raw, shown, os.path.basename(path)[:-5])


def check_profile(raw, shown="<profile>", stem=None):
    """Check a parsed profile (see load_profile); stem is the file's name, which board.name must match."""
    def fail(key, msg):
        raise ProfileError("%s: %s: %s" % (shown, key, msg))

    for name in sorted(raw):
        if name not in SECTIONS:
            fail(name, "unknown table%s" % _suggest(name, SECTIONS))
        if not isinstance(raw[name], dict):
            fail(name, "must be a table")
        if name == "defaults":
            continue
        for key in sorted(raw[name]):
            full = name + "." + key
            if full not in _KEYS:
                fail(full, "unknown key%s" % _suggest(full, _KEYS))
    runtime = (raw.get("board") or {}).get("runtime")
    if runtime is not None:
        try:
            _value("runtime", runtime)
        except ValueError as e:
            fail("board.runtime", "%s, got %s" % (e, config._show(runtime)))
    prof = {"source": shown}
    for sec, key, kind, required, runtimes in SCHEMA:
        table = raw.get(sec) or {}
        full = sec + "." + key
        used = runtime is None or runtime in runtimes
        if key not in table:
            if used and (required is True or required == runtime):
                fail(full, "missing" + ("" if runtimes == _ALL and required is True
                                        else " (needed by %s boards)" % runtime))
            v = None
        elif not used:
            fail(full, "only used by %s boards (board.runtime is \"%s\")" % (" and ".join(runtimes), runtime))
        else:
            try:
                v = _value(kind, table[key])
            except ValueError as e:
                fail(full, "%s, got %s" % (e, config._show(table[key])))
        prof.setdefault(sec, {})[key] = v
    defaults = raw.get("defaults") or {}
    prof["defaults"] = defaults
    _check_board(prof, stem, fail)
    for sec in sorted(defaults):
        if isinstance(defaults[sec], dict):
            for key in sorted(defaults[sec]):
                if sec + "." + key in FILLED:
                    fail("defaults.%s.%s" % (sec, key), "set from the profile's own tables (see board/README.md)")
    try:
        config_dict(prof)
    except ConfigError as e:  # e.g. defaults.server.max_message_size too big for the spool
        msg = str(e)
        raise ProfileError(msg if msg.startswith(shown) else "%s: %s" % (shown, msg))
    return prof


def _check_board(p, stem, fail):
    b, c, s = p["board"], p["console"], p["spool"]
    if stem is not None and b["name"] != stem:
        fail("board.name", 'must match the file name "%s", got "%s"' % (stem, b["name"]))
    if b["heap"] > b["ram"]:
        fail("board.heap", "must not exceed board.ram (%d), got %d" % (b["ram"], b["heap"]))
    port = c["port"]
    if b["runtime"] == "linux":
        if not port.startswith("/dev/"):
            fail("console.port", 'must be a device path like "/dev/serial0" or "/dev/ttyGS0", got "%s"' % port)
        if not s["path"].startswith("/"):
            fail("spool.path", 'must be an absolute path, got "%s"' % s["path"])
    elif port != "usb" and not _UART.match(port):
        fail("console.port", 'must be "usb" (USB-CDC stdin/stdout) or "uartN" (machine.UART(N)), got "%s"' % port)
    pu, ss, size = s["prog_unit"], s["sector_size"], s["size"]
    if pu & (pu - 1):
        fail("spool.prog_unit", "must be a power of two, got %d" % pu)
    if ss & (ss - 1) or ss % pu:
        fail("spool.sector_size", "must be a power of two and a multiple of spool.prog_unit (%d), got %d" % (pu, ss))
    if size % ss or size < 4 * ss:
        fail("spool.size", "must be a multiple of spool.sector_size (%d) and at least 4 sectors, got %d" % (ss, size))
    if b["runtime"] == "micropython":
        _check_spool(b, s, fail)


def _check_spool(b, s, fail):
    """A MicroPython spool: a file on the board's filesystem (spool.path) or a raw flash area
    (spool.partition, spool.offset), exactly one of the two.  Sets offset to 0 for a partition."""
    path, part, ss = s["path"], s["partition"], s["sector_size"]
    if path is None and part is None:
        fail("spool.path", 'missing: micropython boards need spool.path (a file on the board\'s filesystem, '
             'e.g. "/tinymta.spool") or spool.partition (a raw flash area, e.g. "flash")')
    if path is not None and part is not None:
        fail("spool.partition", 'give spool.path (a file, "%s") or spool.partition (a raw flash area, "%s"), '
             "not both" % (path, part))
    if path is not None:
        if s["offset"] is not None:
            fail("spool.offset", "only used with spool.partition (spool.path is a file)")
        if not path.startswith("/") or "@" in path:
            fail("spool.path", 'must be an absolute path on the board without "@", like "/tinymta.spool", '
                 'got "%s"' % path)
        if s["size"] > b["flash"]:
            fail("spool.size", "must fit in board.flash (%d), got %d" % (b["flash"], s["size"]))
        return
    s["offset"] = s["offset"] or 0
    if s["offset"] % ss:
        fail("spool.offset", "must be a multiple of spool.sector_size (%d), got %d" % (ss, s["offset"]))
    if s["offset"] + s["size"] > b["flash"]:
        fail("spool.size", "spool.offset + spool.size (%d) must fit in board.flash (%d)"
             % (s["offset"] + s["size"], b["flash"]))
    if "@" in part or part.startswith("/"):
        fail("spool.partition", 'must be a partition name without "@" or "/", got "%s"' % part)


def spool_location(profile):
    """spool.path for the config: the file (Linux, and MicroPython's "/tinymta.spool"), or on
    MicroPython the flash area's name, with "@OFFSET" when the spool starts inside it
    ("flash@344064": rp2.Flash(start=344064)).  board_rt.open_spool_device reads it back."""
    s = profile["spool"]
    if s["path"] is not None:
        return s["path"]
    return s["partition"] if not s["offset"] else "%s@%d" % (s["partition"], s["offset"])


def config_dict(profile, user=None, user_source="<user config>"):
    """The tinymta config {section: {key: value}} for a profile: its [defaults], the keys it
    fills itself (FILLED), then the user's dict laid over both, key by key.  Validated with
    tinymta.config.from_dict; a ConfigError names the profile or user_source, whichever holds
    the bad value.  Keys nobody set are left out (from_dict supplies them, server.hostname
    included, at the board's run time rather than on the host that builds the config)."""
    out = {}
    for sec, table in profile["defaults"].items():
        out[sec] = dict(table) if isinstance(table, dict) else table
    b, s = profile["board"], profile["spool"]
    filled = {
        "board": {"name": b["name"], "led": profile["led"]["pin"],
                  "watchdog_ms": profile["watchdog"]["timeout_ms"]},
        "console": {"serial": profile["console"]["port"], "baud": profile["console"]["baud"]},
        "spool": {"path": spool_location(profile), "size": s["size"], "sector_size": s["sector_size"],
                  "prog_unit": s["prog_unit"]},
    }
    for sec, table in filled.items():
        out.setdefault(sec, {}).update(table)
    config.from_dict(out, profile["source"])
    if user:
        if not isinstance(user, dict):
            raise ConfigError("%s: must hold a table of sections" % user_source)
        name = (user.get("board") or {}).get("name") if isinstance(user.get("board"), dict) else None
        if name not in (None, "", b["name"]):
            raise ConfigError('%s: board.name: the config is for board "%s" but the profile is "%s"'
                              % (user_source, name, b["name"]))
        for sec, table in user.items():
            if isinstance(table, dict) and isinstance(out.get(sec), dict):
                out[sec].update((k, v) for k, v in table.items() if (sec, k, v) != ("board", "name", ""))
            else:
                out[sec] = dict(table) if isinstance(table, dict) else table
        config.from_dict(out, user_source)
    return out
