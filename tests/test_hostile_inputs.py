"""Hostile inputs beyond tests/test_hostile.py: output folders inside the input, links out of a
result directory, damaged or crafted checkpoints for `make sample`, a damaged config.txt for
`make continue`. Each ends in a report (damage labelled) or one `error:` line with exit code 2,
runs nothing from the input and leaves it byte-identical."""
from __future__ import annotations

import re
import shutil

import pytest
from conftest import ROOT, no_traceback, run_script, write_config
from result_dirs import classifier_metrics, gpu_stats, spec, tree_digest, write_matrix, write_run

REPORT = ROOT / "scripts" / "report.py"
UPSTREAM = ROOT / "tests" / "fixtures" / "legacy" / "test_matrix_results_20250903_180836"


def _own_dir(root):
    s = spec("lenet5", "sgd", "none", 0)
    write_matrix(root, [s])
    write_run(root, s, "success", classifier_metrics(s, [90.0, 91.0], 0.0), gpu_stats(10, 20))
    return root


# OUT of `make report` ------------------------------------------------------------

@pytest.mark.parametrize("layout, out", [("upstream", "."), ("upstream", "sub"), ("own", "lenet5_sgd_none")])
def test_report_out_inside_the_input_is_refused(tmp_path, layout, out):
    """OUT=RESULTS on an upstream directory overwrote its all_results.json and summary_report.txt."""
    results = tmp_path / "results"
    if layout == "upstream":
        shutil.copytree(UPSTREAM, results)
    else:
        _own_dir(results)
    before = tree_digest(results)
    proc = run_script(REPORT, results, "--out", results / out)
    no_traceback(proc)
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1
    assert "which is only read" in proc.stderr
    assert tree_digest(results) == before


# checkpoints for `make sample` (CKPT=any file) --------------------------------------

TINY = {"block_size": 16, "vocab_size": 300, "n_layer": 1, "n_head": 2, "n_embd": 8, "dropout": 0.0, "bias": True}


