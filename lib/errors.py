"""The one exception type for mistakes a user can fix (bad config, missing data,
unreadable results). Command-line entry points catch it, print one line and
exit with code 2; programming errors keep their traceback. Also `counted`,
so that the counts in those lines and in the runner's read as English."""
from __future__ import annotations

import re
import sys
from typing import Any, Callable, TypeVar

T = TypeVar("T")

USER_ERROR_EXIT = 2
# A trainer stopped by NonFiniteError exits with this, so the runner can tell a deterministic
# divergence (rerunning it fails the same way) from a crash or an interruption.
NON_FINITE_EXIT = 3
# ... and leaves this file in its run folder (lib/train/harness), because a launcher between the
# runner and the trainer hides the code: torchrun exits 1 whatever its workers exited with.
NON_FINITE_MARKER = "non_finite.json"


class UserError(Exception):
    """A problem the user can fix; the message names the thing and the fix."""

    exit_code = USER_ERROR_EXIT


# C0 and C1 controls (newline, ESC), the Unicode bidirectional controls (U+202E reverses the text after
# it) and lone surrogates (a file name of bytes that are not UTF-8; no UTF-8 text can hold one)
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def escaped(text: str, keep: str = "") -> str:
    """`text` with control characters shown as \\xNN or \\uNNNN: a name from another lab's result
    directory, printed in a warning, an error or a report, stays on its one line, reads in its own
    order and cannot drive the terminal. `keep`: controls left as they are ("\\n\\t" for text of
    several lines, such as what `make sample` generates)."""
    def shown(match: re.Match) -> str:
        char = match.group()
        return char if char in keep else f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"

    return _CONTROLS.sub(shown, text)


def clipped(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters, the cut marked with "...": a stranger's value in a message stays
    one readable line."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def shown(value: Any, limit: int = 60) -> str:
    """repr(value) clipped to `limit` characters; an integer too long to print usefully by its size."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**limit else f"<{value.bit_length()}-bit int>"
    return clipped(text, limit)


def run_cli(main: Callable[[], T]) -> T:
    """Call `main`, turning a UserError into one line on stderr and its exit code (2; 3 for NonFiniteError)."""
    try:
        return main()
    except UserError as exc:
        print(f"error: {escaped(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)


def counted(n: int, noun: str, plural: str = "") -> str:
    """`1 run`, `2 runs`, `0 runs` (`plural` for a noun that does not take an s): never "1 runs"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


class WriteError(UserError, OSError):
    """A result file could not be written (disk full, no permission): one line
    naming the path. Still an OSError, so code that retries a failed write
    (the memory sampler's periodic flush) keeps doing so. Raised as
    WriteError(errno, "path: cannot write (reason)")."""

    def __str__(self) -> str:
        return str(self.strerror) if self.errno is not None else super().__str__()  # no "[Errno 28]" prefix


class NonFiniteError(UserError):
    """Training produced a NaN or infinity (loss, gradient norm or pruning score).

    A UserError so the trainer ends with one `error:` line and a failed run,
    not a traceback: the usual fix is a smaller learning rate or clipping.
    Its exit code, NON_FINITE_EXIT, and the NON_FINITE_MARKER a trainer writes tell the runner
    not to retry the run nor advise `make continue`."""

    exit_code = NON_FINITE_EXIT
