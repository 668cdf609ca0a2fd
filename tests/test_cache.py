import pytest
import torch

from videomla_app.budget import cache_budget
from videomla_app.cache import DenseKVCache, LatentKVCache, make_cache
from videomla_app.config import CacheConfig, get_preset


def _cache(kind="test-mla", S=1, W=2, C=2):
    p = get_preset(kind)
    return make_cache(p.model, CacheConfig(S, W, C))


def test_plan_prefix_sink_and_ring_wrap():
    c = _cache()  # S1 W2 C2 -> 5 frame slots, P = 4 tokens
    P = c.P
    seen_slots = set()
    for f0 in range(0, 40, 2):
        st = c.plan(f0, 2)
        frames = set(st.key_frames)
        base = max(1, f0 + 2 - 4)
        expect = {0} | set(range(base, f0 + 2)) if f0 + 2 > 1 else set(range(f0 + 2))
        assert frames == expect, (f0, frames)
        assert st.n_valid == len(frames) * P
        # the chunk is always the last frames of its window in local time; sink keeps 0
        assert st.key_local[0] == 0 and max(st.key_local) == st.query_local[-1]
        for dst, src, n in st.writes:
            seen_slots.update(range(dst // P, (dst + n) // P))
        c.commit(st)
    assert seen_slots == set(range(5))  # the ring wrapped over every slot


def test_writes_are_in_place_and_reads_are_views():
    c = _cache()
    ptr = c.tensors["c_kv"].data_ptr()
    for f0 in range(0, 20, 2):
        st = c.plan(f0, 2)
        chunk = {"c_kv": torch.full((1, 2 * c.P, 24), float(f0)), "k_rope": torch.zeros(1, 2 * c.P, 16)}
        c.write(1, st, **chunk)
        view = c.read(1, st)["c_kv"]
        assert view.data_ptr() == ptr + c.tensors["c_kv"][1].storage_offset() * 4
        c.commit(st)
    assert c.tensors["c_kv"].data_ptr() == ptr
    # after the last write the chunk's frames hold its value, the sink still holds frame 0's
    assert c.tensors["c_kv"][1, 0, :c.P].eq(0).all()


def test_out_of_order_and_oversized_plans_are_refused():
    c = _cache()
    with pytest.raises(ValueError, match="in order"):
        c.plan(2, 2)
    with pytest.raises(ValueError, match="1..2 frames"):
        c.plan(0, 3)


def test_byte_accounting_from_real_tensors_equals_meta_allocation():
    p = get_preset("small-mla")
    real = cache_budget(p, torch.bfloat16, device="cpu")
    meta = cache_budget(p, torch.bfloat16, device="meta")
    assert real == meta
    c = make_cache(p.model, p.cache, dtype=torch.bfloat16)
    assert real.total_bytes == sum(t.numel() * 2 for t in c.tensors.values())
    assert c.bytes_per_token_per_layer == (64 + 16) * 2


def test_paper_budget_numbers():
    b = cache_budget(get_preset("videomla-1.3b"))
    assert (b.scalars_per_token_per_layer, b.dense_scalars_per_token_per_layer) == (224, 3072)
    assert (b.bytes_per_token_per_layer, b.dense_bytes_per_token_per_layer) == (448, 6144)
    assert round(b.reduction, 3) == 0.927
    sf = cache_budget(get_preset("self-forcing-1.3b"))
    assert sf.cache_tokens == 21 * 1560 and sf.total_bytes == 21 * 1560 * 30 * 3072 * 2  # 6.04 GB


def test_save_restore_round_trip(tmp_path):
    c = _cache()
    for f0 in range(0, 10, 2):
        st = c.plan(f0, 2)
        c.write(0, st, c_kv=torch.randn(1, 2 * c.P, 24), k_rope=torch.randn(1, 2 * c.P, 16))
        c.commit(st)
    c.save(tmp_path / "c.safetensors")
    d = _cache()
    d.load(tmp_path / "c.safetensors")
    assert d.committed == 10 and d.origin == c.origin
    for k in c.tensors:
        assert torch.equal(c.tensors[k], d.tensors[k])
    with pytest.raises(ValueError, match="geometry"):
        _cache(W=4).load(tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="LatentKVCache"):
        _cache("test-mha").load(tmp_path / "c.safetensors")


def test_make_cache_picks_the_kind():
    assert isinstance(_cache("test-mla"), LatentKVCache)
    assert isinstance(_cache("test-mha"), DenseKVCache)
