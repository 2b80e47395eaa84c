"""The main job end to end: synth -> prepare -> train both models -> predict (paper, fast) -> evaluate -> report."""

import json
import subprocess
import sys

import pytest

from flareseg.demo import DemoConfig, run_demo
from flareseg.model.folder import read_model_config


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path):
    config = DemoConfig(cases=8, val_cases=2, organ_preset="tiny", tumor_preset="tiny", organ_epochs=2, tumor_epochs=1, seed=1)
    result = run_demo(tmp_path / "demo", config=config, progress=False)
    assert read_model_config(tmp_path / "demo" / "models" / "organ").train.seed == 1
    report = result.report.read_text()
    assert result.training["organ"].steps == 2 * 5 and result.training["organ"].complete
    for heading in ("Headline", "Table 4 (paper mode)", "Table 4 (fast mode)", "Table 5 (fast mode)", "Figures (fast mode)", "Training curves"):
        assert heading in report
    assert (result.report.parent / "report.html").is_file()
    for mode in ("paper", "fast"):
        predictions = sorted((tmp_path / "demo" / f"predict_{mode}" / "predictions").glob("*.nii.gz"))
        assert len(predictions) == 2
        assert 0.0 <= result.organ_dsc[mode] <= 1.0
    saved = json.loads((tmp_path / "demo" / "demo_result.json").read_text())
    assert saved["organ_dsc"]["fast"] == pytest.approx(result.organ_dsc["fast"])


@pytest.mark.slow
def test_a_second_demo_in_the_same_folder_resumes(tmp_path):
    config = DemoConfig(cases=8, val_cases=2, organ_preset="tiny", tumor_preset="tiny", organ_epochs=1, tumor_epochs=1, seed=1)
    run_demo(tmp_path / "demo", config=config, progress=False)
    again = run_demo(tmp_path / "demo", config=config, progress=False)  # resumes the trained models
    assert again.report.is_file() and again.training["organ"].steps == 5


@pytest.mark.slow
def test_quick_demo_cli_within_five_minutes(tmp_path):
    run = subprocess.run([sys.executable, "-m", "flareseg.cli", "-q", "demo", "--quick", "--out", str(tmp_path / "q")], capture_output=True, text=True, timeout=330)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "fast mode: mean organ DSC" in run.stdout
    assert (tmp_path / "q" / "report" / "report.md").is_file()
