"""Bit-packed masks (lib/pruning/bitmask.py) and the pruner with CONFIG_PRUNING_MASK_STORAGE_BITS.

The layout is checked against numpy.packbits(bitorder="little"), an
implementation independent of ours; training with bits must give the same
weights, bit for bit, as with bools, and hold ceil(n/8) bytes per tensor.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lib.optim import build_optimizer
from lib.spec import OptimizerParams
from lib.pruning import GradualPruner, bitmask
from lib.pruning.mask_ops import zero_pruned_
from tests.pruning_loop import train_steps
from tests.test_config import settings_of

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny tensors, fastest on one thread

SIZES = [1, 7, 8, 9, 33, 1025]
ADAMWPRUNE = OptimizerParams(learning_rate=None, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, base="adamw")


def random_keep(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) > 0.5


@pytest.mark.parametrize("n", SIZES)
def test_packing_is_numpys_little_bit_order(n):
    keep = random_keep(n)
    packed = bitmask.full(keep, "bits")
    bitmask.write(packed, 0, keep)
    assert packed.numel() == math.ceil(n / 8)
    assert np.array_equal(packed.numpy(), np.packbits(keep.numpy(), bitorder="little"))
    assert torch.equal(bitmask.unpack(packed, 0, n), keep)
    assert bitmask.count_kept(packed) == int(keep.sum())
    index = torch.randint(n, (17,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(bitmask.gather(packed, index), keep[index])


@pytest.mark.parametrize("n", SIZES)
def test_the_torch_packing_used_on_gpus_has_the_same_layout(n):
    """On CPU, pack_/unpack call numpy; elsewhere torch shifts: checked here on CPU tensors."""
    keep = random_keep(n, seed=2)
    packed = torch.empty(math.ceil(n / 8), dtype=torch.uint8)
    bitmask._pack_torch(keep, packed)
    assert np.array_equal(packed.numpy(), np.packbits(keep.numpy(), bitorder="little"))
    assert torch.equal(bitmask._unpack_torch(packed, n), keep)


def test_chunks_written_at_byte_offsets_give_the_whole_mask():
    keep = random_keep(1025)
    packed = bitmask.full(keep, "bits")
    for start in range(0, 1025, 64):
        bitmask.write(packed, start, keep[start:start + 64])
        assert torch.equal(bitmask.read(packed, start, min(start + 64, 1025)), keep[start:start + 64])
    assert np.array_equal(packed.numpy(), np.packbits(keep.numpy(), bitorder="little"))
    with pytest.raises(ValueError, match="multiple of 8"):
        bitmask.read(packed, 3, 10)


@pytest.mark.parametrize("n", SIZES)
def test_a_full_mask_keeps_every_entry_and_no_padding(n):
    packed = bitmask.full(torch.empty(n), "bits")
    assert bitmask.count_kept(packed) == n
    assert np.array_equal(np.unpackbits(packed.numpy(), bitorder="little")[n:], np.zeros(-n % 8, np.uint8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["numpy-path", "torch-path"])
def test_zeroing_with_bits_equals_zeroing_with_bools(dtype):
    keep = random_keep(3 * (1 << 20) + 5)  # several of mask_ops' chunks, a ragged end
    packed = bitmask.convert(keep, keep, "bits")
    values = torch.randn(keep.numel()).to(dtype)
    expected = values * keep
    zero_pruned_([(values, packed)])
    assert torch.equal(values, expected)


def test_zeroing_a_non_contiguous_tensor_with_bits_follows_its_logical_order():
    """A transposed gradient (the two-pass fallback's input) has no flat view: the bits still address its
    entries in row-major order, as bools of its shape do."""
    keep = random_keep(37 * 41).view(37, 41)
    values = torch.randn(41, 37).t()  # shape (37, 41), not contiguous
    expected = values * keep
    zero_pruned_([(values, bitmask.convert(keep, keep, "bits"))])
    assert not values.is_contiguous() and torch.equal(values, expected)


# --- through the pruner ----------------------------------------------------------------------


def train(storage: str, optimizer: str, steps: int = 60):
    """A small net with odd-sized layers, pruned from step 5 to 40 every 5 steps, chunks of 64 entries."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(13, 37), nn.ReLU(), nn.Linear(37, 5))
    opt = (build_optimizer("adamwprune", model, 1e-2, ADAMWPRUNE) if optimizer == "adamwprune"
           else torch.optim.Adam(model.parameters(), lr=1e-2))
    score = "bitter7" if optimizer == "adamwprune" else "movement"
    pruner = GradualPruner(model, opt, score, 0.7, warmup_steps=5, ramp_end_step=40, frequency=5,
                           chunk_size=64, mask_storage=storage)
    train_steps(model, opt, pruner, steps, inputs=13, classes=5, batch=16)
    return model, opt, pruner


@pytest.mark.parametrize("optimizer", ["adamwprune", "adam"], ids=["fused-step", "two-pass"])
def test_training_with_bits_is_bit_identical_to_bools(optimizer):
    bool_model, _, bool_pruner = train("bool", optimizer)
    bits_model, bits_opt, bits_pruner = train("bits", optimizer)
    for p, q in zip(bool_model.parameters(), bits_model.parameters()):
        assert torch.equal(p, q)
    assert [h["measured_pct"] for h in bits_pruner.history] == [h["measured_pct"] for h in bool_pruner.history]
    assert bits_pruner.history[-1]["measured_pct"] == pytest.approx(70.0, abs=0.5)
    for name, packed in bits_pruner.masks.items():
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(bits_pruner.params[name].numel() / 8)
        assert torch.equal(bitmask.unpack(packed, 0, packed.numel() * 8)[:bool_pruner.masks[name].numel()],
                           bool_pruner.masks[name].view(-1))
    assert getattr(bits_opt, "fallback_note", None) is None
    assert bits_pruner.mask_bytes() == math.ceil(13 * 37 / 8) + math.ceil(37 * 5 / 8)
    assert bool_pruner.mask_bytes() == 13 * 37 + 37 * 5


def test_a_checkpoint_resumes_in_the_configured_storage():
    _, _, bits_pruner = train("bits", "adam", steps=20)
    _, _, bool_pruner = train("bool", "adam", steps=20)
    state = bits_pruner.state_dict()
    bits_pruner.load_state_dict(state)
    assert all(m.dtype == torch.uint8 for m in bits_pruner.masks.values())
    bool_pruner.load_state_dict(state)  # written with bits, configured bool: converted
    for name, keep in bool_pruner.masks.items():
        assert keep.dtype == torch.bool and torch.equal(bitmask.convert(keep, keep, "bits"), state["masks"][name])


def test_kconfig_choice_sets_the_storage(tmp_path):
    base = "CONFIG_MODEL_MODE_SINGLE=y\nCONFIG_MODEL_SELECT_LENET5=y\nCONFIG_OPTIMIZER_MODE_SINGLE=y\n" \
           "CONFIG_OPTIMIZER_SELECT_ADAM=y\nCONFIG_PRUNING_MODE_SINGLE=y\nCONFIG_PRUNING_SELECT_MAGNITUDE=y\n" \
           "CONFIG_NUM_EPOCHS=10\n"
    assert settings_of(tmp_path, base).pruning.mask_storage == "bool"
    assert settings_of(tmp_path, base + "CONFIG_PRUNING_MASK_STORAGE_BITS=y\n").pruning.mask_storage == "bits"
