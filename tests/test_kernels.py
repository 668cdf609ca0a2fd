"""Triton kernels vs their fp32 references.

On CPU the kernels run under TRITON_INTERPRET=1 (set by conftest) at tiny shapes: every dot piece a
power of two >= 16, fp32/fp16 (bf16 only through the in-kernel fp32 upcast, since bf16 `tl.dot` is
wrong in the interpreter). Tests marked `gpu` run bf16 at the paper's shapes and are skipped here.
The interpreter costs ~2 ms per program instance, so shapes stay a few blocks wide.
"""

import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch

import videomla_kernels as vk

needs_triton = pytest.mark.skipif(not vk.available(), reason="needs triton on a GPU or under the interpreter")


def _ring_tables(nk: int, d_r: int, n_sink: int = 3, shift: int = 5, seed: int = 0):
    """cos/sin [nk, d_r/2] for a ring-buffer window: sink slots, then window slots wrapped around.

    Slot order != position order (as after the ring buffer wraps), and positions are large, so a
    kernel that indexed the tables by anything but the slot would fail.
    """
    window = torch.arange(n_sink, nk)
    positions = torch.cat((torch.arange(n_sink), window.roll(shift))) + 1000  # [nk], out of order
    freqs = 10000.0 ** (-torch.arange(d_r // 2) / (d_r // 2))  # [d_r/2]
    g = torch.Generator().manual_seed(seed)
    angles = positions[:, None].float() * freqs[None, :] + torch.rand(nk, d_r // 2, generator=g)
    return angles.cos(), angles.sin()  # fp32 [nk, d_r/2]


def _inputs(B, Nq, H, Nk, d_c, d_r, dtype, k_len=None, seed=0):
    """Random q_lat, q_rope, c_kv, k_rope in `dtype`; slots >= k_len poisoned with NaN."""
    g = torch.Generator().manual_seed(seed)
    q_lat = torch.randn(B, Nq, H, d_c, generator=g).to(dtype)
    q_rope = torch.randn(B, Nq, H, d_r, generator=g).to(dtype)
    c_kv = torch.randn(B, Nk, d_c, generator=g).to(dtype)
    k_rope = torch.randn(B, Nk, d_r, generator=g).to(dtype)
    if k_len is not None and k_len < Nk:
        c_kv[:, k_len:] = float("nan")
        k_rope[:, k_len:] = float("nan")
    return q_lat, q_rope, c_kv, k_rope


TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=3e-3, rtol=3e-3)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("d_c", [32, 48], ids=["dc32", "dc48=32+16"])
@pytest.mark.parametrize("rope_on_read", [False, True], ids=["no-rope", "rope-on-read"])
@pytest.mark.parametrize(
    "Nq,H,Nk,k_len",
    [(20, 2, 40, None), (16, 2, 48, 37), (33, 1, 17, None), (8, 4, 64, 33), (5, 3, 16, 1)],
    ids=["tails", "k_len<Nk+NaN", "Nk<block", "one-key-last-tile", "k_len=1"],
)
@needs_triton
def test_mla_attention_matches_reference(dtype, d_c, rope_on_read, Nq, H, Nk, k_len):
    d_r, scale = 16, 0.3
    q_lat, q_rope, c_kv, k_rope = _inputs(2, Nq, H, Nk, d_c, d_r, dtype, k_len)
    cos = sin = None
    if rope_on_read:
        cos, sin = _ring_tables(Nk, d_r)
        if k_len is not None:
            cos[k_len:], sin[k_len:] = float("nan"), float("nan")  # unused table rows are never read either
    out = vk.mla_attention(q_lat, q_rope, c_kv, k_rope, scale, k_len=k_len, rope_cos=cos, rope_sin=sin)
    ref = vk.mla_attention_ref(q_lat, q_rope, c_kv, k_rope, scale, k_len=k_len, rope_cos=cos, rope_sin=sin)
    assert out.shape == (2, Nq, H, d_c) and out.dtype == dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, **TOL[dtype])


@needs_triton
def test_mla_attention_paper_widths_small_sequence():
    """d_c 192 = 128 + 64 and d_r 32 as in the paper, 12 heads packed into the rows, short sequences."""
    Nq, H, Nk, k_len, d_c, d_r = 6, 12, 40, 35, 192, 32
    q_lat, q_rope, c_kv, k_rope = _inputs(1, Nq, H, Nk, d_c, d_r, torch.float16, k_len)
    cos, sin = _ring_tables(Nk, d_r)
    scale = 1 / math.sqrt(128)
    out = vk.mla_attention(q_lat, q_rope, c_kv, k_rope, scale, k_len=k_len, rope_cos=cos, rope_sin=sin)
    ref = vk.mla_attention_ref(q_lat, q_rope, c_kv, k_rope, scale, k_len=k_len, rope_cos=cos, rope_sin=sin)
    torch.testing.assert_close(out.float(), ref, **TOL[torch.float16])


@needs_triton
@pytest.mark.parametrize("layout", ["cache-slices", "channels-major"])
def test_mla_attention_accepts_any_strides(layout):
    """Non-contiguous inputs: the kernel gets every stride, including non-unit channel strides."""
    B, Nq, H, Nk, d_c, d_r = 2, 12, 2, 24, 48, 16
    g = torch.Generator().manual_seed(1)
    if layout == "cache-slices":  # heads-major queries; c_kv / k_rope as column slices of one cache row
        q_lat = torch.randn(B, H, Nq, d_c, generator=g).transpose(1, 2)  # [B, Nq, H, d_c]
        q_rope = torch.randn(B, H, Nq, d_r, generator=g).transpose(1, 2)  # [B, Nq, H, d_r]
        cache = torch.randn(B, Nk, d_c + d_r, generator=g)  # [B, Nk, d_c + d_r]
        c_kv, k_rope = cache[..., :d_c], cache[..., d_c:]  # row stride d_c + d_r
    else:  # channel dimension outermost: stride(-1) != 1 everywhere
        q_lat = torch.randn(B, d_c, H, Nq, generator=g).permute(0, 3, 2, 1)  # [B, Nq, H, d_c]
        q_rope = torch.randn(B, d_r, H, Nq, generator=g).permute(0, 3, 2, 1)  # [B, Nq, H, d_r]
        c_kv = torch.randn(B, d_c, Nk, generator=g).transpose(1, 2)  # [B, Nk, d_c]
        k_rope = torch.randn(B, d_r, Nk, generator=g).transpose(1, 2)  # [B, Nk, d_r]
    cos, sin = (t.t().contiguous().t() for t in _ring_tables(Nk, d_r))  # column-major tables
    out = vk.mla_attention(q_lat, q_rope, c_kv, k_rope, 0.25, rope_cos=cos, rope_sin=sin)
    ref = vk.mla_attention_ref(q_lat, q_rope, c_kv, k_rope, 0.25, rope_cos=cos, rope_sin=sin)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])


