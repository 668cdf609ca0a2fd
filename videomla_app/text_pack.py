"""MiniLM for a machine that cannot install it: a lent GPU has no package index, and what travels
there is capped at 64 MiB, tracked files included (~31 MB), while the model is 87 MB.

Training only ever encodes the world's captions, which use ~200 words. :func:`pack` keeps the
embedding rows of just the word pieces those words tokenize to (the embedding table is half the
model: 30,522 x 384) and stores the rest in fp16: ~22 MB. :func:`unpack` rebuilds an ordinary
model folder (fp32, the other embedding rows zero) for ``VIDEOMLA_MINILM``, with the kept token
ids beside it, so :class:`~videomla_app.text_encoder.MiniLMTextEncoder` refuses any prompt that
needs a dropped row instead of encoding it wrongly. Token states of captions match the packaged
model to fp16 rounding of the weights (tested).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT = "videomla-minilm-pack/1"
EMBED = "embeddings.word_embeddings.weight"
KNOWN_IDS = "known_token_ids.json"  # beside an unpacked model: the only token ids it can encode
# Tokenizer and config files: everything of the packaged folder except the weights.
FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def caption_token_ids(model_dir: Path) -> list[int]:
    """Every token id a world caption (or the empty prompt) can tokenize to, special tokens included."""
    from transformers import AutoTokenizer

    from .world.captions import caption_words

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    ids = set(tok(" ".join(sorted(caption_words())))["input_ids"])
    ids.update(tok.all_special_ids)
    return sorted(ids)


def pack(model_dir: Path, out: Path) -> Path:
    """Write the packed model into folder ``out``; returns its weights file."""
    ids = caption_token_ids(model_dir)
    weights = load_file(str(model_dir / "model.safetensors"))
    packed = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items() if k != EMBED}
    packed["word_embeddings.ids"] = torch.tensor(ids, dtype=torch.int64)
    packed["word_embeddings.rows"] = weights[EMBED][ids].half().contiguous()  # [n_ids, 384]
    out.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        shutil.copyfile(model_dir / f, out / f)
    target = out / "packed.safetensors"
    save_file(packed, str(target), metadata={"format": FORMAT, "vocab_size": str(weights[EMBED].shape[0])})
    return target


def unpack(packed_dir: Path, out: Path) -> Path:
    """Rebuild a model folder that ``transformers`` loads (and ``VIDEOMLA_MINILM`` names)."""
    from safetensors import safe_open

    src = packed_dir / "packed.safetensors"
    if not src.is_file():
        raise FileNotFoundError(f"{packed_dir}: no packed.safetensors (make one with scripts/pack_minilm.py pack)")
    with safe_open(str(src), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{src}: not a packed MiniLM ({meta.get('format')!r}, expected {FORMAT!r})")
    packed = load_file(str(src))
    ids, rows = packed.pop("word_embeddings.ids"), packed.pop("word_embeddings.rows")
    weights = {k: (v.float() if v.is_floating_point() else v) for k, v in packed.items()}
    embed = torch.zeros(int(meta["vocab_size"]), rows.shape[1])  # [vocab, 384]
    embed[ids] = rows.float()
    weights[EMBED] = embed
    out.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        shutil.copyfile(packed_dir / f, out / f)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / KNOWN_IDS).write_text(json.dumps(ids.tolist()))
    return out
