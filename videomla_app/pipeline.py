"""The one streaming generator every front end renders: :meth:`StreamingPipeline.stream`.

Per chunk of latent frames (Self-Forcing's loop, PAPER §7):

1. pick the prompt of the timeline segment the chunk starts in (text K/V cached per prompt);
   on a switch, optionally re-cache the window under the new prompt (LongLive);
2. start from seeded noise (or, with a warm start, from the last clean frame noised part way) and
   run the few denoising steps, each reading the rolling cache;
3. run the cache-write pass on the denoised chunk at ``context_noise`` so the cache holds clean keys;
4. decode the chunk through the streaming VAE decoder and yield an event with the frames.

One ``torch.Generator`` (on the CPU, so the noise is identical on every device) drives a run;
its state, the cache, the decoder state and the kept latents form the :class:`GenerationState`
that continues a run exactly (see ``session.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from .cache import RollingKVCache, TextKVCache, make_cache
from .config import Preset
from .encoders import StreamDecoder, TextEncoder, VideoVAE, pixel_frames
from .guided import guided_flow, paired_text
from .memory import MemoryReadout, read_memory
from .model import CausalDiT
from .scheduler import FlowSampler
from .timeline import PromptSegment, Timeline  # noqa: F401  (re-exported)


@dataclass
class GenerationState:
    """Everything needed to continue a run exactly."""

    cache: RollingKVCache
    rng: torch.Generator
    decoder: StreamDecoder
    frame: int = 0  # next latent frame to generate
    chunk: int = 0
    prompt_index: int = -1
    sink_latents: torch.Tensor | None = None  # clean latents of the sink frames [B, <=S, C, h, w]
    window_latents: torch.Tensor | None = None  # clean latents of the last W frames
    recaching: bool = False  # the cache is being rebuilt: its contents are not a chunk boundary's

    def snapshot(self) -> dict:
        """The small part of the state that changes during a chunk (the cache's committed slots do
        not: a chunk writes only into slots outside the window). Restoring it after an interrupted
        chunk gives back the state of the last chunk boundary."""
        return {"frame": self.frame, "chunk": self.chunk, "prompt_index": self.prompt_index,
                "rng": self.rng.get_state(), "decoder": self.decoder.state_dict(),
                "sink": self.sink_latents, "window": self.window_latents,
                "cache": (self.cache.committed, self.cache.origin)}

    def restore(self, snap: dict) -> None:
        if self.recaching:
            raise RuntimeError("interrupted while re-caching: the cache no longer matches a chunk boundary")
        self.frame, self.chunk, self.prompt_index = snap["frame"], snap["chunk"], snap["prompt_index"]
        self.rng.set_state(snap["rng"])
        self.decoder.load_state_dict(snap["decoder"])
        self.sink_latents, self.window_latents = snap["sink"], snap["window"]
        self.cache.committed, self.cache.origin = snap["cache"]


@dataclass
class ChunkEvent:
    """One finished chunk, as yielded by :meth:`StreamingPipeline.stream`."""

    index: int  # chunk number in the run (0-based, continues across resumes)
    total: int  # chunks this call will produce in all (index + remaining)
    first_frame: int  # first latent frame of the chunk
    latents: torch.Tensor  # [B, n, C, h, w] denoised latents (CPU, fp32)
    frames: np.ndarray  # uint8 [n_pix, H, W, 3] decoded pixels of the chunk (batch item 0)
    prompt: str
    prompt_index: int
    switched: bool  # the prompt changed at this chunk
    seconds: float  # video time at the end of the chunk
    timings: dict[str, float] = field(default_factory=dict)
    memory: MemoryReadout | None = None


class StreamingPipeline:
    """Generates a video chunk by chunk with a causal DiT and a rolling KV cache."""

    # What the loaded weights were measured to follow (model.json "follows", eval_follows.py); None:
    # not measured (random and downloaded models). Prompt warnings read it; generation does not.
    follows: dict | None = None
    # Guidance as one forward of twice the batch (guided.py); False: two calls, the reference form.
    paired_guidance: bool = True
    # Which trained weights these are (embedded models: a hash of the DiT and autoencoder files); a
    # session records it, so `extend` can refuse to continue a video exactly with other weights.
    weights_id: str | None = None

    def __init__(self, preset: Preset, model: CausalDiT, text_encoder: TextEncoder, vae: VideoVAE, *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 recache: bool = False, batch: int = 1) -> None:
        self.preset, self.model, self.text_encoder, self.vae = preset, model, text_encoder, vae
        self.device, self.dtype, self.recache, self.batch = torch.device(device), dtype, recache, batch
        self.sampler = FlowSampler(preset.sampler)
        self.C = preset.cache.chunk_frames
        self._text: dict[str, TextKVCache] = {}
        self._paired: dict[str, TextKVCache] = {}

    # -- time geometry --------------------------------------------------------------------------
    def frame_time(self, frame: int) -> float:
        """Video time (s) at which latent frame ``frame`` starts."""
        return pixel_frames(frame, self.vae.temporal_stride) / self.preset.video.fps

    def chunks_for_seconds(self, seconds: float, start: int = 0) -> int:
        """Whole chunks needed for at least ``seconds`` more video from latent frame ``start`` (0: a
        new video, whose first latent frame makes one video frame; later ones make the stride's)."""
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"duration must be a positive number of seconds, got {seconds}")
        target = math.ceil(seconds * self.preset.video.fps - 1e-9)
        ts = self.vae.temporal_stride
        if ts == 1:
            latents = target
        elif start == 0:
            latents = 1 + math.ceil(max(target - 1, 0) / ts)
        else:
            latents = math.ceil(target / ts)
        return math.ceil(latents / self.C)

    # -- state ----------------------------------------------------------------------------------
    def new_state(self, seed: int) -> GenerationState:
        cache = make_cache(self.model.cfg, self.preset.cache, self.batch, self.device, self.dtype)
        return GenerationState(cache, torch.Generator().manual_seed(seed), self.vae.decoder())

    def text_cache(self, prompt: str) -> TextKVCache:
        """Cross-attention K/V for a prompt, computed once per prompt per pipeline."""
        if prompt not in self._text:
            with torch.no_grad():
                ctx = self.text_encoder.encode([prompt] * self.batch).to(self.device, self.dtype)
                self._text[prompt] = self.model.encode_text(ctx)
            self._text[prompt].key = prompt
        return self._text[prompt]

    def _noise(self, state: GenerationState, n: int) -> torch.Tensor:
        m = self.model.cfg
        x = torch.randn(self.batch, n, m.latent_channels, *m.latent_hw, generator=state.rng)
        return x.to(self.device, self.dtype)

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def stream(self, timeline: Timeline | str, n_chunks: int, *, state: GenerationState | None = None,
               seed: int = 0, stop: Callable[[], bool] | None = None) -> Iterator[ChunkEvent]:
        """Yield one :class:`ChunkEvent` per generated chunk; ``stop()`` is checked between chunks."""
        timeline = Timeline.single(timeline) if isinstance(timeline, str) else timeline
        state = state or self.new_state(seed)
        ts, s = self.sampler.timesteps, self.sampler
        first = state.chunk
        for _ in range(n_chunks):
            if stop is not None and stop():
                return
            f0, t_start = state.frame, time.perf_counter()
            idx = timeline.index_at(self.frame_time(f0))
            prompt = timeline.segments[idx].prompt
            text = self.text_cache(prompt)
            switched = state.prompt_index >= 0 and idx != state.prompt_index
            if switched and self.recache:
                self._recache(state, text)
            state.prompt_index = idx
            # 1. denoise the chunk, reading the cache at every step
            step = state.cache.plan(f0, self.C)
            inputs = self.model.attn_inputs(step, state.cache)
            x = self._noise(state, self.C)
            steps = s.first_timesteps if f0 == 0 else ts
            if s.cfg.warm_start and not switched and (last := self._last_latent(state)) is not None:
                # warm start: the last clean frame, noised to the start timestep, for every frame
                steps = s.warm_timesteps
                x = s.add_noise(last.to(x), x, steps[0])  # [B, chunk, C, h, w]
            for i, t in enumerate(steps):
                v = self._flow(x, t, text, state.cache, step, inputs)
                if i + 1 < len(steps):
                    x = s.step(x, v, t, steps[i + 1], lambda: self._noise(state, self.C))
                else:
                    x0 = s.x0_from_flow(x, v, t)
            if s.cfg.anchor_first and f0 == 0 and self.C > 1:
                x0 = self._anchored(state, x0, text, step, inputs)
            t_denoise = self._clock()
            # 2. cache-write pass: the clean chunk's keys become context
            self._write_context(state, x0, text, step, inputs)
            t_write = self._clock()
            # 3. decode
            frames = state.decoder.decode(x0[:1])
            t_decode = self._clock()
            yield ChunkEvent(
                index=state.chunk - 1, total=first + n_chunks, first_frame=f0, latents=x0.float().cpu(),
                frames=frames, prompt=prompt, prompt_index=idx, switched=switched,
                seconds=self.frame_time(state.frame),
                timings={"denoise_s": t_denoise - t_start, "cache_write_s": t_write - t_denoise,
                         "decode_s": t_decode - t_write, "total_s": t_decode - t_start},
                memory=read_memory(state.cache, text))

    def _anchored(self, state: GenerationState, x0: torch.Tensor, text: TextKVCache, step, inputs) -> torch.Tensor:
        """The first chunk again: its first frame x0[:, :1] held at the cache-write level, the
        frames after it denoised from fresh noise (the layout ``Recipe.anchor_first`` trains)."""
        s, tc, C = self.sampler, self.preset.sampler.context_noise, self.C
        first = x0[:, :1]  # [B, 1, C, h, w]
        anchor = first if tc == 0 else s.add_noise(first, self._noise(state, 1), tc)
        x = self._noise(state, C - 1)  # [B, C-1, C, h, w]
        ts = s.first_timesteps  # part of the first chunk: its steps
        for i, t in enumerate(ts):
            levels = torch.tensor([tc] + [t] * (C - 1), device=self.device).expand(self.batch, C)  # [B, chunk]
            v = self._flow(torch.cat([anchor, x], 1), levels, text, state.cache, step, inputs)[:, 1:]
            if i + 1 < len(ts):
                x = s.step(x, v, t, ts[i + 1], lambda: self._noise(state, C - 1))
            else:
                x = s.x0_from_flow(x, v, t)
        return torch.cat([first, x], 1)  # [B, chunk, C, h, w]

    @staticmethod
    def _last_latent(state: GenerationState) -> torch.Tensor | None:
        """The last clean latent frame [B, 1, C, h, w] (CPU, fp32); None before the first chunk, or
        when a window of 0 keeps no recent frame (the sink frames are then not the last ones)."""
        win, sink = state.window_latents, state.sink_latents
        if win is not None and win.shape[1]:
            return win[:, -1:]
        if sink is not None and sink.shape[1] == state.frame > 0:
            return sink[:, -1:]
        return None

    def _flow(self, x: torch.Tensor, t, text: TextKVCache, cache, step, inputs) -> torch.Tensor:
        """The flow of one denoising step, with classifier-free guidance when the sampler asks for it.

        The empty-prompt call reads the same cache (context written under the prompt) and only
        swaps the cross-attention K/V; both calls write the chunk's provisional keys, which the
        cache-write pass overwrites. With ``paired_guidance`` both are one forward (guided.py).
        """
        g = self.preset.sampler.guidance
        if g != 1.0 and self.paired_guidance:
            return guided_flow(self.model, x, t, self._paired_text(text), cache, step, inputs, g)
        v = self.model(x, t, text, cache, step, inputs)  # [B, n, C, h, w]
        if g == 1.0:
            return v
        v_empty = self.model(x, t, self.text_cache(""), cache, step, inputs)
        return v_empty + g * (v - v_empty)

    def _paired_text(self, text: TextKVCache) -> TextKVCache:
        """The prompt's and the empty prompt's cross-attention K/V stacked for one guided forward."""
        if text.key not in self._paired:
            self._paired[text.key] = paired_text(text, self.text_cache(""))
        return self._paired[text.key]

    @torch.no_grad()
    def prime(self, state: GenerationState, latents: torch.Tensor, prompt: str) -> None:
        """Continue from existing footage: write its latent frames [B or 1, k, C, h, w] into the
        cache as context (the cache-write pass, chunk by chunk) and run them through the decoder so
        its temporal state continues smoothly too."""
        text = self.text_cache(prompt)
        latents = latents.expand(self.batch, *latents.shape[1:]) if latents.shape[0] == 1 else latents
        for g in range(0, latents.shape[1], self.C):
            lat = latents[:, g:g + self.C].to(self.device, self.dtype)
            self._write_context(state, lat, text, state.cache.plan(state.frame, lat.shape[1]), None)
            state.decoder.decode(lat[:1])

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _write_context(self, state: GenerationState, x0: torch.Tensor, text: TextKVCache, step, inputs,
                       commit_latents: bool = True) -> None:
        """Run the chunk at ``context_noise`` so the cache keeps its clean keys, then commit."""
        tc = self.preset.sampler.context_noise
        x_ctx = x0 if tc == 0 else self.sampler.add_noise(x0, self._noise(state, x0.shape[1]), tc)
        self.model.write_context(x_ctx, tc, text, state.cache, step, inputs)
        state.cache.commit(step)
        if commit_latents:
            self._keep_latents(state, step.f0, x0)
            state.frame, state.chunk = step.f0 + step.n, state.chunk + 1

    def _keep_latents(self, state: GenerationState, f0: int, x0: torch.Tensor) -> None:
        """Remember the clean latents still in the cache (sink + window), for re-caching."""
        S, W = self.preset.cache.sink_frames, self.preset.cache.window_frames
        n_sink = max(0, min(S - f0, x0.shape[1]))
        if n_sink:
            sink = x0[:, :n_sink].float().cpu()
            state.sink_latents = sink if state.sink_latents is None else torch.cat([state.sink_latents, sink], 1)
        rest = x0[:, n_sink:].float().cpu()
        win = rest if state.window_latents is None else torch.cat([state.window_latents, rest], 1)
        state.window_latents = win[:, win.shape[1] - min(W, win.shape[1]):]

    def _recache(self, state: GenerationState, text: TextKVCache) -> None:
        """LongLive-style re-cache: replay the kept frames through the cache-write pass under the
        new prompt, so the window's keys reflect it (without it the old prompt lingers)."""
        state.recaching = True
        try:
            self._replay_window(state, text)
        finally:
            state.recaching = False

    def _replay_window(self, state: GenerationState, text: TextKVCache) -> None:
        S, W, C = self.preset.cache.sink_frames, self.preset.cache.window_frames, self.C
        f0, cache = state.frame, state.cache
        cache.reset()
        replay = lambda g0, lat: self._write_context(  # noqa: E731
            state, lat.to(self.device, self.dtype), text, cache.plan(g0, lat.shape[1]), None, commit_latents=False)
        sink = state.sink_latents
        for g in range(0, 0 if sink is None else sink.shape[1], C):
            replay(g, sink[:, g:g + C])
        win = state.window_latents
        if win is not None and win.shape[1]:
            first_window = max(S, f0 - W)
            cache.rebase(first_window)
            for g in range(0, win.shape[1], C):
                replay(first_window + g, win[:, g:g + C])
        if cache.committed != f0:
            cache.rebase(f0)
