"""Putting a staged tree onto a MicroPython board with mpremote (CPython, on the host).

    deploy(stage_dir, files, port) -> "reset" | ...   copy beside the running tree, verify, swap, reset

The new tree is copied next to the one the board runs (lib.new, boot.py.new, ...) and swapped in
by renames (atomic per entry on littlefs) only once every file's sha256 is right, so a failed
copy (ENOSPC, a lost connection, a wrong hash) leaves the board running its previous tinymta and
the message says so; a swap cut short is reported as the state it left.  See tinymta/flash.py
for the command sequence and the tree.

This module must not know the config, the profiles or the MTA: it copies files and says what
happened.  Errors are FlashError with a one-line message.
"""
import os
import shutil
import subprocess
import sys

TIMEOUT = 600
FIRMWARE_FILES = ("boot.py", "main.py")     # from firmware/micropython, next to config.json


class FlashError(Exception):
    """build-config or flash cannot go on; str(e) is one line."""


# --- mpremote ---------------------------------------------------------------------------------------

# Every mpremote call connects with `resume`: no soft reset.  Each MicroPython profile turns the
# watchdog on (board.watchdog_ms, 8 s), which nothing can turn off again.  mpremote's Ctrl-C stops
# a running tinymta, whose main() then starts a timer that feeds the watchdog (board_rt.keep_fed),
# so the REPL stays usable for as long as the copy takes.  A soft reset would kill that timer and
# run boot.py again (its Wi-Fi join waits up to 8 s): the watchdog would reset the board in the
# middle of the copy.  The emulated board (the unix port on a pty) needs `resume` too.

# Removing a tree on the board: files, or directories with everything below them.  No recursion
# and no os.walk (MicroPython has neither a deep stack nor os.walk).
_RM = """import os
def _ex(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False
def _rm(top):
    todo, dirs = [top], []
    while todo:
        p = todo.pop()
        try:
            mode = os.stat(p)[0]
        except OSError:
            continue
        if mode & 0x4000:
            dirs.append(p)
            todo.extend([p + '/' + e[0] for e in os.ilistdir(p)])
        else:
            os.remove(p)
    for p in reversed(dirs):
        os.rmdir(p)
"""

# Run on the board before the copy: the leftovers of an interrupted flash go.  A swap cut between
# its two renames left no lib/ and the previous tree in lib.old: that goes back first.
_PREPARE = _RM + """if _ex('lib.old') and not _ex('lib'):
    os.rename('lib.old', 'lib')
for _p in %r:
    _rm(_p)
_rm('lib.old')
"""

# Run on the board after the new tree is verified in lib.new and *.new: put it in place by renames
# (each atomic on littlefs), printing a mark after each step so the host can tell how far it got.
# Then the entries of the previous lib/ that the new tree does not bring (other libraries) move
# over, and the previous tree (lib.old) goes.
_SWAP = _RM + """_rm('lib.old')
if _ex('lib'):
    os.rename('lib', 'lib.old')
print('S moved')
os.rename('lib.new', 'lib')
print('S lib')
for _f in %r:
    try:
        os.rename(_f + '.new', _f)
    except OSError:
        if not _ex(_f + '.new'):
            raise
        os.remove(_f)
        os.rename(_f + '.new', _f)
    print('S file ' + _f)
if _ex('lib.old'):
    _own = %r
    for _e in [e[0] for e in os.ilistdir('lib.old')]:
        if _e not in _own:
            os.rename('lib.old/' + _e, 'lib/' + _e)
print('S kept')
_rm('lib.old')
print('S done')
"""

# Run on the board: "H <sha256> <path>" for each named file (missing: "H - <path>").
_HASH = """import hashlib, binascii
for _p in %r:
    try:
        _f = open(_p, 'rb')
    except OSError:
        print('H - ' + _p)
        continue
    _h = hashlib.sha256()
    _b = bytearray(1024)
    while True:
        _n = _f.readinto(_b)
        if not _n:
            break
        _h.update(_b[:_n])
    _f.close()
    print('H ' + binascii.hexlify(_h.digest()).decode() + ' ' + _p)
"""

