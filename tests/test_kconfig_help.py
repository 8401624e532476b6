"""Kconfig help: every prompt a user sees in menuconfig has a help text (issue 15).

The test walks the whole menu tree of the project's Kconfig (the root file and
everything it sources) and checks each menu node that asks something: a symbol
or choice with a prompt. menuconfig shows a node's own help, so a symbol
defined in several places needs help at each prompted definition. A number or
string with a default must also say what that default is (or at least say
"default"), so the user learns it without opening the file.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import kconfiglib
import pytest

ROOT = Path(__file__).resolve().parent.parent

# A help shorter than this says nothing useful ("TODO", "Enable foo.").
MIN_HELP_CHARS = 20


@pytest.fixture(scope="module")
def kconf() -> kconfiglib.Kconfig:
    old = os.environ.get("srctree")
    os.environ["srctree"] = str(ROOT)
    try:
        return kconfiglib.Kconfig(str(ROOT / "Kconfig"), warn_to_stderr=False)
    finally:
        if old is None:
            os.environ.pop("srctree")
        else:
            os.environ["srctree"] = old


def prompted_nodes(kconf: kconfiglib.Kconfig) -> list[kconfiglib.MenuNode]:
    """Every menu node of a symbol or choice that has a prompt, in menu order."""
    return [node for node in kconf.node_iter()
            if isinstance(node.item, (kconfiglib.Symbol, kconfiglib.Choice)) and node.prompt]


def name(node: kconfiglib.MenuNode) -> str:
    item = node.item
    if isinstance(item, kconfiglib.Choice):
        return item.name or f"<choice \"{node.prompt[0]}\">"
    return item.name


def where(node: kconfiglib.MenuNode) -> str:
    return f"{name(node)} ({Path(node.filename).as_posix()}:{node.linenr})"


PROMPT_LINE = re.compile(r'^\s*(?:bool|tristate|int|hex|string|prompt)\s+"', re.MULTILINE)


def test_the_walk_sees_the_whole_tree(kconf):
    """The walk reaches every sourced file that asks a question (one that only sources others need not)."""
    nodes = prompted_nodes(kconf)
    reached = {Path(node.filename).as_posix() for node in nodes}
    sourced = {Path(f).as_posix() for f in kconf.kconfig_filenames}
    asking = {f for f in sourced if PROMPT_LINE.search((ROOT / f).read_text())}
    assert len(asking) >= 8, sorted(asking)
    assert asking <= reached, f"prompts not reached by the walk in {sorted(asking - reached)}"
    assert any(isinstance(node.item, kconfiglib.Choice) for node in nodes)
    assert any(isinstance(node.item, kconfiglib.Symbol) and node.item.choice for node in nodes)


def test_every_prompt_has_help(kconf):
    missing = [where(node) for node in prompted_nodes(kconf)
               if len((node.help or "").strip()) < MIN_HELP_CHARS]
    assert not missing, (f"{len(missing)} prompt(s) without help (or help under "
                         f"{MIN_HELP_CHARS} characters):\n  " + "\n  ".join(missing))


def default_values(sym: kconfiglib.Symbol) -> list[str]:
    """The literal values of a symbol's `default` lines (conditions ignored)."""
    values = []
    for value, _cond in sym.defaults:
        if isinstance(value, kconfiglib.Symbol) and value.is_constant:
            values.append(value.name)
    return values


def mentions_default(help_text: str, values: list[str]) -> bool:
    """The help says "default", or quotes a default value (an empty one as "empty")."""
    text = help_text.lower()
    if re.search(r"\bdefault", text):
        return True
    if "" in values and re.search(r"\b(empty|unset|blank)\b", text):
        return True
    return any(v and re.search(r"(?<![\w.])" + re.escape(v.lower()) + r"(?![\w])", text)
               for v in values)


def test_numbers_and_strings_with_a_default_name_it(kconf):
    missing = []
    for node in prompted_nodes(kconf):
        sym = node.item
        if not isinstance(sym, kconfiglib.Symbol) or sym.orig_type not in (
                kconfiglib.INT, kconfiglib.HEX, kconfiglib.STRING):
            continue
        values = default_values(sym)
        if not values or not (node.help or "").strip():
            continue  # no literal default, or no help at all (the test above reports that)
        if not mentions_default(node.help, values):
            missing.append(f"{where(node)} default {' / '.join(values)}")
    assert not missing, (f"{len(missing)} number/string prompt(s) whose help names "
                         "neither the default nor the word 'default':\n  " + "\n  ".join(missing))


def test_the_default_check_can_fail():
    """The check above is not vacuous: a help without the default is caught."""
    assert not mentions_default("Batch size of one training step.", ["128"])
    assert mentions_default("Batch size of one step. Default 128.", ["128"])
    assert mentions_default("Batch size of one step (128 samples).", ["128"])
    assert not mentions_default("Learning rate 0.0010 per step.", ["0.001"])
    assert not mentions_default("A local text file.", [""])
    assert mentions_default("A local text file; empty means none.", [""])
