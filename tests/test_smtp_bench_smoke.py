"""The SMTP accept-rate benchmark runs: `tools/bench/smtp_bench.py --quick` exits 0 and ends with its JSON line.

Checks behaviour only (every server started, loaded, verified and stopped; the report's shape),
never timings or whether the aims were met: those belong to BENCHMARKS.md, measured on a
stated machine.  Needs Linux, root, the postfix package (smtp-source, smtp-sink) and aiosmtpd;
skips with the reason otherwise.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "bench", "smtp_bench.py")


def _why_not():
    if not sys.platform.startswith("linux"):
        return "Linux only (/proc, Postfix)"
    missing = [b for b in ("smtp-source", "smtp-sink", "postfix", "postconf") if shutil.which(b) is None]
    if missing:
        return "missing %s (apt-get install postfix)" % ", ".join(missing)
    if os.geteuid() != 0:
        return "needs root (Postfix's master, smtp-sink -u nobody)"
    have_aio = any(os.path.exists(p) and
                   subprocess.run([p, "-c", "import aiosmtpd"], capture_output=True).returncode == 0
                   for p in (sys.executable, "/tmp/venv-bench/bin/python"))
    if not have_aio:
        return "aiosmtpd is not installed (pip install aiosmtpd)"
    return None


@pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")
def test_smtp_bench_quick_runs_and_reports_json():
    # not pytest's tmp_path: its parents are mode 0700, and Postfix's daemons (user postfix) must
    # reach their queue.  The system temp dir is world-searchable.
    work = tempfile.mkdtemp(prefix="smtp-bench-smoke-")
    os.chmod(work, 0o755)
    try:
        proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--dir", work], cwd=ROOT,
                              capture_output=True, text=True, timeout=170)
        left = os.listdir(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("reproduce (from the repository root): python3 tools/bench/smtp_bench.py --quick")
    json_lines = [line for line in lines if line.startswith("{")]
    assert len(json_lines) == 1 and lines[-1] == json_lines[0], proc.stdout[-4000:]
    r = json.loads(json_lines[0])

    for key in ("bench", "command", "quick", "machine", "params", "runs", "summary", "ratios", "tinymta_rss",
                "other_memory", "aims", "verified", "error", "leftover_processes", "seconds"):
        assert key in r, key
    assert r["bench"] == "smtp" and r["quick"] is True
    assert r["verified"] is True and r["error"] is None and r["leftover_processes"] == []
    for key in ("date", "nproc", "arch", "python", "kernel", "fs_type", "postfix", "aiosmtpd"):
        assert r["machine"][key], key
    n, trials = r["params"]["messages"], r["params"]["trials"]
    assert n > 0 and trials >= 1

    servers = {"tinymta", "postfix", "postfix+relay", "aiosmtpd"}
    modes = {"persistent", "conn/msg"}
    assert set(r["summary"]) == modes and set(r["ratios"]) == modes and set(r["aims"]) == modes
    assert {(x["mode"], x["server"]) for x in r["runs"]} == {(m, s) for m in modes for s in servers}
    assert len(r["runs"]) == len(modes) * len(servers) * trials
    for run in r["runs"]:
        # every run: smtp-source succeeded and the server really stored every message
        assert run["smtp_source_rc"] == 0 and run["stored"] == n and run["verified"] is True, run
        assert run["msgs_per_s"] > 0 and run["wall_s"] > 0
    for mode in modes:
        assert set(r["summary"][mode]) == servers
        for s in servers:
            assert r["summary"][mode][s]["trials"] == trials
            assert r["summary"][mode][s]["msgs_per_s_median"] > 0
        for other in ("postfix", "postfix+relay", "aiosmtpd"):
            ratio = r["ratios"][mode]["tinymta/" + other]
            assert ratio["of_medians"] > 0 and len(ratio["per_trial"]) == trials
        for key in ("at_least_postfix_accept_only", "at_least_postfix_with_relay"):
            assert r["aims"][mode][key] in (True, False)

    rss = r["tinymta_rss"]
    for key in ("idle_kib_median", "load_kib_median", "peak_hwm_kib"):
        assert rss[key] > 0, key
    assert rss["peak_hwm_kib"] >= rss["idle_kib_median"]
    for mode in modes:
        assert rss[mode]["cpu_share_median"] is not None
    assert r["tinymta_starts"] == len(modes) * (1 + trials)     # warm-up and timed runs, each a fresh spool
    assert r["tinymta_stop_rcs"] == [0]                         # SIGTERM: a clean stop every time
    assert left == []                                           # the work directory is removed
