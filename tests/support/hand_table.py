"""A hand-made threshold table for the tiny bundle, so end-to-end tests know every decision in
advance: which cell a carbon pair falls in, which set each threshold gives, which partition
each mode picks.

Cells: one edge at 300 g/kWh on each carbon feature (nothing else binned), so
cell = 2·[I_d >= 300] + [I_s >= 300]:

    cell 0  both clean    scores NEUTRAL  -> the set grows with the threshold
    cell 1  server dirty  scores LOCAL    -> {P} (run locally)
    cell 2  device dirty  scores OFFLOAD  -> {0, 1, 2} (mode A prices them live)
    cell 3  both dirty    scores NEUTRAL

Calibration scores: half of the calibration contexts had a clean device grid and small scores
(uniform on [0, 0.15]), half a dirty one and large scores (uniform on [0.4, 0.6]). Over all of
them the 90% quantile is about 0.56 (the table's q̂ at α = 0.1: every NEUTRAL partition is in
the set); weighted CP, once its window holds only clean-device contexts, reweights towards the
first half and its threshold drops to about 0.14 (the set {0, 1}).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.conformal import BinnedLogit, split_threshold
from carboncp.runtime.decision.table import TABLE_JSON, Table

from tests.support.edge_server import add_profile_sections

EDGE = 300.0
EDGES = [[], [], [], [], [EDGE], [EDGE], []]
NEUTRAL = [0.0, 0.1, 0.3, 0.45]
LOCAL = [0.9, 0.9, 0.9, 0.0]
OFFLOAD = [0.0, 0.1, 0.1, 0.9]
N_CAL = 1000


def cell_of(device_gco2: float, server_gco2: float) -> int:
    return 2 * (device_gco2 >= EDGE) + (server_gco2 >= EDGE)


def calibration(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(scores, bins): the first half clean-device contexts with small scores, the second half
    dirty-device ones with large scores; the server side alternates clean and dirty."""
    rng = np.random.default_rng(seed)
    half = N_CAL // 2
    scores = np.concatenate([rng.uniform(0.0, 0.15, half), rng.uniform(0.4, 0.6, half)])
    bins = np.zeros((N_CAL, 7), np.uint8)
    bins[half:, 4] = 1
    bins[1::2, 5] = 1
    return scores.astype(np.float32), bins


def hand_table(alpha: float = 0.1) -> Table:
    scores, bins = calibration()
    return Table(
        edges=[list(e) for e in EDGES],
        scores=np.array([NEUTRAL, LOCAL, OFFLOAD, NEUTRAL], dtype=np.float16),
        latency_ms=np.full((1, 4), 10.0, np.float16),  # the SLO guard keeps everything
        latency_offset_ms=[0.0] * 4,
        alpha=alpha,
        qhat=split_threshold(scores, alpha),
        cal_scores=scores,
        cal_bins=bins,
        bandwidth_log_lower=math.log(0.5),
        slo_ms=300.0,
        classifier=BinnedLogit(EDGES).to_dict(),
    )


def add_hand_table(bundle_dir: Path) -> Path:
    """Give a (copied) tiny bundle a profile, the default objective and the hand table."""
    bundle_dir = Path(bundle_dir)
    assert Bundle.load(bundle_dir).last == 3, "the hand table is laid out for partitions 0..3"
    rels = hand_table().save(bundle_dir)
    return add_profile_sections(bundle_dir, rels, {"table": TABLE_JSON})
