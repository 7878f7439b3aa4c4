"""Tiny configs of every supported family, small enough for CPU tests."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from transformers import AutoConfig, AutoModelForCausalLM

COMMON = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
              max_position_embeddings=256)

TINY = {
    "llama": dict(model_type="llama", num_hidden_layers=6, tie_word_embeddings=False),
    "mistral": dict(model_type="mistral", num_hidden_layers=6, sliding_window=None),
    "qwen2-tied": dict(model_type="qwen2", num_hidden_layers=6, tie_word_embeddings=True),
    "qwen2-untied": dict(model_type="qwen2", num_hidden_layers=6, tie_word_embeddings=False,
                         use_sliding_window=True, sliding_window=4, max_window_layers=3),
    "gemma3": dict(model_type="gemma3_text", num_hidden_layers=6, head_dim=16, sliding_window=4,
                   layer_types=["sliding_attention"] * 5 + ["full_attention"]),
}


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    fields = {**COMMON, **TINY[family]}
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


class RandomTokens(Dataset):
    """Fixed random token rows (labels = inputs): enough to train a tiny model a few steps.

    ``masked``: SFT-like rows whose first (5 * i) % (seq_len - 3) labels are -100 (a "prompt"), so rows, and the
    ranks holding them, differ in how many tokens carry loss.
    """

    def __init__(self, n=16, seq_len=16, vocab=512, seed=0, masked=False):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, vocab, (n, seq_len), generator=g)
        self.labels = self.x.clone()
        if masked:
            for i in range(n):
                self.labels[i, : (5 * i) % (seq_len - 3)] = -100

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.labels[i]}
