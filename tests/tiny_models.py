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


# --- tiny models built to look like real checkpoints ------------------------------------------------------
# Real checkpoints differ from the toy models above in ways that change results: bf16 weights (config dtype
# bfloat16), a tokenizer that adds BOS (Llama-3 through its post-processor, Gemma through ``add_bos_token``;
# Qwen2 adds none), several end-of-sequence ids in generation_config.json (Llama-3.1: <|end_of_text|>,
# <|eot_id|>) and a chat template. ``save_real_like`` writes such a directory.

PAD, BOS, EOS, USER, ASSISTANT, EOT = "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|eot|>"
REAL_SPECIALS = [PAD, BOS, EOS, USER, ASSISTANT, EOT]  # ids 0..5
REAL_EOS_IDS = [2, 5]  # </s> and <|eot|>
REAL_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|eot|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# How each family's real tokenizer adds BOS: "template" (Llama-3: TemplateProcessing in tokenizer.json),
# "flag" (Gemma: add_bos_token in tokenizer_config.json), None (Qwen2: no BOS at all).
BOS_STYLE = {"llama": "template", "mistral": "flag", "qwen2-tied": None, "qwen2-untied": None, "gemma3": "flag"}


def real_like_tokenizer(bos_style: str | None = "template", extra_tokens: int = 0):
    """A byte-level tokenizer (every UTF-8 text encodes; 6 specials + 256 bytes [+ extra merges-free tokens])."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(REAL_SPECIALS + alphabet + [f"x{i}" for i in range(extra_tokens)])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if bos_style == "template":
        tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                           special_tokens=[(BOS, 1)])
    kwargs = {"add_bos_token": True} if bos_style == "flag" else {}
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None if bos_style is None else BOS, eos_token=EOS,
                                 pad_token=PAD, additional_special_tokens=[USER, ASSISTANT, EOT],
                                 clean_up_tokenization_spaces=False, **kwargs)
    hf.chat_template = REAL_CHAT_TEMPLATE
    return hf


def save_real_like(path, family: str = "llama", seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                   tokenizer: bool = True, perturb: float = 0.0):
    """An HF directory like a converted real checkpoint: ``dtype`` weights (bf16), its tokenizer (BOS per
    family), generation_config.json with EOS ids [2, 5] and sampling defaults, and a chat template.
    ``perturb`` adds seeded noise to every weight (so norms differ from 1 between seeds)."""
    from pathlib import Path

    from transformers import GenerationConfig

    path = Path(path)
    model = tiny_model(family, seed=seed)
    if perturb:
        g = torch.Generator().manual_seed(seed + 1000)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * perturb)
    model = model.to(dtype)
    bos = BOS_STYLE[family] is not None
    model.config.bos_token_id = 1 if bos else None
    model.config.eos_token_id = REAL_EOS_IDS[0]
    model.config.pad_token_id = 0
    model.generation_config = GenerationConfig(bos_token_id=model.config.bos_token_id, eos_token_id=REAL_EOS_IDS,
                                               pad_token_id=0, do_sample=True, temperature=0.6, top_p=0.9)
    model.save_pretrained(path)
    if tokenizer:
        real_like_tokenizer(BOS_STYLE[family]).save_pretrained(path)
    return path


def fit_losses(module, steps: int = 3, dataset: Dataset | None = None) -> list[float]:
    """Training loss of every step of a short seeded CPU fit on ``dataset`` (default ``RandomTokens()``), batch 4."""
    import lightning as L
    from torch.utils.data import DataLoader

    losses: list[float] = []

    class Rec(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Rec()])
    trainer.fit(module, train_dataloaders=DataLoader(dataset or RandomTokens(), batch_size=4))
    return losses