# Run on the board: "F <on the filesystem: 1 or 0> <__file__>" of a fresh `import tinymta` (the
# modules a running tinymta left in sys.modules are set aside, then put back), or "F ! <error>",
# so the host sees whether the copied lib/ wins: on firmware with tinymta frozen in (manifest.py)
# sys.path is ['', '.frozen', '/lib'], and a frozen module's __file__ (".frozen/...") is no file.
_WHICH = """import sys, os
_o = {}
for _k in list(sys.modules):
    if _k == 'tinymta' or _k.startswith('tinymta.'):
        _o[_k] = sys.modules.pop(_k)
try:
    import tinymta as _t
    _p = str(getattr(_t, '__file__', '?'))
    try:
        os.stat(_p)
        print('F 1 ' + _p)
    except OSError:
        print('F 0 ' + _p)
except Exception as _e:
    print('F ! ' + repr(_e))
sys.modules.pop('tinymta', None)
sys.modules.update(_o)
"""

STAGED = ".new"         # lib.new, boot.py.new, ...: the new tree until it is verified
KEPT = "(the board still runs its previous tinymta)"


def mpremote_base(port, resume=True):
    """mpremote connect PORT resume: always `resume` (see above); the argument is ignored."""
    exe = shutil.which("mpremote")
    base = [exe] if exe else [sys.executable, "-m", "mpremote"]
    return base + ["connect", port, "resume"]


def _text(b):
    if b is None:
        return ""
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else b


def _run(cmd, cwd=None, timeout=TIMEOUT):
    """mpremote's standard output; FlashError (with .out, what it printed) when it fails."""
    where = " ".join(cmd[cmd.index("connect") + 1:][:1])
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        err = FlashError("mpremote %s: no answer from the board within %d s" % (where, timeout))
        err.out = _text(e.stdout)
        raise err
    except OSError as e:
        err = FlashError("cannot run mpremote: %s (pip install mpremote)" % (e.strerror or e))
        err.out = ""
        raise err
    if p.returncode != 0:
        lines = (p.stderr.strip() or p.stdout.strip() or "exit status %d" % p.returncode).splitlines()
        err = FlashError("mpremote %s: %s" % (where, lines[-1].strip().rstrip(".")))
        err.out = p.stdout
        raise err
    return p.stdout


def _old_paths(files):
    """The top-level entries of lib/ that are the tree's: each one it brings, and every other form
    of the same module name (MicroPython imports m.py before m.mpy, so a stale twin would win; a
    stale dns.py next to the dns/ package only misleads).  The rest of lib/ is kept."""
    out = []
    for t in sorted(set(f.split("/")[1] for f in files if f.startswith("lib/"))):
        stem = t[:-4] if t.endswith(".mpy") else t
        for p in (stem, stem + ".py", stem + ".mpy"):
            if "lib/" + p not in out:
                out.append("lib/" + p)
    return out


def _staged_name(f):
    """Where file f of the tree is copied first: lib/x -> lib.new/x, boot.py -> boot.py.new."""
    return "lib" + STAGED + f[3:] if f.startswith("lib/") else f + STAGED


def remote_hashes(port, resume, files):
    """{path: sha256 hex or None} of the files on the board."""
    out = _run(mpremote_base(port) + ["exec", _HASH % (list(files),)])
    got = {}
    for line in out.splitlines():
        parts = line.strip().split(" ", 2)
        if len(parts) == 3 and parts[0] == "H":
            got[parts[2]] = None if parts[1] == "-" else parts[1]
    return got


