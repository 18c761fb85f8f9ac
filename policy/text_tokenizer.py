"""The instruction tokenizer: trained on the dataset's task texts for the default, else the backbone's own.

Both kinds are handled as a `transformers.PreTrainedTokenizerFast`, saved into the checkpoint with
`save_pretrained` and loaded back with `AutoTokenizer`, so the policy never cares which kind it has.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, UNK, BOS = "[PAD]", "[UNK]", "[BOS]"


def train_instruction_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A small BPE tokenizer (lower-cased, split on whitespace and punctuation) over `texts`."""
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("cannot train an instruction tokenizer on zero task texts")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK, BOS], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (checkpoint or pretrained backbone); never downloads."""
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:
        # Many causal LMs ship without a pad token; padding positions are masked out anyway.
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok
