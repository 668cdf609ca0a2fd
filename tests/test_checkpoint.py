"""Safe checkpoint loading: Self-Forcing and (shape-identified) VideoMLA layouts, refusals, the
conversion cache and ``videomla inspect``. Small random-weight checkpoints, written here."""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from videomla_app import checkpoint as ck
from videomla_app.checkpoint import CheckpointMismatch, load_dit_weights, read_checkpoint
from videomla_app.checkpoint_keys import plan_mapping, target_shapes
from videomla_app.config import MLAConfig, ModelConfig, get_preset
from videomla_app.errors import RunError
from videomla_app.model import build_model

MHA = get_preset("test-mha").model
# Every MLA tensor (and every fused pair) has its own shape: d_c 24, d_q 48, 2 heads x (32 + 16).
MLA = ModelConfig(dim=96, n_heads=2, n_layers=2, ffn_dim=128, freq_dim=32, text_dim=32, latent_channels=4,
                  latent_hw=(4, 4), mla=MLAConfig(d_c=24, d_q=48, d_nope=32, d_rope=16, rope_pairs=(4, 2, 2)))


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOMLA_CACHE_DIR", str(tmp_path / "cache"))


def _sd(cfg, seed):
    return {k: v.clone() for k, v in build_model(cfg, seed=seed).state_dict().items()}


def _self_forcing(sd):
    """Self-Forcing's WanDiffusionWrapper names: ``model.`` + Wan's, one block activation-checkpointed."""
    wrapped = "blocks.1._checkpoint_wrapped_module."
    return {"model." + k.replace("blocks.1.", wrapped): v for k, v in sd.items()}


def _assert_loaded(model, sd):
    got = model.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert torch.equal(got[k], v), k


def test_self_forcing_layout_loads_generator_ema(tmp_path):
    raw, ema, critic = _sd(MHA, 1), _sd(MHA, 2), _sd(MHA, 3)
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator": _self_forcing(raw), "critic": _self_forcing(critic),
                "generator_ema": {**_self_forcing(ema), "_cls_pred_branch.1.weight": torch.zeros(4, 4)}},
               path)
    model = build_model(MHA, seed=4)
    report = load_dit_weights(model, path)
    _assert_loaded(model, ema)
    assert report.ok and report.entry == "generator_ema" and report.prefix == "model."
    assert report.mapped_keys == len(ema) and not report.missing
    assert {r.status for r in report.rows} == {"mapped", "ignored"}  # the GAN head is training-only

    only_raw = tmp_path / "raw.pt"
    torch.save({"generator": _self_forcing(raw), "critic": _self_forcing(critic)}, only_raw)
    assert load_dit_weights(model, only_raw).entry == "generator"
    _assert_loaded(model, raw)


def _videomla_plain(sd):
    """A made-up VideoMLA layout: the MLA tensors under names that say nothing (``p0``...)."""
    names = {"w_dkv": "p0", "kv_norm": "p1", "w_kr": "p2", "w_dq": "p3", "q_norm": "p4", "w_uq": "p5",
             "w_qr": "p6", "w_uk": "p7", "w_uv": "p8", "o": "p9"}
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[2:3] == ["self_attn"]:
            k = ".".join(parts[:2] + ["attn", names[parts[3]]] + parts[4:])
        out["model." + k] = v
    return out


