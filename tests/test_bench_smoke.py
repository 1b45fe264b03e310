"""The spool benchmark runs: `tools/bench/spool_bench.py --quick` exits 0 and ends with its JSON line.

Checks behaviour only (the report's shape and sanity of the numbers), never timings
or whether the aims were met: those belong to BENCHMARKS.md, measured on a stated machine.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "bench", "spool_bench.py")


def test_spool_bench_quick_runs_and_reports_json(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--dir", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("reproduce (from the repository root): python3 tools/bench/spool_bench.py --quick")
    json_lines = [line for line in lines if line.startswith("{")]
    assert len(json_lines) == 1, proc.stdout[-4000:]
    r = json.loads(json_lines[0])

    for key in ("bench", "command", "quick", "machine", "commits", "mount", "memory", "aims", "seconds",
                "idle_block_bytes_per_s"):
        assert key in r, key
    assert r["bench"] == "spool" and r["quick"] is True
    for key in ("date", "nproc", "arch", "python", "fs_type", "kernel"):
        assert r["machine"][key], key

    rows = {(c["method"], c["msg_size"]): c for c in r["commits"]}
    assert set(rows) == {("spool", 2048), ("spool", 65536), ("files", 2048), ("files", 65536)}
    for c in rows.values():
        assert c["commits_per_s"] > 0 and c["messages"] > 0
        assert c["body_bytes"] == c["msg_size"] * c["messages"] * c["trials"]
        for key in ("wa_app", "wa_proc_io", "wa_block", "flushes_per_msg", "syncs_per_msg"):
            assert key in c, key
        assert c["wa_app"] >= 1.0           # nothing is stored in fewer bytes than its body
    # the spool's figure is exact (FileBlockDevice counts every byte) and one commit is at least one sync
    assert rows[("spool", 2048)]["syncs_per_msg"] >= 1
    assert rows[("spool", 65536)]["app_bytes"] % 4096 == 0    # whole program units only

    assert len(r["mount"]) == 2
    for m in r["mount"]:
        assert m["messages"] > 0 and m["used_bytes"] > 0
        assert m["mount_s_median"] > 0 and m["files_headers_s_median"] > 0
        assert len(m["mount_s_all"]) >= 1

    mem = {(m["method"], m["msg_size"]) for m in r["memory"]}
    assert {meth for meth, _ in mem} == {"spool", "files"} and len({s for _, s in mem}) == 2
    for m in r["memory"]:
        assert m["in_peak"] >= 0 and m["out_peak"] >= 0

    for key in ("commits_faster_than_files", "spool_wa_64k", "spool_wa_64k_under_1_2", "mount_under_0_5s"):
        assert key in r["aims"], key
    assert r["aims"]["mount_under_0_5s"] is None    # a quick run does not fill a 16 MiB spool
    assert not os.listdir(tmp_path)                  # the work directory is removed
