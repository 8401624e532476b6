"""Pruning: sparsity schedules, the global threshold, and GradualPruner on a
small real network trained with torch.optim.Adam.

The schedules follow docs/algorithms.md: from warm-up to ramp end the target
grows as linear s_f*p, Zhu and Gupta cubic s_f*(1-(1-p)^3), or the upstream
curve s_f*p^3, and equals s_f exactly from ramp end on. Masks are bool and zero
the weight and Adam's exp_avg/exp_avg_sq, so pruned weights stay exactly zero.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lib.errors import UserError
from lib.pruning import SCHEDULES, GradualPruner, measure_sparsity, prunable_parameters
from lib.pruning.threshold import kth_smallest
from lib.pruning.schedules import target_fraction

WARMUP, RAMP_END, FINAL = 20, 120, 0.8


# --- schedules -----------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_schedule_is_zero_before_warmup_and_final_from_ramp_end(schedule):
    for step in (0, 1, WARMUP - 1):
        assert target_fraction(schedule, step, WARMUP, RAMP_END, FINAL) == 0.0
    assert target_fraction(schedule, WARMUP, WARMUP, RAMP_END, FINAL) == 0.0
    for step in (RAMP_END, RAMP_END + 1, 10 * RAMP_END):
        assert target_fraction(schedule, step, WARMUP, RAMP_END, FINAL) == FINAL


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_schedule_is_monotone(schedule):
    values = [target_fraction(schedule, step, WARMUP, RAMP_END, FINAL) for step in range(RAMP_END + 20)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert 0.0 < values[WARMUP + 1] < values[RAMP_END - 1] < FINAL


def test_schedules_differ_at_mid_ramp_as_their_formulas_say():
    mid = (WARMUP + RAMP_END) // 2  # progress 0.5
    at_mid = {name: target_fraction(name, mid, WARMUP, RAMP_END, FINAL) for name in SCHEDULES}
    assert at_mid["linear"] == pytest.approx(FINAL * 0.5)
    assert at_mid["cubic"] == pytest.approx(FINAL * (1 - 0.5 ** 3))  # 0.875 s_f: fast early
    assert at_mid["upstream-p3"] == pytest.approx(FINAL * 0.5 ** 3)  # 0.125 s_f: slow start
    quarter = WARMUP + (RAMP_END - WARMUP) // 4
    assert target_fraction("cubic", quarter, WARMUP, RAMP_END, FINAL) == pytest.approx(FINAL * (1 - 0.75 ** 3))


def test_schedule_without_a_ramp_jumps_to_final_after_warmup():
    assert target_fraction("cubic", 9, 10, 10, 0.5) == 0.0
    assert target_fraction("cubic", 10, 10, 10, 0.5) == 0.5


# --- threshold and sparsity measurement -----------------------------------------------------


def threshold_of(scores: list[torch.Tensor], k: int, sample_size: int, chunk: int = 50):
    flat = torch.cat([s.reshape(-1) for s in scores])
    gen = torch.Generator().manual_seed(3)

    def chunks():
        for s in scores:
            view = s.reshape(-1)
            for start in range(0, view.numel(), chunk):
                yield view[start:start + chunk]

    return flat, kth_smallest(chunks, lambda n: flat[torch.randint(flat.numel(), (n,), generator=gen)],
                              flat.numel(), k, sample_size)


@pytest.mark.parametrize("fraction", [0.001, 0.1, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("sample_size", [16, 200, 10**6])
def test_threshold_is_the_exact_order_statistic(fraction, sample_size):
    gen = torch.Generator().manual_seed(0)
    scores = [torch.rand(30, 7, generator=gen), torch.rand(101, generator=gen), torch.rand(3, 4, 5, generator=gen)]
    k = max(1, round(fraction * 371))
    flat, found = threshold_of(scores, k, sample_size)
    assert found.value == torch.sort(flat).values[k - 1].item()
    assert (found.count_below, found.count_equal) == (k - 1, 1)  # distinct scores


def test_threshold_counts_ties():
    scores = [torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0]), torch.tensor([0.0, 3.0, 0.0, 4.0])]
    _, found = threshold_of(scores, 3, sample_size=4, chunk=2)
    assert (found.value, found.count_below, found.count_equal) == (0.0, 0, 5)


def test_threshold_survives_a_misleading_sample():
    # A sample that sees only the largest values must still end at the exact answer.
    scores = [torch.arange(1000.0)]
    found = kth_smallest(lambda: iter(scores), lambda n: torch.full((n,), 999.0), 1000, 500)
    assert found.value == 499.0 and found.passes > 1


def test_measure_sparsity_per_layer():
    params = {"a.weight": torch.tensor([[0.0, 1.0], [0.0, 0.0]]),  # 3 of 4 zero
              "b.weight": torch.tensor([1.0, 2.0, 3.0, 0.0, 5.0, 6.0])}  # 1 of 6
    global_pct, per_layer, zeros, total = measure_sparsity(params)
    assert per_layer == {"a.weight": 75.0, "b.weight": pytest.approx(100 / 6)}
    assert (zeros, total) == (4, 10)
    assert global_pct == 40.0
    assert measure_sparsity({}) == (0.0, {}, 0, 0)


def test_prunable_parameters_are_linear_and_conv_weights_only():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    assert list(prunable_parameters(model)) == ["0.weight", "3.weight"]


# --- GradualPruner on a real network --------------------------------------------------------


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))


def make_pruner(model: nn.Module, optimizer: torch.optim.Optimizer, **overrides) -> GradualPruner:
    kwargs = dict(score="magnitude", final_sparsity=FINAL, warmup_steps=WARMUP, ramp_end_step=RAMP_END,
                  frequency=10, schedule="cubic")
    kwargs.update(overrides)
    return GradualPruner(model, optimizer, **kwargs)


@pytest.fixture(scope="module")
def trained():
    """Train 250 Adam steps on random data, recording masks and sparsity along the way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: thread hand-offs cost more than the arithmetic
    try:
        return _train()
    finally:
        torch.set_num_threads(threads)


