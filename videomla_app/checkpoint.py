"""Safe checkpoint loading for the DiT: read, map onto our names, report, convert once.

Policy:

- ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` files are read only with
  ``torch.load(weights_only=True, mmap=True)``: tensors and plain containers, never code. A file
  whose pickle wants anything else is refused with one line, and nothing in it runs.
- ``.safetensors`` files (or a folder of shards) are read through safetensors, memory-mapped.
- Self-Forcing-style dicts: ``generator_ema`` is preferred, else ``generator`` (then ``model``,
  ``state_dict``, ``module``); ``critic`` and optimizer states are never picked.
- Wrapper prefixes (``model.`` of Self-Forcing's wrapper, FSDP / activation-checkpointing /
  ``torch.compile`` infixes, DDP's ``module.``) are stripped.
- Names are mapped by :mod:`.checkpoint_keys`; anything unmatched, missing, ambiguous or of the
  wrong shape is listed in one table and the load is refused unless ``allow_missing``.
- Once mapped, the tensors are saved under our names as safetensors in the user cache
  (``converted/<key>.safetensors``, written atomically); later loads memory-map that file and never
  touch the original pickle again. The key hashes the source file's first MiB, size and mtime, and
  the target model's shapes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic import replacing
from .checkpoint_keys import KeyMap, Shape, fmt_shape, plan_mapping, split_tensor, target_shapes
from .config import ModelConfig
from .errors import RunError

FORMAT_VERSION = 1
ENTRIES = ("generator_ema", "generator", "model", "state_dict", "module")
_INFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")


class CheckpointTensors(dict):
    """Tensors of one checkpoint by (prefix-stripped) name, plus where they came from."""

    def __init__(self, tensors: dict, *, path: str, fmt: str, entry: str | None = None,
                 entries: tuple[str, ...] = (), prefix: str = "") -> None:
        super().__init__(tensors)
        self.path, self.format, self.entry, self.entries, self.prefix = path, fmt, entry, entries, prefix

    def shapes(self) -> dict[str, tuple[Shape, str]]:
        return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in self.items()}


class CheckpointMismatch(RunError):
    """A checkpoint that does not fill the model exactly; ``report`` holds the table."""

    def __init__(self, message: str, report: "LoadReport") -> None:
        super().__init__(message)
        self.report = report


# -- reading ------------------------------------------------------------------------------------
def _torch_load(path: Path):
    def load(mmap: bool):
        with warnings.catch_warnings():  # pickle-protocol chatter; a refusal is reported below
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            return load(True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return load(False)  # legacy (non-zip) format cannot be memory-mapped; still weights only
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)|[Uu]nsupported operand \d+", str(e))
        what = (f"it holds Python objects or code, not only tensors (wants {found[1]})" if found and found[1]
                else "it is not a weights-only PyTorch file" + (f" ({found[0]})" if found else ""))
        raise RunError(f"refusing to load {path}: {what}; videomla reads .pt files with "
                       f"torch.load(weights_only=True) and never runs their code (convert it to .safetensors "
                       f"with the tool that made it)") from None
    except (OSError, EOFError, ValueError, RuntimeError) as e:
        raise RunError(f"cannot read {path} as a PyTorch checkpoint: {str(e).splitlines()[0]}") from None


def _load_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            out.update(load_file(str(f)))  # memory-mapped by safetensors
        except (SafetensorError, OSError) as e:
            raise RunError(f"cannot read {f} as safetensors: {e}") from None
    return out


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _select(obj, path: Path) -> tuple[dict, str | None, tuple[str, ...]]:
    """The generator's state dict inside a training checkpoint (EMA first)."""
    if not isinstance(obj, dict):
        raise RunError(f"{path}: expected a dict of tensors, found a {type(obj).__name__}")
    entries = tuple(str(k) for k, v in obj.items() if isinstance(v, dict))
    for name in ENTRIES:
        if _is_tensor_dict(obj.get(name)):
            return obj[name], name, entries
    if _is_tensor_dict(obj):
        return obj, None, entries
    raise RunError(f"{path}: no model weights found (entries: {', '.join(map(str, obj)) or 'none'}; "
                   f"looked for {', '.join(ENTRIES)} or a flat dict of tensors)")


def _model_prefix(keys) -> str:
    """What stands in front of ``patch_embedding.weight`` (else of ``blocks.0.``): '' or 'model.'."""
    for anchor in (r"^(.*?)patch_embedding\.weight$", r"^(.*?)blocks\.0\."):
        found = [m[1] for k in keys if (m := re.match(anchor, k)) and (m[1] == "" or m[1].endswith("."))]
        if found:
            return min(found, key=len)
    return ""


