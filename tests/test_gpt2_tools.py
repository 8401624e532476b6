"""What a nanoGPT user expects around a GPT-2 run: MFU and per-step loss in metrics.json,
checkpoints nanoGPT's GPT class loads, nanoGPT's ckpt.pt loading into ours, generate(),
and `make sample`."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import make
from gpt2.model import GPT, gpt2_config
from lib.errors import UserError
from lib.train.checkpoint import load_weights
from lib.train.mfu import MFUMeter, peak_flops
from tests import nanogpt_reference as nano
from tests.tiny_data import ROOT, gpt2_symbols, one_spec, prepare_gpt2_text, train, write_text

NANOGPT_ARGS = {"n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout"}
PROMPT = 'The cat said "hi" and $HOME; it\'s # fine'


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 20-step tiny GPT-2 run on CPU: evaluations at 0/10/20, a log line every 5 steps, best.pt kept."""
    tmp = tmp_path_factory.mktemp("gpt2run")
    text = write_text(tmp / "corpus.txt", n_chars=20_000)
    spec = one_spec(tmp, **gpt2_symbols(text, GPT2_MAX_ITERS=20, GPT2_EVAL_INTERVAL=10, LOG_EVERY=5,
                                        SAVE_CHECKPOINT=True))
    prepare_gpt2_text(spec)
    run_dir, metrics, output = train(tmp / "results", spec)
    return run_dir, metrics, output


@pytest.mark.slow  # a GPT-2 run in a trainer subprocess (tiny_run)
def test_mfu_is_recorded_at_each_evaluation_and_null_on_cpu(tiny_run):
    _, metrics, _ = tiny_run
    evals = metrics["evals"]
    assert all({"tokens_per_s", "achieved_tflops", "mfu_pct"} <= set(e) for e in evals)
    assert evals[0]["tokens_per_s"] is None  # before training: no step to measure
    for e in evals[1:]:
        assert e["tokens_per_s"] > 0 and e["achieved_tflops"] > 0
        assert e["mfu_pct"] is None  # CPU: no peak to divide by, and none pretended
    mfu = metrics["mfu"]
    assert mfu["peak_tflops"] is None and mfu["note"].startswith("cpu:")
    model = GPT(gpt2_config("tiny", 32, 50304))
    assert mfu["flops_per_sample"] == model.flops_per_token() * 32 and mfu["tokens_per_sample"] == 32
    e = evals[-1]
    assert e["achieved_tflops"] == pytest.approx(mfu["flops_per_sample"] * e["tokens_per_s"] / 32 / 1e12)


def test_mfu_against_the_models_estimate_with_a_known_peak():
    """MFUMeter agrees with GPT.estimate_mfu (nanoGPT's formula) for the same peak."""
    model = GPT(gpt2_config("tiny", 32, 512))
    meter = MFUMeter(model.flops_per_token() * 32, 32, peak_flops=2e12, note="test")
    sequences, seconds = 48, 1.5
    fields = meter.fields(sequences / seconds)
    assert fields["mfu_pct"] == pytest.approx(100 * model.estimate_mfu(sequences, seconds, 2e12))
    assert fields["tokens_per_s"] == pytest.approx(sequences * 32 / seconds)


@pytest.mark.parametrize("name, precision, tf32, tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16-autocast", True, 989.0),
    ("NVIDIA H100 PCIe", "bf16-autocast", True, 756.0),
    ("NVIDIA H200", "fp32", True, 494.5),
    ("NVIDIA A100-SXM4-80GB", "fp32", False, 19.5),
    ("NVIDIA A100 80GB PCIe", "fp16-autocast with loss scaling (no bf16 on this GPU)", True, 312.0),
    ("NVIDIA A10G", "bf16-autocast", True, None),  # not the A10, and not pretended to be
    ("NVIDIA L40S", "bf16-autocast", True, None),  # not the L4
])
def test_peak_flops_by_gpu_name_and_precision(monkeypatch, name, precision, tf32, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    peak, note = peak_flops(torch.device("cuda"), precision, tf32)
    assert (peak / 1e12 if peak else None) == tflops
    assert note.startswith(name) and ("unknown" in note) == (tflops is None)


@pytest.mark.slow  # a GPT-2 run in a trainer subprocess (tiny_run)
def test_train_log_holds_the_steps_own_loss_every_log_every_steps(tiny_run):
    _, metrics, output = tiny_run
    log = metrics["train_log"]
    assert [r["step"] for r in log] == [5, 10, 15, 20]
    assert all(r["train_loss"] > 0 and r["lr"] > 0 for r in log)
    assert "step 5/20  loss " in output and "step 15/20  loss " in output


@pytest.mark.slow  # a GPT-2 run in a trainer subprocess (tiny_run)
def test_checkpoints_load_into_nanogpts_gpt_class(tiny_run):
    """best.pt reads with weights_only=True and loads strictly into nanoGPT's GPT built from
    its model_args; both networks then give the same logits."""
    run_dir, metrics, _ = tiny_run
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert set(ckpt["model_args"]) == NANOGPT_ARGS
    assert ckpt["model_args"] == {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 32, "bias": True,
                                  "vocab_size": 50304, "dropout": 0.0}
    assert ckpt["config"]["run_id"] == run_dir.name and ckpt["config"]["model"] == "gpt2"
    assert ckpt["iter_num"] == metrics["best_step"] and ckpt["best_val_loss"] == metrics["best_val_loss"]
    keys = set(ckpt["model"])
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight",
            "transformer.h.1.mlp.c_proj.bias", "transformer.ln_f.weight", "lm_head.weight"} <= keys
    reference = nano.GPT(nano.GPTConfig(**ckpt["model_args"]))
    reference.load_state_dict(ckpt["model"], strict=True)
    ours = GPT.from_checkpoint(ckpt)
    x = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(0))
    assert torch.equal(reference.eval()(x, x)[0], ours.eval()(x, x)[0])


