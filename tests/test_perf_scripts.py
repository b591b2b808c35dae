"""Smoke tests of the issue-19 benchmark scripts: their quick / dry-run paths run and write complete JSON.

No timing is asserted (the numbers of a tiny run on a shared machine mean nothing); the tests check that every
section ran, that every goal row carries a measured value and its bound, and that CUDA-only parts are skipped with
a reason on a CPU.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_perf_goals_quick(tmp_path):
    pg = _load("perf_goals")
    out = tmp_path / "perf.json"
    assert pg.main(["--quick", "--models", "resnet20_cifar", "--variants", "ann,snn,snn_bytes",
                    "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    for key in ("commit", "hardware", "versions", "loadavg_before", "loadavg_after", "machine_shared", "settings"):
        assert key in res
    assert res["quick"] is True and res["settings"]["threads"] >= 1
    (nres,) = res["neurons"]
    for name in pg.NEURONS:
        for ph in ("fwd", "fwd_bwd"):
            assert res["neurons"][0]["times"][f"{name}_{ph}"]["reps"] >= 1
            assert nres["ratios"][f"{name}_{ph}_x_floor"] > 0
    (net,) = res["network"]
    assert "error" not in net, net.get("error")
    assert {"snn_train_per_timestep_vs_ann", "snn_infer_per_timestep_vs_ann",
            "snn_bytes_vs_snn_train"} <= set(net["ratios"])
    assert len(res["memory"]) == 3 and all("error" not in m and m["peak_rss_MiB"] > 0 for m in res["memory"])
    rows = res["goal_rows"]
    assert rows and all(r["measured"] is not None and r["goal"] and isinstance(r["met"], bool) for r in rows)
    goals = {r["goal_key"] for r in rows}
    assert {"fwd_x_floor", "fwd_bwd_x_floor", "lmht_vs_mht", "train_per_timestep_vs_ann",
            "infer_per_timestep_vs_ann"} <= goals
    # "Done when": a missed goal states what bounds it, with the profile numbers of the same run, and what was tried
    prof = nres["profile"]
    assert prof["if_kernel_fwd_x_floor"] > 0 and prof["fwd_bytes_bound_x_floor"] == 1.25
    assert all(f"{n}_bwd_x_bwd_floor" in prof for n in pg.NEURONS)
    for r in rows:
        if r["met"]:
            assert "analysis" not in r
        else:
            a = r["analysis"]
            assert a["bound"] and a["tried"] and isinstance(a["profile"], dict), r["metric"]
    fwd_rows = [r for r in rows if r["metric"] == "if T=2 fwd / floor" and not r["met"]]
    for r in fwd_rows:
        assert set(r["analysis"]["profile"]) >= {"if_kernel_fwd_x_floor", "if_python_layers_ms"}
    pr = _load("perf_readme")
    md = pr.render(res, str(out))
    assert "Goals of issue 19" in md and "`resnet20_cifar`" in md and res["commit"][:12] in md
    tables, goals = pr.render(res, str(out), "tables"), pr.render(res, str(out), "goals")
    assert "Goals of issue 19" not in tables and "`resnet20_cifar`" in tables and res["commit"][:12] in tables
    assert "Goals of issue 19" in goals and "| metric |" in goals and "`resnet20_cifar` |" not in goals
    assert pr.main([str(out), "--part", "goals"]) == 0


def test_perf_goals_worker_subprocess():
    """The isolated worker path of the full run (one fresh process, as for every memory measurement)."""
    pg = _load("perf_goals")
    res = pg._subprocess("--mem-worker", {"model": "resnet20_cifar", "variant": "snn", "T": 2, "batch": 2, "steps": 1,
                                          "threads": 1})
    assert "error" not in res, res.get("error")
    assert res["peak_rss_MiB"] > 0 and res["variant"] == "snn"


def test_perf_goals_rejects_unknown_section():
    pg = _load("perf_goals")
    try:
        pg.main(["--quick", "--sections", "neurons,gpu"])
    except SystemExit as exc:
        assert "unknown section" in str(exc)
    else:
        raise AssertionError("an unknown section must be refused")


def test_gpu_checks_dry_run(tmp_path):
    gc = _load("gpu_checks")
    out = tmp_path / "g.json"
    assert gc.main(["--dry-run", "--models", "resnet20_cifar", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["dry_run"] is True
    assert "CUDA-only" in res["triton_tests"]["skipped"] and "CUDA-only" in res["kernel_timing"]["skipped"]
    rows = {(r["neuron"], r["variant"]): r for r in res["training"]}
    for neuron in ("relu", "if"):
        for v in ("trainer", "plain", "plain_bf16"):
            assert rows[(neuron, v)]["images_per_s"] > 0, rows[(neuron, v)]
        for v in ("plain_compile", "plain_compile_cudagraphs"):
            assert "CUDA-only" in rows[(neuron, v)]["skipped"]
    assert rows[("if", "plain")]["time_per_timestep_vs_ann"] > 0
    assert rows[("if", "trainer")]["vs_plain"] > 0


def test_memory_breakdown_counts_saved_tensors_at_their_packed_size(tmp_path):
    mb = _load("memory_breakdown")
    out = tmp_path / "mem.json"
    assert mb.main(["--models", "airbench_cifar", "--variants", "ann,snn,snn_bytes", "--T", "2", "--batch", "2",
                    "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["models"]["airbench_cifar"]
    snn, packed = rows["snn"], rows["snn_bytes"]
    # the average pools keep only shapes, so no pool node owns saved memory; the neuron kernel saves its input
    pools = {op: mib for op, mib in snn["by_op_mib"].items() if "AvgPool" in op}
    assert pools and all(mib == 0 for mib in pools.values()) and snn["by_op_mib"]["FusedSequenceBackward"] > 0
    # bytes storage: the spike inputs of the convs are kept as uint8 and counted at that size
    assert packed["saved_mib"] < snn["saved_mib"] and packed["by_dtype_mib"].get("uint8", 0) > 0
    assert snn["saved_mib"] > rows["ann"]["saved_mib"] and snn["vs_spikingjelly"] is None


def test_generated_performance_blocks_match_the_committed_json():
    """The README's performance tables and docs/performance.md are regenerated from the committed JSON, never
    typed in: each marked block equals what perf_readme / neurons_ab render from the results file it names."""
    pr, nab = _load("perf_readme"), _load("neurons_ab")
    res = json.loads((ROOT / "benchmarks/results/perf_goals_cpu.json").read_text())
    checks = [("README.md", "tables", pr.render(res, "benchmarks/results/perf_goals_cpu.json", "tables")),
              ("docs/performance.md", "all", pr.render(res, "benchmarks/results/perf_goals_cpu.json", "all"))]
    ab = ROOT / "benchmarks/results/neurons_ab_cpu.json"
    for path, part, md in checks:
        text = (ROOT / path).read_text()
        assert pr.replace_block(text, part, md) == text, f"{path}: the {part} block is stale; rerun perf_readme"
    text = (ROOT / "docs/performance.md").read_text()
    one = "benchmarks/results/perf_goals_cpu_neurons_1thread.json"
    md = pr.render(json.loads((ROOT / one).read_text()), one, "tables")
    pair = ("<!-- perf_goals_neurons_1thread begin -->", "<!-- perf_goals_neurons_1thread end -->")
    assert pr.replace_block(text, "tables", md, marker_pair=pair) == text, "docs/performance.md: stale 1-thread table"
    md = nab.render(json.loads(ab.read_text()), "benchmarks/results/neurons_ab_cpu.json")
    pair = ("<!-- neurons_ab begin -->", "<!-- neurons_ab end -->")
    assert pr.replace_block(text, "neurons_ab", md, marker_pair=pair) == text, "docs/performance.md: stale A/B table"
    small = "benchmarks/results/neurons_ab_cpu_small.json"
    md = nab.render(json.loads((ROOT / small).read_text()), small)
    assert "`[T, 4, 16]` float32" in md
    pair = ("<!-- neurons_ab_small begin -->", "<!-- neurons_ab_small end -->")
    assert pr.replace_block(text, "neurons_ab_small", md, marker_pair=pair) == text, \
        "docs/performance.md: stale per-call A/B table"


def test_replace_block_needs_its_markers():
    pr = _load("perf_readme")
    try:
        pr.replace_block("no markers here", "tables", "x")
    except ValueError as exc:
        assert "perf_readme:tables begin" in str(exc)
    else:
        raise AssertionError("a file without the markers must be refused")
    begin, end = pr.markers("goals")
    assert pr.replace_block(f"a\n{begin}\nold\n{end}\nb", "goals", "new") == f"a\n{begin}\nnew\n{end}\nb"


def test_call_overhead_quick(tmp_path):
    """The call-overhead breakdown runs every layer (floor, kernel, engine, entry, module) and writes its JSON."""
    from conftest import require_cpp_library

    require_cpp_library()
    co = _load("call_overhead")
    out = tmp_path / "co.json"
    assert co.main(["--Ts", "2", "--threads", "1", "--reps", "1", "--rounds", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    (run,) = res["runs"]
    assert set(run["median_ms"]) == set(co.LAYERS) and all(v > 0 for v in run["median_ms"].values())
    assert run["bytes_bound_x_floor"] == 1.25 and set(run["layer_ms"]) == set(co.LAYERS[1:])
    assert res["commit"] and res["hardware"]


def test_script_errors_name_the_value_and_the_fix(tmp_path):
    """A file without the markers and an unknown base revision end with one clear line, not a traceback."""
    import pytest
    pr, nab = _load("perf_readme"), _load("neurons_ab")
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    with pytest.raises(SystemExit, match="bare.md.*add the markers"):
        pr.main([str(ROOT / "benchmarks/results/perf_goals_cpu.json"), "--update", str(bare)])
    with pytest.raises(SystemExit, match="'no-such-rev' is not a commit"):
        nab.main(["--base", "no-such-rev"])
    with pytest.raises(SystemExit, match="--shape must be comma-separated integers, got '4,x'"):
        nab.main(["--shape", "4,x"])
