"""The careful file and account operations of `tinymta install` (tinymta/install.py), CPython only.

Installer maps system paths under the staging root (--root) and reports each action on one
line.  It writes a file whole through FILE.tmp, which has its final mode (and owner, as root)
before it holds a byte, leaving a file with the right content alone and keeping one edited by
hand unless forced (the old one saved as FILE.bak, its mode and owner kept); it makes
directories with their mode whatever the umask; it creates the `tinymta` system user with
systemd-sysusers, useradd, or, in a staging root without systemd-sysusers, minimal
passwd/group/shadow entries of its own; and it creates the spool file at its full size and
has tinymta.spool format it, never reformatting or resizing an existing one.

It must not know which files tinymta installs or what they say (the profile, the config
schema beyond the spool section it is handed, the unit, the sendmail wrapper: tinymta/install.py
owns those), nor the spool format (tinymta.spool and tinymta.spoolfmt own it).
"""
import os
import shutil
import subprocess
import sys

SYSUSERS = "/etc/sysusers.d/tinymta.conf"     # the user's systemd-sysusers definition
STATE_DIR = "/var/lib/tinymta"      # the unit's StateDirectory= and WorkingDirectory=, the user's home
USER = "tinymta"


class InstallError(Exception):
    """Something the user can fix; the message is one line."""


def mkdirs(real, mode=0o755):
    """os.makedirs, each new directory (its parents 0755) with mode whatever the umask."""
    if not os.path.isdir(real):
        mkdirs(os.path.dirname(real))
        os.mkdir(real)
        os.chmod(real, mode)


