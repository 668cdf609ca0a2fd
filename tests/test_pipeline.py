"""The streaming generator: determinism, exact continuation, timelines, flat memory."""

import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import tiny_pipeline
from videomla_app.config import CacheConfig
from videomla_app.memory import rss_bytes
from videomla_app.pipeline import PromptSegment, Timeline
from videomla_app.session import load_session, read_session_meta, save_session

TL = Timeline((PromptSegment(0.0, "a red ball bouncing"), PromptSegment(1.0, "a blue cube drifting")))


def _frames(events):
    return np.concatenate([e.frames for e in events])


def test_events_cover_the_requested_chunks():
    pipe = tiny_pipeline()
    ev = list(pipe.stream("a red ball", 4, seed=1))
    assert [e.index for e in ev] == [0, 1, 2, 3] and all(e.total == 4 for e in ev)
    assert [e.first_frame for e in ev] == [0, 2, 4, 6]
    assert ev[0].frames.shape == (2, 32, 32, 3) and ev[0].frames.dtype == np.uint8
    assert ev[-1].seconds == pytest.approx(8 / 8)
    m = ev[-1].memory
    assert m.cache_bytes == sum(t.nbytes for t in pipe.new_state(0).cache.tensors.values())
    assert m.dense_equivalent_bytes > m.cache_bytes and m.rss_bytes > 0
    assert set(ev[0].timings) >= {"denoise_s", "cache_write_s", "decode_s"}