@needs_triton
def test_mla_attention_bf16_through_interpreter_upcast():
    q_lat, q_rope, c_kv, k_rope = _inputs(1, 10, 2, 24, 48, 16, torch.bfloat16, k_len=20)
    cos, sin = _ring_tables(24, 16)
    out = vk.mla_attention(q_lat, q_rope, c_kv, k_rope, 0.3, k_len=20, rope_cos=cos, rope_sin=sin)
    ref = vk.mla_attention_ref(q_lat, q_rope, c_kv, k_rope, 0.3, k_len=20, rope_cos=cos, rope_sin=sin)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=2e-2)


def _bad(**changes):
    """Valid small inputs with some entries replaced."""
    q_lat, q_rope, c_kv, k_rope = _inputs(1, 4, 2, 8, 32, 16, torch.float32)
    cos, sin = _ring_tables(8, 16)
    args = dict(q_lat=q_lat, q_rope=q_rope, c_kv=c_kv, k_rope=k_rope, scale=0.1, rope_cos=cos, rope_sin=sin)
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(q_lat=torch.zeros(4, 2, 32)), r"q_lat must be a 4-D tensor"),
        (dict(c_kv=torch.zeros(1, 8, 2, 32)), r"c_kv must be a 3-D tensor"),
        (dict(q_rope=torch.zeros(1, 5, 2, 16)), r"q_rope .* must be \[B, Nq, H, d_r\]"),
        (dict(c_kv=torch.zeros(1, 8, 64)), r"c_kv .* must be \[B, Nk, d_c\]"),
        (dict(k_rope=torch.zeros(1, 9, 16)), r"k_rope .* must be \[B, Nk, d_r\]"),
        (dict(k_rope=torch.zeros(1, 8, 32)), r"k_rope .* must be \[B, Nk, d_r\]"),
        (dict(q_lat=torch.zeros(1, 4, 2, 40), c_kv=torch.zeros(1, 8, 40)), r"d_c=40 must be a power of two"),
        (dict(q_lat=torch.zeros(1, 4, 2, 8), c_kv=torch.zeros(1, 8, 8)), r"d_c=8 must be"),
        (
            dict(q_rope=torch.zeros(1, 4, 2, 24), k_rope=torch.zeros(1, 8, 24), rope_cos=None, rope_sin=None),
            r"d_r=24 must be a power of two",
        ),
        (dict(c_kv=torch.zeros(1, 8, 32, dtype=torch.float16)), r"must share one dtype"),
        (
            {k: v.double() for k, v in _bad().items() if k in ("q_lat", "q_rope", "c_kv", "k_rope")},
            r"fp16/bf16/fp32",
        ),
        (dict(k_rope=torch.zeros(1, 8, 16, device="meta")), r"one device"),
        (dict(k_len=0), r"k_len must be a python int in \[1, Nk=8\]"),
        (dict(k_len=9), r"k_len must be"),
        (dict(k_len=torch.tensor(4)), r"k_len must be a python int"),
        (dict(rope_sin=None), r"both rope_cos and rope_sin"),
        (dict(rope_cos=torch.zeros(8, 16)), r"rope_cos must be an fp32 \[Nk, d_r/2\] = \[8, 8\]"),
        (dict(rope_sin=torch.zeros(8, 8, dtype=torch.float16)), r"rope_sin must be an fp32"),
    ],
)
def test_mla_attention_rejects_bad_inputs(changes, match):
    with pytest.raises(ValueError, match=match):
        vk.mla_attention(**_bad(**changes))


