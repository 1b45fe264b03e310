"""Running a benchmark script of tools/bench in its --quick form from a smoke test.

    reason = why_not(aiosmtpd=False)       None, or why this machine cannot run it (a skip reason)
    report, left = run_quick("relay_bench.py", expect_bench="relay")

run_quick runs the script with --quick in a world-searchable scratch directory (Postfix's
daemons, user postfix, must reach their queue there; pytest's tmp_path parents are mode 0700),
removes it, and checks what every benchmark promises: exit 0, the reproduce line first, and
one JSON report as the last line.  It returns the parsed report and what was left in the
directory.  Timings and aims are never judged here: BENCHMARKS.md holds those.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def why_not(aiosmtpd=False):
    if not sys.platform.startswith("linux"):
        return "Linux only (/proc, Postfix)"
    missing = [b for b in ("smtp-source", "smtp-sink", "postfix", "postconf") if shutil.which(b) is None]
    if missing:
        return "missing %s (apt-get install postfix)" % ", ".join(missing)
    if os.geteuid() != 0:
        return "needs root (Postfix's master, smtp-sink -u nobody)"
    if aiosmtpd and not any(os.path.exists(p) and
                            subprocess.run([p, "-c", "import aiosmtpd"], capture_output=True).returncode == 0
                            for p in (sys.executable, "/tmp/venv-bench/bin/python")):
        return "aiosmtpd is not installed (pip install aiosmtpd)"
    return None


def run_quick(script, expect_bench, timeout=170):
    work = tempfile.mkdtemp(prefix="%s-smoke-" % expect_bench)
    os.chmod(work, 0o755)
    try:
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench", script), "--quick", "--dir", work],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        left = os.listdir(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("reproduce (from the repository root): python3 tools/bench/%s --quick" % script)
    json_lines = [line for line in lines if line.startswith("{")]
    assert len(json_lines) == 1 and lines[-1] == json_lines[0], proc.stdout[-4000:]
    report = json.loads(json_lines[0])
    assert report["bench"] == expect_bench and report["quick"] is True
    assert report["verified"] is True and report["error"] is None and report["leftover_processes"] == []
    return report, left