class _RunsCode:
    """Unpickling this calls open(marker, "w"): a file appears if the checkpoint is loaded unsafely."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _weights(**args) -> dict:
    import torch

    from gpt2.model import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **args})).state_dict()


def _save(path, content) -> None:
    import pickle

    import torch

    if callable(content):
        content = content(path.parent)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, tuple):  # ("pickle", obj): a plain pickle, as torch.save wrote before 1.6
        with open(path, "wb") as handle:
            pickle.dump(content[1], handle)
    else:
        torch.save(content, path)


CHECKPOINTS = {
    "plain pickle running code": (lambda d: ("pickle", {"model": _RunsCode(d / "pwned")}), "refused, not run"),
    "random bytes": (bytes(range(256)) * 20, "unreadable checkpoint"),
    "empty file": (b"", "unreadable checkpoint (EOFError)"),
    "a list": ([1, 2], 'no "model_args" and "model"'),
    "a tensor": (lambda d: __import__("torch").zeros(3), 'no "model_args" and "model"'),
    "n_layer a string": (lambda d: {"model_args": {**TINY, "n_layer": "1"}, "model": _weights()}, "n_layer='1'"),
    "n_head zero": (lambda d: {"model_args": {**TINY, "n_head": 0}, "model": _weights()}, "n_head=0"),
    "n_layer negative": (lambda d: {"model_args": {**TINY, "n_layer": -1}, "model": _weights()}, "n_layer=-1"),
    "n_embd not a multiple of n_head": (lambda d: {"model_args": {**TINY, "n_embd": 7}, "model": _weights()},
                                        "not a multiple of n_head"),
    "dropout a string": (lambda d: {"model_args": {**TINY, "dropout": "x"}, "model": _weights()}, "dropout='x'"),
    "bias an int": (lambda d: {"model_args": {**TINY, "bias": 1}, "model": _weights()}, "bias=1"),
    "a billion layers": (lambda d: {"model_args": {**TINY, "n_layer": 10**9}, "model": _weights()},
                         "n_layer=1000000000 but it holds"),
    "a vocabulary of 10**10": (lambda d: {"model_args": {**TINY, "vocab_size": 10**10}, "model": _weights()},
                               "do not fit its model_args"),
    "weights a list": (lambda d: {"model_args": TINY, "model": [1, 2]}, "not a mapping of parameter names"),
    "integer keys": (lambda d: {"model_args": TINY, "model": {1: __import__("torch").zeros(1)}},
                     "not a mapping of parameter names"),
    "NaN weights": (lambda d: {"model_args": TINY, "model": {k: v.fill_(float("nan")) for k, v in _weights().items()}},
                    "holds NaN or infinity"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINTS))
def test_a_crafted_or_damaged_checkpoint_is_one_error(tmp_path, case):
    """Each of these crashed `make sample` with a traceback (or, for a vocabulary of 10**10,
    tried to allocate its matrix) before the checks; none may run code."""
    import torch

    from gpt2.sample import load_model
    from lib.errors import UserError

    content, says = CHECKPOINTS[case]
    path = tmp_path / "ckpt.pt"
    _save(path, content)
    before = tree_digest(tmp_path)
    with pytest.raises(UserError, match=re.escape(says)):
        load_model(path, torch.device("cpu"))
    assert not (tmp_path / "pwned").exists()
    assert tree_digest(tmp_path) == before


def test_a_prompt_beyond_a_small_vocabulary_is_one_error(tmp_path):
    import torch

    from gpt2.sample import SampleSettings, load_model, sample_texts
    from lib.errors import UserError

    small = {**TINY, "vocab_size": 64}
    _save(tmp_path / "ckpt.pt", {"model_args": small, "model": _weights(vocab_size=64)})
    model, _ = load_model(tmp_path / "ckpt.pt", torch.device("cpu"))
    with pytest.raises(UserError, match="token id 198, beyond this checkpoint's vocabulary of 64"):
        sample_texts(model, SampleSettings(prompt="\n", max_new_tokens=2), torch.device("cpu"))
    assert len(sample_texts(model, SampleSettings(prompt="!", max_new_tokens=2), torch.device("cpu"))) == 1


# config.txt of `make continue` ---------------------------------------------------------

@pytest.mark.parametrize("config_txt, says", [
    (None, "config.txt: no such configuration file"),  # with a .config here: filecmp raised FileNotFoundError
    (b"\xff\xfe\x00 CONFIG_X=y\n", "config.txt: not a readable configuration file (Malformed utf-8)"),
])
def test_continue_with_a_missing_or_binary_config_txt_is_one_error(tmp_path, config_txt, says):
    from tests.specs import make_spec

    results = tmp_path / "results"
    write_matrix(results, [make_spec("lenet5_sgd_none").to_json()])
    if config_txt is not None:
        (results / "config.txt").write_bytes(config_txt)
    here = tmp_path / ".config"
    here.write_text("CONFIG_MODEL_LENET5=y\n")
    before = tree_digest(results)
    proc = run_script(ROOT / "scripts" / "matrix.py", "continue", "--results", results, "--config", here)
    no_traceback(proc)
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1 and says in proc.stderr
    assert tree_digest(results) == before


# links out of a result directory ------------------------------------------------------

def test_links_out_of_the_result_directory_are_not_read(tmp_path, capsys):
    """config.txt linked to a private file was copied into all_results.json (and by `make reproduce`
    into its new directory); a result.json linked elsewhere was read as the run's."""
    import json

    from lib.report.summary import write_reports
    from lib.results.reader import load_results

    secret = tmp_path / "home" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("PRIVATE KEY")
    (tmp_path / "home" / "result.json").write_text(json.dumps({"status": "failed", "log_tail": ["PRIVATE LOG"]}))
    results = _own_dir(tmp_path / "results")
    (results / "config.txt").symlink_to(secret)
    (results / "lenet5_sgd_none" / "result.json").unlink()
    (results / "lenet5_sgd_none" / "result.json").symlink_to(tmp_path / "home" / "result.json")
    before = tree_digest(results)
    write_reports(load_results(results), tmp_path / "out", "x", graphs=False)
    written = "".join(p.read_text() for p in (tmp_path / "out").iterdir())
    assert "PRIVATE" not in written
    err = capsys.readouterr().err
    assert "config.txt: a symbolic link out of the result directory" in err
    assert "result.json: a symbolic link out of the result directory" in err
    assert tree_digest(results) == before


def test_a_log_line_cannot_forge_lines_of_the_summary(tmp_path):
    """A log tail line with a newline (or a terminal escape) was written as it was into
    summary_report.txt, where it could add a row that readers of the table take as a run."""
    import json

    from lib.report.summary import write_reports
    from lib.results.reader import load_results

    results = _own_dir(tmp_path / "results")
    forged = "boom\nlenet5_adam_none  99.99  99.99  0.00%  1.0  1.0  success\x1b[2J"
    (results / "lenet5_sgd_none" / "result.json").write_text(json.dumps({"status": "failed", "log_tail": [forged]}))
    write_reports(load_results(results), tmp_path / "out", "x", graphs=False)
    summary = (tmp_path / "out" / "summary_report.txt").read_text()
    assert "| boom\\x0alenet5_adam_none  99.99" in summary and "\x1b" not in summary
    assert not any(line.startswith("lenet5_adam_none") for line in summary.splitlines())


