"""The operating point: the lowest threshold that meets the precision floor and the false-alarm budget, and
the hysteresis ratio that lets an alert on a degrading GPU hold until it fails."""

from __future__ import annotations

import numpy as np

from predictor.failure.evaluate import TruthFailure
from predictor.failure.pipeline import ScoredFleet, choose_threshold

H = 3600 * 10**9


def _fleet() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[TruthFailure]]:
    ts = np.arange(200) * H
    risk = np.full((20, 200), 0.02)
    fails = []
    for g in range(10):                       # ten GPUs fail at 150 h; their risk rises to 0.9 from 140 h
        risk[g, 140:150] = 0.9
        fails.append(TruthFailure(g, 150 * H, True, "x"))
    risk[10, 50:52] = 0.6                     # a healthy GPU with a blip of 0.6: a false alarm below 0.6
    valid = np.ones_like(risk, dtype=bool)
    valid[:10, 150:] = False
    return risk, valid, ts, fails


def test_lowest_threshold_that_meets_both_targets() -> None:
    risk, valid, ts, fails = _fleet()
    op = choose_threshold(risk, valid, ts, fails, gpu_days=1000.0, horizon_s=24 * 3600.0,
                          fa_budget=0.5, min_precision=0.95)
    thr, s = op.threshold, op.scores
    assert 0.6 < thr <= 0.9 and s.precision == 1.0 and s.recall == 1.0 and s.false_alarms == 0


def test_a_looser_budget_keeps_the_precision_floor() -> None:
    risk, valid, ts, fails = _fleet()
    # one false alarm in 1,000 GPU-days is within a budget of 2, and 10 of 11 alerts are true (0.91)
    op = choose_threshold(risk, valid, ts, fails, gpu_days=1000.0, horizon_s=24 * 3600.0,
                          fa_budget=2.0, min_precision=0.9)
    thr, s = op.threshold, op.scores
    assert thr <= 0.6 and s.false_alarms == 1 and s.recall == 1.0
    # a GPU that alarms above every failing one: no threshold has no false alarm, so a budget of 0 cannot be
    # met; the lowest threshold that keeps the precision floor is taken (0.9: 10 of 11 alerts true)
    risk[11, 80:82] = 0.95
    op = choose_threshold(risk, valid, ts, fails, gpu_days=1000.0, horizon_s=24 * 3600.0,
                          fa_budget=0.0, min_precision=0.9)
    thr, s = op.threshold, op.scores
    assert 0.6 < thr <= 0.9 and s.false_alarms == 1 and s.recall == 1.0


def test_the_clear_ratio_that_holds_an_alert_on_a_degrading_gpu_is_chosen() -> None:
    risk, valid, ts, fails = _fleet()
    # GPU 0 degrades for two days: an early warning at 100 h, a risk of 0.4 in between, failure at 150 h.
    # Clearing at 0.75 × the threshold splits that into an early alert that ended over 24 h before the
    # failure (a false alarm) and a late one; clearing at 0.33 × keeps one alert, true, with 50 h of lead.
    risk[0, 100:102] = 0.9
    risk[0, 102:140] = 0.4
    strict = choose_threshold(risk, valid, ts, fails, gpu_days=1000.0, horizon_s=24 * 3600.0,
                              fa_budget=0.5, min_precision=0.95)
    assert strict.clear_ratio == 0.75 and (strict.scores.precision or 0.0) < 0.95
    op = choose_threshold(risk, valid, ts, fails, gpu_days=1000.0, horizon_s=24 * 3600.0,
                          fa_budget=0.5, min_precision=0.95, clear_ratios=(0.75, 0.5, 0.33))
    assert op.clear_ratio == 0.33 and 0.6 < op.threshold <= 0.9
    assert op.scores.precision == 1.0 and op.scores.recall == 1.0 and op.scores.false_alarms == 0


def test_the_false_alarm_budget_is_checked_on_the_alarm_fleet_when_given() -> None:
    risk, valid, ts, fails = _fleet()
    loose = choose_threshold(risk, valid, ts, fails, gpu_days=1000.0, horizon_s=24 * 3600.0,
                             fa_budget=2.0, min_precision=0.9)
    assert loose.threshold <= 0.6 and loose.scores.false_alarms == 1
    # a fleet at its real fault rate: no failures, 20 GPU-days, one healthy GPU blipping to 0.7; one false
    # alarm there is 50 per 1,000 GPU-days, over the budget, so the threshold rises above the blip
    quiet = np.full((20, 200), 0.02)
    quiet[3, 40:42] = 0.7
    alarms = ScoredFleet(quiet, np.ones_like(quiet, dtype=bool), ts, [], gpu_days=20.0)
    op = choose_threshold(risk, valid, ts, fails, gpu_days=1000.0, horizon_s=24 * 3600.0,
                          fa_budget=2.0, min_precision=0.9, alarms=alarms)
    assert 0.7 < op.threshold <= 0.9 and op.scores.recall == 1.0
    assert alarms.scores(op.threshold, op.clear_ratio, 24 * 3600.0).false_alarms == 0
