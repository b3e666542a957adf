"""Teacher task loss: a weighted sum of batch-hard triplet losses on named model outputs.

``configs/teacher_loss/fusion.yaml`` is MinkLoc++'s ``0.5·triplet(descriptor) + 0.5·triplet(cloud)`` (the fused
384-d descriptor and the LiDAR branch's 128-d one); every other teacher uses ``triplet(descriptor)`` (the default
in ``configs/train_teacher.yaml``). Batch-hard mining, margin 0.2, swap, Euclidean distance on unnormalised
descriptors, average over non-zero triplets (:class:`crossmodal.losses.BatchHardTripletLoss`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from crossmodal.config import to_plain
from crossmodal.losses import BatchHardTripletLoss


@dataclasses.dataclass(frozen=True)
class LossTerm:
    output: str  #: key of the model's output dict
    weight: float = 1.0


class TeacherLoss(nn.Module):
    """``loss_fn(outputs, positives_mask, negatives_mask)`` → ``(loss, stats)``.

    Args:
        terms: ``[{output, weight}]``; one batch-hard triplet loss per term on ``outputs[output]``.
        margin, swap, distance, normalize, reducer: :class:`BatchHardTripletLoss` settings (shared by the terms).
        expansion_term: the term whose non-zero-triplet share drives batch expansion (default: the first).

    ``stats`` (floats): ``loss``, ``num_triplets``, ``num_non_zero_triplets``, ``non_zero_fraction`` of the
    expansion term, and ``<output>/<stat>`` of every term.
    """

    def __init__(self, terms: Sequence[Mapping[str, Any] | LossTerm] = ({"output": "descriptor", "weight": 1.0},),
                 margin: float = 0.2, swap: bool = True, distance: str = "euclidean", normalize: bool = False,
                 reducer: str = "avg_non_zero", expansion_term: str | None = None):
        super().__init__()
        parsed = []
        for t in to_plain(terms):
            parsed.append(t if isinstance(t, LossTerm) else LossTerm(str(t["output"]), float(t.get("weight", 1.0))))
        if not parsed:
            raise ValueError("teacher_loss.terms must hold at least one {output, weight} term")
        outputs = [t.output for t in parsed]
        if len(set(outputs)) != len(outputs):
            raise ValueError(f"teacher_loss.terms name an output twice: {outputs}")
        self.terms = tuple(parsed)
        self.expansion_term = expansion_term or parsed[0].output
        if self.expansion_term not in outputs:
            raise ValueError(f"teacher_loss.expansion_term {self.expansion_term!r} is not one of the terms {outputs}")
        self.triplet = BatchHardTripletLoss(margin=margin, swap=swap, distance=distance, normalize=normalize,
                                            reducer=reducer)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The model outputs the loss reads (what multi-stage backprop must cache)."""
        return tuple(t.output for t in self.terms)

    def forward(self, outputs: Mapping[str, Tensor], positives_mask: Tensor,
                negatives_mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        missing = [t.output for t in self.terms if t.output not in outputs]
        if missing:
            raise KeyError(f"teacher_loss needs model output(s) {missing}; the model returns {sorted(outputs)} "
                           f"(choose teacher_loss=triplet for a single-descriptor teacher)")
        total: Tensor | None = None
        stats: dict[str, float] = {}
        for t in self.terms:
            out = self.triplet(outputs[t.output], positives_mask, negatives_mask)
            total = t.weight * out.loss if total is None else total + t.weight * out.loss
            for k, v in out.floats().items():
                stats[f"{t.output}/{k}"] = v
        for k in ("num_triplets", "num_non_zero_triplets", "non_zero_fraction", "spread", "pos_neg_gap"):
            stats[k] = stats[f"{self.expansion_term}/{k}"]
        assert total is not None
        stats["loss"] = float(total.detach())
        return total, stats

    def extra_repr(self) -> str:
        terms = " + ".join(f"{t.weight:g}·triplet({t.output})" for t in self.terms)
        return f"{terms}, expansion_term={self.expansion_term!r}"

