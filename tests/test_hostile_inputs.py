"""Hostile inputs beyond tests/test_hostile.py: output folders inside the input, links out of a
result directory, damaged or crafted checkpoints for `make sample`, a damaged config.txt for
`make continue`. Each ends in a report (damage labelled) or one `error:` line with exit code 2,
runs nothing from the input and leaves it byte-identical."""
from __future__ import annotations

import re
import shutil

import pytest
from conftest import ROOT, no_traceback, run_script
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