def test_split_latent_dim():
    assert vk.split_latent_dim(192) == (128, 64)
    assert vk.split_latent_dim(48) == (32, 16)
    assert vk.split_latent_dim(32) == (32, 0)
    for bad in (0, 8, 40, 112, 224):
        with pytest.raises(ValueError):
            vk.split_latent_dim(bad)


def test_triton_mode(monkeypatch):
    if importlib.util.find_spec("triton") is not None:  # conftest sets TRITON_INTERPRET=1 without CUDA
        assert vk.triton_mode() == ("gpu" if torch.cuda.is_available() else "interpret")
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    assert vk.triton_mode() == "torch"
    assert not vk.available()


def test_rope_rotate_ref_is_complex_multiplication():
    cos, sin = _ring_tables(10, 16)
    x = torch.randn(2, 3, 10, 16)  # [..., N, d_r]
    rot = vk.rope_rotate_ref(x, cos, sin)
    expect = torch.view_as_real(torch.view_as_complex(x.view(2, 3, 10, 8, 2)) * torch.complex(cos, sin))
    torch.testing.assert_close(rot, expect.flatten(-2))
    torch.testing.assert_close(rot.norm(dim=-1), x.norm(dim=-1))  # rotations keep the norm


def test_rebuild_path_equals_absorbed_reference():
    """Paper App. E: rebuilding per-head K/V then SDPA == absorbed latent attention + W_uv (fp32)."""
    B, Nq, H, Nk, k_len, d_c, d_r, d_nope, d_v = 2, 7, 3, 30, 26, 48, 16, 24, 20
    g = torch.Generator().manual_seed(2)
    q_nope = torch.randn(B, Nq, H, d_nope, generator=g)
    _, q_rope, c_kv, k_rope = _inputs(B, Nq, H, Nk, d_c, d_r, torch.float32, k_len, seed=3)
    w_uk = torch.randn(H, d_nope, d_c, generator=g) / math.sqrt(d_c)
    w_uv = torch.randn(H, d_v, d_c, generator=g) / math.sqrt(d_c)
    cos, sin = _ring_tables(Nk, d_r)
    scale = 1 / math.sqrt(d_nope + d_r)
    o = vk.mla_attention_rebuild_ref(q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, scale, k_len, cos, sin)
    q_lat = vk.absorb_query_ref(q_nope, w_uk)  # [B, Nq, H, d_c]
    o_lat = vk.mla_attention_ref(q_lat, q_rope, c_kv, k_rope, scale, k_len, cos, sin)
    assert o.shape == (B, Nq, H, d_v)
    torch.testing.assert_close(o, vk.expand_output_ref(o_lat, w_uv), atol=1e-5, rtol=1e-5)


