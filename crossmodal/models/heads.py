"""Global aggregation heads: a backbone feature map ``[B, C, H, W]`` → a descriptor ``[B, D]``.

Every head takes ``in_channels`` (the backbone's ``C``) first, exposes ``descriptor_dim`` (``D``) and has its
output size configurable. Attribute names follow upstream where that keeps upstream checkpoints loadable.

- :class:`GeMHead` — 1×1 conv ``C → out_dim`` then GeM (:class:`crossmodal.models.pooling.GeM`), no final
  normalisation. MinkLoc++'s image branch (jac99/MinkLocMultimodal, ``models/minkloc_multimodal.py``
  ``ResnetFPN`` without top-down pass, ``models/model_factory.py``: ResNet18 to layer3, 1×1 conv 256→128, GeM,
  128-d there); our default ``out_dim=256`` is that of :class:`crossmodal.models.image.ResNetGeM`. Keys:
  ``conv.weight``, ``conv.bias``, ``pool.p``.
- :class:`NetVLAD` — Arandjelović et al. (CVPR 2016), Nanne/pytorch-NetVlad ``netvlad.py`` (itself from
  lyakaap/NetVLAD-pytorch ``netvlad.py``, whose constructor with ``alpha=100`` and a biased 1×1 conv we follow).
  Published: 64 clusters on VGG16 conv5 (512 ch) → 32768-d. Differences: (1) the conv bias is
  ``−α‖c_k‖²`` (the paper's formula, so that softmax(conv(x)) is exactly softmax(−α‖x − c_k‖²)); both upstream
  repositories write ``−α‖c_k‖`` (unsquared); (2) :meth:`NetVLAD.init_from_features` runs our own seeded
  k-means in torch (upstream: faiss, 100 iterations) and takes α = ln 100 / mean(d₂ − d₁), d₁ ≤ d₂ the squared
  distances of each descriptor to its two nearest centroids, so that the log-ratio of its two largest
  assignment weights is ln 100 on average — upstream's default (v1) rule, there on dot products with unit
  centroids; upstream's ``vladv2`` branch, whose weights/bias we use, instead squares the *indices* returned
  by sklearn's ``kneighbors`` (descriptors nearest to each centroid), a bug; (3) optional ``out_dim``: a linear
  reduction then L2 again — our option; OPR-Project/OpenPlaceRecognition ``src/opr/modules/netvlad.py`` has
  a ``Linear(K·C → C)`` reduction without re-normalisation, sijieaaa/DistilVPR
  ``network/image_pool_fns.py`` (``ImageNetVLAD``) has none.
- :class:`ConvAP` — amaralibey/gsv-cities ``models/aggregators/convap.py``: 1×1 conv, adaptive average pool to
  ``s1×s2``, flatten, L2. Published: code default 512×2×2 = 2048-d; README's released ResNet50 models 8192
  (2048×2×2), 4096 (1024×2×2), 2048 (512×2×2). Upstream's attribute ``AAP`` is named ``pool`` here (no
  parameters, so checkpoints still load).
- :class:`CosPlace` — gmberton/CosPlace ``cosplace_model/cosplace_network.py`` and ``layers.py`` (also
  gsv-cities ``models/aggregators/cosplace.py``): L2 over channels, GeM (p=3, learned), flatten, linear, L2.
  Published: ``fc_output_dim`` default 512 (``parser.py``). Upstream keys ``aggregation.{1,3}`` (CosPlace) and
  ``gem.p`` (gsv-cities) are ``pool.p`` and ``fc`` here.
- :class:`MixVPR` — amaralibey/MixVPR ``models/aggregators/mixvpr.py``. Published (README, 4096-d ResNet50):
  ``in_channels=1024, in_h=in_w=20`` (320×320 images, ResNet50 to layer3), ``out_channels=1024,
  mix_depth=4, mlp_ratio=1, out_rows=4``; the code's defaults are ``out_channels=512, mix_depth=1``. Ours:
  ``out_channels=512, mix_depth=4`` (→ 2048-d), and a clear error on a wrong feature-map size (upstream fails
  with LayerNorm's shape error).
- :class:`BoQ` — amaralibey/Bag-of-Queries ``src/boq.py`` (``hubconf.py``, ``train.py``), the ResNet variant
  (3×3 conv projection). Published: ResNet50 ``proj_channels=512, num_queries=64, num_layers=2,
  row_dim=32`` → 16384-d (``hubconf.py``); the class defaults (ours) are ``num_queries=32``. Differences:
  ``forward`` returns only the descriptor (upstream also returns the cross-attention maps, see
  :meth:`BoQ.aggregate` for the token part) and ``num_heads`` may be set (upstream: ``proj_channels // 64``,
  our default too).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .pooling import GeM

__all__ = ["HEADS", "BoQ", "ConvAP", "CosPlace", "GeMHead", "MixVPR", "NetVLAD", "build_head", "kmeans"]


def _check_map(x: Tensor, channels: int, head: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{head} expects a [B, {channels}, H, W] feature map, got {tuple(x.shape)}")


def _channels_for(out_dim: int | None, channels: int, rows: int, head: str, names: str) -> int:
    """The channel count giving an ``out_dim``-d descriptor of ``rows`` rows (``channels`` when ``out_dim`` is
    None): these heads' size is channels × rows, and ``out_dim`` sets it from the branch's descriptor size."""
    if out_dim is None:
        return int(channels)
    if int(out_dim) % rows or int(out_dim) < rows:
        raise ValueError(f"{head}: out_dim={out_dim} must be a multiple of {names}={rows} (the descriptor is "
                         f"channels x {names}); change out_dim or {names}")
    return int(out_dim) // rows


class GeMHead(nn.Module):
    """1×1 conv ``in_channels → out_dim`` then GeM pooling → ``[B, out_dim]`` (not normalised)."""

    def __init__(self, in_channels: int, out_dim: int = 256, p: float = 3.0, learn_p: bool = True):
        super().__init__()
        self.in_channels, self.descriptor_dim = int(in_channels), int(out_dim)
        self.conv = nn.Conv2d(in_channels, out_dim, kernel_size=1)
        self.pool = GeM(p, learn_p=learn_p)

    def forward(self, x: Tensor) -> Tensor:
        _check_map(x, self.in_channels, "GeMHead")
        return self.pool(self.conv(x))


def _squared_distances(points: Tensor, centroids: Tensor) -> Tensor:
    """``[N, K]`` squared Euclidean distances (clamped at 0 against rounding)."""
    d = points.pow(2).sum(1, keepdim=True) - 2.0 * points @ centroids.T + centroids.pow(2).sum(1)
    return d.clamp_min(0.0)


def kmeans(points: Tensor, k: int, iters: int = 100, seed: int = 0) -> Tensor:
    """Lloyd's k-means with k-means++ seeding on ``points [N, C]`` → centroids ``[k, C]``.

    Deterministic for a given ``seed`` (a private ``torch.Generator``; the global RNG is untouched). An empty
    cluster is moved to the point farthest from its centroid. Stops early once the assignment is stable.
    """
    n = points.shape[0]
    if points.dim() != 2 or not 0 < k <= n:
        raise ValueError(f"kmeans needs [N, C] points with N >= k >= 1, got {tuple(points.shape)} and k={k}")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    pts = points.detach().cpu()
    chosen = [int(torch.randint(n, (1,), generator=gen))]
    nearest = _squared_distances(pts, pts[chosen]).squeeze(1)
    for _ in range(1, k):
        weights = nearest if float(nearest.sum()) > 0 else torch.ones(n, dtype=pts.dtype)
        chosen.append(int(torch.multinomial(weights, 1, generator=gen)))
        nearest = torch.minimum(nearest, _squared_distances(pts, pts[chosen[-1:]]).squeeze(1))
    centroids, assign = pts[chosen].clone(), None
    for _ in range(iters):
        dist = _squared_distances(pts, centroids)
        new_assign = dist.argmin(1)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, pts)
        centroids = sums / counts.clamp_min(1).unsqueeze(1).to(pts.dtype)
        own = dist.gather(1, assign[:, None]).squeeze(1)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            far = int(own.argmax())
            centroids[empty], own[far] = pts[far], -1.0
    return centroids.to(points.device)


class NetVLAD(nn.Module):
    """NetVLAD → ``[B, clusters·C]`` (or ``[B, out_dim]``), L2-normalised.

    Soft assignment ``a_k(x) = softmax_k(w_k·x + b_k)`` (1×1 conv with bias) of the (optionally L2-normalised)
    local descriptors; ``V_k = Σ_x a_k(x)(x − c_k)``; each ``V_k`` L2-normalised (intra-normalisation), then
    the flattened ``[K·C]`` vector. At construction the centroids are uniform in [0, 1) and the conv is tied
    to them (``w_k = 2α c_k``, ``b_k = −α‖c_k‖²``); :meth:`init_from_features` sets both from k-means.

    Args:
        in_channels: ``C``.
        clusters: ``K``.
        out_dim: optional size of a linear reduction (followed by L2) after the VLAD vector.
        alpha: assignment sharpness used for the construction-time tie (replaced by :meth:`init_from_features`).
        normalize_input: L2-normalise each local descriptor along the channels first.
    """

    def __init__(self, in_channels: int, clusters: int = 64, out_dim: int | None = None, alpha: float = 100.0,
                 normalize_input: bool = True):
        super().__init__()
        self.in_channels, self.clusters = int(in_channels), int(clusters)
        self.alpha, self.normalize_input = float(alpha), bool(normalize_input)
        self.conv = nn.Conv2d(in_channels, clusters, kernel_size=1, bias=True)
        self.centroids = nn.Parameter(torch.rand(clusters, in_channels))
        self._tie_assignment()
        self.proj = nn.Linear(clusters * in_channels, out_dim) if out_dim is not None else None
        self.descriptor_dim = int(out_dim) if out_dim is not None else self.clusters * self.in_channels

    @torch.no_grad()
    def _tie_assignment(self) -> None:
        c = self.centroids
        self.conv.weight.copy_((2.0 * self.alpha * c)[:, :, None, None])
        self.conv.bias.copy_(-self.alpha * c.pow(2).sum(1))

    def vlad_matrix(self, x: Tensor) -> Tensor:
        """Intra-normalised residual sums ``[B, K, C]`` (before flattening and the final L2)."""
        _check_map(x, self.in_channels, "NetVLAD")
        if self.normalize_input:
            x = F.normalize(x, dim=1)
        assign = F.softmax(self.conv(x).flatten(2), dim=1)  # [B, K, N]
        feats = x.flatten(2)  # [B, C, N]
        vlad = assign @ feats.transpose(1, 2) - assign.sum(2, keepdim=True) * self.centroids
        return F.normalize(vlad, dim=2)

    def forward(self, x: Tensor) -> Tensor:
        out = F.normalize(self.vlad_matrix(x).flatten(1), dim=1)
        return out if self.proj is None else F.normalize(self.proj(out), dim=1)

    @torch.no_grad()
    def init_from_features(self, features: Tensor, seed: int = 0, iters: int = 100) -> NetVLAD:
        """Set centroids, α and the assignment conv from local descriptors ``features [N, C]``.

        The descriptors are L2-normalised (when ``normalize_input``, as in :meth:`forward`), clustered by
        :func:`kmeans` (``seed``), α = ln 100 / mean(d₂ − d₁) with d₁ ≤ d₂ each descriptor's squared distances
        to its two nearest centroids, and ``w_k = 2α c_k``, ``b_k = −α‖c_k‖²``. Returns ``self``.
        """
        if features.dim() != 2 or features.shape[1] != self.in_channels:
            raise ValueError(f"init_from_features expects [N, {self.in_channels}] descriptors, "
                             f"got {tuple(features.shape)}")
        if features.shape[0] < self.clusters:
            raise ValueError(f"init_from_features needs at least {self.clusters} descriptors "
                             f"for {self.clusters} clusters, got {features.shape[0]}")
        feats = features.detach().to(torch.float64)
        if self.normalize_input:
            feats = F.normalize(feats, dim=1)
        centroids = kmeans(feats, self.clusters, iters=iters, seed=seed)
        if self.clusters > 1:  # with one cluster the assignment is 1 whatever alpha
            two = _squared_distances(feats, centroids).topk(2, dim=1, largest=False).values
            gap = float((two[:, 1] - two[:, 0]).mean())
            if gap <= 0.0:
                raise ValueError("init_from_features: every descriptor is equidistant from its two nearest "
                                 "centroids, alpha is undefined")
            self.alpha = math.log(100.0) / gap
        self.centroids.copy_(centroids.to(self.centroids))
        self._tie_assignment()
        return self

    def extra_repr(self) -> str:
        return f"clusters={self.clusters}, alpha={self.alpha:.4g}, normalize_input={self.normalize_input}"


def _adaptive_avg_bins(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Adaptive average pooling written as explicit bins (rows ``[floor(i·H/s), ceil((i+1)·H/s))``, the same
    cells as ``adaptive_avg_pool2d``): the ONNX exporter cannot export the operator when the feature map's size is
    only known at run time (EfficientNet's "same" padding); at export the size is that of the example input."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    s1, s2 = size

    def bins(n: int, s: int) -> list[tuple[int, int]]:
        return [(i * n // s, -(-(i + 1) * n // s)) for i in range(s)]

    rows = [torch.stack([x[..., r0:r1, c0:c1].mean(dim=(-2, -1)) for c0, c1 in bins(w, s2)], dim=-1)
            for r0, r1 in bins(h, s1)]
    return torch.stack(rows, dim=-2)


class ConvAP(nn.Module):
    """1×1 conv ``in_channels → out_channels``, adaptive average pool to ``s1×s2``, flatten, L2
    → ``[B, out_channels·s1·s2]``. ``out_dim`` (optional) sets ``out_channels = out_dim / (s1·s2)``."""

    def __init__(self, in_channels: int, out_channels: int = 512, s1: int = 2, s2: int = 2,
                 out_dim: int | None = None):
        super().__init__()
        out_channels = _channels_for(out_dim, out_channels, int(s1) * int(s2), "ConvAP", "s1*s2")
        self.in_channels = int(in_channels)
        self.channel_pool = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True)
        self.pool = nn.AdaptiveAvgPool2d((s1, s2))
        self.descriptor_dim = int(out_channels) * int(s1) * int(s2)

    def forward(self, x: Tensor) -> Tensor:
        _check_map(x, self.in_channels, "ConvAP")
        x = self.channel_pool(x)
        pooled = _adaptive_avg_bins(x, self.pool.output_size) if torch.onnx.is_in_onnx_export() else self.pool(x)
        return F.normalize(pooled.flatten(1), dim=1)


class CosPlace(nn.Module):
    """L2 over channels, GeM (p=3, learned), linear ``in_channels → out_dim``, L2 → ``[B, out_dim]``."""

    def __init__(self, in_channels: int, out_dim: int = 512):
        super().__init__()
        self.in_channels, self.descriptor_dim = int(in_channels), int(out_dim)
        self.pool = GeM(3.0)
        self.fc = nn.Linear(in_channels, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        _check_map(x, self.in_channels, "CosPlace")
        return F.normalize(self.fc(self.pool(F.normalize(x, dim=1))), dim=1)


class _FeatureMixer(nn.Module):
    """One MixVPR block on ``[B, C, H·W]``: ``x + W₂ relu(W₁ LayerNorm(x))`` along the flattened spatial dim."""

    def __init__(self, dim: int, mlp_ratio: float = 1):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.mix = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        for layer in (self.mix[1], self.mix[3]):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mix(x)


class MixVPR(nn.Module):
    """Feature-Mixer blocks over the flattened ``in_h·in_w`` positions, then a channel projection
    ``in_channels → out_channels`` and a row projection ``in_h·in_w → out_rows``, flatten, L2
    → ``[B, out_channels·out_rows]``. The feature-map size is fixed at construction. ``out_dim`` (optional) sets
    ``out_channels = out_dim / out_rows``."""

    def __init__(self, in_channels: int, in_h: int, in_w: int, out_channels: int = 512, mix_depth: int = 4,
                 mlp_ratio: float = 1, out_rows: int = 4, out_dim: int | None = None):
        super().__init__()
        out_channels = _channels_for(out_dim, out_channels, int(out_rows), "MixVPR", "out_rows")
        self.in_channels, self.in_h, self.in_w = int(in_channels), int(in_h), int(in_w)
        hw = self.in_h * self.in_w
        self.mix = nn.Sequential(*[_FeatureMixer(hw, mlp_ratio) for _ in range(mix_depth)])
        self.channel_proj = nn.Linear(in_channels, out_channels)
        self.row_proj = nn.Linear(hw, out_rows)
        self.descriptor_dim = int(out_channels) * int(out_rows)

    def forward(self, x: Tensor) -> Tensor:
        _check_map(x, self.in_channels, "MixVPR")
        h, w = x.shape[-2:]
        if (h, w) != (self.in_h, self.in_w):
            raise ValueError(
                f"MixVPR was built for {self.in_h}x{self.in_w} feature maps (in_h={self.in_h}, in_w={self.in_w}), "
                f"got {h}x{w}: feed {16 * self.in_h}x{16 * self.in_w} images to a stride-16 backbone (ResNet "
                f"up to layer3) or {32 * self.in_h}x{32 * self.in_w} to a stride-32 one, or build the head "
                f"with in_h={h}, in_w={w}")
        x = self.mix(x.flatten(2))  # [B, C, HW]
        x = self.channel_proj(x.transpose(1, 2)).transpose(1, 2)  # [B, out_channels, HW]
        return F.normalize(self.row_proj(x).flatten(1), dim=1)


class _BoQBlock(nn.Module):
    """Transformer encoder layer on the tokens; learned queries (self-attention, residual, LayerNorm)
    cross-attend to the encoded tokens (LayerNorm, no residual)."""

    def __init__(self, dim: int, num_queries: int, num_heads: int):
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=4 * dim, dropout=0.0,
                                                  batch_first=True)
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim))
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_q = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.encoder(tokens)
        q = self.queries.expand(tokens.shape[0], -1, -1)
        q = self.norm_q(q + self.self_attn(q, q, q, need_weights=False)[0])
        out = self.cross_attn(q, tokens, tokens, need_weights=False)[0]
        return tokens, self.norm_out(out)


class BoQ(nn.Module):
    """Bag-of-Queries (ResNet variant) → ``[B, proj_channels·row_dim]``, L2-normalised.

    3×3 conv ``in_channels → proj_channels`` (padding 1), tokens ``[B, H·W, proj_channels]`` with LayerNorm,
    ``num_layers`` :class:`_BoQBlock` in sequence (each refines the tokens and yields ``num_queries`` outputs),
    the ``num_layers·num_queries`` outputs concatenated and linearly mapped to ``row_dim`` per channel, flatten,
    L2. ``num_heads`` defaults to ``proj_channels // 64`` as upstream. ``out_dim`` (optional) sets
    ``proj_channels = out_dim / row_dim``.
    """

    def __init__(self, in_channels: int, proj_channels: int = 512, num_queries: int = 32, num_layers: int = 2,
                 row_dim: int = 32, num_heads: int | None = None, out_dim: int | None = None):
        super().__init__()
        proj_channels = _channels_for(out_dim, proj_channels, int(row_dim), "BoQ", "row_dim")
        heads = proj_channels // 64 if num_heads is None else int(num_heads)
        if heads < 1 or proj_channels % heads:
            raise ValueError(f"BoQ: num_heads={heads} must be >= 1 and divide proj_channels={proj_channels} "
                             "(the default proj_channels // 64 needs proj_channels >= 64)")
        self.in_channels = int(in_channels)
        self.proj_c = nn.Conv2d(in_channels, proj_channels, kernel_size=3, padding=1)
        self.norm_input = nn.LayerNorm(proj_channels)
        self.boqs = nn.ModuleList([_BoQBlock(proj_channels, num_queries, heads) for _ in range(num_layers)])
        self.fc = nn.Linear(num_layers * num_queries, row_dim)
        self.descriptor_dim = int(proj_channels) * int(row_dim)

    def aggregate(self, tokens: Tensor) -> Tensor:
        """The attention part: normalised tokens ``[B, N, proj_channels]`` → descriptor ``[B, D]``."""
        outs = []
        for block in self.boqs:
            tokens, out = block(tokens)
            outs.append(out)
        rows = self.fc(torch.cat(outs, dim=1).transpose(1, 2))  # [B, proj_channels, row_dim]
        return F.normalize(rows.flatten(1), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        _check_map(x, self.in_channels, "BoQ")
        return self.aggregate(self.norm_input(self.proj_c(x).flatten(2).transpose(1, 2)))


HEADS: dict[str, type[nn.Module]] = {
    "gem": GeMHead, "netvlad": NetVLAD, "convap": ConvAP, "cosplace": CosPlace, "mixvpr": MixVPR, "boq": BoQ,
}


def build_head(name_or_factory: str | Callable[..., nn.Module], in_channels: int, **kwargs) -> nn.Module:
    """A head from its :data:`HEADS` name (case-insensitive) or any factory called as ``f(in_channels, **kwargs)``."""
    if isinstance(name_or_factory, str):
        key = name_or_factory.lower()
        if key not in HEADS:
            raise ValueError(f"unknown head {name_or_factory!r}; known: {sorted(HEADS)}")
        name_or_factory = HEADS[key]
    return name_or_factory(in_channels, **kwargs)