def nanogpt_ckpt(path, bias: bool = True) -> nano.GPT:
    """A ckpt.pt as nanoGPT's train.py writes it, from a torch.compile'd model (keys "_orig_mod.")."""
    torch.manual_seed(3)
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=bias, vocab_size=50304, dropout=0.0)
    model = nano.GPT(nano.GPTConfig(**args))
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95))
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "model_args": args, "iter_num": 5000, "best_val_loss": 3.2,
                "config": {"batch_size": 12, "learning_rate": 6e-4, "dataset": "shakespeare_char",
                           "compile": True}}, path)
    return model


@pytest.mark.parametrize("bias", [True, False])
def test_our_loader_reads_nanogpts_ckpt(tmp_path, bias):
    reference = nanogpt_ckpt(tmp_path / "ckpt.pt", bias)
    ours = GPT.from_checkpoint(load_weights(tmp_path / "ckpt.pt"))
    assert ours.config.bias is bias and ours.config.n_embd == 32
    x = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(reference.eval()(x)[0], ours.eval()(x)[0])


def test_generate_matches_nanogpt_and_is_seeded():
    torch.manual_seed(0)
    ours = GPT(gpt2_config("tiny", 16, 512)).eval()
    reference = nano.GPT(nano.GPTConfig(**{**vars(nano.GPTConfig()), "n_layer": 2, "n_head": 2, "n_embd": 64,
                                           "block_size": 16, "vocab_size": 512})).eval()
    reference.load_state_dict(ours.state_dict())
    start = torch.tensor([[1, 2, 3]])

    def run(model, seed, **kw):
        torch.manual_seed(seed)
        return model.generate(start, 20, **kw)  # longer than block_size: the context is cropped

    a = run(ours, 7, temperature=0.8, top_k=50)
    assert a.shape == (1, 23) and torch.equal(a[:, :3], start)
    assert torch.equal(a, run(ours, 7, temperature=0.8, top_k=50))
    assert not torch.equal(a, run(ours, 8, temperature=0.8, top_k=50))
    assert torch.equal(a, run(reference, 7, temperature=0.8, top_k=50))
    assert torch.equal(run(ours, 1, top_k=None), run(reference, 1, top_k=None))
    greedy = run(ours, 2, top_k=1)  # top-1 is argmax whatever the seed
    assert torch.equal(greedy, run(ours, 3, top_k=1))


