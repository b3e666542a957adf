"""Multi-teacher soft/hard-target distillation with adaptive per-sample teacher weights.

Inspired by ASHT-KD (2025, "adaptive soft/hard-label multi-teacher distillation"), of which only the abstract is
public: several teachers, soft-label and hard-label teaching, teachers weighing examples adaptively. **Every
formula below is our own design**, not ASHT-KD's; the names "soft" and "hard" follow the abstract only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distances import Distance
from .kd import check_masks, check_student_teacher
from .triplet import mine_batch_hard

__all__ = ["MultiTeacherLoss"]

WEIGHTINGS = ("adaptive", "uniform")


class MultiTeacherLoss(nn.Module):
    """``loss(student [B, Ds], {name: [B, D_name]}, positives_mask, negatives_mask)`` → scalar.

    OUR OWN DESIGN (inspired by the ASHT-KD abstract; no formula is from that paper). Teachers may have any
    dimensions, different from each other and from the student: only dimension-free relations are compared.
    All distances are cosine distances ``d(i, j) = 1 − ⟨x̂_i, x̂_j⟩`` on L2-normalised descriptors; ``d_s`` is the
    student's, ``d_t`` teacher ``t``'s.

    * Soft targets, per anchor ``i`` and teacher ``t``: ``P_t(j | i) = softmax_{j≠i}(−d_t(i, j)/τ)`` and the
      student's ``Q(j | i) = softmax_{j≠i}(−d_s(i, j)/τ)`` (diagonal excluded);
      ``soft_{i,t} = KL(P_t(·|i) ‖ Q(·|i))``.
    * Hard targets, per anchor ``i`` with a positive and a negative: ``p_t(i)`` / ``n_t(i)`` = the hardest positive
      / negative *by teacher t's distances* (:func:`crossmodal.losses.mine_batch_hard`), applied to the student:
      ``hard_{i,t} = relu(d_s(i, p_t(i)) − d_s(i, n_t(i)) + margin)``.
    * Weights: teacher ``t``'s confidence on anchor ``i`` is its own margin
      ``c_{i,t} = d_t(i, n_t(i)) − d_t(i, p_t(i))`` (in ``[−2, 2]``) and
      ``w_{i,·} = softmax_t(c_{i,·} / weight_temperature)`` (``weighting="adaptive"``), or ``1/T``
      (``"uniform"``). Anchors without a positive or a negative get uniform weights and no hard term. The
      weights depend on the teachers only (no gradient).
    * ``soft = mean_i Σ_t w_{i,t}·soft_{i,t}`` over all ``B`` anchors;
      ``hard = mean_{i∈A} Σ_t w_{i,t}·hard_{i,t}`` over the anchors ``A`` having a triplet (zero hinges included,
      0 when ``A`` is empty); ``loss = soft_weight·soft + hard_weight·hard``.

    With uniform weights the loss is the mean of the single-teacher losses (``A`` depends on the masks only).
    The masks are required unless they are unused (``hard_weight == 0`` and ``weighting="uniform"``). Keys of the
    teacher mapping not listed in ``teachers`` are ignored.

    Args:
        teachers: names of the teachers (keys of the teacher mapping), at least one, unique.
        soft_weight, hard_weight: weights of the soft and hard terms.
        temperature: ``τ`` of the neighbour distributions (cosine distances lie in ``[0, 2]``).
        weighting: ``"adaptive"`` or ``"uniform"``.
        weight_temperature: temperature of the softmax over teachers' confidences.
        margin: margin of the hard-target triplets (on cosine distances).

    Components: ``soft``, ``hard``, ``num_triplets`` and ``weight/<name>`` (teacher ``name``'s weight averaged
    over all ``B`` anchors). ``self.sample_weights`` holds the last ``[B, T]`` weights (detached, rows sum to 1,
    columns in the order of ``teachers``).
    """

    def __init__(self, teachers: Sequence[str], soft_weight: float = 1.0, hard_weight: float = 1.0,
                 temperature: float = 0.1, weighting: str = "adaptive", weight_temperature: float = 1.0,
                 margin: float = 0.2):
        super().__init__()
        if isinstance(teachers, str):
            raise TypeError(f"teachers must be a list of names, got the string {teachers!r}")
        names = [str(t) for t in teachers]
        if not names:
            raise ValueError("MultiTeacherLoss needs at least one teacher name")
        if len(set(names)) != len(names):
            raise ValueError(f"MultiTeacherLoss: teacher names must be unique, got {names}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        for name, value in (("temperature", temperature), ("weight_temperature", weight_temperature)):
            if not float(value) > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.teachers = tuple(names)
        self.soft_weight, self.hard_weight = float(soft_weight), float(hard_weight)
        self.temperature, self.weight_temperature = float(temperature), float(weight_temperature)
        self.weighting, self.margin = weighting, float(margin)
        self.distance = Distance("cosine")
        self.components: dict[str, Tensor] = {}
        self.sample_weights: Tensor | None = None

    @property
    def needs_masks(self) -> bool:
        return self.hard_weight != 0 or self.weighting == "adaptive"

    def forward(self, student: Tensor, teacher: Mapping[str, Tensor], positives_mask: Tensor | None = None,
                negatives_mask: Tensor | None = None) -> Tensor:
        if not isinstance(teacher, Mapping):
            raise TypeError(f"MultiTeacherLoss needs teacher as a mapping name -> [B, D] with keys "
                             f"{list(self.teachers)}, got {type(teacher).__name__}")
        missing = [n for n in self.teachers if n not in teacher]
        if missing:
            raise ValueError(f"MultiTeacherLoss: teacher(s) {missing} missing from the teacher mapping "
                             f"(keys: {sorted(teacher)})")
        ts = [check_student_teacher(f"MultiTeacherLoss (teacher {n!r})", student, teacher[n])[1]
              for n in self.teachers]
        s = student
        b, n_t = s.shape[0], len(ts)
        if b < 2:
            raise ValueError(f"MultiTeacherLoss compares each item with the rest of the batch and needs B >= 2, "
                             f"got B={b}")
        pos, neg = check_masks("MultiTeacherLoss", b, positives_mask, negatives_mask, s.device,
                               required=self.needs_masks)
        eye = torch.eye(b, dtype=torch.bool, device=s.device)
        others = torch.arange(b, device=s.device).expand(b, b)[~eye].view(b, b - 1)  # off-diagonal columns

        d_s = self.distance.pairwise(s)
        log_q = F.log_softmax(-d_s.gather(1, others) / self.temperature, dim=1)
        if pos is not None:
            keep = pos.any(dim=1) & neg.any(dim=1)
            anchors = torch.nonzero(keep).squeeze(1)
        else:
            anchors = torch.zeros(0, dtype=torch.long, device=s.device)
        soft = s.new_zeros(b, n_t)
        hard = s.new_zeros(anchors.numel(), n_t)
        conf = s.new_zeros(anchors.numel(), n_t)
        for k, t in enumerate(ts):
            with torch.no_grad():
                d_t = self.distance.pairwise(t)
                log_p = F.log_softmax(-d_t.gather(1, others) / self.temperature, dim=1)
            soft[:, k] = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)
            if anchors.numel():
                a, p, n = mine_batch_hard(d_t, pos, neg)
                hard[:, k] = torch.relu(d_s[a, p] - d_s[a, n] + self.margin)
                conf[:, k] = d_t[a, n] - d_t[a, p]

        weights = s.new_full((b, n_t), 1.0 / n_t)
        if self.weighting == "adaptive" and anchors.numel():
            weights[anchors] = torch.softmax(conf / self.weight_temperature, dim=1)
        soft_loss = (weights * soft).sum(dim=1).mean()
        if anchors.numel():
            hard_loss = (weights[anchors] * hard).sum(dim=1).mean()
        else:
            hard_loss = d_s.sum() * 0.0
        loss = self.soft_weight * soft_loss + self.hard_weight * hard_loss

        with torch.no_grad():
            comps = {"soft": soft_loss.detach(), "hard": hard_loss.detach(),
                     "num_triplets": torch.tensor(float(anchors.numel()), dtype=s.dtype, device=s.device)}
            for k, name in enumerate(self.teachers):
                comps[f"weight/{name}"] = weights[:, k].mean()
            self.components = comps
            self.sample_weights = weights.detach()
        return loss

    def extra_repr(self) -> str:
        return (f"teachers={list(self.teachers)}, soft_weight={self.soft_weight}, hard_weight={self.hard_weight}, "
                f"temperature={self.temperature}, weighting={self.weighting!r}, "
                f"weight_temperature={self.weight_temperature}, margin={self.margin}")
