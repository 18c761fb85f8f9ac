"""A new, untrained policy from a config and the data it will learn from: the one place that fits
the instruction tokenizer (or loads the pretrained backbone's), the action bins and the state
normaliser. Training (`ceed train`), the benchmarks and the tests start policies here."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .action_tokenizer import ActionTokenizer, StateNormalizer
from .config import VLAConfig
from .modeling import VLAPolicy
from .text_tokenizer import load_tokenizer, train_instruction_tokenizer


def fresh_policy(
    config: VLAConfig,
    tasks: Sequence[str],
    actions: torch.Tensor,
    states: torch.Tensor,
    text_vocab_size: int | None = None,
) -> VLAPolicy:
    """actions: [N, D] and states: [N, S] in raw units (quantiles and mean/std are fitted on them);
    tasks: the instructions the tokenizer is trained on (in this order), unless `config.lm_path`
    names a pretrained backbone, whose own tokenizer is used. text_vocab_size: default the config's."""
    if config.lm_path:
        tokenizer = load_tokenizer(config.lm_path)
    else:
        tokenizer = train_instruction_tokenizer(
            list(tasks), vocab_size=text_vocab_size or config.text_vocab_size
        )
    action_tok = ActionTokenizer.fit(actions, n_bins=config.n_bins)
    return VLAPolicy.build(config, tokenizer, action_tok, StateNormalizer.fit(states))
