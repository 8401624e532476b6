"""Text from a GPT-2 checkpoint, as nanoGPT's sample.py makes it.

Loads best.pt/last.pt of one of our runs, or nanoGPT's ckpt.pt (both hold
"model_args" and "model"), encodes the prompt with the offline GPT-2 BPE
(lib/data/tokenizer.py), seeds torch and samples with GPT.generate. The
command-line edge is scripts/sample.py (`make sample`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt2.model import GPT
from lib.data.tokenizer import EOT_TOKEN, gpt2_encoding
from lib.errors import UserError
from lib.jsonio import read_json
from lib.names import is_safe_name
from lib.train.checkpoint import load_weights

REPLACEMENT = "\ufffd"  # shown for ids of the embedding's padding rows (50257..50303), which have no text


@dataclass(frozen=True)
class SampleSettings:
    prompt: str = "\n"  # nanoGPT's start; "FILE:path" reads the prompt from a file; "" starts a new document
    num_samples: int = 1
    max_new_tokens: int = 500
    temperature: float = 0.8
    top_k: int | None = 200  # None or 0: no top-k cut
    seed: int = 1337


def check_gpt2_run(run_dir: Path) -> None:
    """UserError when run_dir's run.json records a model other than GPT-2 (a LeNet-5 run has
    no text to sample, whether or not it kept a checkpoint). The file may come from anyone:
    it is only read as JSON, and a missing or odd one is left to the checkpoint lookup."""
    try:
        record = read_json(run_dir / "run.json")
    except UserError:
        return
    spec = record.get("spec") if isinstance(record, dict) else None
    model = spec.get("model") if isinstance(spec, dict) else None
    if isinstance(model, str) and model != "gpt2":
        shown = model if is_safe_name(model) else "non-GPT-2"  # never echo a stranger's odd string
        raise UserError(f"{run_dir}: a {shown} run, not a GPT-2 run; make sample generates text from "
                        "GPT-2 runs only")


def load_model(path: Path, device: torch.device) -> tuple[GPT, dict[str, Any]]:
    """The network of a checkpoint, in eval mode on `device`, and the checkpoint's other fields."""
    checkpoint = load_weights(path, device)
    try:
        model = GPT.from_checkpoint(checkpoint)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    info = {k: v for k, v in checkpoint.items() if k not in ("model", "optimizer")}
    return model.to(device).eval(), info


def checkpoint_step(info: dict[str, Any]) -> str:
    """The step a checkpoint was saved at, as text: its iter_num (ours and nanoGPT's) or step; "?" when it
    records none or something that is not a count (the file may come from anyone: its strings are not shown)."""
    step = info.get("iter_num", info.get("step"))
    return str(step) if isinstance(step, int) and not isinstance(step, bool) and 0 <= step < 10**15 else "?"


def prompt_ids(prompt: str) -> list[int]:
    """Token ids of the prompt (or of the file after "FILE:"); an empty prompt is <|endoftext|>."""
    if prompt.startswith("FILE:"):
        path = Path(prompt[len("FILE:"):])
        if not path.is_file():
            raise UserError(f"PROMPT=FILE:{path}: no such file")
        prompt = path.read_text(encoding="utf-8")
    ids = gpt2_encoding().encode(prompt, allowed_special={"<|endoftext|>"})
    return ids or [EOT_TOKEN]


def decode(ids: list[int]) -> str:
    """Text of sampled ids; ids past the tokenizer's vocabulary become U+FFFD, not an exception."""
    enc = gpt2_encoding()
    out, run = [], []
    for token in ids:
        if token < enc.n_vocab:
            run.append(token)
            continue
        out += [enc.decode(run), REPLACEMENT]
        run = []
    return "".join(out) + enc.decode(run)


def sample_texts(model: GPT, settings: SampleSettings, device: torch.device) -> list[str]:
    """`num_samples` continuations of the prompt (prompt included, as nanoGPT prints them)."""
    start = prompt_ids(settings.prompt)
    if max(start) >= model.config.vocab_size:  # a small checkpoint's vocabulary lacks GPT-2's ids
        raise UserError(f"the prompt has token id {max(start)}, beyond this checkpoint's vocabulary of "
                        f"{model.config.vocab_size} tokens (give a PROMPT within it)")
    skip = 1 if settings.prompt == "" else 0  # the <|endoftext|> standing for an empty prompt
    torch.manual_seed(settings.seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(settings.seed)
    x = torch.tensor(start, dtype=torch.long, device=device)[None, :]
    texts = []
    for _ in range(settings.num_samples):
        y = model.generate(x, settings.max_new_tokens, temperature=settings.temperature,
                           top_k=settings.top_k or None)
        texts.append(decode(y[0, skip:].tolist()))
    return texts
