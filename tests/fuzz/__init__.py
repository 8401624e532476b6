"""A seeded mutator of result directories, and the contract every reader of them keeps.

Result directories and checkpoints come from other labs (docs/results-format.md,
"Reading directories from elsewhere"). The fuzzer starts from real ones
(layouts.py: the upstream fixture under tests/fixtures/legacy, a directory our
own runner wrote under tests/fixtures/own, and small language-model ones built
with tests/result_dirs) and damages them the way a copy, a disk or a stranger can
(content_damage.py, entry_damage.py, drawn by mutations.py): truncated and invalid
UTF-8 bytes, invalid JSON, a hostile value of every JSON type at any key,
NaN/Infinity literals, duplicate keys, deep nesting, huge and sparse files, long
and odd names, directories, FIFOs, devices and symbolic links (out of the
directory, looping, dangling) where files are expected.

Each reader (readers.py: `make report`, `make compare`, the reading half of `make
continue` and `make reproduce`, `make sample`, the time estimate of `make
test-matrix-dry-run`, and the commands in a subprocess) must then keep one
contract (contract.py): no exception but UserError (one line), no hang, no large
read, only `warning:`/`note:` lines on stderr, and the input tree byte-identical
afterwards (tree.py). case.py runs one case, as_user.py runs it as another user
(so mode-000 damage bites), cli.py drives many for a bounded time; its entry point
is tests/hostile_fuzz.py.
"""
import sys
from pathlib import Path

# The readers live in the project (lib/, gpt2/) and the seed directories are built with
# tests/result_dirs.py: both importable however the fuzzer is started (pytest, the CLI, by hand).
ROOT = Path(__file__).resolve().parent.parent.parent
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
