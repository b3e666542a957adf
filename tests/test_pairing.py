"""Pairing LiDAR submaps with camera frames (MinkLoc++'s ``generate_rgb_for_lidar.py`` rule)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from preprocessing.pairing import PairingConfig, k_closest, pair_submaps

# --- MinkLoc++ generate_rgb_for_lidar.py, transcribed line by line ------------------------------------------

def find_cross_over(arr, low, high, x):
    if arr[high] <= x:  # x is greater than all
        return high

    if arr[low] > x:  # x is smaller than all
        return low

    # Find the middle point
    mid = (low + high) // 2  # low + (high - low)// 2

    # If x is same as middle element, then return mid
    if arr[mid] <= x and arr[mid + 1] > x:
        return mid

    # If x is greater than arr[mid], then either arr[mid + 1] is ceiling of x or ceiling lies in arr[mid+1...high]
    if arr[mid] < x:
        return find_cross_over(arr, mid + 1, high, x)

    return find_cross_over(arr, low, mid - 1, x)


def find_k_closest(arr, x, k):
    # This function returns indexes of k closest elements to x in arr[]
    n = len(arr)
    # Find the crossover point
    l = find_cross_over(arr, 0, n - 1, x)
    r = l + 1  # Right index to search
    ndx_l = []

    # If x is present in arr[], then reduce left index. Assumption: all elements in arr[] are distinct
    if arr[l] == x:
        l -= 1

    # Compare elements on left and right of crossover point to find the k closest elements
    while l >= 0 and r < n and len(ndx_l) < k:
        if x - arr[l] < arr[r] - x:
            ndx_l.append(l)
            l -= 1
        else:
            ndx_l.append(r)
            r += 1

    # If there are no more elements on right side, then print left elements
    while len(ndx_l) < k and l >= 0:
        ndx_l.append(l)
        l -= 1

    # If there are no more elements on left side, then print right elements
    while len(ndx_l) < k and r < n:
        ndx_l.append(r)
        r += 1

    return ndx_l

# ------------------------------------------------------------------------------------------------------------


def test_k_closest_matches_minkloc_on_random_cases():
    rng = np.random.default_rng(0)
    checked_equal = checked_tie = 0
    for _ in range(4000):
        n = int(rng.integers(1, 12))
        span = int(rng.integers(n, 3 * n + 3))  # small range: many ties and exact hits
        arr = np.sort(rng.choice(span, size=n, replace=False)).astype(np.int64)
        x = int(rng.integers(-2, span + 2))
        k = int(rng.integers(1, n + 3))
        expected = find_k_closest(arr.tolist(), x, k)
        got = k_closest(arr, x, k, skip_equal=True)
        assert got == expected, (arr.tolist(), x, k)
        checked_equal += x in arr.tolist()
        checked_tie += any(abs(x - a) == abs(x - b) and a != b for a in arr.tolist() for b in arr.tolist())
    assert checked_equal > 500 and checked_tie > 500  # the random cases do exercise both quirks


def test_k_closest_large_timestamps():
    rng = np.random.default_rng(1)
    arr = np.unique(1_400_000_000_000_000 + rng.integers(0, 10**9, 3000)).astype(np.int64)
    for x in list(arr[rng.integers(0, len(arr), 50)]) + list(rng.integers(arr[0] - 10**6, arr[-1] + 10**6, 50)):
        assert k_closest(arr, int(x), 20, skip_equal=True) == find_k_closest(arr.tolist(), int(x), 20)


def test_k_closest_hand_cases():
    arr = np.array([10, 20, 30, 40], np.int64)
    assert k_closest(arr, 25, 4, skip_equal=True) == [2, 1, 3, 0]  # tie 20/30 -> later (30) first
    assert k_closest(arr, 20, 3, skip_equal=True) == [2, 0, 3]  # equal skipped; tie 10/30 -> 30
    assert k_closest(arr, 20, 3, skip_equal=False) == [1, 2, 0]  # equal comes first
    assert k_closest(arr, 5, 2, skip_equal=True) == [0, 1]
    assert k_closest(arr, 45, 10, skip_equal=True) == [3, 2, 1, 0]
    assert k_closest(arr, 40, 10, skip_equal=True) == [2, 1, 0]
    assert k_closest(np.zeros(0, np.int64), 5, 3, skip_equal=True) == []
    assert k_closest(arr, 25, 0, skip_equal=True) == []


def test_k_closest_without_skip_equal_vs_brute_force():
    rng = np.random.default_rng(2)
    for _ in range(2000):
        n = int(rng.integers(1, 10))
        arr = np.sort(rng.choice(3 * n + 3, size=n, replace=False)).astype(np.int64)
        x = int(rng.integers(-2, 3 * n + 5))
        k = int(rng.integers(1, n + 2))
        got = k_closest(arr, x, k, skip_equal=False)
        ref = sorted(range(n), key=lambda i: (abs(int(arr[i]) - x), -int(arr[i])))[:k]
        assert got == ref
        if x in arr.tolist():
            assert arr[got[0]] == x
            # the rest equals the MinkLoc++ order (which skips the equal frame)
            assert got[1:] == find_k_closest(arr.tolist(), x, k)[: len(got) - 1]


# ------------------------------------------------------------------------------------------------------------
# pair_submaps

def _brute_pair(frames, ts, k):
    return sorted(frames, key=lambda t: (abs(t - ts), -t))[:k]


def test_pair_submaps_default_same_run_with_threshold():
    frames = {
        "A": np.array([1_000_000, 1_500_000, 2_000_000, 2_900_000, 10_000_000], np.int64),
        "B": np.array([1_999_999, 2_000_001], np.int64),
        "C": np.zeros(0, np.int64),
    }
    cfg = PairingConfig(k=3, threshold_s=1.0)
    subs = [("A", 2_000_000), ("A", 6_000_000), ("A", 1_900_000), ("C", 5), ("D", 7)]
    res = pair_submaps(subs, frames, cfg)
    assert [(r.run, r.lidar_ts) for r in res] == subs
    # exact frame allowed and first; frames from run B (closer!) are not candidates
    assert res[0].image_ts == [2_000_000, 1_500_000, 2_900_000]
    assert res[0].image_runs == ["A"] * 3
    assert res[0].nearest_dt_s == 0.0
    # nothing within 1 s: unpaired, nearest distance still reported
    assert res[1].image_ts == [] and res[1].image_runs == []
    assert res[1].nearest_dt_s == pytest.approx(3.1)
    # the k nearest (0.1 s, 0.4 s, 0.9 s; the frame 1.0 s away is the 4th), all within the threshold
    assert res[2].image_ts == [2_000_000, 1_500_000, 1_000_000]
    assert res[2].nearest_dt_s == pytest.approx(0.1)
    # a run without frames, and a run missing from the dict
    assert res[3].image_ts == [] and math.isinf(res[3].nearest_dt_s)
    assert res[4].image_ts == [] and math.isinf(res[4].nearest_dt_s)


def test_pair_submaps_threshold_boundary():
    frames = {"A": np.array([0, 3_000_000], np.int64)}
    res = pair_submaps([("A", 1_000_000), ("A", 1_000_001)], frames, PairingConfig(k=5, threshold_s=1.0))
    assert res[0].image_ts == [0]  # exactly 1.0 s: kept
    assert res[1].image_ts == []  # 1.000001 s: dropped
    assert res[1].nearest_dt_s == pytest.approx(1.000001)


def test_pair_submaps_default_vs_brute_force():
    rng = np.random.default_rng(3)
    frames = {f"run{r}": np.unique(rng.integers(0, 60_000_000, 200)).astype(np.int64)[rng.permutation(150)]
              for r in range(3)}  # unsorted input
    subs = [(f"run{int(rng.integers(0, 3))}", int(rng.integers(-5_000_000, 65_000_000))) for _ in range(200)]
    cfg = PairingConfig(k=4, threshold_s=0.3)
    for (run, ts), res in zip(subs, pair_submaps(subs, frames, cfg)):
        cand = _brute_pair(frames[run].tolist(), ts, 4)
        assert res.nearest_dt_s == pytest.approx(abs(cand[0] - ts) / 1e6)
        assert res.image_ts == [t for t in cand if abs(t - ts) <= 300_000]
        assert res.image_runs == [run] * len(res.image_ts)


def test_pair_submaps_compat_pools_runs():
    frames = {
        "A": np.array([1_000_000, 5_000_000], np.int64),
        "B": np.array([2_000_000, 2_000_003], np.int64),
        "C": np.array([100_000_000], np.int64),
    }
    cfg = PairingConfig(k=4, threshold_s=1.0, compat=True)
    res = pair_submaps([("A", 2_000_000), ("C", 100_000_000)], frames, cfg)
    # exact 2_000_000 (run B) skipped; frames of other runs used; k frames however far
    assert res[0].image_ts == [2_000_003, 1_000_000, 5_000_000, 100_000_000]
    assert res[0].image_runs == ["B", "A", "A", "C"]
    assert res[0].nearest_dt_s == pytest.approx(3e-6)
    assert res[1].image_ts == [5_000_000, 2_000_003, 2_000_000, 1_000_000]
    assert res[1].image_runs == ["A", "B", "B", "A"]
    assert res[1].nearest_dt_s == pytest.approx(95.0)


def test_pair_submaps_compat_vs_minkloc():
    rng = np.random.default_rng(4)
    all_ts = rng.choice(np.arange(0, 10**7, 7), size=600, replace=False).astype(np.int64)
    frames = {"r0": all_ts[:200], "r1": all_ts[200:450], "r2": all_ts[450:]}
    owner = {int(t): r for r, v in frames.items() for t in v.tolist()}
    pooled = sorted(owner)
    subs = [("r0", int(t)) for t in rng.integers(-10**5, 10**7 + 10**5, 150)] + [("r1", int(t)) for t in all_ts[:50]]
    cfg = PairingConfig(k=20, compat=True)
    for (run, ts), res in zip(subs, pair_submaps(subs, frames, cfg)):
        expected = [pooled[i] for i in find_k_closest(pooled, ts, 20)]
        assert res.image_ts == expected
        assert ts not in res.image_ts
        assert len(res.image_ts) == 20
        assert res.image_runs == [owner[t] for t in expected]


def test_pairing_config_image_key():
    cfg = PairingConfig(mode="sdk", downsample=2, undistort=True, k=7)
    assert cfg.image_key() == {"mode": "sdk", "downsample": 2, "undistort": True}
    assert PairingConfig().k == 20 and PairingConfig().threshold_s == 1.0 and not PairingConfig().compat
