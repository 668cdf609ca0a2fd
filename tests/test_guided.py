"""Guidance as one forward of twice the batch (guided.py) against the two-call reference form."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.helpers import tiny_pipeline
from videomla_app.timeline import PromptSegment, Timeline


def _pipe(name: str, paired: bool, batch: int = 1, **sampler):
    pipe = tiny_pipeline(name, recache=True)
    pipe.preset = replace(pipe.preset, sampler=replace(pipe.preset.sampler, **{"guidance": 2.5, **sampler}))
    pipe.sampler = type(pipe.sampler)(pipe.preset.sampler)
    pipe.paired_guidance, pipe.batch = paired, batch
    return pipe


def _latents(pipe, prompt, chunks: int = 7) -> torch.Tensor:
    return torch.cat([e.latents for e in pipe.stream(prompt, chunks, seed=5)], 1)  # [B, F, C, h, w]


TL = Timeline((PromptSegment(0.0, "a red ball bouncing"), PromptSegment(1.5, "a blue cube drifting left")))


@pytest.mark.parametrize("name", ["test-mla", "test-mha"])
@pytest.mark.parametrize("batch", [1, 2])
def test_one_forward_equals_two_calls_through_a_wrapping_window(name, batch):
    """7 chunks wrap the ring; a prompt switch replays the window under the new prompt."""
    two = _latents(_pipe(name, False, batch), TL)
    one = _latents(_pipe(name, True, batch), TL)
    assert two.shape[0] == batch and two.shape[1] >= 7 * 2
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5)
    assert not torch.equal(two, _latents(_pipe(name, False, batch, guidance=1.0), TL))  # guidance did act


@pytest.mark.parametrize("sampler", [{"context_noise": 25.0, "warm_start": 600.0}, {"anchor_first": True}])
def test_one_forward_equals_two_calls_with_noisy_context_warm_start_and_anchor(sampler):
    """Per-row timestep tensors (the anchored chunk) and noised cache writes take the same path."""
    two = _latents(_pipe("test-mla", False, 2, **sampler), "a red ball bouncing", 4)
    one = _latents(_pipe("test-mla", True, 2, **sampler), "a red ball bouncing", 4)
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5)


def test_guided_forward_leaves_the_cache_to_the_write_pass():
    """A guided step reads the context but writes nothing into the real cache."""
    pipe = _pipe("test-mla", True)
    state = pipe.new_state(0)
    list(pipe.stream("a red ball", 2, state=state))
    before = {k: v.clone() for k, v in state.cache.tensors.items()}
    step = state.cache.plan(state.frame, pipe.C)
    inputs = pipe.model.attn_inputs(step, state.cache)
    x = pipe._noise(state, pipe.C)
    pipe._flow(x, 1000, pipe.text_cache("a red ball"), state.cache, step, inputs)
    assert all(torch.equal(before[k], v) for k, v in state.cache.tensors.items())
