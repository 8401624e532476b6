"""Names and JSON values a directory from elsewhere can hold, and the size of a huge file: what the
damages put in. Only data here; the damages that use it are content_damage.py and entry_damage.py."""
from __future__ import annotations

import math
import os
from typing import Any

HUGE_BYTES = 3 << 30  # a sparse file this large costs no disk; reading it whole would cost 3 GiB of memory

HOSTILE_NAMES = ["..", ".", "a/b", "x" * 300, "lenet5_sgd_none\n# forged", "lenet5_\u202esgd_none", "CON",
                 "aux.json", "-rf", "lenet5_sgd_none\x1b[2J", " lenet5 ", "lenet5_sgd_none\x00", "é" * 80,
                 "resnet18_adam_none/../../x", "", "NUL", "lenet5_sgd_none_s99999999999",
                 os.fsdecode(b"lenet5_\xff_none")]  # bytes that are not UTF-8: a lone surrogate in Python
# Names of the result directory itself (it comes from elsewhere too), each a valid file name.
ROOT_NAMES = ["run_dir", "run dir $(touch x) `y`", "run\ndir", "run\x1b[2Jdir", "run\u202edir",
              os.fsdecode(b"run\xffdir"), "-run_dir", "r" * 200]
HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, -(10**18), 10**400, -(10**400), 1e308, -1e308, 5e-324, math.nan, math.inf,
    -math.inf, "", "x" * 100_000, "high", "NaN", "1e999", "\x00\x1b[2J\n", "\ud800", "\u202e", [], {}, [None],
    [1, "a", None, [], {}], {"": None}, {"a": {"b": {"c": [1]}}}, list(range(2000)), 3.5, 100.0, 2**63,
    *HOSTILE_NAMES[:6]]
