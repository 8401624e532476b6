"""The networks: output shapes, parameter counts against published figures,
GPT-2's causal mask and weight tying, and that a few SGD steps learn."""
from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gpt2.model import GPT, SIZES, gpt2_config
from lib.errors import UserError
from lib.pruning.masks import prunable_parameters
from resnet18.model import ResNet18, ResNet18Config
from resnet50.model import ResNet50, ResNet50Config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny tensors, fastest on one thread


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied tensor is yielded once


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model with shapes but no storage: counts 124M parameters without allocating them."""
    with torch.device("meta"):
        return build()


# ---- ResNets ---------------------------------------------------------------

def test_resnet18_cifar_shapes_and_count():
    model = ResNet18()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert n_params(model) == 11_173_962  # the usual "11.17M" of CIFAR ResNet-18
    assert ResNet18(ResNet18Config(num_classes=100))(torch.randn(2, 3, 8, 8)).shape == (2, 100)


@pytest.mark.parametrize("stem, num_classes, expected", [
    ("cifar", 100, 23_705_252),
    ("imagenet", 1000, 25_557_032),  # torchvision resnet50
])
def test_resnet50_counts(stem, num_classes, expected):
    assert n_params(on_meta(lambda: ResNet50(ResNet50Config(num_classes=num_classes, stem=stem)))) == expected


def test_resnet50_shapes_per_stem():
    assert ResNet50()(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    model = ResNet50(ResNet50Config(stem="imagenet")).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 100)


def test_resnet50_unknown_stem_is_a_user_error():
    with pytest.raises(UserError, match="cifar, imagenet"):
        ResNet50Config(stem="tiny")


@pytest.mark.parametrize("model, last_bn", [
    (lambda c: ResNet18(ResNet18Config(zero_init_residual=c)), "bn2"),
    (lambda c: ResNet50(ResNet50Config(zero_init_residual=c)), "bn3"),
])
def test_zero_init_residual_is_opt_in(model, last_bn):
    def gammas(m: nn.Module) -> torch.Tensor:
        return torch.cat([p.detach() for n, p in m.named_parameters() if n.endswith(f"{last_bn}.weight")])
    assert (gammas(model(False)) == 1).all()
    assert (gammas(model(True)) == 0).all()


# ---- GPT-2 -----------------------------------------------------------------

def test_gpt2_124m_count():
    model = on_meta(lambda: GPT(gpt2_config("124M")))
    assert model.get_num_params(non_embedding=False) == 124_475_904  # tied wte/lm_head counted once
    assert model.get_num_params() == 123_689_472  # nanoGPT's printed "123.69M": without wpe


def test_gpt2_config_presets():
    assert SIZES["124M"] == (12, 12, 768) and SIZES["1.5B"] == (48, 25, 1600)
    cfg = gpt2_config("mini", block_size=64, vocab_size=256, dropout=0.1)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size, cfg.dropout) == (4, 4, 128, 64, 256,
                                                                                                  0.1)
    assert gpt2_config("124M").block_size == 1024
    with pytest.raises(UserError, match="tiny, mini, 124M, 350M, 774M, 1.5B"):
        gpt2_config("125M")


def tiny_gpt(vocab_size: int = 256, block_size: int = 16) -> GPT:
    torch.manual_seed(0)
    return GPT(gpt2_config("tiny", block_size=block_size, vocab_size=vocab_size))


def test_gpt2_weights_are_tied_and_pruned_once():
    model = tiny_gpt()
    assert model.lm_head.weight is model.transformer.wte.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and "transformer.wte.weight" in names
    # lib's pruning sees the shared matrix once, under lm_head (docs/models.md).
    prunable = prunable_parameters(model)
    assert prunable["lm_head.weight"] is model.transformer.wte.weight
    assert sum(p is model.transformer.wte.weight for p in prunable.values()) == 1


def test_gpt2_shapes():
    model = tiny_gpt()
    idx = torch.randint(0, 256, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 1, 256) and loss is None  # last position only
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 256) and loss.ndim == 0


def test_gpt2_attention_is_causal():
    model = tiny_gpt().eval()
    idx = torch.randint(0, 256, (2, 16))
    changed = idx.clone()
    changed[:, 10] = (idx[:, 10] + 1) % 256
    with torch.no_grad():
        before, _ = model(idx, idx)
        after, _ = model(changed, idx)
    torch.testing.assert_close(after[:, :10], before[:, :10])
    assert not torch.allclose(after[:, 10:], before[:, 10:])


def test_untrained_gpt2_loss_is_near_uniform():
    vocab = 50304  # the real vocabulary: small init std gives near-uniform predictions
    model = tiny_gpt(vocab_size=vocab)
    # Targets independent of the inputs: with tied weights, predicting the input token
    # itself is favoured at init (its logit is about |e|*|h|), which would lower the loss.
    idx, targets = torch.randint(0, vocab, (2, 2, 16))
    with torch.no_grad():
        _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(vocab)) < 0.1


# ---- every model learns ----------------------------------------------------

def classifier_loss(model: nn.Module, num_classes: int) -> Callable[[], torch.Tensor]:
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, num_classes, (4,))
    return lambda: F.cross_entropy(model(x), y)


def lm_loss(model: GPT) -> Callable[[], torch.Tensor]:
    idx = torch.randint(0, model.config.vocab_size, (4, 16))
    return lambda: model(idx[:, :-1], idx[:, 1:])[1]


@pytest.mark.parametrize("build, loss_of", [
    (lambda: ResNet18(), lambda m: classifier_loss(m, 10)),
    (lambda: ResNet50(), lambda m: classifier_loss(m, 100)),
    (tiny_gpt, lm_loss),
], ids=["resnet18", "resnet50", "gpt2-tiny"])
def test_sgd_steps_reduce_loss_on_a_fixed_batch(build, loss_of):
    torch.manual_seed(0)
    model = build()
    loss = loss_of(model)
    # Plain SGD at a small rate: BN on 4 images of 8x8 makes larger steps overshoot.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    first = loss()
    for _ in range(2):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < first.item()
