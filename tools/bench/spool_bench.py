#!/usr/bin/env python3
"""Spool benchmark: tinymta's circular log against a Postfix/nullmailer-style file-per-message queue.

Run from the repository root:

    python3 tools/bench/spool_bench.py            # full run, under ~60 s
    python3 tools/bench/spool_bench.py --quick    # small run (the smoke test uses it)

Everything is measured in one process, in one run, so every ratio compares numbers
taken on the same machine, filesystem and page-cache state.  The spool file and
the queue directory live side by side in one temporary directory (--dir picks
its parent; default: the system temp dir), so both use the same filesystem.

What is measured (BENCHMARKS.md explains the counters and their caveats):

1. commits/s, accept only: spool ``writer``/``write``/``commit`` (pwrite + one
   fdatasync per commit) against file-per-message (write a temp file through a
   file object, fsync it, rename it into queue/, fsync queue/).
2. write amplification, bytes written per byte of message body: for the spool
   ``FileBlockDevice.bytes_written`` (exact at host level); for both methods
   ``/proc/self/io`` write_bytes (page-cache pages this process dirtied) and the
   filesystem's block device ``/sys/dev/block/M:m/stat`` sectors written
   (journal and metadata included, after a final sync; it also counts any other
   process's writes to that device, so the idle rate is measured and printed).
3. mount time of a full spool (filled until SpoolFull), median of several
   fresh mounts, against listing + opening + reading the envelope of the same
   number of queue files (page cache warm for both).
4. peak memory (tracemalloc, baseline subtracted; and VmHWM delta) while a
   64 KiB and a 1 MiB message are streamed in and out in 4 KiB chunks.

The last line of output is one JSON object with every number.

This script holds the spool-against-files measurements, in this one process, and their report;
the machine description (mount, block device, git state) and /proc status readers are
benchlib.py's.  It must not know any SMTP server: nothing is started here.
"""
import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc

from benchlib import ROOT, BlockStat, git_state, machine_base, mount_of, proc_status, reset_hwm

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tinymta import compat  # noqa: E402
from tinymta.blockdev import FileBlockDevice  # noqa: E402
from tinymta.spool import Spool, SpoolFull  # noqa: E402

KiB = 1024
MiB = 1024 * 1024
CHUNK = 4096
SENDER = "bench-sender@example.org"
RCPTS = ["bench-rcpt@example.net"]

AIM_WA_64K = 1.2
AIM_MOUNT_S = 0.5


# --- the machine and its counters -----------------------------------------------------------

def proc_io_write_bytes():
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def status_kib(field):
    return proc_status("self").get(field)


class Counters:
    """Before/after snapshot of every write counter; after() syncs first so delayed writes count."""

    def __init__(self, blk, dev=None):
        self.blk, self.dev = blk, dev

    def snap(self):
        blk = self.blk.read() if self.blk.ok else (None, None)
        return {"proc_io": proc_io_write_bytes(), "block": blk[0], "flushes": blk[1],
                "dev": self.dev.bytes_written if self.dev else None,
                "syncs": self.dev.syncs if self.dev else None}

    def start(self):
        os.sync()
        self.t0 = time.perf_counter()
        self.before = self.snap()

    def stop(self):
        os.sync()   # push delayed writes (ext4 journal checkpoints, inode times) into the count
        after = self.snap()
        d = {k: (after[k] - self.before[k] if after[k] is not None and self.before[k] is not None else None)
             for k in after}
        d["window"] = time.perf_counter() - self.t0    # how long the block counter was open to others' writes
        return d


# --- the file-per-message queue (Postfix / nullmailer way) ----------------------------------

