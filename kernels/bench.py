"""Attention benchmark at the paper's shapes: `python -m videomla_kernels.bench [--json PATH]`.

One 3-latent-frame query chunk (Nq = 4,680 tokens, 12 heads) against windows of 7 and 21 latent
frames (Nk = 10,920 and 32,760), bf16, batch 1, one layer. Three implementations run in the same
process (STYLE_AND_PERF §2.8):

* absorbed: the Triton kernel `mla_attention` (d_c 192 + d_r 32, RoPE on read);
* rebuild:  per-head K/V rebuilt from the latent by one GEMM each, then SDPA (d_qk 128, d_v 128);
* dense:    SDPA / FlashAttention on 12 heads × 128 (the MHA baseline).

Each is first checked against the fp32 reference (correctness gate), then timed with CUDA events.
FLOP and byte formulas are those of STYLE_AND_PERF §2.6. Without a CUDA GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from .reference import (
    absorb_query_ref,
    expand_output_ref,
    mla_attention_rebuild_ref,
    mla_attention_ref,
    triton_mode,
)

NQ, H, D_C, D_R, D_NOPE, D_V, D_HEAD = 4680, 12, 192, 32, 96, 128, 128
WINDOWS = {"7 frames": 7 * 1560, "21 frames": 21 * 1560}
PEAK_TFLOPS = {"H100": 989.5, "H200": 989.5, "B200": 2250.0}  # dense bf16 tensor-core peaks (§2.1)
BF16 = 2  # bytes


def peak_tflops(name: str) -> float | None:
    """Dense bf16 peak for a device name, or None when the card is not in the table."""
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def elapsed_ms(fn, dev: str) -> float:
    """Milliseconds of one `fn()` call: CUDA events on a GPU, a wall clock on CPU (tests only)."""
    if dev != "cuda":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def time_ms(fn, dev: str = "cuda", warmup: int = 5, reps: int = 20) -> float:
    """Median milliseconds of `fn()` (warm-up excluded)."""
    for _ in range(warmup):
        fn()
    return sorted(elapsed_ms(fn, dev) for _ in range(reps))[reps // 2]


def cos_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """1 − cosine similarity style distance used by FlashMLA's tests (0 = identical)."""
    x, y = x.double(), y.double()
    return float(1 - 2 * (x * y).sum() / (x * x + y * y).sum().clamp_min(1e-30))


def gate(name: str, out: torch.Tensor, ref: torch.Tensor, max_cos_diff: float = 1e-5) -> dict:
    """Correctness gate before timing: cos-diff and max abs error against the fp32 reference.

    The kernel gets §2.8's cos-diff <= 1e-5. The rebuild path rounds its rebuilt K/V to bf16, which
    the absorbed reference never does, so it is held to a looser 1e-4 (it is not under test here).
    """
    err = (out.float() - ref).abs().max().item()
    cd = cos_diff(out, ref)
    finite = bool(torch.isfinite(out).all())
    ok = finite and cd <= max_cos_diff and err <= 2e-2 * max(1.0, ref.abs().max().item())
    print(f"  gate {name:9s} cos_diff {cd:.2e}  max_abs {err:.2e}  {'ok' if ok else 'FAILED'}")
    return {"impl": name, "cos_diff": cd, "max_abs": err, "ok": ok}