def _train():
    model = small_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = make_pruner(model, optimizer)
    gen = torch.Generator().manual_seed(1)
    inputs, targets = torch.randn(256, 16, generator=gen), torch.randint(0, 4, (256,), generator=gen)
    record = {"masks": {}, "sparsity": {}, "pruned_nonzero_after_ramp": 0}
    for step in range(250):
        batch = torch.randint(0, 256, (32,), generator=gen)
        loss = nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        pruner.before_optimizer_step()
        optimizer.step()
        pruner.after_optimizer_step(step)
        record["masks"][step] = {name: mask.clone() for name, mask in pruner.masks.items()}
        record["sparsity"][step] = measure_sparsity(pruner.params)[0]
        if step > RAMP_END:
            ramp_masks = record["masks"][RAMP_END]
            record["pruned_nonzero_after_ramp"] += sum(
                int((pruner.params[name][~mask] != 0).sum()) for name, mask in ramp_masks.items())
    return model, optimizer, pruner, record


def test_no_pruning_before_warmup(trained):
    _, _, _, record = trained
    assert all(record["sparsity"][step] == 0.0 for step in range(WARMUP))


def test_measured_sparsity_reaches_target_at_ramp_end(trained):
    _, _, pruner, record = trained
    assert abs(record["sparsity"][RAMP_END] - 100 * FINAL) <= 0.5
    assert abs(record["sparsity"][249] - 100 * FINAL) <= 0.5
    last = pruner.history[-1]
    assert last["step"] == RAMP_END and last["target_pct"] == pytest.approx(100 * FINAL)
    assert abs(last["measured_pct"] - last["target_pct"]) <= 0.5


