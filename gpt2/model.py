"""GPT-2 as nanoGPT writes it (karpathy/nanoGPT model.py, after Radford et
al. 2019): learned position embeddings, pre-LayerNorm blocks, causal
self-attention through torch's scaled_dot_product_attention (flash kernels
where available), 4x GELU MLP, lm_head tied to the token embedding.

124M at vocab 50304 (GPT-2's 50257 padded to a multiple of 64 for faster
matmuls): 124,475,904 parameters with the tied matrix counted once;
nanoGPT's get_num_params() prints 123.69M because it leaves out the
position embeddings.

This module owns only the network and its size presets; optimizers (and the
decay/no-decay split nanoGPT's configure_optimizers does) live in lib.
Parameter names are nanoGPT's (transformer.wte.weight, transformer.h.0.attn.
c_attn.weight, ..., lm_head.weight), so state_dicts load either way, and a
checkpoint's "model_args" are GPTConfig's fields.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gpt2.sizes import SIZES
from lib.errors import UserError

COMPILED_PREFIX = "_orig_mod."  # state_dict keys of a torch.compile'd module start with this


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    # Biases in Linear and LayerNorm as in GPT-2 and nanoGPT's GPTConfig default;
    # nanoGPT notes bias=False is a little better and faster. nanoGPT wrote its own
    # LayerNorm for this; nn.LayerNorm takes bias= since torch 2.1 (we need >= 2.4).
    bias: bool = True


def gpt2_config(size: str, block_size: int | None = None, vocab_size: int = 50304,
                dropout: float = 0.0, bias: bool = True) -> GPTConfig:
    """The GPTConfig for a named size; block_size None means GPT-2's 1024."""
    if size not in SIZES:
        raise UserError(f"GPT-2 size {size!r} is unknown (have: {', '.join(SIZES)})")
    n_layer, n_head, n_embd = SIZES[size]
    return GPTConfig(block_size=1024 if block_size is None else block_size, vocab_size=vocab_size, n_layer=n_layer,
                     n_head=n_head, n_embd=n_embd, dropout=dropout, bias=bias)


def _checked_config(args: dict[str, Any]) -> GPTConfig:
    """GPTConfig from a checkpoint's model_args (absent fields take their defaults, as in
    nanoGPT): sizes positive integers, dropout in [0, 1), bias a bool; else a UserError."""
    known = {f.name: f.default for f in fields(GPTConfig)}
    unknown = sorted(map(str, set(args) - set(known)))
    if unknown:
        raise UserError(f"checkpoint model_args has fields this GPT does not know: {', '.join(unknown)}")
    values = {**known, **args}
    for name, value in values.items():
        default = known[name]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
        if not ok:
            raise UserError(f"checkpoint model_args {name}={repr(value)[:40]} is not valid")
    if values["n_embd"] % values["n_head"]:
        raise UserError(f"checkpoint model_args n_embd={values['n_embd']} is not a multiple of "
                        f"n_head={values['n_head']}")
    return GPTConfig(**values)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(C, dim=2))  # each (B, n_head, T, head_size)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017, as GPT-2 does): wte.weight and
        # lm_head.weight are ONE Parameter, counted and optimized once. lib's
        # pruning takes module.weight of every nn.Linear and nn.Conv2d
        # (lib/pruning/masks.py prunable_parameters), so this tensor is pruned
        # once, through lm_head; pruning it also zeroes embedding entries.
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2 paper section 2.3: scale residual projections by 1/sqrt(N), N = 2 * n_layer
        # residual additions, so the residual stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameters, tied matrix once; non_embedding leaves out wpe (nanoGPT's convention, and its
        FLOPs count). The trainer's log and `make sample` print non_embedding=False: every weight."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, loss). Without targets only the last position's logits are computed
        (shape (B, 1, vocab)), which is all generation needs; targets of -1 are ignored."""
        t = idx.size(1)
        assert t <= self.config.block_size, f"sequence of {t} tokens exceeds block_size {self.config.block_size}"
        pos = torch.arange(t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @classmethod
    def from_checkpoint(cls, checkpoint: Any) -> "GPT":
        """The network of a checkpoint holding "model_args" and "model": our best.pt/last.pt
        or nanoGPT's ckpt.pt, loaded strictly. Checkpoints come from anyone: every argument is
        checked and every weight's name and shape compared before the network is allocated
        (a vocab_size of 10**9 must not allocate its matrix), and weights must be finite."""
        args = checkpoint.get("model_args") if isinstance(checkpoint, dict) else None
        if not isinstance(args, dict) or "model" not in checkpoint:
            raise UserError("checkpoint has no \"model_args\" and \"model\" (not a GPT-2 checkpoint)")
        config = _checked_config(args)
        weights = checkpoint["model"]
        if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                    for k, v in weights.items()):
            raise UserError("checkpoint \"model\" is not a mapping of parameter names to tensors")
        state = {}
        for key, value in weights.items():
            key = key.removeprefix(COMPILED_PREFIX)  # nanoGPT saves a torch.compile'd module's keys as they are
            if not key.endswith(".attn.bias"):  # old nanoGPT's causal-mask buffer, not a parameter
                state[key] = value
        if config.n_layer > len(state):  # each layer has weights; and building 10**9 layers, even on meta, hangs
            raise UserError(f"checkpoint model_args n_layer={config.n_layer} but it holds {len(state)} weights")
        with torch.device("meta"):  # shapes only, no memory
            expected = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
        common = sorted(set(expected) & set(state))
        misfits = [(what, names) for what, names in (
            ("missing key(s)", sorted(set(expected) - set(state))),
            ("unexpected key(s)", sorted(set(state) - set(expected))),
            ("another shape", [k for k in common if tuple(state[k].shape) != expected[k]])) if names]
        if misfits:
            raise UserError("checkpoint weights do not fit its model_args: " + "; ".join(
                f"{what}: {', '.join(names[:3])}{f' and {len(names) - 3} more' if len(names) > 3 else ''}"
                for what, names in misfits))
        broken = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if broken:
            raise UserError(f"checkpoint weight {broken} holds NaN or infinity")
        model = cls(config)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # a dtype that cannot be copied in
            detail = [line.strip() for line in str(exc).splitlines() if line.strip()][-1]
            raise UserError(f"checkpoint weights do not fit its model_args: {detail}") from None
        return model

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None) -> torch.Tensor:
        """Extend each row of `idx` (B, T) by `max_new_tokens` sampled tokens, as nanoGPT's
        generate: the last block_size tokens as context, logits / temperature, only the
        top_k most likely kept, one multinomial draw (torch's global generator). Call in eval()."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size:]
            logits = self(context)[0][:, -1, :] / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_token = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, next_token), dim=1)
        return idx

    def flops_per_token(self) -> int:
        """Training FLOPs (forward + backward) per token at full context, PaLM paper appendix B:
        6N for the matmuls with the weights plus 12*L*H*Q*T for attention."""
        cfg = self.config
        head_size = cfg.n_embd // cfg.n_head
        return 6 * self.get_num_params() + 12 * cfg.n_layer * cfg.n_head * head_size * cfg.block_size

    def estimate_mfu(self, fwdbwd_per_iter: int, dt: float, peak_flops: float) -> float:
        """Model FLOPs utilisation of `fwdbwd_per_iter` sequences in `dt` seconds over
        `peak_flops` (nanoGPT's, with the peak as an argument; lib/train/mfu.py picks it)."""
        return self.flops_per_token() * self.config.block_size * fwdbwd_per_iter / dt / peak_flops
