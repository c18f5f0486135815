"""`raypipe demo` end to end (the stages landed so far), on the shared local Ray."""
import json

import pytest

from raypipe.config import load_config
from raypipe.demo import DEFAULT_CONFIG, DemoConfig, run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end(ray_local, tmp_path, capsys):
    cfg = load_config(DemoConfig, DEFAULT_CONFIG, ["synth.pairs=12", "progress=false"])
    report = run_demo(cfg, tmp_path / "demo")
    s = report["pairs"]
    assert s["rows"] == 12 and s["decoded"] == 12 and s["error_rows"] == 0
    assert s["frames_decoded"] == 12 * 2 * 8  # 16 frames at 8 fps sampled at 4 fps
    assert sum(s["labels"]["VQ"][k] for k in ("A", "B", "tie")) == 12
    assert json.loads((tmp_path / "demo" / "demo_summary.json").read_text())["pairs"]["rows"] == 12
    assert (tmp_path / "demo" / "config.yaml").exists()
    assert "=== summary ===" in capsys.readouterr().out