def _videomla_fused(sd, H):
    """DeepSeek-style fused names: wkv_a = [W_dKV; W_rK], wkv_b / wq_b interleaved per head."""
    out = {}
    for i in range(MLA.n_layers):
        a = {k.split("self_attn.")[1]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.self_attn.")}
        c = a["w_uk.weight"].shape[1]
        out |= {f"blocks.{i}.self_attn.wkv_a.weight": torch.cat([a["w_dkv.weight"], a["w_kr.weight"]]),
                f"blocks.{i}.self_attn.kv_norm.weight": a["kv_norm.weight"],
                f"blocks.{i}.self_attn.wkv_b.weight": torch.cat(
                    [a["w_uk.weight"].view(H, -1, c), a["w_uv.weight"].view(H, -1, c)], 1).reshape(-1, c),
                f"blocks.{i}.self_attn.wq_a.weight": a["w_dq.weight"],
                f"blocks.{i}.self_attn.q_norm.weight": a["q_norm.weight"],
                f"blocks.{i}.self_attn.wq_b.weight": torch.cat(
                    [a["w_uq.weight"].view(H, -1, MLA.mla.d_q), a["w_qr.weight"].view(H, -1, MLA.mla.d_q)],
                    1).reshape(-1, MLA.mla.d_q),
                f"blocks.{i}.self_attn.wo.weight": a["o.weight"],
                f"blocks.{i}.self_attn.wo.bias": a["o.bias"]}
    return {**{k: v for k, v in sd.items() if ".self_attn." not in k}, **out}


def test_videomla_layouts_are_identified_by_shape(tmp_path):
    ema = _sd(MLA, 1)
    plain, fused = tmp_path / "videomla.pt", tmp_path / "videomla_fused.safetensors"
    torch.save({"generator": _videomla_plain(_sd(MLA, 2)), "generator_ema": _videomla_plain(ema)}, plain)
    from safetensors.torch import save_file

    save_file(_videomla_fused(ema, MLA.n_heads), str(fused))
    for path, how in ((plain, {"shape"}), (fused, {"name+shape", "name"})):
        model = build_model(MLA, seed=3)
        report = load_dit_weights(model, path)
        assert report.ok, report.render()
        _assert_loaded(model, ema)  # every key accounted for, every value where it belongs
        assert {r.how for r in report.rows if ".self_attn." in r.source and r.how != "name"} <= how | {"name"}
    splits = [r for r in report.rows if len(r.targets) > 1]
    assert {r.source.split(".")[-2] for r in splits} == {"wkv_a", "wkv_b", "wq_b"}
    assert all(r.per_head == MLA.n_heads for r in splits if "_b" in r.source)


def test_paper_shapes_are_distinct_and_fused_kv_up_splits():
    cfg = get_preset("videomla-1.3b").model  # shapes only: nothing is allocated
    target = target_shapes(cfg)
    assert target["blocks.0.self_attn.w_dkv.weight"] == (192, 1536)
    assert target["blocks.0.self_attn.w_uv.weight"] == (1536, 192)
    src = {}
    for k, s in target.items():
        if k.endswith(("w_uk.weight", "w_uv.weight")):
            continue
        src[k.replace("self_attn.w_", "self_attn.x_").replace("_norm.", "_n.")] = (s, "bfloat16")
    for i in range(cfg.n_layers):
        src[f"blocks.{i}.self_attn.up.weight"] = ((2688, 192), "bfloat16")  # [W_uK; W_uV]
    plan = plan_mapping(src, target, cfg.n_heads)
    assert not plan.missing and {r.status for r in plan.rows} == {"mapped"}
    up = next(r for r in plan.rows if r.source == "blocks.7.self_attn.up.weight")
    assert up.targets == ("blocks.7.self_attn.w_uk.weight", "blocks.7.self_attn.w_uv.weight")
    assert up.parts == (1152, 1536) and up.per_head == 0
    w = torch.arange(6 * 2, dtype=torch.float32).view(6, 2)
    from videomla_app.checkpoint_keys import KeyMap, split_tensor

    parts = split_tensor(KeyMap("x", (6, 2), "float32", "mapped", ("a", "b"), parts=(1, 2), per_head=2), w)
    assert parts["a"].tolist() == [[0, 1], [6, 7]]  # head 0 row 0, head 1 row 0
    assert parts["b"].tolist() == [[2, 3], [4, 5], [8, 9], [10, 11]]

    dense = {k: (s, "bfloat16") for k, s in target_shapes(get_preset("self-forcing-1.3b").model).items()}
    plan = plan_mapping(dense, target, cfg.n_heads)
    assert plan.missing and any("dense q/k/v" in n for n in plan.notes)
    mla = {k: (s, "bfloat16") for k, s in target.items()}  # and MLA tensors never fill dense slots
    plan = plan_mapping(mla, _dense_target(), cfg.n_heads)
    assert {k for k in plan.missing if "self_attn" in k} == {k for k in _dense_target() if ".self_attn." in k
                                                              and ".self_attn.o." not in k}
    assert any("MLA checkpoint" in n for n in plan.notes)


def _dense_target():
    return target_shapes(get_preset("self-forcing-1.3b").model)


def test_same_shape_without_a_name_is_ambiguous_not_guessed(tmp_path):
    cfg = get_preset("test-mla").model  # W_uQ and W_rQ are both 32x32 here
    sd = _sd(cfg, 1)
    path = tmp_path / "amb.pt"
    torch.save({"generator_ema": _videomla_plain(sd)}, path)
    with pytest.raises(CheckpointMismatch) as e:
        load_dit_weights(build_model(cfg, seed=2), path)
    first, table = str(e.value).split("\n", 1)
    assert "4 ambiguous" in first and "4 missing" in first and "--allow-missing" in first
    assert "w_uq.weight, w_qr.weight" in table and "blocks.{0-1}.attn.p5.weight" in table
    model = build_model(cfg, seed=2)
    before = model.blocks[0].self_attn.w_uq.weight.clone()
    report = load_dit_weights(model, path, allow_missing=True)
    assert set(report.missing) == {f"blocks.{i}.self_attn.{w}.weight"
                                   for i in (0, 1) for w in ("w_uq", "w_qr")}
    assert torch.equal(model.blocks[0].self_attn.w_uq.weight, before)
    assert torch.equal(model.blocks[0].self_attn.w_dkv.weight, sd["blocks.0.self_attn.w_dkv.weight"])

    named = {k.replace(".attn.p6.", ".attn.q_rope."): v for k, v in _videomla_plain(sd).items()}
    torch.save({"generator_ema": named}, tmp_path / "named.pt")  # one name settles both
    model = build_model(cfg, seed=2)
    report = load_dit_weights(model, tmp_path / "named.pt")
    _assert_loaded(model, sd)
    assert {r.how for r in report.rows if r.source.endswith("p5.weight")} == {"shape, by elimination"}


def test_missing_and_extra_keys_are_refused_then_allowed(tmp_path):
    sd = _sd(MHA, 1)
    bad = {k: v for k, v in _self_forcing(sd).items() if "blocks.1._checkpoint_wrapped_module.ffn.0" not in k}
    bad["model.img_emb.proj.1.weight"] = torch.zeros(3, 3)
    path = tmp_path / "partial.pt"
    torch.save({"generator_ema": bad}, path)
    with pytest.raises(RunError) as e:
        load_dit_weights(build_model(MHA, seed=2), path)
    msg = str(e.value)
    assert "2 missing" in msg.splitlines()[0] and "1 unmatched" in msg.splitlines()[0]
    for name in ("blocks.1.ffn.0.weight", "blocks.1.ffn.0.bias", "img_emb.proj.1.weight"):
        assert name in msg
    model = build_model(MHA, seed=2)
    keep = model.blocks[1].ffn[0].weight.clone()
    report = load_dit_weights(model, path, allow_missing=True)
    assert not report.ok and report.count("unmatched") == 1 and len(report.missing) == 2
    assert torch.equal(model.blocks[1].ffn[0].weight, keep)
    assert torch.equal(model.blocks[0].ffn[0].weight, sd["blocks.0.ffn.0.weight"])

    wrong = tmp_path / "wrong.pt"
    torch.save({"generator_ema": _self_forcing(_sd(get_preset("small-mha").model, 0))}, wrong)
    with pytest.raises(RunError, match="nothing in it fits"):
        load_dit_weights(build_model(MHA), wrong, allow_missing=True)


class _Payload:
    """Unpickling this would run ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_code_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    zipped, legacy = tmp_path / "evil.pt", tmp_path / "evil_legacy.pt"
    torch.save({"generator_ema": {**_self_forcing(_sd(MHA, 1)), "x": _Payload(marker)}}, zipped)
    legacy.write_bytes(pickle.dumps({"generator": _Payload(marker)}, protocol=2))
    for path in (zipped, legacy):
        with pytest.raises(RunError) as e:
            load_dit_weights(build_model(MHA), path)
        assert "\n" not in str(e.value) and "refusing to load" in str(e.value) and "system" in str(e.value)
        assert not marker.exists()
    from typer.testing import CliRunner

    from videomla_app.cli import app

    r = CliRunner().invoke(app, ["inspect", str(zipped)])
    assert r.exit_code == 1 and "refusing to load" in r.output and not marker.exists()


def test_conversion_cache_skips_torch_load_second_time(tmp_path, monkeypatch):
    ema = _sd(MLA, 1)
    path = tmp_path / "videomla.pt"
    torch.save({"generator_ema": _videomla_plain(ema)}, path)
    first = load_dit_weights(build_model(MLA, seed=2), path)
    cached = tmp_path / "cache" / "converted"
    files = list(cached.glob("*.safetensors"))
    assert len(files) == 1 and first.cache_path == str(files[0]) and not first.from_cache
    assert not list(cached.glob(".*tmp"))  # written atomically, no leftovers

    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load on a cache hit"))
    model = build_model(MLA, seed=3)
    second = load_dit_weights(model, path)
    _assert_loaded(model, ema)
    assert second.from_cache and second.ok and second.summary() == first.summary()

    other = tmp_path / "other.pt"  # a second checkpoint's conversion is never touched
    torch.save({"generator_ema": _videomla_plain(_sd(MLA, 4))}, other)
    monkeypatch.undo()
    os.environ["VIDEOMLA_CACHE_DIR"] = str(tmp_path / "cache")
    kept = Path(load_dit_weights(build_model(MLA, seed=3), other).cache_path)

    os.utime(path, ns=(0, 10**18))  # the source changed: convert again, and drop the stale copy
    third = load_dit_weights(build_model(MLA, seed=3), path)
    assert not third.from_cache
    assert sorted(cached.glob("*.safetensors")) == sorted([Path(third.cache_path), kept])
    assert not files[0].exists()


def test_diffusers_and_plain_wan_names(tmp_path):
    sd = _sd(MHA, 1)
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "wan.safetensors"))  # Wan's own names, no prefix
    model = build_model(MHA, seed=2)
    assert load_dit_weights(model, tmp_path / "wan.safetensors", cache=False).ok
    _assert_loaded(model, sd)
    ren = [("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
           ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
           ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
           ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
           ("time_projection.1", "condition_embedder.time_proj"), ("head.modulation", "scale_shift_table"),
           ("head.head", "proj_out"), (".modulation", ".scale_shift_table"), ("ffn.0", "ffn.net.0.proj"),
           ("ffn.2", "ffn.net.2"), ("norm3", "norm2"), ("self_attn.o", "attn1.to_out.0"),
           ("cross_attn.o", "attn2.to_out.0"), ("self_attn.", "attn1.to_"), ("cross_attn.", "attn2.to_")]
    diff = {}
    for k, v in sd.items():
        for a, b in ren:
            if a in k:
                k = k.replace(a, b)
                break
        diff[k.replace("to_norm_", "norm_")] = v
    assert "blocks.0.attn1.to_q.weight" in diff and "blocks.0.attn2.norm_k.weight" in diff
    shapes = {k: (tuple(v.shape), "float32") for k, v in diff.items()}
    plan = plan_mapping(shapes, target_shapes(MHA), MHA.n_heads)
    assert not plan.missing and {r.status for r in plan.rows} == {"mapped"}


def test_inspect_shows_tensors_and_mapping(tmp_path):
    from typer.testing import CliRunner

    from videomla_app.cli import app

    path = tmp_path / "sf.pt"
    torch.save({"generator": _self_forcing(_sd(MHA, 1)), "generator_ema": _self_forcing(_sd(MHA, 2))}, path)
    runner = CliRunner()
    r = runner.invoke(app, ["inspect", str(path), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["model"] == "test-mha" and d["auto_model"] and d["ok"] and d["entry"] == "generator_ema"
    assert len(d["tensors"]) == len(target_shapes(MHA)) and not d["missing"]
    row = next(t for t in d["tensors"] if t["source"] == "blocks.1.self_attn.q.weight")
    assert row["targets"] == ["blocks.1.self_attn.q.weight"] and row["shape"] == [64, 64]
    r = runner.invoke(app, ["inspect", str(path), "--model", "test-mla"])
    assert r.exit_code == 0 and "would be refused" in r.output and "blocks.{0-1}" in r.output
    assert "unmatched" in r.output and "missing" in r.output and "dense q/k/v" in r.output
    r = runner.invoke(app, ["inspect", str(path), "--model", "nope"])
    assert r.exit_code == 2


def test_read_checkpoint_strips_wrappers(tmp_path):
    sd = _sd(MHA, 1)
    path = tmp_path / "fsdp.pt"
    fsdp = {"module.model._fsdp_wrapped_module." + k: v for k, v in sd.items()}
    torch.save({"step": 5, "generator": fsdp}, path)
    t = read_checkpoint(path)
    assert set(t) == set(sd) and t.entry == "generator" and t.prefix == "model."
    with pytest.raises(RunError, match="no model weights"):
        torch.save({"critic": {"x": 1}}, tmp_path / "none.pt")
        read_checkpoint(tmp_path / "none.pt")
    assert ck.ENTRIES[:2] == ("generator_ema", "generator")
