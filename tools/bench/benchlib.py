"""What the benchmark scripts of tools/bench share: the machine, processes, teardown, medians.

Holds the pieces that are the same in relay_bench.py, smtp_bench.py and spool_bench.py:
the machine description (date, CPUs, kernel, filesystem and block device of the work
directory, git state, the tinymta package snapshot), /proc readers, starting and stopping
processes by PID (readiness by port or by a stdout line, SIGTERM then SIGKILL), the
stop-everything-in-reverse teardown, and the median of a result column.

It must not know any server, SMTP, the spool's format, a script's addresses, options or
report keys: each script decides what it measures and what its JSON says.  It imports
nothing of tinymta, so a script can measure a snapshot of the package.

The scripts run as `python3 tools/bench/X.py`, so this directory is sys.path[0] and
`import benchlib` finds this file.
"""
import datetime
import hashlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class BenchError(Exception):
    pass


def interrupt(signum, frame):
    """A SIGTERM handler: stop the run the way Ctrl-C does, so the teardown still stops everything."""
    raise KeyboardInterrupt()


# --- the machine ------------------------------------------------------------------------------

def machine_base():
    """Date, CPU count, architecture, kernel and Python version: the start of every report's `machine`."""
    return {"date": datetime.date.today().isoformat(), "nproc": os.cpu_count(), "arch": platform.machine(),
            "kernel": platform.release(), "python": platform.python_version()}


def cpu_model():
    """The first `model name` of /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        return None


def print_machine(machine):
    print("date %s | %s cpus (%s) | %s | kernel %s | CPython %s" % (
        machine["date"], machine["nproc"], machine["cpu"], machine["arch"], machine["kernel"], machine["python"]))


def mount_of(path):
    """(mount point, fs type, device, options) of the filesystem holding path, from /proc/mounts."""
    path = os.path.realpath(path)
    best = ("?", "?", "?", "")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype, opts = line.split()[:4]
                mnt = mnt.replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, fstype, dev, opts)
    except OSError:
        pass
    return best


class BlockStat:
    """Sectors written and flushes of the block device (or partition) that holds a directory."""

    def __init__(self, path):
        st = os.stat(path)
        self.majmin = "%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev))
        self.path = "/sys/dev/block/%s/stat" % self.majmin
        self.name = None
        self.ok = os.path.exists(self.path)
        if self.ok:
            try:
                self.name = os.path.basename(os.path.realpath("/sys/dev/block/" + self.majmin))
                self.read()
            except (OSError, ValueError, IndexError):
                self.ok = False

    def read(self):
        """(bytes written, flush requests or None); sectors here are always 512 bytes."""
        with open(self.path) as f:
            v = [int(x) for x in f.read().split()]
        return v[6] * 512, (v[15] if len(v) >= 17 else None)

    def flushes(self):
        """Completed flush requests so far, or None when unknown."""
        try:
            return self.read()[1]
        except (OSError, ValueError, IndexError):
            return None


def git_state():
    """The commit measured, and whether tinymta/ had uncommitted changes (read-only git calls)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "tinymta"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.split("\n")
        return head or None, sorted(line[3:] for line in dirty if line.strip())
    except (OSError, subprocess.SubprocessError):
        return None, []