def test_history_follows_the_schedule(trained):
    _, _, pruner, _ = trained
    for entry in pruner.history:
        expected = 100 * target_fraction("cubic", entry["step"], WARMUP, RAMP_END, FINAL)
        assert entry["target_pct"] == pytest.approx(expected)
        assert abs(entry["measured_pct"] - expected) <= 0.5
    steps = [entry["step"] for entry in pruner.history]
    assert steps == sorted(steps) and steps[0] > WARMUP - 1 and steps[-1] == RAMP_END


def test_pruned_weights_stay_pruned_during_the_ramp(trained):
    _, _, _, record = trained
    masks = record["masks"]
    for step in range(WARMUP + 1, 250):
        for name, mask in masks[step].items():
            if name in masks[step - 1]:
                assert not (mask & ~masks[step - 1][name]).any(), f"{name} revived at step {step}"


def test_pruned_weights_stay_exactly_zero_after_ramp_end(trained):
    _, _, pruner, record = trained
    assert record["pruned_nonzero_after_ramp"] == 0
    for name, mask in record["masks"][RAMP_END].items():
        assert torch.equal(pruner.masks[name], mask)  # no mask updates after ramp end
        assert torch.all(pruner.params[name][~mask] == 0)


def test_adam_moments_of_pruned_weights_are_zero(trained):
    _, optimizer, pruner, _ = trained
    for name, param in pruner.params.items():
        mask, state = pruner.masks[name], optimizer.state[param]
        assert mask.dtype == torch.bool
        assert torch.all(state["exp_avg"][~mask] == 0)
        assert torch.all(state["exp_avg_sq"][~mask] == 0)
        assert state["exp_avg_sq"][mask].abs().sum() > 0  # the kept ones are untouched


def test_biases_stay_dense(trained):
    model, _, _, _ = trained
    assert all(bool((layer.bias != 0).all()) for layer in (model[0], model[2]))


def test_mask_bytes_counts_one_byte_per_weight(trained):
    _, _, pruner, _ = trained
    assert pruner.mask_bytes() == 16 * 64 + 64 * 4


def test_unknown_score_is_a_user_error():
    model = small_model()
    with pytest.raises(UserError, match="bogus"):
        make_pruner(model, torch.optim.Adam(model.parameters()), score="bogus")


def test_unknown_schedule_is_a_user_error():
    model = small_model()
    with pytest.raises(UserError, match="quadratic"):
        make_pruner(model, torch.optim.Adam(model.parameters()), schedule="quadratic")


@pytest.mark.parametrize("storage", ["bool", "bits"])
def test_a_mask_update_reads_device_values_a_fixed_number_of_times(storage):
    """On a GPU every read of a device value (int(), float(), bool(), .item()) waits for the device. A mask
    update reads the step counts, the finiteness checks and the counts once each, not per tensor or chunk:
    the reads are the same for 3 tensors as for 12, in 1 chunk each or 16 (the threshold's own reads and its
    boolean selections, one per chunk, aside)."""
    def reads(layers: int, chunk: int) -> int:
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(layers)])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        pruner = GradualPruner(model, opt, "bitter7", 0.5, warmup_steps=0, ramp_end_step=1, frequency=1,
                               chunk_size=chunk, mask_storage=storage)
        with torch.profiler.profile() as prof:
            pruner.update_masks(0.5)
        return sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")

    assert reads(3, 4096) == reads(12, 4096) == reads(12, 256)


def test_finite_scores_whose_sum_overflows_are_not_taken_for_non_finite():
    """The finiteness check adds up each chunk's float32 sum; scores near the float32 limit overflow it.
    The exact check that follows finds nothing, and the update prunes as asked."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64))
    with torch.no_grad():
        model[0].weight.copy_(torch.rand(64, 64) * 3e38)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner = GradualPruner(model, opt, "magnitude", 0.5, warmup_steps=0, ramp_end_step=1, frequency=1)
    assert not torch.isfinite(model[0].weight.sum())
    pruner.update_masks(0.5)
    assert pruner.history[-1]["measured_pct"] == 50.0