class FileQueue:
    """One file per message: tmp/NAME written and fsynced, renamed to queue/NAME, queue/ fsynced.

    The file is nullmailer's format: sender line, recipient lines, blank line, message.
    Delivery would be unlink(queue/NAME) + fsync(queue/); it is not measured here.
    """

    def __init__(self, root):
        self.tmp = os.path.join(root, "tmp")
        self.queue = os.path.join(root, "queue")
        os.makedirs(self.tmp)
        os.makedirs(self.queue)
        self.qfd = os.open(self.queue, os.O_RDONLY)
        self.n = 0
        self.bytes_written = 0    # what the application wrote (file sizes), not what reached the disk

    def close(self):
        os.close(self.qfd)

    def header(self, sender, rcpts):
        return ("%s\n%s\n\n" % (sender, "\n".join(rcpts))).encode()

    def commit(self, sender, rcpts, chunks, sync=True):
        self.n += 1
        name = "%d.%d" % (self.n, os.getpid())
        tmp = os.path.join(self.tmp, name)
        with open(tmp, "wb") as f:            # default buffering: a BufferedWriter, like stdio
            hdr = self.header(sender, rcpts)
            f.write(hdr)
            size = len(hdr)
            for c in chunks:
                f.write(c)
                size += len(c)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.rename(tmp, os.path.join(self.queue, name))
        if sync:
            os.fsync(self.qfd)
        self.bytes_written += size
        return name

    def read(self, name):
        with open(os.path.join(self.queue, name), "rb") as f:
            while True:
                b = f.read(CHUNK)
                if not b:
                    return
                yield b

    def scan(self, whole=False):
        """List queue/, open each file, parse its envelope (whole: read every byte); returns the count."""
        n = 0
        for entry in os.scandir(self.queue):
            with open(entry.path, "rb") as f:
                head = f.read(512)
                while b"\n\n" not in head:
                    more = f.read(512)
                    if not more:
                        break
                    head += more
                lines = head.split(b"\n\n", 1)[0].split(b"\n")
                if len(lines) < 2:
                    raise ValueError("bad queue file %s" % entry.path)
                if whole:
                    while f.read(65536):
                        pass
            n += 1
        return n


# --- helpers --------------------------------------------------------------------------------

def make_chunks(size):
    """The body of a size-byte message as 4 KiB memoryview chunks of one reused buffer."""
    pattern = os.urandom(CHUNK)
    mv = memoryview(pattern)
    return [mv[:min(CHUNK, size - i)] for i in range(0, size, CHUNK)]


def spool_commit(sp, chunks, sync=True):
    w = sp.writer(SENDER, RCPTS)
    for c in chunks:
        w.write(c)
    return w.commit(sync)


def new_spool(path, size):
    dev = FileBlockDevice(path, size=size, block_size=65536, prog_unit=4096)
    return dev, Spool(dev)


def ratio(a, b):
    return None if a is None or not b else a / b


def fmt_num(v, spec="%.2f", none="n/a"):
    return none if v is None else spec % v


def kib(n):
    return "%.1f KiB" % (n / KiB) if n is not None else "n/a"


# --- 1 and 2: commit rate and write amplification -------------------------------------------

def run_spool(work, blk, chunks, count, tag):
    dev, sp = new_spool(os.path.join(work, "rate-%s.spool" % tag), 16 * MiB)
    c = Counters(blk, dev)
    c.start()
    t0 = time.perf_counter()
    for _ in range(count):
        spool_commit(sp, chunks)
    dt = time.perf_counter() - t0
    d = c.stop()
    dev.close()
    return dt, d["syncs"], d


def run_files(work, blk, chunks, count, tag):
    q = FileQueue(os.path.join(work, "rate-%s.queue" % tag))
    c = Counters(blk)
    c.start()
    t0 = time.perf_counter()
    for _ in range(count):
        q.commit(SENDER, RCPTS, chunks)
    dt = time.perf_counter() - t0
    d = c.stop()
    q.close()
    d["dev"] = q.bytes_written     # what the application wrote: file sizes, no filesystem overhead
    return dt, 2 * count, d


def bench_commits(work, blk, size, count, trials):
    """Trials alternate which method goes first; rates are medians, byte counts are summed over trials."""
    chunks = make_chunks(size)
    runs = {"spool": [], "files": []}
    for t in range(trials):
        order = (("spool", run_spool), ("files", run_files))
        for method, fn in (order if t % 2 == 0 else order[::-1]):
            runs[method].append(fn(work, blk, chunks, count, "%d-%d" % (size, t)))
    rows = []
    body = size * count * trials

    def total(rs, key):
        vals = [r[2][key] for r in rs]
        return None if any(v is None for v in vals) else sum(vals)

    for method in ("spool", "files"):
        rs = runs[method]
        rates = [count / r[0] for r in rs]
        row = {"method": method, "msg_size": size, "messages": count, "trials": trials,
               "commits_per_s": statistics.median(rates), "commits_per_s_all": rates,
               "seconds": sum(r[0] for r in rs), "body_bytes": body, "syncs": sum(r[1] for r in rs),
               "app_bytes": total(rs, "dev"), "proc_io_bytes": total(rs, "proc_io"),
               "block_bytes": total(rs, "block"), "block_flushes": total(rs, "flushes"),
               "block_window_seconds": total(rs, "window")}
        row["wa_app"] = ratio(row["app_bytes"], body)
        row["wa_proc_io"] = ratio(row["proc_io_bytes"], body)
        row["wa_block"] = ratio(row["block_bytes"], body)
        row["flushes_per_msg"] = ratio(row["block_flushes"], count * trials)
        row["syncs_per_msg"] = row["syncs"] / (count * trials)
        rows.append(row)
    return rows


