"""Teacher task loss: a weighted sum of metric-learning losses on named model outputs.

``configs/teacher_loss/fusion.yaml`` is MinkLoc++'s ``0.5·triplet(descriptor) + 0.5·triplet(cloud)`` (the fused
384-d descriptor and the LiDAR branch's 128-d one); every other teacher uses ``triplet(descriptor)`` (the default
in ``configs/train_teacher.yaml``). Batch-hard mining, margin 0.2, swap, Euclidean distance on unnormalised
descriptors, average over non-zero triplets (:class:`crossmodal.losses.BatchHardTripletLoss`), shared by the terms.
A term may name its own ``loss`` instead (``configs/teacher_loss/smoothap.yaml``: MinkLoc3Dv2's
:class:`crossmodal.losses.TruncatedSmoothAP`); it must return a
:class:`~crossmodal.losses.TripletLossOutput` whose stats hold the triplet's keys (``TERM_STATS``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from crossmodal.config import to_plain
from crossmodal.losses import BatchHardTripletLoss

#: Stats every term's loss reports; the expansion term's are copied to the top level (the trainer reads them).
TERM_STATS = ("num_triplets", "num_non_zero_triplets", "non_zero_fraction", "spread", "pos_neg_gap")


@dataclasses.dataclass(frozen=True)
class LossTerm:
    output: str  #: key of the model's output dict
    weight: float = 1.0
    #: ``loss_fn(embeddings, positives_mask, negatives_mask)`` → ``TripletLossOutput``; None: the shared triplet
    loss: Any = None

    @property
    def label(self) -> str:
        """``triplet(<output>)`` or ``<LossClass>(<output>)`` (for ``extra_repr`` and messages)."""
        return f"{'triplet' if self.loss is None else type(self.loss).__name__}({self.output})"


def parse_term(term: Mapping[str, Any] | LossTerm) -> LossTerm:
    """A :class:`LossTerm` from ``{output, weight, loss}`` (a dict or a ``DictConfig``); ``loss`` may be a built
    loss, a mapping with ``_target_`` (built here with ``hydra.utils.instantiate``) or absent / None."""
    if isinstance(term, LossTerm):
        return term
    unknown = sorted(set(term) - {"output", "weight", "loss"})
    if unknown:
        raise ValueError(f"teacher_loss.terms: unknown key(s) {unknown} in {to_plain(term)}; expected output, "
                         f"weight and optionally loss")
    loss = term.get("loss")
    if isinstance(loss, Mapping):  # a dict or a DictConfig
        if "_target_" not in loss:
            raise ValueError(f"teacher_loss.terms: the loss of output {term['output']!r} needs a _target_, got "
                             f"{to_plain(loss)}")
        from hydra.utils import instantiate

        loss = instantiate(loss)
    if loss is not None and not callable(loss):
        raise ValueError(f"teacher_loss.terms: the loss of output {term['output']!r} must be callable "
                         f"(embeddings, positives_mask, negatives_mask), got {loss!r}")
    return LossTerm(str(term["output"]), float(term.get("weight", 1.0)), loss)


class TeacherLoss(nn.Module):
    """``loss_fn(outputs, positives_mask, negatives_mask)`` → ``(loss, stats)``.

    Args:
        terms: ``[{output, weight, loss}]``: ``weight · loss(outputs[output])`` per term; ``loss`` (optional) is
            a built loss or a mapping with ``_target_`` (e.g. ``{_target_: crossmodal.losses.TruncatedSmoothAP}``),
            absent or None: the batch-hard triplet loss shared by the terms.
        margin, swap, distance, normalize, reducer: :class:`BatchHardTripletLoss` settings (the shared triplet).
        expansion_term: the term whose non-zero-triplet share drives batch expansion (default: the first).

    ``stats`` (floats): ``loss``, ``num_triplets``, ``num_non_zero_triplets``, ``non_zero_fraction``, ``spread``,
    ``pos_neg_gap`` of the expansion term, and ``<output>/<stat>`` of every term.
    """

    def __init__(self, terms: Sequence[Mapping[str, Any] | LossTerm] = ({"output": "descriptor", "weight": 1.0},),
                 margin: float = 0.2, swap: bool = True, distance: str = "euclidean", normalize: bool = False,
                 reducer: str = "avg_non_zero", expansion_term: str | None = None):
        super().__init__()
        parsed = [parse_term(t) for t in terms]  # not to_plain: a term may hold a built loss
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
        own = {str(i): t.loss for i, t in enumerate(parsed) if isinstance(t.loss, nn.Module)}
        if own:  # registered (moved by .to(), shown by repr) only when present: the triplet-only repr is unchanged
            self.term_losses = nn.ModuleDict(own)

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
            loss_fn = self.triplet if t.loss is None else t.loss
            out = loss_fn(outputs[t.output], positives_mask, negatives_mask)
            total = t.weight * out.loss if total is None else total + t.weight * out.loss
            for k, v in out.floats().items():
                stats[f"{t.output}/{k}"] = v
        prefix = f"{self.expansion_term}/"
        for k in TERM_STATS:
            if prefix + k not in stats:
                reported = sorted(n.removeprefix(prefix) for n in stats if n.startswith(prefix))
                raise KeyError(f"teacher_loss: the loss of the expansion term {self.expansion_term!r} reports no "
                               f"{k!r} (it reports {reported})")
            stats[k] = stats[prefix + k]
        assert total is not None
        stats["loss"] = float(total.detach())
        return total, stats

    def extra_repr(self) -> str:
        terms = " + ".join(f"{t.weight:g}·{t.label}" for t in self.terms)
        return f"{terms}, expansion_term={self.expansion_term!r}"

