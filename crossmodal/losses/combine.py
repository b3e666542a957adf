"""A weighted sum of distillation losses, the composite the ``configs/distill`` files build with Hydra."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn


class WeightedSum(nn.Module):
    """``loss(student, teacher, positives_mask=None, negatives_mask=None) = Σ_name weight·term(...)``.

    Args:
        terms: ``{name: {"loss": module, "weight": float}}`` (what Hydra passes for nested ``_target_`` entries;
            ``weight`` defaults to 1) or ``{name: module}`` with the weights in ``weights``.
        weights: ``{name: weight}`` for terms given as bare modules (default 1 each).

    The losses live in an ``nn.ModuleDict`` (``.terms``), so their parameters (a learnable curvature) are the
    composite's parameters. A term of weight 0 is not evaluated. Every term receives the same arguments; each must
    return a scalar tensor.

    Components (detached, after each call): ``name`` = the term's unweighted value and ``name/part`` = the term's own
    ``components``.
    """

    def __init__(self, terms: Mapping[str, Any], weights: Mapping[str, float] | None = None):
        super().__init__()
        if not isinstance(terms, Mapping) or not terms:
            raise ValueError("WeightedSum needs a non-empty mapping of terms")
        weights = dict(weights or {})
        unknown = set(weights) - set(terms)
        if unknown:
            raise ValueError(f"weights for unknown terms: {sorted(unknown)}")
        modules: dict[str, nn.Module] = {}
        self.weights: dict[str, float] = {}
        for name, spec in terms.items():
            if not isinstance(name, str) or not name or "." in name or "/" in name:
                raise ValueError(f"term names must be non-empty strings without '.' or '/', got {name!r}")
            if isinstance(spec, nn.Module):
                loss, weight = spec, weights.get(name, 1.0)
            elif isinstance(spec, Mapping):
                if "loss" not in spec:
                    raise ValueError(f"term {name!r} needs a 'loss' entry, got keys {sorted(spec)}")
                if name in weights and "weight" in spec:
                    raise ValueError(f"term {name!r} has a weight both in terms and in weights")
                extra = set(spec) - {"loss", "weight"}
                if extra:
                    raise ValueError(f"term {name!r}: unknown keys {sorted(extra)} (expected 'loss' and 'weight')")
                loss, weight = spec["loss"], spec.get("weight", weights.get(name, 1.0))
            else:
                raise TypeError(f"term {name!r} must be a module or a mapping with 'loss' and 'weight', got "
                                f"{type(spec).__name__}")
            if not isinstance(loss, nn.Module):
                raise TypeError(f"term {name!r}: the loss must be an nn.Module, got {type(loss).__name__}")
            modules[name] = loss
            self.weights[name] = float(weight)
        self.terms = nn.ModuleDict(modules)
        self.components: dict[str, Tensor] = {}

    def forward(self, student: Tensor, teacher: Any, positives_mask: Tensor | None = None,
                negatives_mask: Tensor | None = None) -> Tensor:
        total: Tensor | None = None
        parts: dict[str, Tensor] = {}
        for name, loss_fn in self.terms.items():
            weight = self.weights[name]
            if not weight:
                continue
            value = loss_fn(student, teacher, positives_mask=positives_mask, negatives_mask=negatives_mask)
            total = weight * value if total is None else total + weight * value
            parts[name] = value.detach()
            for key, v in (getattr(loss_fn, "components", None) or {}).items():
                parts[f"{name}/{key}"] = v.detach() if isinstance(v, Tensor) else v
        self.components = parts
        if total is None:
            return student.sum() * 0.0
        return total

    def extra_repr(self) -> str:
        return "weights={" + ", ".join(f"{k}: {v:g}" for k, v in self.weights.items()) + "}"


__all__ = ["WeightedSum"]
