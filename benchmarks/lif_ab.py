"""Same-process A/B of the fused IF/LIF CPU kernel: a base revision's ``csrc/lif.cpp`` against the working tree's.

Both kernel sources (each with its revision's shared helpers of ``ms_common.h``) are compiled into one small
program (``benchmarks/csrc/lif_ab.cpp``, only the float32 post-reset IF instantiations, so it builds in seconds
rather than the library's minutes) with the library's own flags, and timed interleaved in one process next to copy / copy+add loops over the same bytes. That makes the
old/new ratio meaningful even on a shared machine, where absolute times are not. It also checks that the new
forward's spikes and final membrane are bit-identical to the base's. Per-element times are the minimum over
``--reps`` interleaved repetitions, in ns per element-step.

Example::

    python benchmarks/lif_ab.py --base main --Ts 2,4,8
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "multispike" / "kernels" / "csrc"


def _core(source: str, namespace: str) -> str:
    """The family code of lif.cpp without its extern "C" entry points, in ``ms::<namespace>``."""
    core = source[:source.index('extern "C" {')].replace('#include "ms_common.h"', "")
    return core.replace("namespace lif {", f"namespace {namespace} {{", 1)


def _common(header: str) -> str:
    """The shared helpers of a revision's ``ms_common.h`` (its ``namespace ms`` part) as ``namespace ms_base``.

    The base core is compiled against its own revision's helpers (surrogates, exp, scaffolding), so a change there
    shows in the ratios too; the preamble before them (the ABI records, the macros) is the working tree's."""
    return header[header.index("namespace ms {"):].replace("namespace ms {", "namespace ms_base {", 1)


def build(base: str, workdir: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from multispike.kernels import _build

    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{base}:multispike/kernels/csrc/{path}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
    old = _core(show("lif.cpp"), "lif_base").replace("namespace ms {", "namespace ms_base {", 1)
    (workdir / "lif_base_core.h").write_text(_common(show("ms_common.h")) + old)
    (workdir / "lif_new_core.h").write_text(_core((CSRC / "lif.cpp").read_text(), "lif"))
    info = _build.build_info() if _build.load_library() is not None else {}
    flags = [f for f in info.get("flags", ["-O2", "-ftree-vectorize", "-std=c++17", "-ffp-contract=off",
                                           "-fno-math-errno", "-march=native", "-fopenmp"])
             if f not in ("-shared", "-fPIC")]
    exe = workdir / "lif_ab"
    subprocess.run([info.get("compiler", "g++"), *flags, f"-I{CSRC}", f"-I{workdir}",
                    str(ROOT / "benchmarks" / "csrc" / "lif_ab.cpp"), "-o", str(exe)], check=True)
    return exe


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="main", help="git revision of the base lif.cpp (default: main)")
    ap.add_argument("--Ts", default="2,4,8")
    ap.add_argument("--N", type=int, default=32 * 128 * 16 * 16, help="elements per step (default [32,128,16,16])")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(args.base, Path(tmp))
        for T in (int(t) for t in args.Ts.split(",")):
            for soft in (1, 0):
                load = os.getloadavg()
                out = subprocess.run([str(exe), str(T), str(args.N), str(args.reps), str(soft)], capture_output=True,
                                     text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                line = out.stdout.strip()
                row = {"T": T, "soft": soft, "loadavg_before": load, "raw": line, "rc": out.returncode}
                vals = dict(kv.split("=") for kv in line.split()[3:]) if out.returncode in (0, 1) else {}
                if vals:
                    v = {k: float(x) for k, x in vals.items()}
                    row.update(v)
                    row["fwd_new_over_base"] = v["fwd_new"] / v["fwd_base"]
                    row["bwd_new_over_base"] = v["bwd_new"] / v["bwd_base"]
                    row["bwd_th_new_over_base"] = v["bwd_th_new"] / v["bwd_th_base"]
                    row["fwd_base_x_copy"] = v["fwd_base"] / v["copy"]
                    row["fwd_new_x_copy"] = v["fwd_new"] / v["copy"]
                    row["fwd_bwd_new_x_copy_add"] = (v["fwd_new"] + v["bwd_new"]) / v["copy_add"]
                print(f"load {load[0]:.2f} | {line}" + (
                    f" | fwd new/base {row['fwd_new_over_base']:.3f} bwd new/base {row['bwd_new_over_base']:.3f}"
                    f" bwd_th new/base {row['bwd_th_new_over_base']:.3f}"
                    f" | fwd x copy {row['fwd_base_x_copy']:.2f} -> {row['fwd_new_x_copy']:.2f}"
                    f" fwd+bwd x copy+add {row['fwd_bwd_new_x_copy_add']:.2f}" if vals else ""), flush=True)
                rows.append(row)
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"base": args.base, "N": args.N, "rows": rows}, indent=1))
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
