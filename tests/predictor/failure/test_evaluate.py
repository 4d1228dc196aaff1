"""Alert episodes, precision/recall, lead times and false alarms on hand-made risk series."""

from __future__ import annotations

import numpy as np

from predictor.failure.evaluate import TruthFailure, censored_gpus, episodes, score

H = 3600 * 10**9


def test_episodes_merge_short_gaps_and_split_long_ones() -> None:
    ts = np.arange(20) * H
    risk = np.zeros((1, 20))
    risk[0, [2, 3, 5, 15]] = 0.9
    eps = episodes(risk, np.ones((1, 20), dtype=bool), ts, 0.5, merge_s=3 * 3600.0)
    assert [(e.start_ns // H, e.end_ns // H) for e in eps] == [(2, 5), (15, 15)]


def test_score_counts_lead_time_false_alarms_and_recall() -> None:
    ts = np.arange(100) * H
    risk = np.zeros((3, 100))
    risk[0, 40:50] = 0.9          # GPU 0 alerted from 40 h, fails at 50 h: caught, lead 10 h
    risk[1, 10:12] = 0.9          # GPU 1 alerted at 10 h, never fails: a false alarm
    valid = np.ones((3, 100), dtype=bool)
    valid[0, 50:] = False
    fails = [TruthFailure(0, 50 * H, True, "hbm-degradation"), TruthFailure(2, 70 * H, False, "sudden-dbe")]
    s = score(episodes(risk, valid, ts, 0.5), fails, gpus=3, gpu_days=10.0, horizon_s=24 * 3600.0, threshold=0.5)
    assert s.precision == 0.5 and s.recall == 0.5 and s.recall_with_precursors == 1.0
    assert s.median_lead_time_h == 10.0 and s.false_alarms == 1
    assert s.false_alarms_per_1000_gpu_days == 100.0


def test_an_alert_long_before_the_horizon_is_false() -> None:
    ts = np.arange(100) * H
    risk = np.zeros((1, 100))
    risk[0, 10:12] = 0.9          # alert at 10-11 h, failure at 60 h: more than 24 h after the alert ended
    s = score(episodes(risk, np.ones((1, 100), dtype=bool), ts, 0.5), [TruthFailure(0, 60 * H, True, "x")],
              gpus=1, gpu_days=4.0, horizon_s=24 * 3600.0)
    assert s.precision == 0.0 and s.recall == 0.0 and s.false_alarms == 1


def test_hysteresis_keeps_a_wobbling_risk_one_alert() -> None:
    ts = np.arange(40) * H
    risk = np.zeros((1, 40))
    risk[0, 5] = 0.9                              # fires
    risk[0, 6:30] = 0.7                           # holds: above the clear level 0.75 × 0.8 = 0.6
    risk[0, 12] = 0.5                             # one dip below the clear level ends it
    valid = np.ones((1, 40), dtype=bool)
    with_h = episodes(risk, valid, ts, 0.8, merge_s=3600.0)
    assert [(e.start_ns // H, e.end_ns // H) for e in with_h] == [(5, 11)]      # 13-29 never fired again
    without = episodes(risk, valid, ts, 0.8, merge_s=3600.0, clear_ratio=1.0)
    assert [(e.start_ns // H, e.end_ns // H) for e in without] == [(5, 5)]


def test_an_alert_standing_when_observation_is_censored_is_left_out() -> None:
    ts = np.arange(100) * H
    risk = np.zeros((2, 100))
    risk[0, 60:76] = 0.9                      # GPU 0: alerting when its last horizon is censored (76 h on)
    risk[1, 20:22] = 0.9                      # GPU 1: an alert that ended well before: a false alarm
    valid = np.ones_like(risk, dtype=bool)
    valid[:, 76:] = False                     # neither failed: their last 24 h have an unknown outcome
    censored = censored_gpus(2, [])
    kept = episodes(risk, valid, ts, 0.5, censored=censored)
    assert [e.gpu for e in kept] == [1]
    assert [e.gpu for e in episodes(risk, valid, ts, 0.5)] == [0, 1]
    # a GPU that failed is not censored: its alert counts whatever the outcome
    assert len(episodes(risk, valid, ts, 0.5, censored=censored_gpus(2, [TruthFailure(0, 99 * H, True, "x")]))) == 2
