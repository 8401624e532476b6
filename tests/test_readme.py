"""The README a new user reads first: its two set-up commands, and every named configuration in its tables."""
from __future__ import annotations

import re

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_the_readme_starts_with_the_two_commands():
    """`make` (the embedded default) and `make test`, before anything else to type."""
    first_block = re.search(r"^    (.+)\n    (.+)$", README, re.M)
    assert first_block and [line.split("#")[0].strip() for line in first_block.groups()] == ["make", "make test"]


def test_every_defconfig_is_in_the_readme_tables():
    """A defconfig the README does not list is one a new user never finds (lenet5-high-sparsity was)."""
    listed = set(re.findall(r"^\| `([a-z0-9.-]+)` \|", README, re.M))
    shipped = {path.name for path in (ROOT / "defconfigs").iterdir() if path.is_file()}
    assert shipped <= listed, sorted(shipped - listed)
