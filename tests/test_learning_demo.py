"""The learning demo's recovery figure: AUC pooled over a span, not one 5 s window."""

from __future__ import annotations

import numpy as np
import pytest

from hotserve.learning.demo import Timeline, pooled
from hotserve.learning.trainer import binary_metrics

pytestmark = pytest.mark.timeout(30)


def test_pooled_auc_takes_every_impression_of_the_span_and_nothing_else():
    rng = np.random.default_rng(3)
    tl = Timeline()
    for t in np.linspace(0.0, 30.0, 3000, endpoint=False):
        click = float(rng.random() < 0.3)
        tl.impressions.append((float(t), float(np.clip(0.3 + 0.4 * click - 0.2 + rng.random() * 0.4, 0, 1)),
                               float(rng.random()), click, 1))
    got = pooled(tl, 10.0, 25.0)
    rows = np.asarray([r[:4] for r in tl.impressions if 10.0 <= r[0] < 25.0])
    assert got["n"] == len(rows) == 1500
    assert got["auc_on"] == pytest.approx(binary_metrics(rows[:, 1], rows[:, 3])["auc"])
    assert got["auc_off"] == pytest.approx(binary_metrics(rows[:, 2], rows[:, 3])["auc"])
    assert got["auc_on"] > 0.8 and 0.4 < got["auc_off"] < 0.6  # the informative model against a coin
    assert pooled(tl, 40.0, 50.0) is None  # nothing labelled then: no figure rather than a made-up one
