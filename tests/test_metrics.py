"""Paired statistics on hand-made outcomes, and the three disjoint seed ranges."""

import pytest
from ceed_vla.sim.metrics import UnpairedEpisodesError, mcnemar_exact, paired_outcomes
from ceed_vla.sim.seeds import (
    MAX_RUN_SEEDS,
    SEEDS_PER_RUN,
    eval_seed,
    is_eval_seed,
    is_validation_seed,
    record_seed,
    split_seed,
    validation_seed,
)


def test_mcnemar_exact_matches_the_binomial_by_hand():
    # 0 vs 5 discordant: 2 * (1/2)^5
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    # 1 vs 6: 2 * (C(7,0) + C(7,1)) / 2^7 = 2 * 8 / 128
    assert mcnemar_exact(6, 1) == pytest.approx(16 / 128)
    # symmetric, capped at 1, and 1 when nothing differs
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(2, 9) == mcnemar_exact(9, 2)
    # 0 vs 20: tiny but exact
    assert mcnemar_exact(0, 20) == pytest.approx(2 / 2**20)
    with pytest.raises(ValueError, match="only_a=-1"):
        mcnemar_exact(-1, 2)


def test_paired_outcomes_count_each_cell():
    a = {("reach", 1): True, ("reach", 2): True, ("push", 1): False, ("push", 2): True, ("door", 1): False}
    b = {("reach", 1): True, ("reach", 2): False, ("push", 1): True, ("push", 2): False, ("door", 1): False}
    out = paired_outcomes(a, b)
    assert (out["both"], out["only_a"], out["only_b"], out["neither"]) == (1, 2, 1, 1)
    assert out["episodes"] == 5
    assert out["success_a"] == pytest.approx(3 / 5) and out["success_b"] == pytest.approx(2 / 5)
    # discordant 2 vs 1: 2 * (C(3,0) + C(3,1)) / 2^3 = 1.0 (capped)
    assert out["mcnemar_p"] == 1.0


def test_paired_outcomes_refuse_different_episodes():
    with pytest.raises(UnpairedEpisodesError, match="same tasks, seeds"):
        paired_outcomes({("reach", 1): True}, {("reach", 2): True})


def test_record_eval_and_validation_seed_ranges_are_disjoint():
    last = (MAX_RUN_SEEDS - 1, SEEDS_PER_RUN - 1)
    assert record_seed(*last) < eval_seed(0, 0)
    assert eval_seed(*last) < validation_seed(0, 0)
    for run, ep in [(0, 0), (3, 17), last]:
        assert is_eval_seed(eval_seed(run, ep)) and not is_validation_seed(eval_seed(run, ep))
        assert is_validation_seed(validation_seed(run, ep)) and not is_eval_seed(validation_seed(run, ep))
        assert not is_eval_seed(record_seed(run, ep)) and not is_validation_seed(record_seed(run, ep))
    assert split_seed("validation", 2, 5) == validation_seed(2, 5)
    assert split_seed("eval", 2, 5) == eval_seed(2, 5)
    with pytest.raises(ValueError, match="'test'"):
        split_seed("test", 0, 0)