class Installer:
    """Places files and the account, under root when given; say() reports on out."""
    def __init__(self, root=None, force=False, out=None):
        self.root = os.path.abspath(root) if root else None
        self.force = force
        self.out = out or sys.stdout
        self.as_root = os.geteuid() == 0
        self.uid = self.gid = None

    def say(self, msg):
        self.out.write(msg + "\n")

    def at(self, path):
        """A system path as it is on this machine: under --root when given."""
        return os.path.join(self.root, path.lstrip("/")) if self.root else path

    # ---- files -----------------------------------------------------------------------------
    def write(self, path, text, mode=0o644, owner=False, keep_edited=False):
        real = self.at(path)
        data = text.encode("utf-8")
        old = None
        if os.path.lexists(real):
            with open(real, "rb") as f:
                old = f.read()
        if old == data:
            self.say("unchanged  %s" % path)
        elif old is not None and keep_edited and not self.force:
            self.say("kept       %s (it differs from what the profile gives: edited? --force replaces it)" % path)
            return False
        else:
            if old is not None and keep_edited:
                st = os.stat(real)
                self._put(real + ".bak", old, st.st_mode & 0o7777, (st.st_uid, st.st_gid))
            self._put(real, data, mode, (0, self.gid) if owner and self.gid is not None else (-1, -1))
            self.say("%s %s" % ("updated   " if old is not None else "wrote     ", path))
        os.chmod(real, mode)
        if owner:
            self.chown(real, root_owner=True)
        return True

    def chown(self, real, root_owner=False):
        """tinymta's uid and gid (or root:tinymta) when we may and the user exists."""
        if self.as_root and self.gid is not None:
            os.chown(real, 0 if root_owner else self.uid, self.gid)

    # ---- the user --------------------------------------------------------------------------
    def _lookup(self):
        try:
            with open(self.at("/etc/passwd")) as f:
                for line in f:
                    p = line.split(":")
                    if p[0] == USER and len(p) > 3:
                        self.uid, self.gid = int(p[2]), int(p[3])
                        return True
        except OSError:
            pass
        return False

    def user(self, sysusers_text):
        self.write(SYSUSERS, sysusers_text)
        if self._lookup():
            self.say("exists     user %s (uid %d)" % (USER, self.uid))
            return
        tool = shutil.which("systemd-sysusers")
        if tool:
            mkdirs(self.at("/etc"))   # sysusers needs the directory for its lock
            cmd = [tool] + (["--root", self.root] if self.root else []) + [self.at(SYSUSERS)]
        elif not self.root and shutil.which("useradd"):
            cmd = ["useradd", "--system", "--user-group", "--home-dir", STATE_DIR, "--no-create-home",
                   "--shell", "/usr/sbin/nologin", "--comment", "tinymta mail transfer agent", USER]
        elif self.root:
            self._append_user()
            cmd = None
        else:
            raise InstallError("cannot create user %s: neither systemd-sysusers nor useradd is installed" % USER)
        if cmd:
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if r.returncode:
                text = r.stdout.decode("utf-8", "replace").strip().splitlines()
                raise InstallError("%s failed: %s" % (os.path.basename(cmd[0]), text[-1] if text else r.returncode))
            if cmd[0] == "useradd" and subprocess.run(["getent", "group", "dialout"],
                                                      stdout=subprocess.DEVNULL).returncode == 0:
                subprocess.run(["usermod", "-a", "-G", "dialout", USER])
        if not self._lookup():
            raise InstallError("user %s was not created in %s" % (USER, self.at("/etc/passwd")))
        self.say("created    user %s (uid %d)" % (USER, self.uid))

    def _append_user(self):
        """No systemd-sysusers: minimal passwd/group/shadow entries in the staging root, with the
        highest id below 1000 free in both files (sysusers' own choice)."""
        files = {}
        for name in ("passwd", "group", "shadow"):
            try:
                with open(self.at("/etc/" + name)) as f:
                    files[name] = f.read()
            except OSError:
                files[name] = None
        used = set()
        for name in ("passwd", "group"):
            for line in (files[name] or "").splitlines():
                p = line.split(":")
                if len(p) > 2 and p[2].isdigit():
                    used.add(int(p[2]))
        uid = next(i for i in range(999, 100, -1) if i not in used)
        group = files["group"] or ""
        lines = []
        for line in group.splitlines():     # join dialout for the serial console
            p = line.split(":")
            if p[0] == "dialout" and len(p) == 4 and USER not in p[3].split(","):
                p[3] = ",".join([m for m in p[3].split(",") if m] + [USER])
            lines.append(":".join(p))
        lines.append("%s:x:%d:" % (USER, uid))
        self._put(self.at("/etc/group"), ("\n".join(lines) + "\n").encode(), 0o644)
        self._put(self.at("/etc/passwd"), ((files["passwd"] or "") + "%s:x:%d:%d:tinymta mail transfer agent:%s:"
                  "/usr/sbin/nologin\n" % (USER, uid, uid, STATE_DIR)).encode(), 0o644)
        if files["shadow"] is not None:
            self._put(self.at("/etc/shadow"), (files["shadow"] + "%s:!*:::::::\n" % USER).encode(), 0o640)

    def _put(self, real, data, mode, owner=(-1, -1)):
        """real written whole through real.tmp, which has its mode and owner before it holds a byte."""
        mkdirs(os.path.dirname(real))
        fd = os.open(real + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            if self.as_root:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
            f.write(data)
        os.replace(real + ".tmp", real)

    # ---- the spool ---------------------------------------------------------------------------
    def spool(self, cfg):
        from tinymta.blockdev import FileBlockDevice, BlockDeviceError
        from tinymta.spool import Spool
        from tinymta.spoolfmt import SpoolError
        sc = cfg.spool
        path = sc.path if sc.path.startswith("/") else os.path.join(STATE_DIR, sc.path)
        real = self.at(path)
        d = os.path.dirname(real)
        if not os.path.isdir(d):
            mkdirs(d, 0o700)
            self.chown(d)
        existed = os.path.exists(real)
        have = os.path.getsize(real) if existed else sc.size
        if have != sc.size:
            raise InstallError("spool %s is %d bytes but the spool size is %d: it may hold mail and cannot be resized,"
                               " so the config and the spool are left as they were; keep spool.size = %d, or let"
                               " tinymta deliver everything (tinymta mailq), stop it, move the spool away and re-run"
                               % (path, have, sc.size, have))
        try:
            dev = FileBlockDevice(real, size=sc.size, block_size=sc.sector_size, prog_unit=sc.prog_unit)
            try:
                sp = Spool(dev)             # formats a blank (new) device, mounts an existing spool
                n = len(sp)
                sp.close()
            finally:
                dev.close()
        except (BlockDeviceError, SpoolError) as e:
            raise InstallError("spool %s: %s" % (path, " ".join(str(e).split())))
        os.chmod(real, 0o600)
        self.chown(real)
        if existed:
            self.say("exists     %s (%d bytes, %d messages kept)" % (path, sc.size, n))
        else:
            self.say("created    %s (%d bytes, formatted)" % (path, sc.size))
        return path
