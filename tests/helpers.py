"""Builders every folder's tiny models share: a word-level tokenizer and a seeded tiny Llama.

Plain functions rather than fixtures because some tests need a fresh model or a tokenizer variant.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
PAD, EOS, BOS, UNK = 0, 1, 2, 3
SPECIAL_IDS = dict(pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS)


def word_tokenizer(words, *, adds_bos: bool = False, with_pad: bool = True,
                   padding_side: str = "right") -> PreTrainedTokenizerFast:
    """Whitespace-split words with ids 4.. after the four specials, so tests can spell ids by hand."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIALS + list(words))}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:  # like Gemma / Llama tokenizers, which prepend BOS themselves
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    special = dict(bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    if with_pad:
        special["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side=padding_side, **special)


def tiny_llama(seed: int = 0, **config) -> LlamaForCausalLM:
    """A randomly initialised Llama; seeding here makes every builder's weights reproducible."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**SPECIAL_IDS, **config}))


TINY_HOOK = "blocks.1.hook_resid_post"


def tiny_run_config(tmp_path, model_dir, corpus, out_dir=None, extra: tuple = (), cache=None) -> str:
    """A run config (TOML file) training a TopK SAE for 4 steps on the tiny checkpoint; `extra`
    lines are appended (e.g. a [[penalties]] table), `cache` sets data.cache."""
    path = tmp_path / "run.toml"
    path.write_text("\n".join([
        f'out_dir = "{out_dir or tmp_path / "run"}"',
        "[model]", f'name = "{model_dir}"', f'hook = "{TINY_HOOK}"', "batch_size = 4",
        "[data]", f'dataset = "{corpus}"', "context_length = 16", "shuffle_buffer = 8", "norm_estimate_batches = 2",
        *([f'cache = "{cache}"'] if cache else []),
        "[sae]", 'architecture = "topk"', "d_sae = 64", "k = 4",
        "[train]", "tokens = 512", "batch_size = 128", "checkpoint_every = 2", "log_every = 1", "lr = 1e-3",
        *extra,
    ]) + "\n")
    return str(path)


def hf_cache_repo(cache, repo_id: str, folder, commit: str = "0123456789abcdef0123456789abcdef01234567",
                  refs: tuple = ("main",)):
    """Copy the files under `folder` into `cache` in the HF hub cache's exact layout, as a download
    leaves it: models--ORG--REPO/blobs/<sha256> holding the bytes, refs/<ref> holding the commit,
    snapshots/<commit>/<path> a relative symlink to its blob. The real huggingface_hub then
    resolves hf:// references from it offline. Returns the snapshot folder."""
    import hashlib
    import os
    from pathlib import Path

    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def killed_after(items, n):
    """A data source that dies (like a killed process) when asked for item n."""
    for i, x in enumerate(items):
        if i == n:
            raise KeyboardInterrupt("simulated kill")
        yield x
