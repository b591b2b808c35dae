"""The end-to-end demo runs (reduced setting) and the SNN approaches the ANN as T grows."""
import json
import subprocess
import sys

from multispike.demo import DemoConfig, run_demo


def test_demo_end_to_end_reduced(tmp_path):
    cfg = DemoConfig(epochs=6, timesteps=(1, 2, 4, 16), rows=("if",), out=str(tmp_path), progress=False)
    result = run_demo(cfg, log=lambda s: None)
    rows = result["rows"]
    ann = rows[0]["accuracy"]
    snn = {r["T"]: r["accuracy"] for r in rows if r["method"].startswith("IF")}
    assert ann > 85.0
    assert snn[16] >= snn[1] and snn[4] >= snn[1]
    assert snn[16] > ann - 5.0  # converted SNN approaches the ANN at larger T
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == rows and set(saved["spike_rates"]) == {"1", "2", "4", "16"}
    for layer_rates in saved["spike_rates"].values():
        assert all(0.0 < r < 1.0 for r in layer_rates.values())


def test_cli_help_for_every_command():
    from multispike.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert "demo" in sub.choices
    for name in sub.choices:
        proc = subprocess.run([sys.executable, "-m", "multispike", name, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0, (name, proc.stderr)
        assert "usage:" in proc.stdout


def test_cli_bad_input_is_one_clear_line():
    proc = subprocess.run([sys.executable, "-m", "multispike", "demo", "--timesteps", "0"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "--timesteps must all be >= 1" in proc.stderr and "Traceback" not in proc.stderr
