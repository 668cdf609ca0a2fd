"""Save and restore a generation's full state to one safetensors file, for exact continuation.

The file holds the rolling cache tensors, the RNG state, the decoder's temporal state and the
clean latents still in the cache, plus JSON metadata (model, frame counters, timeline). Loading it
into a pipeline built from the same model and continuing gives the same frames, bit for bit on the
CPU, as a run that never stopped. Writes are atomic (temporary file + rename).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from . import __version__
from .atomic import replacing
from .pipeline import GenerationState, PromptSegment, StreamingPipeline, Timeline

FORMAT = "videomla-session/1"


def save_session(path: str | Path, pipe: StreamingPipeline, state: GenerationState, timeline: Timeline,
                 extra: dict | None = None) -> None:
    cache_tensors, cache_meta = state.cache.state_dict()
    tensors = {f"cache.{k}": v for k, v in cache_tensors.items()}
    tensors["rng"] = state.rng.get_state()
    for name, lat in (("sink_latents", state.sink_latents), ("window_latents", state.window_latents)):
        if lat is not None:
            tensors[name] = lat.contiguous()
    tensors.update({f"decoder.{k}": v.contiguous() for k, v in state.decoder.state_dict().items()})
    meta = {
        "format": FORMAT, "version": __version__, "model": pipe.preset.name,
        "dtype": str(pipe.dtype), "batch": str(pipe.batch),
        "frame": str(state.frame), "chunk": str(state.chunk), "prompt_index": str(state.prompt_index),
        "timeline": json.dumps([[s.start_s, s.prompt] for s in timeline.segments]),
        "cache": json.dumps(cache_meta), "extra": json.dumps(extra or {}),
    }
    path = Path(path)
    with replacing(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except Exception as e:  # safetensors reports I/O failures (disk full) as its own error type
            raise OSError(f"cannot write session {path.name}: {str(e).split(': ')[-1]}") from None


def read_session_meta(path: str | Path) -> dict[str, str]:
    """The metadata of a session file; raises ValueError when it is not one of ours."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises several types for corrupt files
        raise ValueError(f"{path}: not a readable session file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a VideoMLA session file")
    return meta


def load_session(path: str | Path, pipe: StreamingPipeline) -> tuple[GenerationState, Timeline, dict]:
    """Rebuild the state saved by :func:`save_session` into ``pipe``'s cache and decoder."""
    meta = read_session_meta(path)
    if meta["model"] != pipe.preset.name:
        raise ValueError(f"{path}: session belongs to model {meta['model']!r}, not {pipe.preset.name!r}")
    if meta["dtype"] != str(pipe.dtype) or int(meta["batch"]) != pipe.batch:
        raise ValueError(f"{path}: session was made with {meta['dtype']} batch {meta['batch']}; "
                         f"this pipeline runs {pipe.dtype} batch {pipe.batch}")
    tensors = load_file(str(path))
    state = pipe.new_state(0)
    state.cache.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("cache.")},
                                json.loads(meta["cache"]))
    state.rng.set_state(tensors["rng"])
    state.decoder.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("decoder.")})
    state.sink_latents = tensors.get("sink_latents")
    state.window_latents = tensors.get("window_latents")
    state.frame, state.chunk = int(meta["frame"]), int(meta["chunk"])
    state.prompt_index = int(meta["prompt_index"])
    timeline = Timeline(tuple(PromptSegment(float(t), p) for t, p in json.loads(meta["timeline"])))
    return state, timeline, json.loads(meta["extra"])
