"""`tinymta install --board NAME [--root DIR] [-c USERCONFIG] [--force]`: sets tinymta up as a
systemd service on a Linux board (CPython only).

It writes /etc/tinymta/tinymta.toml from the board profile (the user config laid over it),
creates the `tinymta` system user (systemd-sysusers, or useradd), creates and formats the spool
file at its full size, installs the hardened unit from firmware/linux/ with ExecStart pointing at
this Python and a drop-in for the board's console device and memory budget, installs the
sendmail(1) wrapper, and prints how to enable the serial console.  With --root everything goes
under DIR, a staging root image: the user is made with `systemd-sysusers --root DIR` (which
creates DIR/etc/passwd and group when missing), or, without systemd-sysusers, by appending
minimal entries to DIR/etc/passwd, group (and shadow when present) itself.

Running it twice changes nothing: files with the right content are left alone, an existing
spool is never reformatted, and a config that differs from what the profile gives (edited by
hand) is kept unless --force (the old one is then saved as tinymta.toml.bak, its mode kept); a
spool the new config cannot use (another spool.size) leaves both as they were.  Files get their
mode before they hold a byte, directories theirs whatever the umask.  An existing
/usr/sbin/sendmail of another MTA is never replaced.

This module holds what gets installed, where and in which order: the paths, the text of the
config, unit, drop-in and sendmail wrapper, the sendmail(1) link, the console instructions and
the `install` subcommand.  It must not know how a file is written safely, how a directory gets
its mode, how the user is created or how the spool file is made (tinymta/installfs.py owns
those), nor the spool format, SMTP or the profile schema (tinymta.boards and tinymta.spool own
those).
"""
import json
import os
import shutil
import subprocess
import sys

from tinymta import boards, config
from tinymta.installfs import STATE_DIR, InstallError, Installer, mkdirs

CONFIG = "/etc/tinymta/tinymta.toml"
UNIT = "/etc/systemd/system/tinymta.service"
DROPIN = "/etc/systemd/system/tinymta.service.d/board.conf"
TMPFILES = "/etc/tmpfiles.d/tinymta.conf"
RUNTIME_DIR = "/run/tinymta"        # the unit's RuntimeDirectory=
WRAPPER = "/usr/sbin/tinymta-sendmail"
SENDMAIL = "/usr/sbin/sendmail"


def firmware_dir():
    """firmware/linux of the checkout (or $TINYMTA_FIRMWARE_DIR, or the installed data dir)."""
    cands = [os.environ.get("TINYMTA_FIRMWARE_DIR", ""),
             os.path.join(boards._PKG_PARENT, "firmware", "linux"),
             os.path.join(os.path.dirname(boards.BOARD_DIR), "firmware", "linux"),
             os.path.join(sys.prefix, "share", "tinymta", "firmware", "linux")]
    for d in cands:
        if d and os.path.isfile(os.path.join(d, "tinymta.service")):
            return d
    raise InstallError("cannot find firmware/linux/tinymta.service (set TINYMTA_FIRMWARE_DIR)")


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON string escapes are TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise InstallError("cannot write %r as TOML" % (v,))


def toml_text(d, header=""):
    """A {section: {key: value}} config as TOML, keys in tinymta.config.SCHEMA's order."""
    order = [(s, k) for s, k, _, _, _ in config.SCHEMA]
    lines = [header] if header else []
    for sec in list(config.SECTIONS) + sorted(s for s in d if s not in config.SECTIONS):
        table = d.get(sec)
        if not table:
            continue
        keys = [k for s, k in order if s == sec and k in table] + sorted(k for k in table if (sec, k) not in order)
        lines.append("\n[%s]" % sec)
        lines.extend("%s = %s" % (k, toml_value(table[k])) for k in keys)
    return "\n".join(lines).lstrip("\n") + "\n"


