"""The GPT-2 tokenizer, built offline from the BPE ranks shipped in assets/.

tiktoken.get_encoding("gpt2") downloads its vocabulary on first use, which
fails on machines without internet; building the same Encoding from
lib/data/assets/gpt2.tiktoken (MIT, see the LICENSE beside it) gives the
same token ids everywhere.
"""
from __future__ import annotations

import functools
from pathlib import Path

import tiktoken
import tiktoken.load

from lib.errors import UserError

BPE_RANKS = Path(__file__).resolve().parent / "assets" / "gpt2.tiktoken"
BPE_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# The pre-tokenizer regex of OpenAI's GPT-2 encoder.py: contractions, letter
# runs, digit runs, other symbols, whitespace; each optionally after one space.
GPT2_PAT_STR = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT_TOKEN = 50256  # <|endoftext|>, the document separator
VOCAB_SIZE = 50257  # nanoGPT pads the model's embedding to 50304; ids stay below this


@functools.lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    """The GPT-2 encoding (tiktoken's "gpt2"/"r50k_base"), without network access."""
    try:
        ranks = tiktoken.load.load_tiktoken_bpe(str(BPE_RANKS), expected_hash=BPE_RANKS_SHA256)
    except (OSError, ValueError) as exc:
        raise UserError(f"{BPE_RANKS}: GPT-2 BPE ranks unreadable ({exc}); restore the file "
                        f"from the repository (git checkout -- {BPE_RANKS.name})") from None
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT_TOKEN}, explicit_n_vocab=VOCAB_SIZE)