def idle_noise(blk, seconds):
    """Bytes/s written to the device by others while this process does nothing (sync before and after)."""
    if not blk.ok:
        return None
    os.sync()
    a = blk.read()[0]
    time.sleep(seconds)
    os.sync()
    return (blk.read()[0] - a) / seconds


# --- 3: mount time of a full spool ----------------------------------------------------------

def bench_mount(work, spool_size, msg_size, mounts):
    path = os.path.join(work, "full-%d.spool" % msg_size)
    dev, sp = new_spool(path, spool_size)
    chunks = make_chunks(msg_size)
    t0 = time.perf_counter()
    n = 0
    while True:
        try:
            spool_commit(sp, chunks)      # every message durable on its own, as in service
        except SpoolFull:
            break
        n += 1
    fill_s = time.perf_counter() - t0
    st = sp.stats()
    dev.close()
    times = []
    for _ in range(mounts):
        t0 = time.perf_counter()
        d2 = FileBlockDevice(path, size=spool_size, block_size=65536)
        s2 = Spool(d2)
        times.append(time.perf_counter() - t0)
        if len(s2) != n:
            raise SystemExit("mount found %d messages, %d were committed" % (len(s2), n))
        d2.close()
    # the same number of messages as queue files (not fsynced: only the read side is timed)
    q = FileQueue(os.path.join(work, "full-%d.queue" % msg_size))
    for _ in range(n):
        q.commit(SENDER, RCPTS, chunks, sync=False)
    q.close()
    hdr_times, whole_times = [], []
    for _ in range(mounts):
        t0 = time.perf_counter()
        got = q.scan()
        hdr_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        q.scan(whole=True)
        whole_times.append(time.perf_counter() - t0)
        if got != n:
            raise SystemExit("queue scan found %d files, %d were written" % (got, n))
    return {"spool_size": spool_size, "msg_size": msg_size, "messages": n, "fill_seconds": fill_s,
            "used_bytes": st["used"], "capacity": st["capacity"],
            "mount_s_median": statistics.median(times), "mount_s_all": times,
            "files_headers_s_median": statistics.median(hdr_times),
            "files_whole_s_median": statistics.median(whole_times)}


# --- 4: peak memory while streaming ---------------------------------------------------------

def measure(fn):
    """(tracemalloc peak above baseline, VmHWM above the RSS before) for fn()."""
    gc.collect()
    hwm_ok = reset_hwm()
    rss0 = status_kib("VmRSS")
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    out = fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    hwm = status_kib("VmHWM")
    rss_delta = (hwm - rss0) * KiB if hwm_ok and hwm is not None and rss0 is not None else None
    return peak, rss_delta, out


def bench_memory(work, sizes):
    rows = []
    chunk = os.urandom(CHUNK)   # one reused 4 KiB buffer: the source costs nothing per message

    for size in sizes:
        nchunks = size // CHUNK
        # spool
        dev, sp = new_spool(os.path.join(work, "mem-%d.spool" % size), 16 * MiB)

        def spool_in():
            w = sp.writer(SENDER, RCPTS)
            for _ in range(nchunks):
                w.write(chunk)
            return w.commit()

        def spool_out(mid):
            total = 0
            for part in sp.read(mid):
                total += len(part)
            return total

        spool_out(spool_in())             # warm-up: first-call costs are not per-message costs
        pin, rin, mid = measure(spool_in)
        pout, rout, total = measure(lambda: spool_out(mid))
        assert total == size, (total, size)
        rows.append({"method": "spool", "msg_size": size, "in_peak": pin, "out_peak": pout,
                     "in_rss_delta": rin, "out_rss_delta": rout})
        dev.close()
        # file per message
        q = FileQueue(os.path.join(work, "mem-%d.queue" % size))

        def files_in():
            return q.commit(SENDER, RCPTS, (chunk for _ in range(nchunks)))

        def files_out(name):
            total = 0
            for part in q.read(name):
                total += len(part)
            return total

        files_out(files_in())
        pin, rin, name = measure(files_in)
        pout, rout, total = measure(lambda: files_out(name))
        hdr = len(q.header(SENDER, RCPTS))
        assert total == size + hdr, (total, size)
        rows.append({"method": "files", "msg_size": size, "in_peak": pin, "out_peak": pout,
                     "in_rss_delta": rin, "out_rss_delta": rout})
        q.close()
    return rows