def make_inputs(nq: int, nk: int, dev: str = "cuda") -> dict:
    """Random bf16 inputs at the paper's shapes; angles like a window of positions in fp32."""
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape, std=1.0):
        return (torch.randn(*shape, device=dev, generator=g) * std).to(torch.bfloat16)

    theta = torch.rand(nk, D_R // 2, device=dev, generator=g) * 1000.0  # [Nk, d_r/2]
    x = {
        "q_nope": rnd(1, nq, H, D_NOPE),
        "q_rope": rnd(1, nq, H, D_R),
        "c_kv": rnd(1, nk, D_C),
        "k_rope": rnd(1, nk, D_R),
        "w_uk": rnd(H, D_NOPE, D_C, std=D_C**-0.5),
        "w_uv": rnd(H, D_V, D_C, std=D_C**-0.5),
        "cos": theta.cos(),
        "sin": theta.sin(),
    }
    x["q_lat"] = absorb_query_ref(x["q_nope"].float(), x["w_uk"].float()).to(torch.bfloat16)
    x["q"], x["k"], x["v"] = (rnd(1, H, n, D_HEAD) for n in (nq, nk, nk))  # dense MHA baseline
    return x


def cost(impl: str, nk: int, nq: int = NQ) -> tuple[float, float]:
    """(FLOPs, bytes) of one call, STYLE_AND_PERF §2.6 (each tensor read or written once)."""
    if impl == "absorbed":
        flops = 2 * nq * nk * H * (2 * D_C + D_R)
        nbytes = BF16 * (nq * H * (D_C + D_R) + nk * (D_C + D_R) + nq * H * D_C)
    elif impl == "rebuild":
        flops = 4 * nq * nk * H * D_HEAD + 2 * nk * D_C * H * (D_NOPE + D_V)
        kv = nk * H * (D_NOPE + D_R + D_V)  # rebuilt K/V, written then read back
        nbytes = BF16 * (nk * (D_C + D_R) + 2 * kv + nq * H * (D_NOPE + D_R) + nq * H * D_V)
    else:  # dense
        flops = 4 * nq * nk * H * D_HEAD
        nbytes = BF16 * 2 * (nq + nk) * H * D_HEAD
    return flops, nbytes


def bench_window(
    label: str, nk: int, peak: float | None, use_triton: bool, nq: int = NQ, dev: str = "cuda", reps: int = 20
) -> tuple[list, list]:
    """Gate, then time, the three implementations on one window; returns (rows, gates).

    `nq`/`dev` exist so the CPU tests can run this whole path at a tiny size under the interpreter.
    """
    print(f"window {label}: Nq {nq}, Nk {nk}, H {H}, d_c {D_C} + d_r {D_R}, bf16")
    x = make_inputs(nq, nk, dev)
    scale = 1.0 / math.sqrt(D_NOPE + D_R)
    ref_lat = mla_attention_ref(x["q_lat"], x["q_rope"], x["c_kv"], x["k_rope"], scale,
                                rope_cos=x["cos"], rope_sin=x["sin"])  # [1, Nq, H, d_c] fp32
    fns = {
        "rebuild": lambda: mla_attention_rebuild_ref(
            x["q_nope"], x["q_rope"], x["c_kv"], x["k_rope"], x["w_uk"], x["w_uv"], scale,
            rope_cos=x["cos"], rope_sin=x["sin"]),
        "dense": lambda: F.scaled_dot_product_attention(x["q"], x["k"], x["v"]),
    }
    gates = [gate("rebuild", fns["rebuild"](), expand_output_ref(ref_lat, x["w_uv"].float()), 1e-4)]
    if use_triton:
        from .mla_attention import mla_attention

        fns = {"absorbed": lambda: mla_attention(x["q_lat"], x["q_rope"], x["c_kv"], x["k_rope"], scale,
                                                 rope_cos=x["cos"], rope_sin=x["sin"]), **fns}
        outs = []
        ms = elapsed_ms(lambda: outs.append(fns["absorbed"]()), dev)  # the first call compiles and autotunes
        print(f"  absorbed: first call (compile + autotune) {ms / 1e3:.1f} s")
        gates.insert(0, gate("absorbed", outs[0], ref_lat))
    del ref_lat
    if not all(g["ok"] for g in gates):
        return [], gates
    rows = []
    for impl, fn in fns.items():
        ms = time_ms(fn, dev, warmup=min(5, reps), reps=reps)
        flops, nbytes = cost(impl, nk, nq)
        tflops, gbps = flops / ms / 1e9, nbytes / ms / 1e6
        pct = 100 * tflops / peak if peak else None
        rows.append({"window": label, "nq": nq, "nk": nk, "impl": impl, "ms": ms,
                     "tflops": tflops, "gbps": gbps, "pct_peak": pct})
        pct_s = f"{pct:5.1f} % of peak" if pct is not None else "(peak unknown)"
        print(f"  {impl:9s} {ms:8.3f} ms  {tflops:7.1f} TFLOP/s  {gbps:8.1f} GB/s  {pct_s}")
    return rows, gates


def main(argv: list[str] | None = None) -> int:
    doc = __doc__.splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m videomla_kernels.bench", description=doc)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("videomla_kernels.bench: no CUDA GPU available, nothing to benchmark (needs a CUDA GPU).")
        return 0
    name = torch.cuda.get_device_name()
    peak = peak_tflops(name)
    use_triton = triton_mode() == "gpu"
    print(f"GPU: {name}; dense bf16 peak {peak or 'unknown'} TFLOP/s; torch {torch.__version__}")
    if not use_triton:
        print("triton not usable here: timing only the torch paths")
    rows, gates = [], []
    for label, nk in WINDOWS.items():
        r, g = bench_window(label, nk, peak, use_triton)
        rows, gates = rows + r, gates + g
        torch.cuda.empty_cache()
    ok = all(g["ok"] for g in gates)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": name, "peak_tflops": peak, "torch": torch.__version__, "gates": gates,
                       "results": rows, "ok": ok}, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
