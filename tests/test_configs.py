"""Every option of every config group composes under each primary config that uses the group, and every
``_target_`` node in it instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRIMARY = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def _groups_of(primary: str) -> dict[str, str]:
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(primary, return_hydra_config=True, overrides=["data_dir=/nonexistent"])
    # groups chosen by default, and groups left empty by default (``- /head@head: null``) whose options exist
    return {g: o for g, o in cfg.hydra.runtime.choices.items()
            if not g.startswith("hydra") and (o is not None or (CONFIGS / g.partition("@")[0]).is_dir())}


def _cases():
    for primary in PRIMARY:
        for key in _groups_of(primary):  # "group" or "group@package"
            group = key.partition("@")[0]
            options = sorted((CONFIGS / group).glob("*.yaml"))
            assert options, f"{primary}: no options for group {key}"
            for option in options:
                yield primary, key, option.stem


def _instantiate_targets(node) -> int:
    """Instantiate every sub-node with a ``_target_``; returns how many were built."""
    if OmegaConf.is_dict(node):
        if "_target_" in node:
            instantiate(node)
            return 1
        return sum(_instantiate_targets(node[k]) for k in node)
    return 0


def test_there_are_primary_configs():
    assert "preprocess" in PRIMARY


@pytest.mark.parametrize("primary", PRIMARY)
def test_primary_config_composes(primary, tmp_path):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(primary, overrides=[f"data_dir={tmp_path}"])
    OmegaConf.resolve(cfg)
    assert _instantiate_targets(cfg) >= 1


@pytest.mark.parametrize("primary,key,option", list(_cases()))
def test_every_group_option_composes(primary, key, option, tmp_path):
    """``key`` is a group, or ``group@package`` for a group placed elsewhere; a ``_global_`` option (a preset)
    is checked by instantiating every target of the whole composed config."""
    group, _, package = key.partition("@")
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(primary, overrides=[f"{key}={option}", f"data_dir={tmp_path}"])
    OmegaConf.resolve(cfg)
    header = (CONFIGS / group / f"{option}.yaml").read_text().splitlines()[0]
    node = cfg if "@package _global_" in header else OmegaConf.select(cfg, (package or group).replace("/", "."))
    assert _instantiate_targets(node) >= 1, f"{key}={option} has no _target_ node"


@pytest.mark.parametrize("preset", ["default", "quick"])
def test_synthetic_yaml_mirrors_the_presets(preset):
    from preprocessing.synthetic import SyntheticConfig

    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("preprocess", overrides=[f"synthetic={preset}", "seed=0"])
    assert cfg.synthetic.preset == preset
    assert instantiate(cfg.synthetic.generator) == SyntheticConfig.preset(preset)
