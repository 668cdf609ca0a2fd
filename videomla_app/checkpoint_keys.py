"""Map a checkpoint's tensor names onto our :class:`~videomla_app.model.CausalDiT` state dict.

Our parameter names are Wan2.1's, so Wan and Self-Forcing checkpoints map by name (Self-Forcing
saves ``{"generator": sd, "generator_ema": sd, "critic": sd}`` whose keys carry the
``WanDiffusionWrapper``'s ``model.`` prefix; the reader strips it). Diffusers-format Wan keys
(``attn1.to_q``, ``condition_embedder.*``, ``scale_shift_table``...) are renamed to Wan's.

VideoMLA's code is not public, so the names of its MLA self-attention tensors are unknown
(PAPER §0). Per block they are identified by shape among the tensors under the block's
self-attention module, with name patterns (``kv_a``, ``w_dkv``, ``q_b``, ``k_rope``...) breaking
ties; the expected shapes come from our model's config (PAPER §4.6 at full size: W_dKV 192x1536,
W_dQ 768x1536, W_uK 1152x192, W_uV 1536x192, W_uQ 1152x768, W_rK 32x1536, W_rQ 384x768, norms
192 and 768, W_O 1536x1536). Fused tensors are split when their shape says which: [W_uK; W_uV],
[W_dKV; W_rK], [W_uQ; W_rQ] and [W_dQ; W_dKV; W_rK] stacked along rows, in that order (DeepSeek's
``wkv_b`` / ``wq_b`` names: interleaved per head). Two tensors that fit the same slot and that no
name tells apart are reported as ambiguous, never guessed.

Everything here works on shapes only; :func:`split_tensor` applies a row of the plan to a tensor.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import torch

from .config import ModelConfig

Shape = tuple[int, ...]

# Training-only heads that Self-Forcing's wrapper may carry next to ``model.`` (GAN classifier).
TRAINING_ONLY = ("_cls_pred_branch.", "_gan_ca_blocks.", "_register_tokens.")

# Diffusers' WanTransformer3DModel names -> Wan's (diffusers/scripts/convert_wan_to_diffusers.py;
# diffusers' ``norm2`` is Wan's cross-attention ``norm3``; Wan's ``norm2`` has no parameters).
_DIFFUSERS = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^(blocks\.\d+)\.ffn\.net\.0\.proj\.", r"\1.ffn.0."),
    (r"^(blocks\.\d+)\.ffn\.net\.2\.", r"\1.ffn.2."),
    (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),
    (r"^(blocks\.\d+)\.attn1\.to_out\.0\.", r"\1.self_attn.o."),
    (r"^(blocks\.\d+)\.attn2\.to_out\.0\.", r"\1.cross_attn.o."),
    (r"^(blocks\.\d+)\.attn1\.to_([qkv])\.", r"\1.self_attn.\2."),
    (r"^(blocks\.\d+)\.attn2\.to_([qkv])\.", r"\1.cross_attn.\2."),
    (r"^(blocks\.\d+)\.attn1\.(norm_[qk])\.", r"\1.self_attn.\2."),
    (r"^(blocks\.\d+)\.attn2\.(norm_[qk])\.", r"\1.cross_attn.\2."),
]

# A tensor of a block's self-attention, whatever the module is called.
_SELF_ATTN = re.compile(
    r"^blocks\.(\d+)\.(?:self_attn|self_attention|attention|attn1|attn|mla)\.(.+)\.(weight|bias)$")

# Name hints per MLA slot, searched in the tensor's compact module name ("kv_a_proj" -> "kvaproj").
# They only break ties between slots of the same shape.
_HINTS = {
    "w_dkv.weight": r"dkv|kvdown|downkv|ckv|kvlatent|kvcompress|^w?kva$|kvaproj",
    "kv_norm.weight": r"kvnorm|normkv|kvln|kvlayernorm|kvalayernorm|ckvnorm|normckv|^normk$|^knorm$",
    "w_kr.weight": r"^w?kr$|^w?rk$|krope|ropek|kpe|krproj",
    "w_dq.weight": r"dq|qdown|downq|^cq|qlatent|qcompress|^w?qa$|qaproj",
    "q_norm.weight": r"qnorm|normq|qln|qalayernorm|cqnorm|normcq",
    "w_uq.weight": r"uq|qup|upq|qnope|^w?qb$|qbproj",
    "w_qr.weight": r"^w?qr$|^w?rq$|qrope|ropeq|qpe|qrproj",
    "w_uk.weight": r"uk|kup|upk|knope",
    "w_uv.weight": r"uv|vup|upv",
    "o.weight": r"^w?o$|^out|oproj|outproj|toout",
    "o.bias": r"^w?o$|^out|oproj|outproj|toout",
}
# Fused slots: (name, parts stacked along rows in this order, name hint).
_FUSED = [
    ("kv_up", ("w_uk.weight", "w_uv.weight"), r"ukv|kvup|upkv|^w?kvb$|kvbproj"),
    ("kv_down", ("w_dkv.weight", "w_kr.weight"), r"^w?kva$|kvaproj|dkvkr|kvdown"),
    ("q_up", ("w_uq.weight", "w_qr.weight"), r"^w?qb$|qbproj|uqr|qup"),
    ("down", ("w_dq.weight", "w_dkv.weight", "w_kr.weight"), r"qkva|dqkv|down"),
]
# DeepSeek-V3 names whose up-projections interleave per head ([H, nope + v, d_c]).
_PER_HEAD = re.compile(r"^w?kvb$|kvbproj|^w?qb$|qbproj")

STATUSES = ("mapped", "ignored", "unmatched", "ambiguous", "mismatch")


@dataclass
class KeyMap:
    """What happens to one checkpoint tensor."""

    source: str  # checkpoint name (wrapper prefixes stripped)
    shape: Shape
    dtype: str
    status: str = "unmatched"  # one of STATUSES
    targets: tuple[str, ...] = ()  # our keys it fills (several when a fused tensor is split)
    how: str = ""  # name | renamed | shape | name+shape | shape, by elimination
    parts: tuple[int, ...] = ()  # fused: rows of each target (per head when per_head)
    per_head: int = 0  # fused with heads interleaved: number of heads
    note: str = ""  # expected shape, candidates, ...

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"], d["targets"], d["parts"] = list(self.shape), list(self.targets), list(self.parts)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "KeyMap":
        tuples = {k: tuple(d[k]) for k in ("shape", "targets", "parts")}
        return cls(**{**d, **tuples})


@dataclass
class KeyPlan:
    rows: list[KeyMap]
    missing: dict[str, Shape]  # our keys that nothing fills
    notes: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=16)
def _target_shapes(cfg: ModelConfig) -> tuple[tuple[str, Shape], ...]:
    from .model import CausalDiT

    with torch.device("meta"):
        model = CausalDiT(cfg)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def target_shapes(cfg: ModelConfig) -> dict[str, Shape]:
    """Our state-dict names and shapes for a config (built on the meta device: no memory)."""
    return dict(_target_shapes(cfg))


def fmt_shape(shape: Shape) -> str:
    return "×".join(map(str, shape)) if shape else "scalar"


def _natural(key: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def is_diffusers(names) -> bool:
    return any(n.startswith("condition_embedder.") or ".attn1.to_q." in n for n in names)


def rename(key: str, diffusers: bool) -> str:
    """A checkpoint name in Wan's vocabulary (our names): diffusers renames, self-attention aliases."""
    if diffusers:
        for pat, rep in _DIFFUSERS:
            new = re.sub(pat, rep, key)
            if new != key:
                return new
    m = _SELF_ATTN.match(key)
    return f"blocks.{m[1]}.self_attn.{m[2]}.{m[3]}" if m else key