def swap_state(out, top_files):
    """What a cut-short swap left on the board, from the marks it printed: (complete, words)."""
    marks = [ln.strip()[2:] for ln in (out or "").splitlines() if ln.strip().startswith("S ")]
    done = [m[5:] for m in marks if m.startswith("file ")]
    if "moved" not in marks:
        return False, "nothing was swapped %s; re-run tinymta flash" % KEPT
    if "lib" not in marks:
        return False, ("the board has NO lib/ now and will not start tinymta (its previous tree is in lib.old, "
                       "the new one in lib.new): re-run tinymta flash, which first moves lib.old back")
    rest = [f for f in top_files if f not in done]
    if rest:
        return False, ("lib/ is the new tree but %s %s still the previous one%s (the new: %s): the board is "
                       "half updated, re-run tinymta flash"
                       % (", ".join(rest), "is" if len(rest) == 1 else "are", "" if len(rest) == 1 else "s",
                          ", ".join(f + STAGED for f in rest)))
    if "kept" not in marks:
        return False, ("the new tinymta is in place, but some other entries of the previous lib/ are still in "
                       "lib.old: move them back to lib/ (tinymta flash would remove lib.old)")
    return True, "the new tinymta is in place; the previous tree was left in lib.old (the next flash removes it)"


def deploy(stage_dir, files, port, resume=True, reset=True, say=None, warn=None):
    """Copy the staged tree to the board next to the one it runs (lib.new, boot.py.new, ...), check
    every file's sha256, swap it into place by renames, tell where `import tinymta` now comes from,
    reset.  Returns what was done ("reset" or "copied").  `resume` is ignored: always resume."""
    import hashlib
    say = say or (lambda s: None)
    warn = warn or say
    top = list(FIRMWARE_FILES) + ["config.json"]
    staged = [_staged_name(f) for f in top]
    base = mpremote_base(port)

    def cleanup():      # best effort: a partial lib.new would take the spool's room on the board
        try:
            _run(base + ["exec", _PREPARE % (["lib" + STAGED] + staged,)], timeout=120)
            return ""
        except FlashError:
            return "; lib.new is left on the board (the next flash removes it)"

    cmd = base + ["exec", _PREPARE % (["lib" + STAGED] + staged,), "+", "fs", "cp", "-r", "lib", ":lib" + STAGED]
    for f, s in zip(top, staged):
        cmd += ["+", "fs", "cp", f, ":" + s]
    say("copying %d files to %s (next to the tree it runs)" % (len(files), port))
    try:
        _run(cmd, cwd=stage_dir)
        got = remote_hashes(port, True, [_staged_name(f) for f in files])
    except FlashError as e:
        raise FlashError("%s; nothing was swapped %s%s" % (e, KEPT, cleanup()))
    for f in files:
        with open(os.path.join(stage_dir, f), "rb") as fh:
            want = hashlib.sha256(fh.read()).hexdigest()
        have = got.get(_staged_name(f))
        if have != want:
            raise FlashError("%s: the copy on the board %s; nothing was swapped %s%s"
                             % (f, "is missing" if have is None else "differs (sha256)", KEPT, cleanup()))
    say("verified %d files on the board (sha256)" % len(files))
    own = [p[4:] for p in _old_paths(files)]
    try:
        out = _run(base + ["exec", _SWAP % (top, own), "+", "exec", _WHICH])
    except FlashError as e:
        complete, words = swap_state(getattr(e, "out", ""), top)
        if not complete:
            raise FlashError("%s: %s" % (e, words))
        warn("%s (%s)" % (words, e))
        out = None
    say("swapped into place: lib/, %s" % ", ".join(top))
    where = [ln.strip()[2:] for ln in (out or "").splitlines() if ln.startswith("F ")]
    where = where[-1] if where else "? no answer"
    if out is None:
        pass            # the swap's exec failed at its very end, so the check did not run
    elif where[:2] == "1 " and where.endswith("lib/tinymta/__init__.mpy"):
        say("the board imports tinymta from %s" % where[2:-len("/__init__.mpy")])
    elif where[:2] == "0 ":
        warn("warning: this firmware has tinymta frozen in (%s), and frozen modules come before /lib: the board "
             "runs its frozen tinymta, the copied lib/ modules are not used (boot.py, main.py and config.json "
             "are)" % where[2:])
    elif where[:2] == "1 ":
        warn("warning: the board imports tinymta from %s, not from the copied lib/: remove that" % where[2:])
    else:
        warn("warning: `import tinymta` on the board: %s" % where[2:])
    if reset:
        _run(base + ["reset"])
        say("board reset: it boots into tinymta")
        return "reset"
    return "copied"