def snapshot_tinymta(dest, rev=None):
    """Copy the tinymta package into dest (from the working tree, or `git archive REV`); its sha256.

    Every tinymta start in the run imports this copy, so an edit to the working tree during the
    run cannot change what is measured half-way.
    """
    os.makedirs(dest)
    if rev is None:
        shutil.copytree(os.path.join(ROOT, "tinymta"), os.path.join(dest, "tinymta"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        arch = subprocess.run(["git", "archive", "--format=tar", rev, "tinymta"], cwd=ROOT, capture_output=True,
                              timeout=60)
        if arch.returncode:
            raise BenchError("git archive %s tinymta: %s" % (rev, arch.stderr.decode("utf-8", "replace").strip()))
        subprocess.run(["tar", "-x", "-C", dest], input=arch.stdout, check=True, timeout=60)
    h = hashlib.sha256()
    for base, dirs, files in sorted(os.walk(os.path.join(dest, "tinymta"))):
        dirs.sort()
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(base, f)
                h.update(os.path.relpath(path, dest).encode() + b"\0")
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()


def take_snapshot(machine, src, rev):
    """snapshot_tinymta into src, noting tinymta_sha256 (and git_rev for a --rev) in machine.

    Returns None, or the error to print when no snapshot could be taken.
    """
    try:
        machine["tinymta_sha256"] = snapshot_tinymta(src, rev)
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        return "cannot take the tinymta snapshot: %s" % e
    if rev:
        machine["git_rev"] = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip()
    return None


def ancestors(path):
    """path and every directory above it, up to /."""
    out = [path]
    while os.path.dirname(out[-1]) != out[-1]:
        out.append(os.path.dirname(out[-1]))
    return out


def missing_tools(names):
    return [b for b in names if shutil.which(b) is None]


def busy_addresses(addrs):
    """The (ip, port) pairs that cannot be bound now, as "ip:port"."""
    return ["%s:%d" % a for a in addrs if not can_bind(a)]


def closed_dirs(parent):
    """The directories above (and including) parent that others cannot search."""
    return [d for d in ancestors(parent) if not os.stat(d).st_mode & 0o001]


# --- /proc readers ----------------------------------------------------------------------------

def proc_status(pid):
    """{field: kB} for the Vm* lines of /proc/PID/status (pid may be "self"), or {} when the process is gone."""
    out = {}
    try:
        with open("/proc/%s/status" % pid) as f:
            for line in f:
                if line.startswith("Vm"):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return out


def reset_hwm(pid="self"):
    """Reset a process's VmHWM (peak RSS) to its current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/%s/clear_refs" % pid, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def proc_cpu_s(pid):
    """utime + stime of a process, in seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return kids


def process_tree(pid):
    kids, out, todo = children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def pss_kib(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# --- starting and stopping processes --------------------------------------------------------

def can_bind(addr):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(addr)
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_port(addr, timeout, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection(addr, timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def read_line(proc, want, timeout):
    """Read proc's stdout until a line starting with `want` (the line) or EOF/timeout (None)."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        for line in buf.split(b"\n")[:-1]:
            if line.strip().startswith(want):
                return line.decode("utf-8", "replace").strip()
    return None


def stop_pid(pid, proc=None, timeout=10.0):
    """SIGTERM one process by PID, wait for it, SIGKILL it if needed.  True when it exited."""
    if pid is None:
        return True
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return True
        elif not os.path.exists("/proc/%d" % pid) or zombie(pid):
            return True
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        proc.wait(5)
    return False


def teardown(started, watched, old_term, work, keep, unnamed="?"):
    """Stop everything started, last first (an error stopping one does not spare the others),
    restore the SIGTERM handler, remove the work directory unless keep; the names of the
    watched objects whose process is still there (they have a `proc` that stop() clears).
    """
    for s in reversed(started):
        try:
            s.stop()
        except Exception as e:  # keep stopping the others
            print("stopping %s: %r" % (getattr(s, "name", s), e))
    signal.signal(signal.SIGTERM, old_term)
    leftovers = [getattr(s, "name", unnamed) for s in watched if getattr(s, "proc", None) is not None]
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return leftovers


# --- results ----------------------------------------------------------------------------------

def med(xs):
    """Median of the values that are not None; None when there are none."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def finish(result, verified, checked, failed, leftovers, loadavg_end, seconds):
    """The end of a run's output (verified or not, what was not stopped, the load, the JSON line); the exit status.

    checked says what "verified" means for this benchmark; failed is the error that ended the run, or None.
    """
    print("every run verified (%s): %s%s" % (checked, "yes" if verified else "NO",
                                             "" if failed is None else " -- error: " + failed))
    if leftovers:
        print("WARNING: not stopped: %s" % ", ".join(leftovers))
    print("load average (1 min) after the run: %.2f; total %.1f s" % (loadavg_end, seconds))
    print(json.dumps(result, sort_keys=True))
    return 0 if verified and not leftovers else 1


def verdict(ok):
    """An aim's outcome as printed: met, MISSED or n/a."""
    return {True: "met", False: "MISSED", None: "n/a"}[ok]