def test_a_directory_name_cannot_inject_markdown_html_or_lines(tmp_path):
    """The results path goes into report.md's heading, report.html and summary_report.txt's From: line;
    a directory from another lab named with Markdown, HTML or a newline must stay one literal name."""
    from lib.report.summary import write_reports
    from lib.results.reader import load_results

    name = "runs`\n# Injected heading\n<script>alert(1)</script> [link](http://x) *b*\x1b[2J"
    results = _own_dir(tmp_path / name)
    write_reports(load_results(results), tmp_path / "out", str(results), graphs=False)
    md = (tmp_path / "out" / "report.md").read_text()
    heading = md.splitlines()[0]
    assert heading.startswith("# Results: ``") and "\\x0a# Injected heading" in heading
    assert not any(line.startswith("# Injected") for line in md.splitlines())
    # the name is one code span: nothing inside it is rendered as Markdown or HTML
    fence = re.match(r"# Results: (`+)", heading).group(1)
    inside = heading[len("# Results: ") + len(fence):-len(fence)]
    assert heading.endswith(fence) and fence not in inside
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "<em>b</em>" not in page
    summary = (tmp_path / "out" / "summary_report.txt").read_text()
    assert "\x1b" not in summary and not any(line.startswith("# Injected") for line in summary.splitlines())
    from_lines = [line for line in summary.splitlines() if line.startswith("From: ")]
    assert len(from_lines) == 1 and "\\x0a# Injected heading" in from_lines[0]


# control characters of a stranger's names and text on the terminal ------------------------

HOSTILE_NAME = "lab\n\x1b[2J\u202eresults"  # a newline, a terminal escape (clear screen), a bidi override
SHOWN_NAME = "lab\\x0a\\x1b[2J\\u202eresults"


def _no_controls(text: str) -> None:
    assert "\x1b" not in text and "\u202e" not in text, text


