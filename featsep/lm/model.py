"""`LanguageModel`: an HF causal LM plus its tokenizer, addressed by hook names."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from .hooks import HOOK_KINDS, base_model_and_layers, parse_hook


class _StopForward(Exception):
    """Raised by the capture hook to end a forward pass right after the hooked layer."""


def hidden_states(output) -> Tensor:
    """The hidden states of a decoder layer's output (a tensor, or a tuple led by one)."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden_states(output, new: Tensor):
    """A decoder layer's output with its hidden states swapped for `new`, the rest kept."""
    return (new, *output[1:]) if isinstance(output, tuple) else new


class LanguageModel:
    """A causal LM (eval mode) with hook-point access by TransformerLens-style names.

    Build one with `featsep.lm.load_lm(name)` or wrap a model you already have with
    `LanguageModel.from_hf(model, tokenizer)`.
    """

    def __init__(self, model: nn.Module, tokenizer=None, name: Optional[str] = None):
        self.model = model.eval()
        self.base_model, self.layers = base_model_and_layers(model)
        self.name = name or getattr(model.config, "name_or_path", None) or model.config.model_type
        self.tokenizer = tokenizer
        if tokenizer is not None:
            # Gemma 3 pads on the left by default; everything here assumes right padding.
            tokenizer.padding_side = "right"
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_hf(cls, model: nn.Module, tokenizer=None, name: Optional[str] = None) -> "LanguageModel":
        """Wrap an HF causal LM (and optionally its tokenizer); `tokenize` needs the tokenizer."""
        return cls(model, tokenizer=tokenizer, name=name)

    # ---- facts about the model -------------------------------------------------------------
    @property
    def architecture(self) -> str:
        return self.model.config.model_type

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def _token_id(self, attribute: str) -> Optional[int]:
        source = self.tokenizer if self.tokenizer is not None else self.model.config
        value = getattr(source, attribute, None)
        if isinstance(value, (list, tuple)):  # some configs list several eos ids
            value = value[0] if value else None
        return value

    @property
    def bos_token_id(self) -> int:
        """The BOS id; models without one (GPT-2 style, Qwen2) use EOS as BOS, like TransformerLens."""
        bos = self._token_id("bos_token_id")
        bos = bos if bos is not None else self._token_id("eos_token_id")
        if bos is None:
            raise ValueError(f"{self.name} defines neither a BOS nor an EOS token; pass token ids yourself")
        return int(bos)

    @property
    def pad_token_id(self) -> int:
        pad = self._token_id("pad_token_id")
        return int(pad) if pad is not None else self.bos_token_id

    @property
    def special_token_ids(self) -> set[int]:
        """Ids of pad, eos and bos (a set: in GPT-2 all three are the same token)."""
        ids = {self._token_id(a) for a in ("pad_token_id", "eos_token_id", "bos_token_id")}
        ids.add(self.bos_token_id)
        return {int(i) for i in ids if i is not None}

    def valid_hooks(self) -> list[str]:
        return [f"blocks.{layer}.{kind}" for kind in HOOK_KINDS for layer in range(self.n_layers)]

    def hook_layer(self, hook: str) -> int:
        """The decoder layer a hook name refers to, checked against this model's depth."""
        layer = parse_hook(hook)
        if not 0 <= layer < self.n_layers:
            last = self.n_layers - 1
            raise ValueError(
                f"layer {layer} out of range for {self.name} ({self.n_layers} layers: "
                f"blocks.0..{last}.hook_resid_post); pick a layer in 0..{last}"
            )
        return layer

    def __repr__(self) -> str:
        return (
            f"LanguageModel({self.name!r}, {self.architecture}, d_model={self.d_model}, "
            f"n_layers={self.n_layers}, device={self.device}, dtype={self.dtype})"
        )

    # ---- forwards ------------------------------------------------------------------------
    def _inputs(self, input_ids: Tensor, attention_mask: Optional[Tensor]) -> dict:
        device = self.device
        inputs = {"input_ids": input_ids.to(device), "use_cache": False}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask.to(device)
        return inputs

    def forward_to_hook(self, input_ids: Tensor, attention_mask: Optional[Tensor], hook: str) -> Tensor:
        """Activations [B, L, d] at `hook`; the forward stops right after the hooked layer.

        Runs the base model only (no later layers, final norm or LM head): this is the
        harvesting hot path. The result is an ordinary tensor (no_grad, not inference mode),
        so it can be fed to a trained SAE.
        """
        layer = self.hook_layer(hook)
        captured: list[Tensor] = []

        def capture(_module, _args, output):
            captured.append(hidden_states(output))
            raise _StopForward

        handle = self.layers[layer].register_forward_hook(capture)
        try:
            with torch.no_grad():
                self.base_model(**self._inputs(input_ids, attention_mask))
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"layer {layer} of {self.name} never ran; is the model's layer list wrong?")
        return captured[0]

    @contextlib.contextmanager
    def hooked(self, hook: str, fn: Optional[Callable[[Tensor], Tensor]]) -> Iterator[nn.Module]:
        """Yields the HF model with the hook's activations replaced by fn(acts) in every forward
        run inside the block, so callers can pass their own arguments (e.g. past_key_values: a
        cached prefix, then continuations on top of it). fn None: no hook (the clean model).

        fn gets [B, L, d] (L: the new positions only when a cache is passed) and must return the
        same shape; the result is cast back to the model's dtype.
        """
        if fn is None:
            yield self.model
            return
        layer = self.hook_layer(hook)

        def replace(_module, _args, output):
            acts = hidden_states(output)
            new = fn(acts)
            if not isinstance(new, Tensor) or new.shape != acts.shape:
                got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
                raise ValueError(f"hooked forward: fn must return a tensor of shape {tuple(acts.shape)}, got {got}")
            return with_hidden_states(output, new.to(device=acts.device, dtype=acts.dtype))

        handle = self.layers[layer].register_forward_hook(replace)
        try:
            yield self.model
        finally:
            handle.remove()

    def run_with_hook(
        self,
        input_ids: Tensor,
        attention_mask: Optional[Tensor],
        hook: str,
        fn: Callable[[Tensor], Tensor],
    ) -> Tensor:
        """Logits [B, L, vocab] of a full forward where the hook's activations are replaced by fn(acts)."""
        with self.hooked(hook, fn) as model, torch.no_grad():
            return model(**self._inputs(input_ids, attention_mask)).logits

    def logits(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Logits [B, L, vocab] of a plain forward."""
        with torch.no_grad():
            return self.model(**self._inputs(input_ids, attention_mask)).logits

    # ---- text ------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], max_length: int, add_bos: bool = True) -> tuple[Tensor, Tensor]:
        """Right-padded (input_ids, attention_mask) [B, <=max_length] on CPU.

        With add_bos, every row has exactly one BOS, at position 0, whatever the tokenizer's
        own add_bos setting; rows are truncated to max_length tokens including the BOS.
        """
        if self.tokenizer is None:
            raise ValueError(f"{self.name} was wrapped without a tokenizer; pass tokenizer= to LanguageModel.from_hf")
        if isinstance(texts, str):
            texts = [texts]
        if max_length < (2 if add_bos else 1):
            raise ValueError(f"max_length must leave room for at least one text token, got {max_length}")
        budget = max_length - 1 if add_bos else max_length
        encoded = self.tokenizer(
            list(texts), add_special_tokens=False, truncation=True, max_length=budget
        )["input_ids"]
        bos = self.bos_token_id
        rows = [([bos] if add_bos else []) + list(ids) for ids in encoded]
        width = max((len(r) for r in rows), default=0)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        return input_ids, attention_mask
