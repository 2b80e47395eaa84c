"""scripts/gpu_check.sh runs end to end on the CPU in its dry mode (the GPU run itself needs a lent machine)."""

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_its_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["machine"]["dry_run"] is True
    assert result["training"]["seconds_per_step_median"] > 0 and result["training"]["preset"] == "tiny"
    modes = {p["mode"]: p for p in result["prediction"]}
    assert set(modes) == {"fast", "accurate"}
    for p in modes.values():
        assert p["wall_time_s"] > 0 and p["rss_peak_mib"] > 0 and "organ" in p["stages_s"]