def test_bench_cost_formulas_match_roofline_doc():
    """bench.cost() reproduces STYLE_AND_PERF §2.6 for the 21-frame window (Nk 32,760)."""
    from videomla_kernels import bench

    flops, nbytes = bench.cost("absorbed", 32760)
    assert round(flops / 1e9, 1) == 1530.7 and round(nbytes / 1e6, 1) == 61.4
    dense_flops, nbytes = bench.cost("dense", 32760)
    assert round(dense_flops / 1e9, 1) == 942.0 and round(nbytes / 1e6, 1) == 230.0
    flops, _ = bench.cost("rebuild", 32760)
    assert round((flops - dense_flops) / 1e9, 1) == 33.8  # K/V rebuild GEMMs on top of dense attention
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.5 and bench.peak_tflops("NVIDIA B200") == 2250.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB") is None


@needs_triton
def test_bench_window_runs_end_to_end_on_cpu(capsys):
    """The benchmark's gate + timing path at the paper's widths but 4 query tokens, under the interpreter."""
    from videomla_kernels import bench

    rows, gates = bench.bench_window("tiny", 40, peak=989.5, use_triton=True, nq=4, dev="cpu", reps=1)
    assert [g["impl"] for g in gates] == ["absorbed", "rebuild"] and all(g["ok"] for g in gates)
    assert [r["impl"] for r in rows] == ["absorbed", "rebuild", "dense"]
    assert all(r["ms"] > 0 and r["tflops"] > 0 and r["pct_peak"] is not None for r in rows)
    assert "gate absorbed" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_bench_exits_cleanly_without_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, "-m", "videomla_kernels.bench"], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "no CUDA GPU" in res.stdout
    assert len(res.stdout.strip().splitlines()) == 1


def _cos_diff(x, y):
    x, y = x.double(), y.double()
    return float(1 - 2 * (x * y).sum() / (x * x + y * y).sum())


@pytest.mark.gpu
@pytest.mark.parametrize("rope_on_read", [False, True], ids=["no-rope", "rope-on-read"])
@needs_triton
def test_gpu_paper_shapes_bf16(rope_on_read):
    """Paper shapes: 3-frame chunk (4,680 tokens) vs a 7-frame window (10,920), 12 heads, 192 + 32."""
    Nq, H, Nk, d_c, d_r = 4680, 12, 10920, 192, 32
    k_len = Nk - 1000 if rope_on_read else None  # partly filled window with NaN-poisoned tail
    q_lat, q_rope, c_kv, k_rope = (
        t.cuda() for t in _inputs(1, Nq, H, Nk, d_c, d_r, torch.bfloat16, k_len)
    )
    cos = sin = None
    if rope_on_read:
        cos, sin = (t.cuda() for t in _ring_tables(Nk, d_r))
    scale = 1 / math.sqrt(128)
    out = vk.mla_attention(q_lat, q_rope, c_kv, k_rope, scale, k_len=k_len, rope_cos=cos, rope_sin=sin)
    ref = vk.mla_attention_ref(q_lat, q_rope, c_kv, k_rope, scale, k_len=k_len, rope_cos=cos, rope_sin=sin)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert _cos_diff(out, ref) < 1e-5
    assert (out.float() - ref).abs().max().item() < 1e-2
