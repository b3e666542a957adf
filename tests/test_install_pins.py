"""The torch / torchvision pair is pinned (issue 13.11): an unpinned install once resolved torch 2.13 with
torchvision 0.28, whose import fails. scripts/setup.sh and pyproject.toml must pin the same pair, and the
installed pair must be that pair and import together."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        m = re.fullmatch(r"\s*(torch|torchvision)\s*==\s*([\w.]+)\s*", dep)
        if m:
            pins[m.group(1)] = m.group(2)
    return pins


def test_setup_and_pyproject_pin_the_same_pair():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    script = dict(re.findall(r'^(TORCH|TORCHVISION)_PIN="(?:torch|torchvision)==([\w.]+)"', setup, re.MULTILINE))
    assert _pyproject_pins() == {"torch": script["TORCH"], "torchvision": script["TORCHVISION"]}


def test_the_installed_pair_is_the_pinned_one_and_imports():
    import torch
    import torchvision

    pins = _pyproject_pins()
    assert torch.__version__.split("+")[0] == pins["torch"]
    assert torchvision.__version__.split("+")[0] == pins["torchvision"]
    assert torchvision.ops.nms(torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]]), torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