def _compact(sub: str) -> str:
    """Last non-numeric module name, lowercase alphanumerics only: 'mla.kv_a_proj' -> 'kvaproj'."""
    parts = [p for p in sub.split(".") if not p.isdigit()] or [sub]
    return re.sub(r"[^a-z0-9]", "", parts[-1].lower())


@dataclass(frozen=True)
class _Slot:
    name: str
    parts: tuple[str, ...]  # our self-attention keys it fills
    shape: Shape
    hint: str

    @property
    def leaf(self) -> str:
        return self.parts[0].rsplit(".", 1)[1]


def _slots(free: dict[str, Shape]) -> list[_Slot]:
    slots = [_Slot(r, (r,), s, _HINTS.get(r, "")) for r, s in free.items()]
    for name, parts, hint in _FUSED:
        shapes = [free.get(p) for p in parts]
        if all(s is not None and len(s) == 2 for s in shapes) and len({s[1] for s in shapes}) == 1:
            slots.append(_Slot(name, parts, (sum(s[0] for s in shapes), shapes[0][1]), hint))
    return slots


def _resolve_block(block: int, items: list[tuple[str, str, str, Shape, str]], free: dict[str, Shape],
                   heads: int) -> list[KeyMap]:
    """Identify one block's un-named self-attention tensors by shape (then name hints)."""
    slots = _slots(free)
    taken: set[str] = set()
    pending = list(items)
    done: dict[str, KeyMap] = {}

    def fits(it, all_slots=False):
        _, sub, leaf, shape, _ = it
        return [s for s in slots if s.shape == shape and s.leaf == leaf
                and (all_slots or not set(s.parts) & taken)]

    first = {it[0]: len(fits(it)) for it in items}
    while pending:
        claims = {}
        for it in pending:
            cands = fits(it)
            hinted = [s for s in cands if s.hint and re.search(s.hint, _compact(it[1]))]
            if len(cands) == 1:
                how = "name+shape" if hinted else ("shape" if first[it[0]] == 1 else "shape, by elimination")
                claims[it[0]] = (it, cands[0], how)
            elif len(hinted) == 1:
                claims[it[0]] = (it, hinted[0], "name+shape")
        owners = defaultdict(list)
        for src, (_, slot, _) in claims.items():
            for p in slot.parts:
                owners[p].append(src)
        clash = {src for srcs in owners.values() if len(srcs) > 1 for src in srcs}
        progress = False
        for src, (it, slot, how) in claims.items():
            if src in clash:
                continue
            _, sub, _, shape, dtype = it
            per_head = heads if len(slot.parts) > 1 and _PER_HEAD.search(_compact(sub)) else 0
            rows = tuple(free[p][0] // (per_head or 1) for p in slot.parts) if len(slot.parts) > 1 else ()
            targets = tuple(f"blocks.{block}.self_attn.{p}" for p in slot.parts)
            done[src] = KeyMap(src, shape, dtype, "mapped", targets, how, rows, per_head)
            taken |= set(slot.parts)
            pending.remove(it)
            progress = True
        if not progress:
            break
    for it in pending:
        src, sub, leaf, shape, dtype = it
        cands = fits(it, all_slots=True)
        if cands:
            note = "fits " + ", ".join(s.name for s in cands) + " (same shape; no name tells them apart)"
            done[src] = KeyMap(src, shape, dtype, "ambiguous", note=note)
            continue
        named = [s for s in slots if len(s.parts) == 1 and s.leaf == leaf and s.hint
                 and re.search(s.hint, _compact(sub))]
        if len(named) == 1:
            done[src] = KeyMap(src, shape, dtype, "mismatch", (f"blocks.{block}.self_attn.{named[0].name}",),
                               note=f"named like {named[0].name}, which is {fmt_shape(named[0].shape)}")
        else:
            done[src] = KeyMap(src, shape, dtype, "unmatched")
    return [done[it[0]] for it in items]


def plan_mapping(source: dict[str, tuple[Shape, str]], target: dict[str, Shape], heads: int) -> KeyPlan:
    """Decide, for every checkpoint tensor (name -> (shape, dtype)), which of our keys it fills."""
    diffusers = is_diffusers(source)
    mla = any(".self_attn.w_dkv." in k for k in target)  # shapes identify only MLA tensors
    rows: dict[str, KeyMap] = {}
    filled: set[str] = set()
    by_block: dict[int, list] = defaultdict(list)
    for src in sorted(source, key=_natural):
        shape, dtype = source[src]
        shape = tuple(shape)
        if src.startswith(TRAINING_ONLY):
            rows[src] = KeyMap(src, shape, dtype, "ignored",
                               note="training-only head (Self-Forcing GAN branch)")
            continue
        name = rename(src, diffusers)
        if name in target:
            if target[name] == shape and name not in filled:
                rows[src] = KeyMap(src, shape, dtype, "mapped", (name,), "name" if name == src else "renamed")
                filled.add(name)
            elif target[name] == shape:
                rows[src] = KeyMap(src, shape, dtype, "ambiguous", note=f"a second tensor for {name}")
            else:
                rows[src] = KeyMap(src, shape, dtype, "mismatch", (name,),
                                   note=f"ours is {fmt_shape(target[name])}")
            continue
        m = _SELF_ATTN.match(name)
        if m and mla:
            by_block[int(m[1])].append((src, m[2], m[3], shape, dtype))
        else:
            rows[src] = KeyMap(src, shape, dtype, "unmatched")
    for block, items in by_block.items():
        prefix = f"blocks.{block}.self_attn."
        free = {k[len(prefix):]: s for k, s in target.items() if k.startswith(prefix) and k not in filled}
        for row in _resolve_block(block, items, free, heads):
            rows[row.source] = row
            if row.status == "mapped":
                filled.update(row.targets)
    ordered = [rows[s] for s in sorted(rows, key=_natural)]
    missing = {k: s for k, s in target.items() if k not in filled}
    return KeyPlan(ordered, missing, _notes(ordered, missing, target))


def _notes(rows: list[KeyMap], missing: dict[str, Shape], target: dict[str, Shape]) -> list[str]:
    notes = []
    mla_model = any(".self_attn.w_dkv." in k for k in target)
    dense_src = any(r.status != "mapped" and re.search(r"\.self_attn\.[qkv]\.weight$", rename(r.source, False))
                    for r in rows)
    if mla_model and dense_src:
        notes.append("the checkpoint has dense q/k/v self-attention (Wan / Self-Forcing): load it with a "
                     "dense model (self-forcing-1.3b) or convert it to MLA first")
    if not mla_model and any(".self_attn.q." in k for k in missing) and any(
            _SELF_ATTN.match(rename(r.source, False)) and r.status != "mapped" for r in rows):
        notes.append("the checkpoint's self-attention is not dense q/k/v (an MLA checkpoint?): "
                     "use an MLA model")
    if any(len(r.targets) > 1 for r in rows):
        notes.append("fused tensors were split along rows in the paper's order ([W_uK; W_uV], [W_dKV; W_rK], "
                     "[W_uQ; W_rQ], [W_dQ; W_dKV; W_rK]; per head for DeepSeek-style kv_b / q_b names): an "
                     "assumption, VideoMLA's layout is unpublished")
    return notes


def split_tensor(row: KeyMap, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Our tensors from one mapped checkpoint tensor (a fused tensor gives one per target)."""
    if len(row.targets) == 1:
        return {row.targets[0]: t}
    if row.per_head:
        pieces = t.reshape(row.per_head, sum(row.parts), -1).split(list(row.parts), dim=1)
        return {k: p.reshape(-1, t.shape[-1]).contiguous() for k, p in zip(row.targets, pieces)}
    return {k: p.clone() for k, p in zip(row.targets, t.split(list(row.parts), dim=0))}