def test_same_seed_same_video_other_seed_differs():
    a = _frames(tiny_pipeline().stream("a red ball", 5, seed=7))
    b = _frames(tiny_pipeline().stream("a red ball", 5, seed=7))
    c = _frames(tiny_pipeline().stream("a red ball", 5, seed=8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def _with_sampler(pipe, **changes):
    """The pipeline with some SamplerConfig fields changed (and its FlowSampler rebuilt)."""
    pipe.preset = replace(pipe.preset, sampler=replace(pipe.preset.sampler, **changes))
    pipe.sampler = type(pipe.sampler)(pipe.preset.sampler)
    return pipe


def _first_chunk(guidance: float, steps: tuple[int, ...] = (1000, 500), empty: bool = False) -> torch.Tensor:
    pipe = _with_sampler(tiny_pipeline(), guidance=guidance, steps=steps)
    if empty:  # the prompt's cross-attention K/V replaced by the empty prompt's
        pipe._text["a red ball"] = pipe.text_cache("")
    return next(iter(pipe.stream("a red ball", 1, seed=3))).latents


def test_guidance_mixes_prompted_and_empty_prompt_flows():
    off = _first_chunk(1.0)
    # g = 0: the empty prompt only (to rounding: guidance runs both prompts as one forward, guided.py)
    torch.testing.assert_close(_first_chunk(0.0), _first_chunk(1.0, empty=True), rtol=1e-5, atol=1e-6)
    assert not torch.equal(_first_chunk(3.0), off)
    # one step: x0 = x - sigma * v is linear in v, so x0(g) = x0(0) + g * (x0(1) - x0(0))
    x0 = {g: _first_chunk(g, steps=(1000,)) for g in (0.0, 1.0, 2.5)}
    torch.testing.assert_close(x0[2.5], x0[0.0] + 2.5 * (x0[1.0] - x0[0.0]), rtol=1e-5, atol=1e-5)


def test_timeline_switches_at_chunk_boundaries():
    ev = list(tiny_pipeline().stream(TL, 8, seed=0))
    assert [e.prompt_index for e in ev] == [0, 0, 0, 0, 1, 1, 1, 1]  # 1.0 s = frame 8 at 8 fps
    assert [e.switched for e in ev].count(True) == 1
    one = _frames(tiny_pipeline().stream("a red ball bouncing", 8, seed=0))
    two = _frames(ev)
    assert np.array_equal(one[:8], two[:8]) and not np.array_equal(one[8:], two[8:])


def test_recache_changes_the_continuation_after_a_switch():
    plain = _frames(tiny_pipeline().stream(TL, 8, seed=0))
    recached = _frames(tiny_pipeline(recache=True).stream(TL, 8, seed=0))
    assert np.array_equal(plain[:8], recached[:8]) and not np.array_equal(plain[8:], recached[8:])


def test_timeline_validation():
    with pytest.raises(ValueError, match="increase"):
        Timeline((PromptSegment(0, "a"), PromptSegment(5, "b"), PromptSegment(3, "c")))
    with pytest.raises(ValueError, match="0:00"):
        Timeline((PromptSegment(1, "a"),))
    with pytest.raises(ValueError, match="empty"):
        Timeline.single("  ")


def test_chunks_for_seconds():
    pipe = tiny_pipeline()  # 8 fps, 2-frame chunks, temporal stride 1
    assert pipe.chunks_for_seconds(1.0) == 4 and pipe.chunks_for_seconds(1.1) == 5
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            pipe.chunks_for_seconds(bad)


def _count_flow_calls(pipe) -> list[int]:
    """Model calls per chunk, recorded as the pipeline runs."""
    calls: list[int] = []
    flow, seen = pipe._flow, {}

    def counted(x, t, text, cache, step, inputs):
        if step.f0 not in seen:
            seen[step.f0] = len(calls)
            calls.append(0)
        calls[seen[step.f0]] += 1
        return flow(x, t, text, cache, step, inputs)

    pipe._flow = counted
    return calls


def test_warm_start_begins_later_chunks_from_the_last_frame():
    plain = list(tiny_pipeline().stream(TL, 8, seed=2))
    pipe = _with_sampler(tiny_pipeline(), warm_start=900)  # test-mla's (warped) steps are 1000, 833.3: warm ones 900, 833.3
    calls = _count_flow_calls(pipe)
    warm = list(pipe.stream(TL, 8, seed=2))
    assert pipe.sampler.warm_timesteps == pytest.approx([900.0, 833.333], abs=1e-3) and calls == [2] * 8
    assert torch.equal(plain[0].latents, warm[0].latents)
    assert not torch.equal(plain[1].latents, warm[1].latents)
    # a warm-started chunk stays nearer the frame it started from than the cold one (same chunk 0)
    last = plain[0].latents[:, -1:]
    assert (warm[1].latents - last).abs().mean() < (plain[1].latents - last).abs().mean()


def test_warm_start_skips_the_steps_above_it_but_not_on_a_switch():
    pipe = _with_sampler(tiny_pipeline(recache=True), warm_start=500)  # below both steps: one step at 500
    calls = _count_flow_calls(pipe)
    ev = list(pipe.stream(TL, 6, seed=0))
    # chunk 0 has no previous frame and chunk 4 switches the prompt: both run the full schedule
    assert calls == [2, 1, 1, 1, 2, 1] and [e.switched for e in ev] == [False] * 4 + [True, False]
    # a window of 0 keeps no recent frame (only the sink, frame 0): every chunk after the first starts cold
    pipe = _with_sampler(tiny_pipeline(cache=CacheConfig(sink_frames=2, window_frames=0, chunk_frames=2)), warm_start=500)
    calls = _count_flow_calls(pipe)
    list(pipe.stream("a red ball", 4, seed=0))
    assert calls == [2, 1, 2, 2]  # chunk 1 starts from the sink's last frame, the one before it


def test_first_chunk_runs_its_own_steps():
    plain = list(tiny_pipeline().stream(TL, 3, seed=2))
    pipe = _with_sampler(tiny_pipeline(), first_steps=(1000, 900, 800, 700, 600))
    calls = _count_flow_calls(pipe)
    levels: list = []
    model_forward = pipe.model.forward
    first_level = lambda t: float(torch.as_tensor(t).flatten()[0])  # noqa: E731
    pipe.model.forward = lambda x, t, *a: levels.append(first_level(t)) or model_forward(x, t, *a)
    more = list(pipe.stream(TL, 3, seed=2))
    assert calls == [5, 2, 2]  # the first chunk's five steps, then test-mla's two (warped)
    assert levels[:5] == pytest.approx([1000.0, 978.26, 952.38, 921.05, 882.35], abs=0.01)
    assert levels[5:7] == pytest.approx([1000.0, 833.333], abs=1e-3)
    assert not torch.equal(plain[0].latents, more[0].latents)
    # a continued clip has context already: its first new chunk runs the usual steps
    pipe = _with_sampler(tiny_pipeline(), first_steps=(1000, 900, 800, 700, 600))
    state = pipe.new_state(2)
    pipe.prime(state, plain[0].latents, TL.segments[0].prompt)
    calls = _count_flow_calls(pipe)
    list(pipe.stream(TL, 2, state=state))
    assert calls == [2, 2]


def test_anchored_first_chunk_keeps_its_first_frame_and_redraws_the_rest():
    plain = list(tiny_pipeline().stream(TL, 3, seed=2))
    pipe = _with_sampler(tiny_pipeline(), anchor_first=True, context_noise=25.0)
    calls = _count_flow_calls(pipe)
    levels: list = []
    model_forward = pipe.model.forward
    pipe.model.forward = lambda x, t, *a: levels.append(torch.as_tensor(t).tolist()) or model_forward(x, t, *a)
    anchored = list(pipe.stream(TL, 3, seed=2))
    assert calls == [4, 2, 2]  # only the first chunk is denoised twice
    # the second pass holds frame 0 at the cache-write level while the others run the schedule
    assert levels[2] == [[25.0, 1000.0]] and levels[3][0] == pytest.approx([25.0, 833.333], abs=1e-3)
    assert torch.equal(plain[0].latents[:, :1], anchored[0].latents[:, :1])
    assert not torch.equal(plain[0].latents[:, 1:], anchored[0].latents[:, 1:])
    assert [e.latents.shape for e in anchored] == [e.latents.shape for e in plain]
    # a continued clip (frame > 0) has context already: nothing is anchored
    pipe = _with_sampler(tiny_pipeline(), anchor_first=True)
    state = pipe.new_state(2)
    pipe.prime(state, plain[0].latents, TL.segments[0].prompt)
    calls = _count_flow_calls(pipe)
    list(pipe.stream(TL, 2, state=state))
    assert calls == [2, 2]


@pytest.mark.parametrize("recache,warm_start", [(False, 0.0), (True, 0.0), (True, 900.0)])
def test_save_restore_continues_exactly(tmp_path, recache, warm_start):
    ref = _frames(_with_sampler(tiny_pipeline(recache=recache), warm_start=warm_start).stream(TL, 8, seed=3))
    pipe = _with_sampler(tiny_pipeline(recache=recache), warm_start=warm_start)
    state = pipe.new_state(3)
    first = list(pipe.stream(TL, 3, state=state))
    save_session(tmp_path / "s.safetensors", pipe, state, TL, {"note": "x"})
    pipe2 = _with_sampler(tiny_pipeline(recache=recache), warm_start=warm_start)
    state2, tl2, extra = load_session(tmp_path / "s.safetensors", pipe2)
    assert tl2 == TL and extra == {"note": "x"} and state2.frame == 6
    rest = list(pipe2.stream(tl2, 5, state=state2))
    assert [e.index for e in rest] == [3, 4, 5, 6, 7]
    assert np.array_equal(ref, _frames(first + rest))


def test_restore_in_a_new_process_is_bit_identical(tmp_path):
    ref = _frames(tiny_pipeline().stream(TL, 7, seed=5))
    pipe = tiny_pipeline()
    state = pipe.new_state(5)
    first = _frames(pipe.stream(TL, 3, state=state))
    save_session(tmp_path / "s.safetensors", pipe, state, TL)
    script = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        from helpers import tiny_pipeline
        from videomla_app.session import load_session
        pipe = tiny_pipeline()
        state, tl, _ = load_session({str(tmp_path / 's.safetensors')!r}, pipe)
        np.save({str(tmp_path / 'rest.npy')!r}, np.concatenate([e.frames for e in pipe.stream(tl, 4, state=state)]))
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    assert np.array_equal(ref, np.concatenate([first, np.load(tmp_path / "rest.npy")]))


def test_session_files_are_checked(tmp_path):
    pipe = tiny_pipeline()
    state = pipe.new_state(0)
    list(pipe.stream("a", 1, state=state))
    save_session(tmp_path / "s.safetensors", pipe, state, Timeline.single("a"))
    with pytest.raises(ValueError, match="belongs to model 'test-mla'"):
        load_session(tmp_path / "s.safetensors", tiny_pipeline("test-mha"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a session")
    with pytest.raises(ValueError, match="not a readable session"):
        read_session_meta(tmp_path / "junk.safetensors")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file


def test_memory_is_flat_over_200_chunks():
    pipe = tiny_pipeline(recache=True)
    tl = Timeline(tuple(PromptSegment(float(10 * i), f"prompt {i % 3}") for i in range(6)))
    rss = {}
    for e in pipe.stream(tl, 200, seed=0):
        if e.index in (19, 199):
            rss[e.index] = rss_bytes()
            cache = e.memory.cache_bytes
    assert rss[199] <= rss[19] * 1.05, rss
    assert cache == e.memory.cache_bytes


def test_dense_baseline_runs_through_the_same_pipeline():
    ev = list(tiny_pipeline("test-mha").stream(TL, 3, seed=0))
    assert len(ev) == 3 and ev[0].memory.cache_bytes == ev[0].memory.dense_equivalent_bytes


def test_bfloat16_pipeline_is_deterministic():
    a = _frames(tiny_pipeline(dtype=torch.bfloat16).stream("x", 3, seed=1))
    b = _frames(tiny_pipeline(dtype=torch.bfloat16).stream("x", 3, seed=1))
    assert np.array_equal(a, b)
