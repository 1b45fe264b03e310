"""The relay benchmark runs: `tools/bench/relay_bench.py --quick` exits 0 and ends with its JSON line.

Checks behaviour only (both relays started, loaded, verified and stopped; the report's shape),
never timings or whether the aim was met: those belong to BENCHMARKS.md, measured on a stated
machine.  Needs Linux, root and the postfix package (smtp-source, smtp-sink); skips with the
reason otherwise.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "bench", "relay_bench.py")


def _why_not():
    if not sys.platform.startswith("linux"):
        return "Linux only (/proc, Postfix)"
    missing = [b for b in ("smtp-source", "smtp-sink", "postfix", "postconf") if shutil.which(b) is None]
    if missing:
        return "missing %s (apt-get install postfix)" % ", ".join(missing)
    if os.geteuid() != 0:
        return "needs root (Postfix's master, smtp-sink -u nobody)"
    return None


@pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")
def test_relay_bench_quick_runs_and_reports_json():
    # not pytest's tmp_path: its parents are mode 0700, and Postfix's daemons (user postfix) must
    # reach their queue.  The system temp dir is world-searchable.
    work = tempfile.mkdtemp(prefix="relay-bench-smoke-")
    os.chmod(work, 0o755)
    try:
        proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--dir", work], cwd=ROOT,
                              capture_output=True, text=True, timeout=170)
        left = os.listdir(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("reproduce (from the repository root): python3 tools/bench/relay_bench.py --quick")
    json_lines = [line for line in lines if line.startswith("{")]
    assert len(json_lines) == 1 and lines[-1] == json_lines[0], proc.stdout[-4000:]
    r = json.loads(json_lines[0])

    for key in ("bench", "command", "quick", "machine", "params", "runs", "summary", "ratio", "latency",
                "latency_ratio_tinymta_over_postfix", "aims", "verified", "error", "leftover_processes", "seconds"):
        assert key in r, key
    assert r["bench"] == "relay" and r["quick"] is True
    assert r["verified"] is True and r["error"] is None and r["leftover_processes"] == []
    for key in ("date", "nproc", "arch", "python", "kernel", "fs_type", "postfix", "relay_max_active"):
        assert r["machine"][key], key
    n, trials = r["params"]["messages"], r["params"]["trials"]
    assert n > 0 and trials >= 1 and r["params"]["routing"] == "smarthost"

    relays = {"tinymta", "postfix"}
    assert len(r["runs"]) == len(relays) * trials
    assert {x["relay"] for x in r["runs"]} == relays
    for run in r["runs"]:
        # every run: smtp-source succeeded, the sink got exactly n, the relay's store is empty
        assert run["smtp_source_rc"] == 0 and run["delivered"] == n and run["store_empty"] is True, run
        assert run["verified"] is True and run["e2e_msgs_per_s"] > 0 and run["e2e_s"] >= run["accept_s"] > 0
        assert run["next_hop_connections"] >= 1 and run["msgs_per_connection"] > 0
    tiny_runs = [x for x in r["runs"] if x["relay"] == "tinymta"]
    for run in tiny_runs:
        d = run["detail"]
        assert d["messages"] == 0 and d["log_sent"] == n and d["log_deferred_or_bounced"] == 0, d
    assert set(r["summary"]) == relays
    for name in relays:
        assert r["summary"][name]["trials"] == trials and r["summary"][name]["verified_runs"] == trials
        assert r["summary"][name]["e2e_msgs_per_s_median"] > 0
    assert r["ratio"]["of_medians"] > 0 and len(r["ratio"]["per_trial"]) == trials
    assert r["aims"]["e2e_at_least_postfix"] in (True, False)

    samples = r["params"]["latency_samples"]
    assert set(r["latency"]) == relays
    for name in relays:
        lat = r["latency"][name]
        assert lat["n"] == samples == len(lat["samples_total_ms"])
        assert 0 < lat["total_ms_min"] <= lat["total_ms_median"] <= lat["total_ms_max"]
        for part in ("accept_ms_median", "queue_ms_median", "dialogue_ms_median"):
            assert lat[part] is not None
    assert r["latency_ratio_tinymta_over_postfix"] > 0
    assert left == []                                           # the work directory is removed