def test_make_sample_escapes_the_checkpoint_path_and_the_text_its_weights_write(tmp_path, capsys):
    """The checkpoint path was printed raw, and so was the generated text: weights can be made to write
    any token, here greedily the byte ESC after every prompt. Lines and tabs of the text stay as they are."""
    import torch
    from conftest import script_module

    from gpt2.model import GPT, GPTConfig
    from lib.data.tokenizer import gpt2_encoding

    (esc,) = gpt2_encoding().encode("\x1b")
    prompt = "!\t!\n"
    assert max(gpt2_encoding().encode(prompt) + [esc]) < TINY["vocab_size"]
    model = GPT(GPTConfig(**TINY))
    with torch.no_grad():  # blocks add nothing; every position's embedding points at ESC's (tied) output row
        for name, param in model.named_parameters():
            if "c_proj" in name or name.endswith(("wte.weight", "wpe.weight")):
                param.zero_()
        pattern = torch.tensor([1.0, -1.0]).repeat(TINY["n_embd"] // 2)
        model.transformer.wte.weight[esc] = pattern
        model.transformer.wpe.weight[:] = pattern
    folder = tmp_path / HOSTILE_NAME
    folder.mkdir()
    torch.save({"model_args": TINY, "model": model.state_dict(), "iter_num": 7}, folder / "best.pt")
    before = tree_digest(tmp_path)
    script_module("sample").main({"CKPT": str(folder / "best.pt"), "PROMPT": prompt, "MAX_NEW_TOKENS": "3",
                                  "TOP_K": "1", "DEVICE": "cpu"})
    out, err = capsys.readouterr()
    assert out == prompt + "\\x1b" * 3 + "\n"
    assert err.startswith(f"checkpoint: {tmp_path}/{SHOWN_NAME}/best.pt (step 7, ") and err.count("\n") == 1
    _no_controls(out + err)
    assert tree_digest(tmp_path) == before


def _fake_trainer_run(monkeypatch, data_line: str) -> None:
    """run_matrix with a trainer that writes a metrics.json at once, and data preparation that says
    `data_line` (a data folder a stranger's matrix.json names is where the data is)."""
    import sys

    from lib.run import runner

    code = ("import json, sys, pathlib; d = pathlib.Path(sys.argv[-1]); "
            "(d / 'metrics.json').write_text(json.dumps({'best_accuracy_pct': 90.0, 'sparsity': {'global_pct': 0}}))")
    monkeypatch.setattr(runner, "trainer_command", lambda spec, run_dir, python=sys.executable:
                        [sys.executable, "-c", code, str(run_dir)])
    monkeypatch.setattr(runner, "prepare_data", lambda runs, out: out(data_line))
    monkeypatch.setattr(runner, "check_runnable", lambda runs: None)


def test_make_reproduce_escapes_every_path_and_name_it_prints(tmp_path, monkeypatch, capsys):
    """`make reproduce` printed the result path raw (`reproducing <dir>/<run>`, `original <dir>`), the
    device metrics.json records and the path of a config.txt it does not copy; a directory named with
    a newline, ESC or U+202E put them on the terminal."""
    import json

    from conftest import script_module

    from tests.specs import make_spec

    results = tmp_path / HOSTILE_NAME
    run = make_spec("lenet5_sgd_none").to_json()
    write_matrix(results, [run])
    write_run(results, run, "success", {**classifier_metrics(run, [90.0], 0.0),
                                        "environment": {"device": "cpu\x1b]0;owned\x07\u202e"}}, gpu_stats(10, 20))
    (results / "config.txt").symlink_to(tmp_path / "elsewhere")
    before = tree_digest(results)
    _fake_trainer_run(monkeypatch, "data in /x\x1b[2J")
    with pytest.raises(SystemExit):  # the fake trainer's figures are not the original's
        script_module("reproduce").main([str(results), run["run_id"], "--out", str(tmp_path / "rerun")])
    out, err = capsys.readouterr()
    _no_controls(out + err)
    lines = out.splitlines()
    assert f"reproducing {tmp_path}/{SHOWN_NAME}/lenet5_sgd_none (seed 1, device cpu\\x1b]0;owned\\x07\\u202e)" in lines
    assert f"note: {tmp_path}/{SHOWN_NAME}/config.txt: a symbolic link out of the result directory; " \
           "the rerun gets no config.txt" in lines
    assert "data in /x\\x1b[2J" in lines
    assert f"lenet5_sgd_none: original {tmp_path}/{SHOWN_NAME}, rerun {tmp_path}/rerun" in lines
    assert json.loads((tmp_path / "rerun" / "matrix.json").read_text())["reproduces"] == str(results / "lenet5_sgd_none")
    assert tree_digest(results) == before


def test_make_continue_escapes_the_directory_it_finishes(tmp_path, monkeypatch, capsys):
    """`make continue` printed the directory raw in its progress (`<dir>: 1 run, ...`), its notes, the
    reports it wrote and `Results:`; the lines its data preparation and executor print are escaped too."""
    from conftest import script_module

    from tests.specs import make_spec

    results = tmp_path / HOSTILE_NAME
    runs = [make_spec(run_id).to_json() for run_id in ("lenet5_sgd_none", "lenet5_adam_none")]
    write_matrix(results, runs)
    (tmp_path / "theirs").mkdir()
    config = write_config(tmp_path / "theirs", "lenet5-quick")
    shutil.copy(config, results / "config.txt")
    config.write_text(config.read_text() + "# ours\n")  # differs: a note names both
    _fake_trainer_run(monkeypatch, "data in /x\x1b[2J")
    script_module("matrix").continue_matrix(str(results), config)
    out, err = capsys.readouterr()
    _no_controls(out + err)
    lines = out.splitlines()
    assert f"{tmp_path}/{SHOWN_NAME}: 2 runs, 0 already done, 2 to run" in lines
    assert "data in /x\\x1b[2J" in lines
    assert any(line.startswith(f"note: .config differs from {tmp_path}/{SHOWN_NAME}/config.txt") for line in lines)
    assert f"wrote {tmp_path}/{SHOWN_NAME}/summary_report.txt" in lines
    assert f"Results: {tmp_path}/{SHOWN_NAME}" in lines


def test_make_report_escapes_the_paths_it_prints(tmp_path):
    """`make report` of our own layout writes into the directory and printed each report's path raw."""
    results = _own_dir(tmp_path / HOSTILE_NAME)
    proc = run_script(REPORT, results)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    _no_controls(proc.stdout + proc.stderr)
    assert f"{tmp_path}/{SHOWN_NAME}/summary_report.txt" in proc.stdout.splitlines()


@pytest.mark.parametrize("reader", ["report", "reproduce", "sample", "continue"])
def test_results_naming_a_file_says_it_is_a_file(tmp_path, reader):
    """A mistyped RESULTS= that names a plain file: every reader says it is a file, not that nothing is there."""
    from lib.errors import UserError
    from lib.reproduce import read_recorded_run
    from lib.results.reader import load_results
    from lib.run.runner import load_matrix
    from lib.train.checkpoint import run_checkpoint

    read = {"report": load_results, "reproduce": lambda path: read_recorded_run(path, "x"),
            "sample": lambda path: run_checkpoint(path, "x"), "continue": load_matrix}[reader]
    plain = tmp_path / "summary_report.txt"
    plain.write_text("not a directory\n")
    with pytest.raises(UserError, match=f"{re.escape(str(plain))}: a file, not a result directory"):
        read(plain)
    assert plain.read_text() == "not a directory\n"
    with pytest.raises(UserError, match="absent: no such result directory"):
        read(tmp_path / "absent")