def _strip(tensors: dict, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Drop wrapper infixes, then the prefix in front of the model (``model.`` in Self-Forcing)."""
    clean: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            continue
        k = str(k)
        for infix in _INFIXES:
            k = k.replace(infix, "")
        clean[k] = v
    if clean and all(k.startswith("module.") for k in clean):  # DDP
        clean = {k[len("module."):]: v for k, v in clean.items()}
    prefix = _model_prefix(clean)
    if not prefix:
        return clean, ""
    out: dict[str, torch.Tensor] = {}
    for k, v in clean.items():
        name = k[len(prefix):] if k.startswith(prefix) else k
        if name in out:
            raise RunError(f"{path}: two tensors are called {name!r} once {prefix!r} is stripped")
        out[name] = v
    return out, prefix


def read_checkpoint(path: str | os.PathLike) -> CheckpointTensors:
    """Read a DiT checkpoint safely: weights-only ``torch.load`` or safetensors; EMA weights first.

    Returns the tensors by name, with the wrapper prefixes stripped. Raises :class:`RunError`
    (one line) for unreadable files and for pickles that would need code to load.
    """
    p = Path(path)
    if not p.exists():
        raise RunError(f"no such checkpoint: {p}")
    if p.is_dir():
        shards = sorted(p.glob("*.safetensors"))
        if not shards:
            torch_files = sorted(f for f in p.iterdir() if f.suffix in _TORCH_SUFFIXES)
            if len(torch_files) != 1:
                raise RunError(f"{p}: expected *.safetensors shards or one .pt file in the folder")
            return read_checkpoint(torch_files[0])
        obj, fmt = _load_safetensors(shards), "safetensors"
    elif p.suffix == ".safetensors":
        obj, fmt = _load_safetensors([p]), "safetensors"
    else:
        obj, fmt = _torch_load(p), "torch (weights only)"
    tensors, entry, entries = _select(obj, p)
    tensors, prefix = _strip(tensors, p)
    return CheckpointTensors(tensors, path=str(p), fmt=fmt, entry=entry, entries=entries, prefix=prefix)


# -- report -------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """Every checkpoint tensor's fate and every model key nothing fills."""

    path: str
    model: str
    rows: list[KeyMap]
    missing: dict[str, Shape]
    notes: list[str] = field(default_factory=list)
    format: str = ""
    entry: str | None = None
    entries: tuple[str, ...] = ()
    prefix: str = ""
    cache_path: str | None = None  # converted safetensors (written or read)
    from_cache: bool = False

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)

    @property
    def mapped_keys(self) -> int:
        return sum(len(r.targets) for r in self.rows if r.status == "mapped")

    @property
    def problems(self) -> int:
        return len(self.missing) + sum(self.count(s) for s in ("unmatched", "ambiguous", "mismatch"))

    @property
    def ok(self) -> bool:
        return self.problems == 0

    def summary(self) -> str:
        total = self.mapped_keys + len(self.missing)
        parts = [f"{self.mapped_keys}/{total} model tensors filled from {self.count('mapped')} "
                 "checkpoint tensors"]
        for label, n in (("missing", len(self.missing)), ("unmatched", self.count("unmatched")),
                         ("ambiguous", self.count("ambiguous")), ("wrong shape", self.count("mismatch")),
                         ("ignored", self.count("ignored"))):
            if n:
                parts.append(f"{n} {label}")
        return ", ".join(parts)

    def source_line(self) -> str:
        bits = [self.format]
        if self.entry:
            others = [e for e in self.entries if e != self.entry]
            bits.append(f"entry '{self.entry}'" + (f" (also: {', '.join(others)})" if others else ""))
        if self.prefix:
            bits.append(f"prefix '{self.prefix}' stripped")
        if self.from_cache:
            bits.append(f"converted copy {self.cache_path}")
        return ", ".join(b for b in bits if b)

    # -- rendering ----------------------------------------------------------------------------
    def grouped(self, problems_only: bool = False) -> list[tuple[str, str, str, str, str, str]]:
        """Table rows (checkpoint tensor, shape, dtype, our key, status, note), blocks folded."""
        groups: dict[tuple, list[int]] = {}
        order: list[tuple] = []

        def add(src, shape, dtype, ours, status, note):
            blocks = {int(b) for b in re.findall(r"blocks\.(\d+)\.", src + " " + ours)}
            key = (re.sub(r"blocks\.\d+\.", "blocks.*.", src), shape, dtype,
                   re.sub(r"blocks\.\d+\.", "blocks.*.", ours), status, note)
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].extend(sorted(blocks)[:1])

        for r in self.rows:
            if problems_only and r.status in ("mapped", "ignored"):
                continue
            status = r.status if r.status != "mapped" else f"mapped ({r.how})"
            if len(r.targets) > 1:
                kind = "per head" if r.per_head else "rows"
                status = f"split by {kind} ({r.how})"
            ours = " + ".join(r.targets) if r.status != "ambiguous" else ""
            ours = "=" if ours == r.source else ours
            add(r.source, fmt_shape(r.shape), r.dtype, ours, status, r.note)
        for k, s in self.missing.items():
            add("—", fmt_shape(s), "", k, "missing", "")
        out = []
        for key in order:
            blocks = groups[key]
            label = _ranges(blocks)
            src, shape, dtype, ours, status, note = key
            if label:
                src, ours = (x.replace("blocks.*.", f"blocks.{label}.") for x in (src, ours))
            out.append((src, shape, dtype, ours, status, note))
        return out

    def table(self, problems_only: bool = False, title: str | None = None):
        from rich.table import Table

        t = Table(title=title, show_lines=False, caption="our key '=': the same name")
        t.add_column("checkpoint tensor", overflow="fold", ratio=3)
        t.add_column("shape", no_wrap=True)
        t.add_column("dtype", no_wrap=True)
        t.add_column("our key", overflow="fold", ratio=3)
        t.add_column("status", overflow="fold", ratio=2)
        for src, shape, dtype, ours, status, note in self.grouped(problems_only):
            t.add_row(src, shape, dtype, ours, status + (f": {note}" if note else ""))
        return t

    def render(self, problems_only: bool = False, width: int = 140) -> str:
        from rich.console import Console

        buf = io.StringIO()
        console = Console(file=buf, width=width, color_system=None, force_terminal=False, highlight=False)
        console.print(self.table(problems_only))
        for n in self.notes:
            console.print(f"note: {n}")
        return buf.getvalue().rstrip()

    def as_dict(self) -> dict:
        return {"path": self.path, "model": self.model, "format": self.format, "entry": self.entry,
                "entries": list(self.entries), "prefix": self.prefix, "cache_path": self.cache_path,
                "from_cache": self.from_cache, "ok": self.ok, "summary": self.summary(), "notes": self.notes,
                "tensors": [r.as_dict() for r in self.rows],
                "missing": {k: list(s) for k, s in self.missing.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "LoadReport":
        return cls(d["path"], d["model"], [KeyMap.from_dict(r) for r in d["tensors"]],
                   {k: tuple(s) for k, s in d["missing"].items()}, d["notes"], d["format"], d["entry"],
                   tuple(d["entries"]), d["prefix"], d["cache_path"], d["from_cache"])


def _ranges(blocks: list[int]) -> str:
    """[0, 1, 2, 5] -> '{0-2,5}'; a single block -> '3'; none -> ''."""
    bs = sorted(set(blocks))
    if not bs:
        return ""
    if len(bs) == 1:
        return str(bs[0])
    spans, start = [], bs[0]
    for a, b in zip(bs, bs[1:] + [None]):
        if b != a + 1:
            spans.append(f"{start}-{a}" if a > start else f"{a}")
            start = b
    return "{" + ",".join(spans) + "}"


def plan_checkpoint(tensors: CheckpointTensors, cfg: ModelConfig, model_name: str = "") -> LoadReport:
    """The mapping report of read tensors against a model config (shapes only, nothing loaded)."""
    plan = plan_mapping(tensors.shapes(), target_shapes(cfg), cfg.n_heads)
    return LoadReport(tensors.path, model_name, plan.rows, plan.missing, plan.notes, tensors.format,
                      tensors.entry, tensors.entries, tensors.prefix)


def _refuse(report: LoadReport) -> None:
    what = "nothing in it fits the model" if report.mapped_keys == 0 else "refusing a partial load"
    hint = "" if report.mapped_keys == 0 else " (--allow-missing loads it anyway)"
    raise CheckpointMismatch(f"{report.path}: {report.summary()}; {what}{hint}\n"
                             f"{report.render(problems_only=True)}", report)


# -- conversion cache ---------------------------------------------------------------------------
def converted_dir() -> Path:
    """``VIDEOMLA_CACHE_DIR`` or the user cache (platformdirs), subfolder ``converted``."""
    env = os.environ.get("VIDEOMLA_CACHE_DIR")
    if env:
        return Path(env) / "converted"
    import platformdirs

    return Path(platformdirs.user_cache_dir("videomla", appauthor=False)) / "converted"


def conversion_key(path: str | os.PathLike, cfg: ModelConfig) -> str:
    """SHA-256 of the source's first MiB, size and mtime (each shard of a folder) and the target shapes."""
    p = Path(path)
    files = [p]
    if p.is_dir():
        files = sorted(p.glob("*.safetensors")) or sorted(f for f in p.iterdir() if f.is_file())
    h = hashlib.sha256(f"videomla-converted-v{FORMAT_VERSION}\n".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
    h.update(_shapes_json(cfg))
    return h.hexdigest()


def _shapes_json(cfg: ModelConfig) -> bytes:
    """The target model's tensor shapes, serialised stably (part of a conversion's identity)."""
    return json.dumps(sorted(target_shapes(cfg).items())).encode()


def _cached_meta(path: Path) -> dict | None:
    """The ``videomla`` header of a cached conversion (safetensors header only), or None."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["videomla"])
    except (OSError, KeyError, ValueError, SafetensorError):
        return None


def _read_cached(path: Path, cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], LoadReport] | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = _cached_meta(path)
    if meta is None:
        return None
    try:
        tensors = load_file(str(path))  # memory-mapped
    except (OSError, ValueError, SafetensorError):
        return None
    report = LoadReport.from_dict(meta["report"])
    target = target_shapes(cfg)
    wanted = {k for r in report.rows if r.status == "mapped" for k in r.targets}
    if set(tensors) != wanted or any(tuple(tensors[k].shape) != target.get(k) for k in tensors):
        return None  # stale or foreign: convert again
    report.cache_path, report.from_cache = str(path), True
    return tensors, report


def _origin(source: str | os.PathLike, cfg: ModelConfig) -> str:
    """What a cached conversion is *of*: the source's resolved path and the target shapes. A newer
    conversion with the same origin (the checkpoint was re-downloaded or edited) supersedes it."""
    shapes = hashlib.sha256(_shapes_json(cfg)).hexdigest()[:16]
    return f"{Path(source).resolve()}|{shapes}"


def _prune_superseded(keep: Path, origin: str) -> list[Path]:
    """Delete the other cached conversions of the same origin (each is a full copy of the model's
    weights: ~2.7 GB at 1.3B in bf16, so stale ones must not pile up in the user cache). Reads only
    the safetensors headers; files it cannot read or that belong to other checkpoints are kept."""
    removed = []
    for f in keep.parent.glob("*.safetensors"):
        meta = None if f == keep else _cached_meta(f)
        if meta is not None and meta.get("origin") == origin:
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def _write_cached(path: Path, tensors: dict[str, torch.Tensor], report: LoadReport, origin: str = "") -> bool:
    from safetensors.torch import save_file

    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.contiguous() if ptr not in seen and v.is_contiguous() else v.clone().contiguous()
        seen.add(ptr)
    meta = {"videomla": json.dumps({"format_version": FORMAT_VERSION, "origin": origin,
                                    "report": {**report.as_dict(), "cache_path": None, "from_cache": False}})}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:
            save_file(out, str(tmp), metadata=meta)
        return True
    except (OSError, RuntimeError, ValueError):
        return False


# -- loading ------------------------------------------------------------------------------------
def load_dit_weights(model: torch.nn.Module, path: str | os.PathLike, allow_missing: bool = False,
                     cache: bool = True, model_name: str = "") -> LoadReport:
    """Load a checkpoint into ``model`` (a CausalDiT) and return what was mapped.

    Refuses (:class:`CheckpointMismatch`, a :class:`RunError`: one line, then the table of
    problems) unless every checkpoint tensor is used and every model tensor is filled; with
    ``allow_missing`` the tensors that map are loaded and the rest keep their values. With
    ``cache``, the first load writes the mapped tensors to the conversion cache and later loads
    read that file; a new conversion of the same checkpoint path replaces the superseded one.
    """
    cfg = model.cfg
    if not Path(path).exists():
        raise RunError(f"no such checkpoint: {path}")
    cached = converted_dir() / f"{conversion_key(path, cfg)}.safetensors" if cache else None
    hit = _read_cached(cached, cfg) if cached is not None and cached.exists() else None
    if hit is not None:
        ours, report = hit
        if not report.ok and not allow_missing:
            _refuse(report)
    else:
        tensors = read_checkpoint(path)
        report = plan_checkpoint(tensors, cfg, model_name)
        if report.mapped_keys == 0 or (not report.ok and not allow_missing):
            _refuse(report)
        ours = {}
        for r in report.rows:
            if r.status == "mapped":
                ours.update(split_tensor(r, tensors[r.source]))
        if cached is not None:
            origin = _origin(path, cfg)
            if _write_cached(cached, ours, report, origin):
                report.cache_path = str(cached)
                _prune_superseded(cached, origin)
    meta = any(p.is_meta for p in model.parameters())
    missing, unexpected = model.load_state_dict(ours, strict=False, assign=meta)
    assert not unexpected and set(missing) == set(report.missing), (unexpected, missing)
    return report
