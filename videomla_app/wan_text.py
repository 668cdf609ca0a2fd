"""The 1.3B models' text encoder: umT5-XXL's encoder (``transformers.UMT5EncoderModel``), as Wan2.1
uses it, behind the ``TextEncoder`` protocol of ``encoders.py``.

Prompts are cleaned and tokenised like diffusers' ``WanPipeline`` (padding to 512 tokens,
truncation, ``</s>`` appended), run with the attention mask, and the states of the padding
tokens are zeroed: ``encode`` returns ``[B, 512, 4096]``. The encoder is 5.7 B parameters
(11.4 GB in bf16), about four times the DiT, and a prompt is encoded once per run (the pipeline
caches each prompt's cross-attention K/V), so it can live on the CPU between encodes
(``offload``): it is moved to the GPU for an encode and back afterwards.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import torch

TEXT_LEN = 512  # Wan pads every prompt to 512 umT5 tokens


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: ftfy when installed, HTML entities unescaped, whitespace collapsed."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


class WanTextEncoder:
    """umT5 encoder + tokenizer: prompts -> zero-padded token states ``[B, text_len, d_model]``."""

    def __init__(self, model: Any, tokenizer: Any, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.bfloat16, text_len: int = TEXT_LEN,
                 offload: bool = False) -> None:
        self.tokenizer, self.text_len = tokenizer, text_len
        self.device, self.dtype = torch.device(device), dtype
        self.text_dim = int(model.config.d_model)
        self.offloaded = offload  # keep the weights on the CPU between encodes
        home = torch.device("cpu") if offload else self.device
        self.model = model.to(device=home, dtype=dtype).eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, text_encoder_subfolder: str = "text_encoder",
                        tokenizer_subfolder: str = "tokenizer", device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.bfloat16, text_len: int = TEXT_LEN, offload: bool = False,
                        local_files_only: bool = True) -> "WanTextEncoder":
        """Load from a diffusers folder (e.g. a Wan2.1-T2V-1.3B-Diffusers snapshot)."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        tok = AutoTokenizer.from_pretrained(str(path), subfolder=tokenizer_subfolder,
                                            local_files_only=local_files_only)
        model = UMT5EncoderModel.from_pretrained(str(path), subfolder=text_encoder_subfolder, dtype=dtype,
                                                 local_files_only=local_files_only)
        return cls(model, tok, device=device, dtype=dtype, text_len=text_len, offload=offload)

    @property
    def param_device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids and attention_mask, both [B, text_len] (padded to text_len, truncated beyond)."""
        t = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", max_length=self.text_len,
                           truncation=True, add_special_tokens=True, return_attention_mask=True,
                           return_tensors="pt")
        return t["input_ids"], t["attention_mask"]

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Token states [B, text_len, d_model] in ``dtype`` on ``device``, zero past each prompt's tokens.

        Each distinct prompt is run once, on its own: a prompt's states do not depend on what it is
        batched with (the pipeline caches them per prompt, and sessions replay them exactly).
        """
        unique = list(dict.fromkeys(prompts))
        if self.param_device != self.device:
            self.model.to(self.device)
        try:
            states = {}
            for p in unique:
                ids, mask = self.tokenize([p])
                mask = mask.to(self.device)
                h = self.model(input_ids=ids.to(self.device), attention_mask=mask).last_hidden_state
                states[p] = (h * mask[..., None]).to(self.dtype)[0]  # [text_len, d_model]
        finally:
            if self.offloaded:
                self._to_cpu()
        return torch.stack([states[p] for p in prompts])

    def offload(self) -> None:
        """Move the weights to the CPU now and keep them there between encodes."""
        self.offloaded = True
        self._to_cpu()

    def _to_cpu(self) -> None:
        if self.param_device.type != "cpu":
            self.model.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())
