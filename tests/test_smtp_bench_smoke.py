"""The SMTP accept-rate benchmark runs: `tools/bench/smtp_bench.py --quick` exits 0 and ends with its JSON line.

Checks behaviour only (every server started, loaded, verified and stopped; the report's shape),
never timings or whether the aims were met: those belong to BENCHMARKS.md, measured on a
stated machine.  Needs Linux, root, the postfix package (smtp-source, smtp-sink) and aiosmtpd;
skips with the reason otherwise.
"""
import pytest

from benchkit import run_quick, why_not

REASON = why_not(aiosmtpd=True)


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_smtp_bench_quick_runs_and_reports_json():
    r, left = run_quick("smtp_bench.py", "smtp")

    for key in ("bench", "command", "quick", "machine", "params", "runs", "summary", "ratios", "tinymta_rss",
                "other_memory", "aims", "verified", "error", "leftover_processes", "seconds"):
        assert key in r, key
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
