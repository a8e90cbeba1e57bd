"""The examples run, small."""

import importlib.util
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart(tmp_path):
    back = _load("quickstart").main(size=400, out=str(tmp_path / "q.zarr"))
    assert back["prediction"].shape == (4, 400, 400)
    assert np.isfinite(back["prediction"].values).mean() > 0.99


def test_demo_main_job(tmp_path):
    from xharmonise.demo import main

    assert main(["--out", str(tmp_path), "--size", "600"]) == 0
    assert (tmp_path / "harmonised.zarr").is_dir()
    assert "rmse" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "model.safetensors").is_file()