# --- the report -----------------------------------------------------------------------------

def size_label(n):
    return "%d MiB" % (n // MiB) if n >= MiB and n % MiB == 0 else "%d KiB" % (n // KiB)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small, fast run (smoke test)")
    ap.add_argument("--dir", default=None, help="parent of the temporary work directory (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)

    cmd = "python3 tools/bench/spool_bench.py" + "".join(" " + a for a in (argv if argv is not None else sys.argv[1:]))
    print("reproduce (from the repository root): %s" % cmd)

    if args.quick:
        counts, trials = {2 * KiB: 50, 64 * KiB: 10}, 1
        mount_size, mounts, mem_sizes, noise_s = 4 * MiB, 3, (64 * KiB, 256 * KiB), 0.2
    else:
        counts, trials = {2 * KiB: 500, 64 * KiB: 100}, 5
        mount_size, mounts, mem_sizes, noise_s = 16 * MiB, 5, (64 * KiB, MiB), 2.0

    compat.set_log_level("warning")   # no "formatting a new spool" line per fresh spool
    work = tempfile.mkdtemp(prefix="tinymta-bench-", dir=args.dir)
    mnt, fstype, fsdev, opts = mount_of(work)
    blk = BlockStat(work)
    machine = dict(machine_base(), implementation=platform.python_implementation(), dir=work, fs_type=fstype,
                   fs_device=fsdev, fs_mount=mnt, fs_options=opts, block_stat=blk.path if blk.ok else None,
                   block_name=blk.name)
    machine["git_head"], machine["git_dirty"] = git_state()
    print("date %s | %s cpus | %s | kernel %s | %s %s" % (machine["date"], machine["nproc"], machine["arch"],
                                                           machine["kernel"], machine["implementation"],
                                                           machine["python"]))
    print("tinymta at %s%s" % (machine["git_head"], " + uncommitted changes to " + ", ".join(machine["git_dirty"])
                               if machine["git_dirty"] else ""))
    print("work dir %s on %s (%s, mounted at %s, options %s)" % (work, fsdev, fstype, mnt, opts))
    print("block counter: %s" % ("%s (%s)" % (blk.path, blk.name) if blk.ok else
                                  "unavailable (no /sys/dev/block entry for %s)" % blk.majmin))
    t_start = time.perf_counter()
    result = {"bench": "spool", "command": cmd, "quick": args.quick, "machine": machine}
    try:
        noise = idle_noise(blk, noise_s)
        result["idle_block_bytes_per_s"] = noise
        commits = []
        for size, count in counts.items():
            commits.extend(bench_commits(work, blk, size, count, trials))
        result["commits"] = commits
        mount_rows = [bench_mount(work, mount_size, 2 * KiB, mounts),
                      bench_mount(work, mount_size, 64 * KiB, mounts)]
        result["mount"] = mount_rows
        result["memory"] = bench_memory(work, mem_sizes)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = time.perf_counter() - t_start

    # aims (from the issue)
    by = {(r["method"], r["msg_size"]): r for r in commits}
    rate_ok = all(by[("spool", s)]["commits_per_s"] > by[("files", s)]["commits_per_s"] for s in counts)
    wa64 = by[("spool", 64 * KiB)]["wa_app"]
    mount_worst = max(m["mount_s_median"] for m in mount_rows)
    result["aims"] = {
        "commits_faster_than_files": rate_ok,
        "spool_wa_64k": wa64, "spool_wa_64k_under_1_2": wa64 < AIM_WA_64K,
        "mount_s_worst_median": mount_worst,
        "mount_under_0_5s": mount_worst < AIM_MOUNT_S if mount_rows[0]["spool_size"] == 16 * MiB else None,
    }

    # --- tables ---
    print()
    print("1+2. accept only: commits/s and write amplification (bytes written / body bytes)")
    print("%d trial(s) per row, alternating which method goes first; commits/s is the median, [min-max]" % trials)
    print("%-6s %-7s %5s %9s %13s %8s %9s %8s %8s %8s %8s" % (
        "method", "size", "msgs", "commits/s", "[min-max]", "ratio", "syncs/msg", "WA app", "WA pio", "WA blk",
        "flush/msg"))
    for size in counts:
        s, f = by[("spool", size)], by[("files", size)]
        for r in (s, f):
            print("%-6s %-7s %5d %9.0f %13s %8s %9.1f %8s %8s %8s %8s" % (
                r["method"], size_label(size), r["messages"], r["commits_per_s"],
                "[%.0f-%.0f]" % (min(r["commits_per_s_all"]), max(r["commits_per_s_all"])),
                "%.2fx" % (r["commits_per_s"] / f["commits_per_s"]), r["syncs_per_msg"],
                fmt_num(r["wa_app"]), fmt_num(r["wa_proc_io"]), fmt_num(r["wa_block"]),
                fmt_num(r["flushes_per_msg"], "%.1f")))
    if noise is not None:
        share = max(noise * r["block_window_seconds"] / r["body_bytes"] for r in commits)
        result["idle_block_wa_share_max"] = share
        print("  idle writes to %s by other processes: %.1f KiB/s, i.e. up to %.3f of any WA blk figure above"
              % (blk.name, noise / KiB, share))
    print("  WA app: spool = FileBlockDevice.bytes_written (exact); files = file sizes written (no fs overhead)")
    print("  WA pio: /proc/self/io write_bytes; WA blk: %s sectors written incl. journal, after sync"
          % (blk.name or "block device"))
    print()
    print("3. mount a full spool (filled until SpoolFull) vs scan the same number of queue files; page cache warm")
    print("%-8s %-7s %6s %8s %10s %12s %12s %8s" % ("spool", "msgs of", "msgs", "fill s", "mount s",
                                                      "files hdr s", "files all s", "ratio"))
    for m in mount_rows:
        print("%-8s %-7s %6d %8.2f %10.3f %12.3f %12.3f %8s" % (
            size_label(m["spool_size"]), size_label(m["msg_size"]), m["messages"], m["fill_seconds"],
            m["mount_s_median"], m["files_headers_s_median"], m["files_whole_s_median"],
            "%.2fx" % (m["mount_s_median"] / m["files_headers_s_median"])))
    print("  mount s: median of %d fresh mounts (scan + every payload CRC); files hdr: scandir + open + read "
          "envelope; files all: every byte; ratio = mount / files hdr" % mounts)
    print()
    print("4. peak memory streaming one message in (4 KiB writes) and out (reads)")
    print("%-6s %-7s %12s %12s %12s %12s" % ("method", "size", "in tracemal", "out tracemal", "in RSS d",
                                            "out RSS d"))
    for r in result["memory"]:
        print("%-6s %-7s %12s %12s %12s %12s" % (r["method"], size_label(r["msg_size"]), kib(r["in_peak"]),
                                                 kib(r["out_peak"]), kib(r["in_rss_delta"]),
                                                 kib(r["out_rss_delta"])))
    print("  tracemalloc peak above the baseline; RSS d = VmHWM after minus VmRSS before (page granularity)")
    print()
    a = result["aims"]
    print("aims: more commits/s than files: %s | spool WA(64 KiB) %.3f < %.1f: %s | mount %s %.3f s < %.1f s: %s"
          % ("met" if a["commits_faster_than_files"] else "MISSED", wa64, AIM_WA_64K,
             "met" if a["spool_wa_64k_under_1_2"] else "MISSED", size_label(mount_rows[0]["spool_size"]),
             mount_worst, AIM_MOUNT_S,
             {True: "met", False: "MISSED", None: "not tested (quick run is not 16 MiB)"}[a["mount_under_0_5s"]]))
    print("total %.1f s" % result["seconds"])
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
