"""The relay benchmark runs: `tools/bench/relay_bench.py --quick` exits 0 and ends with its JSON line.

Checks behaviour only (both relays started, loaded, verified and stopped; the report's shape),
never timings or whether the aim was met: those belong to BENCHMARKS.md, measured on a stated
machine.  Needs Linux, root and the postfix package (smtp-source, smtp-sink); skips with the
reason otherwise.
"""
import pytest

from benchkit import run_quick, why_not

REASON = why_not(aiosmtpd=False)


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_relay_bench_quick_runs_and_reports_json():
    r, left = run_quick("relay_bench.py", "relay")

    for key in ("bench", "command", "quick", "machine", "params", "runs", "summary", "ratio", "latency",
                "latency_ratio_tinymta_over_postfix", "aims", "verified", "error", "leftover_processes", "seconds"):
        assert key in r, key
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
