"""The public API: lazy, complete, and the example of docs/api.md runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import flareseg

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_import_is_light_and_every_name_resolves():
    code = "import sys, flareseg; assert 'torch' not in sys.modules and 'SimpleITK' not in sys.modules; print(len(flareseg.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in flareseg.__all__:
        assert getattr(flareseg, name) is not None, name


def test_docs_api_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/api.md has no python example"
    monkeypatch.chdir(tmp_path)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    scope: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), scope)
    seg = scope["seg"]
    assert seg.label.array.dtype.name == "uint8" and seg.label.array.max() <= 14
    assert scope["batch"].skipped == ["FLARESynth_0005"] and not scope["batch"].failed
    assert (tmp_path / "scores" / "summary.json").is_file()