def sample(env: dict[str, str], make: bool = False) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("RESULTS", "RUN", "CKPT", "PROMPT")}
    command = ["make", "-s", "sample"] if make else [sys.executable, str(ROOT / "scripts" / "sample.py")]
    return subprocess.run(command, cwd=ROOT, env={**base, "DEVICE": "cpu", **env}, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow  # runs make, on a GPT-2 run (tiny_run)
def test_make_sample_writes_text_from_a_runs_checkpoint(tiny_run):
    """Through make, so the prompt's quotes, $ and # must arrive as typed."""
    run_dir, _, _ = tiny_run
    done = make(ROOT, "sample", f"RESULTS={run_dir.parent}", f"RUN={run_dir.name}", f"PROMPT={PROMPT}",
                "NUM_SAMPLES=2", "MAX_NEW_TOKENS=12", "TOP_K=20", "DEVICE=cpu")
    assert done.returncode == 0, done.stderr
    texts = done.stdout.split("\n---------------\n")
    assert len(texts) == 2 and all(t.startswith(PROMPT) and len(t) > len(PROMPT) for t in texts)
    assert "checkpoint: " in done.stderr and "best.pt" in done.stderr
    again = sample({"RESULTS": str(run_dir.parent), "RUN": run_dir.name, "PROMPT": PROMPT, "NUM_SAMPLES": "2",
                    "MAX_NEW_TOKENS": "12", "TOP_K": "20"})
    assert again.returncode == 0 and again.stdout == done.stdout  # same seed, same text


def test_sample_reads_a_nanogpt_ckpt(tmp_path):
    nano_model = nanogpt_ckpt(tmp_path / "ckpt.pt")
    done = sample({"CKPT": str(tmp_path / "ckpt.pt"), "MAX_NEW_TOKENS": "5", "PROMPT": "Hello"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Hello") and "step 5000" in done.stderr
    # every weight, the tied matrix once and wpe included: the count gpt2/train.py logs for the same model
    ours = GPT(gpt2_config("tiny", 16, 50304))
    every_weight = sum(p.numel() for p in nano_model.parameters())
    assert ours.get_num_params(non_embedding=False) == sum(p.numel() for p in ours.parameters())
    assert f"{every_weight:,} parameters)" in done.stderr


@pytest.mark.parametrize("run_json, message", [
    ('{"spec": {"model": "lenet5"}}', "lenet5_sgd_none: a lenet5 run, not a GPT-2 run; make sample"),
    ('{"spec": {"model": "../$(rm -rf x)"}}', "lenet5_sgd_none: a non-GPT-2 run, not a GPT-2 run"),
    ('{"spec": {"model": "gpt2"}}', "lenet5_sgd_none: no checkpoint"),
    ('{"spec": ["model", "lenet5"]}', "lenet5_sgd_none: no checkpoint"),
    ('{"spec": {"model": 5}}', "lenet5_sgd_none: no checkpoint"),
    ('{"spec": {"mod', "lenet5_sgd_none: no checkpoint"),
    (None, "lenet5_sgd_none: no checkpoint"),
])
def test_sample_of_a_run_that_is_not_gpt2_says_so(tmp_path, run_json, message):
    """run.json is read as plain JSON, whoever wrote it: a model other than GPT-2 is named when it is a
    safe name; anything odd or missing falls through to the checkpoint lookup's own error."""
    from conftest import script_module

    run_dir = tmp_path / "lenet5_sgd_none"
    run_dir.mkdir()
    if run_json is not None:
        (run_dir / "run.json").write_text(run_json)
    with pytest.raises(UserError) as error:
        script_module("sample").checkpoint_path({"RESULTS": str(tmp_path), "RUN": run_dir.name})
    assert message in str(error.value) and "rm -rf" not in str(error.value)


@pytest.mark.parametrize("env, message", [
    ({"RUN": "../etc"}, "RUN '../etc' is not a safe name"),
    ({"RUN": ".."}, "RUN '..' is not a safe name"),
    ({"RUN": "gpt2_adamw_none/x"}, "is not a safe name"),
    ({"RUN": "absent_run"}, "absent_run: no checkpoint (best.pt is kept with CONFIG_SAVE_CHECKPOINT=y); runs with"),
    ({"TEMPERATURE": "0"}, "TEMPERATURE='0' is not valid"),
    ({"TOP_K": "many"}, "TOP_K='many' is not valid"),
    ({"RUN": ""}, "give the run: make sample RESULTS="),
])
@pytest.mark.slow  # a GPT-2 run in a trainer subprocess (tiny_run)
def test_sample_errors_are_one_line_and_exit_2(tiny_run, env, message):
    run_dir, _, _ = tiny_run
    done = sample({"RESULTS": str(run_dir.parent), "RUN": run_dir.name, **env})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    if env.get("RUN") == "absent_run":
        assert run_dir.name in lines[0]  # the runs that do have a checkpoint are named


def test_a_checkpoint_that_does_not_fit_is_one_error_line(tmp_path):
    model = GPT(gpt2_config("tiny", 16, 128))
    state = model.state_dict()
    state.pop("transformer.wpe.weight")
    args = {**vars(model.config)}
    torch.save({"model": state, "model_args": args}, tmp_path / "bad.pt")
    done = sample({"CKPT": str(tmp_path / "bad.pt")})
    assert done.returncode == 2 and done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1
    assert "missing key(s): transformer.wpe.weight" in done.stderr
