"""Hydra / OmegaConf values as plain Python containers (the one place the library converts them)."""

from __future__ import annotations

import copy
from typing import Any


def to_plain(value: Any) -> Any:
    """A ``DictConfig`` / ``ListConfig`` resolved into dicts and lists; any other value deep-copied as it is."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return copy.deepcopy(value)