def read_user_config(path):
    """A user config file (.toml or .json) as the raw dict to lay over the profile."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InstallError("%s: cannot read: %s" % (path, e.strerror or e))
    try:
        if path.lower().endswith(".json"):
            return json.loads(data.decode("utf-8"))
        try:
            import tomllib as toml
        except ImportError:
            import tomli as toml
        return toml.loads(data.decode("utf-8"))
    except (ValueError, UnicodeError) as e:
        raise InstallError("%s: %s" % (path, " ".join(str(e).split())))


def entry_point():
    """(argv prefix that runs tinymta, PYTHONPATH or None): this interpreter with -m tinymta, and
    the directory holding the package when that interpreter would not find it on its own (a
    checkout that is not pip-installed)."""
    here = os.path.join(boards._PKG_PARENT, "tinymta")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    try:
        r = subprocess.run([sys.executable, "-c", "import tinymta, os; print(os.path.dirname(tinymta.__file__))"],
                           cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
        found = r.stdout.decode().strip() if r.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        found = ""
    same = found and os.path.realpath(found) == os.path.realpath(here)
    return [os.path.abspath(sys.executable), "-m", "tinymta"], (None if same else boards._PKG_PARENT)


def _unit_text(template, argv, pythonpath):
    execstart = "ExecStart=%s serve -c %s" % (" ".join(argv), CONFIG)
    out = []
    for line in template.splitlines():
        if line.startswith("ExecStart="):
            out.append(execstart)
            if pythonpath:      # a checkout that is not pip-installed
                out.append("Environment=PYTHONPATH=%s" % pythonpath)
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _dropin_text(profile, cfg, spool_path):
    lines = ["# Written by `tinymta install --board %s`: this board's memory budget and console device."
             % profile["board"]["name"], "# Re-running tinymta install rewrites it; put your own changes in another file here.",
             "", "[Service]", "MemoryMax=%d" % profile["board"]["heap"]]
    dev = cfg.console.serial
    if dev:
        # The unit's PrivateDevices= /dev holds no hardware: bind the console into it ("-": the
        # service still starts while the UART or USB gadget is not enabled yet) and allow it.
        lines += ["BindPaths=-%s" % dev, "DeviceAllow=%s rw" % dev]
    for p in (os.path.dirname(spool_path), os.path.dirname(cfg.console.socket or "") or None):
        if p and p.startswith("/") and p not in (STATE_DIR, RUNTIME_DIR):
            lines.append("ReadWritePaths=-%s" % p)   # ProtectSystem=strict: the only other writable places
    return "\n".join(lines) + "\n"


def _wrapper_text(argv, pythonpath):
    lines = ["#!/bin/sh", "# sendmail(1) for cron & co, written by `tinymta install`: hands standard input to the",
             "# local tinymta over SMTP (see tinymta/sendmail.py)."]
    if pythonpath:
        lines.append("export PYTHONPATH=%s" % pythonpath)
    lines.append('exec %s sendmail -C %s "$@"' % (" ".join(argv), CONFIG))
    return "\n".join(lines) + "\n"


def _console_help(dev, root):
    out = ["", "Serial console on %s:" % (dev or "(none: console.serial is unset)")]
    boot = "/boot/firmware/config.txt (/boot/config.txt before Bookworm)"
    if dev and "ttyGS" in dev:
        out += ["  USB gadget serial: add dtoverlay=dwc2 to %s" % boot,
                "  and modules-load=dwc2,g_serial after rootwait in cmdline.txt; the host then sees /dev/ttyACM0",
                "  (picocom -b 115200 /dev/ttyACM0, or tinymta console /dev/ttyACM0).",
                "  No login prompt on it: remove console=ttyGS0 from cmdline.txt and",
                "  systemctl disable --now serial-getty@ttyGS0.service"]
    elif dev:
        out += ["  enable_uart=1 in %s (the Pi 5 debug UART, ttyAMA10, needs nothing);" % boot,
                "  remove console=serial0,115200 from cmdline.txt (the kernel console);",
                "  no getty on it: systemctl disable --now serial-getty@ttyS0.service serial-getty@ttyAMA0.service",
                "  (raspi-config: Interface Options > Serial Port: login shell No, serial hardware Yes)."]
    if root:
        out += ["", "Enable the service in the image: systemctl --root=%s enable tinymta.service" % root]
    else:
        out += ["", "Start it: systemctl daemon-reload && systemctl enable --now tinymta.service"]
    return out


def install(board, root=None, user_config=None, force=False, out=None, directory=None):
    """Install tinymta for board; returns the Installer (its at() maps the system paths).
    Raises InstallError, boards.ProfileError or config.ConfigError (one-line messages)."""
    profile = boards.load_profile(board, directory)
    name = profile["board"]["name"]
    if profile["board"]["runtime"] != "linux":
        raise InstallError('board "%s" runs MicroPython, not Linux: put tinymta on it with '
                           '`tinymta flash --board %s`' % (name, name))
    user = read_user_config(user_config) if user_config else None
    d = boards.config_dict(profile, user, user_config or "<user config>")
    ins = Installer(root, force, out)
    fw = firmware_dir()
    with open(os.path.join(fw, "tinymta.service")) as f:
        template = f.read()
    with open(os.path.join(fw, "sysusers.d", "tinymta.conf")) as f:
        sysusers = f.read()
    with open(os.path.join(fw, "tmpfiles.d", "tinymta.conf")) as f:
        tmpfiles = f.read()
    ins.say("tinymta install: board %s (%s)%s" % (name, profile["board"]["description"],
                                                  ", root %s" % ins.root if ins.root else ""))
    ins.user(sysusers)
    ins.write(TMPFILES, tmpfiles)
    header = ("# tinymta configuration for board %s, written by `tinymta install` from %s%s.\n"
              "# Edit freely: tinymta install keeps an edited file unless --force. Keys: DESIGN.md."
              % (name, os.path.basename(profile["source"]), " and " + user_config if user_config else ""))
    # World-readable so that sendmail(1) run by any user finds the MTA, unless it holds a secret.
    secret = any((d.get(k.split(".")[0]) or {}).get(k.split(".")[1]) for k in config.SECRET_KEYS)
    mkdirs(ins.at("/etc/tinymta"))
    os.chmod(ins.at("/etc/tinymta"), 0o755)     # the service user reads its config (and repairs a 0750 one)
    # The config in force (an edited one is kept unless --force): its spool first, changing nothing on error.
    cfg = config.load(ins.at(CONFIG)) if os.path.exists(ins.at(CONFIG)) and not force else config.from_dict(d, CONFIG)
    spool_path = ins.spool(cfg)
    ins.write(CONFIG, toml_text(d, header), 0o640 if secret else 0o644, owner=secret, keep_edited=True)
    argv, pythonpath = entry_point()
    ins.write(UNIT, _unit_text(template, argv, pythonpath))
    ins.write(DROPIN, _dropin_text(profile, cfg, spool_path))
    ins.write(WRAPPER, _wrapper_text(argv, pythonpath), 0o755)
    _sendmail_link(ins)
    if cfg.board.name != name:
        ins.say("note       the config in force is for board %s, not %s (--force rewrites it)" % (cfg.board.name, name))
    if pythonpath:
        ins.say("note       tinymta is not pip-installed for %s: the unit runs it from %s" % (argv[0], pythonpath))
    for p in (argv[0], pythonpath or ""):
        by = [o for o, dirs in (("ProtectHome=", ("/home/", "/root/", "/run/user/")),
                                ("PrivateTmp=", ("/tmp/", "/var/tmp/"))) if (p + "/").startswith(dirs)]
        if by:
            ins.say("note       %s is hidden from the service by %s: install tinymta system-wide (e.g. /usr/bin/"
                    "python3 -m pip install .) and re-run" % (p, by[0]))
    for line in _console_help(cfg.console.serial, ins.root):
        ins.say(line)
    nets = ", ".join(n[3] for n in cfg.server.relay_networks)
    ins.say("\nClients that may relay (server.relay_networks): %s; relay.mode is %s." % (nets, cfg.relay.mode))
    return ins


def _sendmail_link(ins):
    real = ins.at(SENDMAIL)
    if os.path.islink(real) and os.readlink(real) in (os.path.basename(WRAPPER), WRAPPER):
        ins.say("unchanged  %s -> %s" % (SENDMAIL, os.path.basename(WRAPPER)))
        return
    alt = shutil.which("update-alternatives")
    if not ins.root and alt and (not os.path.lexists(real) or os.path.realpath(real).startswith("/etc/alternatives/")
                                 or (os.path.islink(real) and os.readlink(real).startswith("/etc/alternatives/"))):
        r = subprocess.run([alt, "--install", SENDMAIL, "sendmail", WRAPPER, "25"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode:
            raise InstallError("update-alternatives failed: %s" % r.stdout.decode("utf-8", "replace").strip())
        ins.say("alternative %s -> %s (update-alternatives, priority 25)" % (SENDMAIL, WRAPPER))
        return
    if os.path.lexists(real):
        what = "-> " + os.readlink(real) if os.path.islink(real) else "a file"
        ins.say("kept       %s (%s, another MTA's: remove it and re-run to use %s)" % (SENDMAIL, what, WRAPPER))
        return
    mkdirs(os.path.dirname(real))
    os.symlink(os.path.basename(WRAPPER), real)
    ins.say("linked     %s -> %s" % (SENDMAIL, os.path.basename(WRAPPER)))


def main(args, out=None, err=None):
    """The CLI's `install` subcommand: args has board, root, config, force. Returns the exit status."""
    err = err or sys.stderr
    from tinymta import compat
    compat.set_log_level("warning")     # the spool's "formatting" info line; install says it itself
    try:
        install(args.board, args.root, args.config, args.force, out)
    except (InstallError, boards.ProfileError, config.ConfigError) as e:
        err.write("tinymta: %s\n" % " ".join(str(e).split()))
        return 2
    except OSError as e:
        err.write("tinymta: %s\n" % ("%s: %s" % (e.filename, e.strerror) if e.filename else e))
        return 2
    return 0
