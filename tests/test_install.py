"""`tinymta install --board NAME --root DIR` (tinymta/install.py, firmware/linux/).

Into a staging root: the unit's exposure level from `systemd-analyze security --offline` (with
the board's drop-in) is at most 2.0; the config validates and holds the profile's values; the
spool exists at its full size, formatted; the passwd file has the service user; /usr/sbin/sendmail
points at the wrapper.  The unit's command line really starts the MTA: ExecStart and Environment
are read from the installed unit, the config path mapped under DIR, the installed config pointed
at a free loopback port, and a mail sent with smtplib lands in the installed spool; the sendmail
wrapper's command line hands one over too; SIGTERM ends it with status 0.
A second run changes no file; an edited config is kept (replaced with --force, saved as .bak);
another MTA's sendmail is not replaced; a MicroPython board, a bad user config or a spool file of
the wrong size give one line on stderr and exit status 2 (with --force too, the config left as it
was).  Under umask 027 the directories are still 0755; a secret is never world-readable, not in
the .bak nor in a .tmp; a python or checkout under /home, /root, /tmp or /var/tmp is noted as
hidden from the service.  Without systemd-sysusers the user is appended to the root's
passwd/group/shadow.
"""
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import smtplib
import subprocess
import sys
import time

import pytest

from mtaproc import ROOT, free_port
from tinymta import config, install
from tinymta.blockdev import FileBlockDevice
from tinymta.spool import Spool

SMALL = 'max_message_size = "256K"\n'  # with a 1 MiB spool: fast installs for the other tests


def run_install(root, *extra, check=True, umask=None):
    r = subprocess.run([sys.executable, "-m", "tinymta", "install", "--root", str(root)] + list(extra),
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120,
                       preexec_fn=None if umask is None else (lambda: os.umask(umask)))
    out, err = r.stdout.decode(), r.stderr.decode()
    if check:
        assert r.returncode == 0, out + err
    return r.returncode, out, err


def small_user_config(tmp_path, extra=""):
    p = tmp_path / "user.toml"
    p.write_text('[spool]\nsize = "1M"\n[server]\n' + SMALL + extra)
    return str(p)


@pytest.fixture(scope="module")
def zero(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    _, out, _ = run_install(root, "--board", "rpi-zero-2w")
    return str(root), out


def at(root, path):
    return os.path.join(root, path.lstrip("/"))


def test_unit_exposure_is_at_most_2(zero):
    root, _ = zero
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    r = subprocess.run([tool, "security", "--offline=true", "--root=" + root, "--no-pager", "tinymta.service"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    text = r.stdout.decode("utf-8", "replace")
    m = re.search(r"Overall exposure level for tinymta\.service: (\d+\.\d+)", text)
    assert m, text + r.stderr.decode()
    assert float(m.group(1)) <= 2.0, text
    assert "/dev/ttyGS0:rw" in text          # the board's drop-in was read from the root too
    assert b"Unknown" not in r.stderr, r.stderr    # no unknown or misspelt directives
    # the unit file as shipped, on its own (what a packager would check)
    r = subprocess.run([tool, "security", "--offline=true", "--no-pager",
                        os.path.join(ROOT, "firmware", "linux", "tinymta.service")],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    m = re.search(rb"Overall exposure level for tinymta\.service: (\d+\.\d+)", r.stdout)
    assert m and float(m.group(1)) <= 2.0, r.stdout + r.stderr


def test_config_spool_user_and_sendmail(zero):
    root, out = zero
    cfg = config.load(at(root, install.CONFIG))
    assert cfg.board.name == "rpi-zero-2w" and cfg.console.serial == "/dev/ttyGS0"
    assert cfg.spool.path == "/var/lib/tinymta/tinymta.spool" and cfg.spool.size == 64 << 20
    assert cfg.server.listen == [("0.0.0.0", 25)] and cfg.console.socket == "/run/tinymta/tinymta.sock"
    assert os.stat(at(root, install.CONFIG)).st_mode & 0o777 == 0o644   # no secret in it

    spool = at(root, cfg.spool.path)
    assert os.path.getsize(spool) == cfg.spool.size
    dev = FileBlockDevice(spool, size=cfg.spool.size, block_size=cfg.spool.sector_size, create=False, readonly=True)
    sp = Spool(dev, readonly=True)                       # formatted, empty
    assert len(sp) == 0
    dev.close()

    with open(at(root, "/etc/passwd")) as f:
        users = {line.split(":")[0]: line.split(":") for line in f}
    assert "tinymta" in users and users["tinymta"][6].strip() == "/usr/sbin/nologin"
    if os.geteuid() == 0:
        assert os.stat(spool).st_uid == int(users["tinymta"][2])
    assert os.stat(spool).st_mode & 0o777 == 0o600

    link = at(root, install.SENDMAIL)
    assert os.path.islink(link) and os.readlink(link) == "tinymta-sendmail"
    assert os.access(at(root, install.WRAPPER), os.X_OK)
    with open(at(root, "/etc/systemd/system/tinymta.service.d/board.conf")) as f:
        dropin = f.read()
    assert "MemoryMax=67108864" in dropin and "BindPaths=-/dev/ttyGS0" in dropin
    assert "dtoverlay=dwc2" in out and "serial-getty@ttyGS0" in out       # console instructions


def _unit_command(root):
    """ExecStart= of the installed unit as argv, and its Environment= settings."""
    argv, env = None, {}
    with open(at(root, install.UNIT)) as f:
        for line in f:
            if line.startswith("ExecStart="):
                argv = shlex.split(line[len("ExecStart="):])
            elif line.startswith("Environment="):
                for word in shlex.split(line[len("Environment="):]):
                    k, v = word.split("=", 1)
                    env[k] = v
    return argv, env


def _spool_messages(root, cfg):
    dev = FileBlockDevice(at(root, cfg.spool.path), size=cfg.spool.size, block_size=cfg.spool.sector_size,
                          create=False, readonly=True)
    sp = Spool(dev, readonly=True)
    out = [(m.sender, m.all_recipients) for m in sp.messages()]
    dev.close()
    return out


def test_the_units_command_line_starts_the_mta(zero, tmp_path):
    root, _ = zero
    argv, unit_env = _unit_command(root)
    assert argv[0].startswith("/") and argv[-2:] == ["-c", install.CONFIG]
    assert os.path.isabs(argv[0]) and os.access(argv[0], os.X_OK)
    # The installed config, pointed at loopback: a free port, a control socket and no serial
    # device here, and no delivery (the network rule: nothing leaves this machine).
    conf = at(root, install.CONFIG)
    with open(conf, "rb") as f:
        original = f.read()
    d = install.read_user_config(conf)
    port = free_port()
    d["server"].update(listen=["127.0.0.1:%d" % port], hostname="board.test")
    d["console"].update(serial="", socket=str(tmp_path / "ctl.sock"))
    d["spool"]["path"] = at(root, d["spool"]["path"])      # the installed spool, under the root
    d["relay"] = {"mode": "none"}
    with open(conf, "w") as f:
        f.write(install.toml_text(d))
    cmd = [at(root, a) if a == install.CONFIG else a for a in argv]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(unit_env)
    log = open(str(tmp_path / "mta.log"), "wb")
    p = subprocess.Popen(cmd, cwd=at(root, install.STATE_DIR), env=env, stdout=subprocess.PIPE, stderr=log,
                         stdin=subprocess.DEVNULL)
    try:
        deadline, line = time.time() + 30, b""
        while time.time() < deadline:
            line = p.stdout.readline()
            if line.strip() == b"READY" or not line:
                break
        assert line.strip() == b"READY", open(str(tmp_path / "mta.log")).read()
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            refused = s.sendmail("ups@lan.test", ["admin@example.com"],
                                 b"Subject: on battery\r\n\r\nThe UPS is on battery.\r\n")
        assert refused == {}
        # The sendmail wrapper's command line, with the config under the root.
        with open(at(root, install.WRAPPER)) as f:
            wrapper = f.read()
        ex = shlex.split([ln for ln in wrapper.splitlines() if ln.startswith("exec ")][0])[1:-1]
        assert ex[-3:] == ["sendmail", "-C", install.CONFIG]
        m = re.search(r"^export PYTHONPATH=(.*)$", wrapper, re.M)
        wenv = dict(env, **({"PYTHONPATH": m.group(1)} if m else {}))
        r = subprocess.run([at(root, a) if a == install.CONFIG else a for a in ex] + ["cron@example.com"],
                           input=b"Subject: cron\n\nnightly job done\n", env=wenv, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        assert r.returncode == 0, r.stderr
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        p.stdout.close()
        log.close()
        with open(conf, "wb") as f:                         # as installed, for the other tests
            f.write(original)
    assert rc == 0
    msgs = _spool_messages("/", config.from_dict(d))        # the installed spool took both
    assert [m[1] for m in msgs] == [["admin@example.com"], ["cron@example.com"]]
    assert msgs[0][0] == "ups@lan.test"


def _snapshot(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                out[p] = "-> " + os.readlink(p)
            else:
                with open(p, "rb") as f:
                    st = os.stat(p)
                    out[p] = (hashlib.sha256(f.read()).hexdigest(), st.st_mode, st.st_uid, st.st_mtime_ns)
    return out


def test_second_run_changes_nothing_and_keeps_an_edited_config(tmp_path):
    root = tmp_path / "root"
    user = small_user_config(tmp_path)
    run_install(root, "--board", "rpi-4", "-c", user)
    before = _snapshot(str(root))
    _, out, err = run_install(root, "--board", "rpi-4", "-c", user)
    assert _snapshot(str(root)) == before
    assert "wrote" not in out and "updated" not in out and "created" not in out, out
    assert "exists     /var/lib/tinymta/tinymta.spool" in out

    conf = at(str(root), install.CONFIG)
    with open(conf, "a") as f:
        f.write("# my change\n")
    _, out, _ = run_install(root, "--board", "rpi-4", "-c", user)
    assert "kept       /etc/tinymta/tinymta.toml" in out
    assert open(conf).read().endswith("# my change\n")
    _, out, _ = run_install(root, "--board", "rpi-4", "-c", user, "--force")
    assert "updated    /etc/tinymta/tinymta.toml" in out
    assert not open(conf).read().endswith("# my change\n")
    assert open(conf + ".bak").read().endswith("# my change\n")


def test_user_config_secrets_and_other_sendmail(tmp_path):
    root = tmp_path / "root"
    os.makedirs(at(str(root), "/usr/sbin"))
    with open(at(str(root), install.SENDMAIL), "w") as f:
        f.write("#!/bin/sh\n# postfix\n")
    user = small_user_config(tmp_path, 'max_connections = 3\n[console]\npassword = "s3cret"\n')
    _, out, _ = run_install(root, "--board", "rpi-3", "-c", user)
    cfg = config.load(at(str(root), install.CONFIG))
    assert cfg.server.max_connections == 3 and cfg.spool.size == 1 << 20
    assert cfg.console.serial == "/dev/serial0" and cfg.console.password == "s3cret"
    assert cfg.server.max_message_size == 256 << 10 and cfg.relay.max_deliveries == 8   # rpi-3's
    assert os.stat(at(str(root), install.CONFIG)).st_mode & 0o777 == 0o640             # a secret in it
    assert "kept       /usr/sbin/sendmail (a file" in out
    assert open(at(str(root), install.SENDMAIL)).read() == "#!/bin/sh\n# postfix\n"
    assert "enable_uart=1" in out and "serial-getty@ttyS0" in out


@pytest.mark.parametrize("args, expect", [
    (["--board", "pico-w"], "runs MicroPython, not Linux: put tinymta on it with `tinymta flash --board pico-w`"),
    (["--board", "rpi-6"], 'unknown board "rpi-6" (did you mean rpi-'),
    (["--board", "rpi-5", "-c", "USER"], "server.max_conections: unknown key (did you mean server.max_connections?)"),
    (["--board", "rpi-5", "-c", "MISSING"], "cannot read"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, args, expect):
    root = tmp_path / "root"
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nmax_conections = 3\n")
    args = [str(bad) if a == "USER" else str(tmp_path / "missing.toml") if a == "MISSING" else a for a in args]
    rc, out, err = run_install(root, *args, check=False)
    assert rc == 2 and expect in err and err.count("\n") == 1 and err.startswith("tinymta: "), err
    assert "Traceback" not in err and not os.path.exists(str(root))     # nothing written


def test_spool_of_the_wrong_size_is_refused(tmp_path):
    root = tmp_path / "root"
    spool = at(str(root), "/var/lib/tinymta/tinymta.spool")
    os.makedirs(os.path.dirname(spool))
    with open(spool, "wb") as f:
        f.write(b"\xff" * 65536 * 8)
    rc, _, err = run_install(root, "--board", "rpi-5", "-c", small_user_config(tmp_path), check=False)
    assert rc == 2 and "is 524288 bytes but the spool size is 1048576" in err and err.count("\n") == 1, err
    assert os.path.getsize(spool) == 65536 * 8          # untouched


def test_directories_are_0755_under_a_restrictive_umask(tmp_path):
    root = str(tmp_path / "root")
    run_install(root, "--board", "rpi-4", "-c", small_user_config(tmp_path), umask=0o027)
    modes = {os.path.relpath(d, root): os.stat(d).st_mode & 0o777 for d, _, _ in os.walk(root)}
    assert modes.pop("var/lib/tinymta") == 0o700 and "etc/tinymta" in modes and "usr/sbin" in modes
    assert modes == dict.fromkeys(modes, 0o755), modes
    for path, mode in ((install.CONFIG, 0o644), (install.UNIT, 0o644), (install.WRAPPER, 0o755), ("/etc/passwd", 0o644)):
        assert os.stat(at(root, path)).st_mode & 0o777 == mode, path


def test_force_never_leaves_a_secret_world_readable(tmp_path, monkeypatch):
    root = str(tmp_path / "root")
    user = small_user_config(tmp_path, '[console]\npassword = "s3cret"\n')
    run_install(root, "--board", "rpi-4", "-c", user)
    conf = at(root, install.CONFIG)
    with open(conf, "a") as f:
        f.write("# my change\n")
    st = os.stat(conf)
    assert st.st_mode & 0o777 == 0o640
    seen, real_replace = {}, os.replace
    def replace(src, dst):      # each file's mode when it takes its place (written already)
        seen[os.path.basename(dst)] = os.stat(src).st_mode & 0o777
        real_replace(src, dst)
    monkeypatch.setattr(install.os, "replace", replace)
    out = io.StringIO()
    install.install("rpi-4", root, user, force=True, out=out)
    assert "updated    /etc/tinymta/tinymta.toml" in out.getvalue()
    assert seen["tinymta.toml"] == seen["tinymta.toml.bak"] == 0o640, seen
    bak = os.stat(conf + ".bak")
    assert (bak.st_mode, bak.st_uid, bak.st_gid) == (st.st_mode, st.st_uid, st.st_gid)
    assert open(conf + ".bak").read().endswith("# my change\n")
    assert os.stat(conf).st_mode & 0o777 == 0o640 and not os.path.exists(conf + ".tmp")


def test_force_with_another_spool_size_changes_nothing(tmp_path):
    root = str(tmp_path / "root")
    run_install(root, "--board", "rpi-4", "-c", small_user_config(tmp_path))
    before = _snapshot(root)
    bigger = tmp_path / "bigger.toml"
    bigger.write_text('[spool]\nsize = "2M"\n[server]\n' + SMALL)
    rc, out, err = run_install(root, "--board", "rpi-4", "-c", str(bigger), "--force", check=False)
    assert rc == 2 and err.startswith("tinymta: ") and err.count("\n") == 1, err
    assert "is 1048576 bytes but the spool size is 2097152: it may hold mail" in err, err
    assert "left as they were; keep spool.size = 1048576, or let tinymta deliver everything" in err, err
    assert _snapshot(root) == before           # the config (and the spool) as they were


@pytest.mark.parametrize("python, checkout, notes", [
    ("/var/tmp/venv/bin/python3", "/home/pi/tinymta",
     ["/var/tmp/venv/bin/python3 is hidden from the service by PrivateTmp=",
      "/home/pi/tinymta is hidden from the service by ProtectHome="]),
    ("/root/venv/bin/python3", "/tmp", ["/root/venv/bin/python3 is hidden from the service by ProtectHome=",
                                        "/tmp is hidden from the service by PrivateTmp="]),
    ("/usr/bin/python3", "/opt/tmp/tinymta", []),
])
def test_paths_hidden_from_the_service_are_noted(tmp_path, monkeypatch, python, checkout, notes):
    monkeypatch.setattr(install, "entry_point", lambda: ([python, "-m", "tinymta"], checkout))
    out = io.StringIO()
    install.install("rpi-4", str(tmp_path / "root"), small_user_config(tmp_path), out=out)
    text = out.getvalue()
    assert text.count("is hidden from the service") == len(notes), text
    for n in notes:
        assert "note       " + n + ": install tinymta system-wide" in text, text


def test_user_without_systemd_sysusers(tmp_path, monkeypatch):
    root = str(tmp_path / "root")
    os.makedirs(at(root, "/etc"))
    with open(at(root, "/etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nsystemd-network:x:999:999::/:/usr/sbin/nologin\n")
    with open(at(root, "/etc/group"), "w") as f:
        f.write("root:x:0:\ndialout:x:20:pi\nsystemd-network:x:999:\n")
    with open(at(root, "/etc/shadow"), "w") as f:
        f.write("root:*:19000:0:99999:7:::\n")
    real_which = shutil.which
    monkeypatch.setattr(install.shutil, "which", lambda n: None if n == "systemd-sysusers" else real_which(n))
    out = io.StringIO()
    ins = install.install("rpi-zero-2w", root, small_user_config(tmp_path), out=out)
    assert "created    user tinymta (uid 998)" in out.getvalue()
    assert ins.uid == ins.gid == 998
    passwd = open(at(root, "/etc/passwd")).read().splitlines()
    assert passwd[:2] == ["root:x:0:0:root:/root:/bin/sh", "systemd-network:x:999:999::/:/usr/sbin/nologin"]
    assert passwd[2] == "tinymta:x:998:998:tinymta mail transfer agent:/var/lib/tinymta:/usr/sbin/nologin"
    assert open(at(root, "/etc/group")).read().splitlines() == [
        "root:x:0:", "dialout:x:20:pi,tinymta", "systemd-network:x:999:", "tinymta:x:998:"]
    assert open(at(root, "/etc/shadow")).read().endswith("tinymta:!*:::::::\n")
    out = io.StringIO()
    install.install("rpi-zero-2w", root, small_user_config(tmp_path), out=out)   # not twice
    assert "exists     user tinymta (uid 998)" in out.getvalue()
    assert [ln for ln in open(at(root, "/etc/passwd")) if ln.startswith("tinymta:")] == [passwd[2] + "\n"]


def test_toml_text_round_trips():
    d = {"server": {"listen": ["[::1]:25"], "hostname": "h\u00e9.\"q\"", "auth_without_tls": True,
                    "max_connections": 2}, "relay": {"mode": "none"}}
    try:
        import tomllib
    except ImportError:
        import tomli as tomllib
    assert tomllib.loads(install.toml_text(d, "# header")) == json.loads(json.dumps(d))
