"""Tests of oomdoc_probe (CPU, small models). Run: python -m pytest python/tests"""
import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import oomdoc_probe  # noqa: E402


def mlp_setup(seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.LayerNorm(64), torch.nn.Linear(64, 4))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)

    def step(b, autocast=False):
        g = torch.Generator().manual_seed(b)
        x = torch.randn(b, 16, generator=g)
        y = torch.randint(0, 4, (b,), generator=g)
        if autocast:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(m(x), y)
        else:
            loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return m, opt, step


def allocs(doc, run):
    S = doc["strings"]
    return [dict(id=e[1], bytes=e[2], dtype=S[e[3]], shape=e[4], op=S[e[5]], module=S[e[6]], phase=e[7], region=e[8])
            for e in run["events"] if e[0] == "a"]


def test_trace_format_and_runs(tmp_path):
    m, opt, step = mlp_setup()
    path = tmp_path / "t.json"
    doc = oomdoc_probe.trace(step, path, batch_sizes=(1, 2), model=m, optimizer=opt)
    on_disk = json.loads(path.read_text())
    assert on_disk["format"] == "oomdoc-trace" and on_disk["version"] == oomdoc_probe.FORMAT_VERSION
    assert [(r["name"], r["batch"]) for r in doc["runs"]] == [("first", 1), ("steady", 1), ("steady", 2)]
    first, s1, s2 = doc["runs"]
    # parameters are alive at the start of every run, in module.to() order
    assert [p[1] for p in first["persistent"]] == [p.numel() * 4 for p in m.parameters()]
    # the first optimizer step creates the state (exp_avg, exp_avg_sq per parameter)
    opt_allocs = [a for a in allocs(doc, first) if a["phase"] == "o" and first["categories"].get(str(a["id"])) == "opt_state"]
    assert len(opt_allocs) == 2 * len(list(m.parameters()))
    assert not any(p[4] == "opt_state" for p in first["persistent"])
    assert sum(p[4] == "opt_state" for p in s1["persistent"]) >= 2 * len(list(m.parameters()))
    # gradients are categorised; activations saved for backward are marked
    assert any(v == "grad" for v in s1["categories"].values())
    assert s1["saved"]
    # the batch shows in the forward allocations
    fwd1 = sum(a["bytes"] for a in allocs(doc, s1) if a["phase"] == "f")
    fwd2 = sum(a["bytes"] for a in allocs(doc, s2) if a["phase"] == "f")
    assert fwd2 > fwd1
    # module paths are recorded
    assert any(a["module"] == "0" for a in allocs(doc, s1))
    assert all(not r["untraced"] for r in doc["runs"])


def test_observes_only(tmp_path):
    m1, o1, step1 = mlp_setup(seed=3)
    for b in (1, 1, 2):
        step1(b)
    m2, o2, step2 = mlp_setup(seed=3)
    oomdoc_probe.trace(step2, tmp_path / "t.json", batch_sizes=(1, 2), model=m2, optimizer=o2)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)
    # patches are undone
    assert o2.param_groups[0]["foreach"] is None
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention


def test_sdpa_regions(tmp_path):
    torch.manual_seed(0)
    m = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)

    def step(b):
        m(torch.randn(b, 8, 32)).square().mean().backward()
        opt.step()
        opt.zero_grad()

    doc = oomdoc_probe.trace(step, tmp_path / "t.json", batch_sizes=(1, 2), model=m, optimizer=opt)
    run = doc["runs"][1]
    (r,) = run["regions"]
    assert r["kind"] == "sdpa" and r["q"] == [1, 4, 8, 8] and r["dropout_p"] == pytest.approx(0.1)
    assert r["outputs"] and r["inputs"] and r["requires_grad"]
    tagged = [a for a in allocs(doc, run) if a["region"] == 0]
    assert any(a["phase"] == "f" for a in tagged) and any(a["phase"] == "b" for a in tagged)


def test_cuda_autocast_is_emulated(tmp_path):
    m, opt, step = mlp_setup()
    doc = oomdoc_probe.trace(lambda b: step(b, autocast=True), tmp_path / "t.json", batch_sizes=(2,),
                             model=m, optimizer=opt)
    assert doc["autocast"] == ["bfloat16"]
    a = allocs(doc, doc["runs"][1])
    fwd = [x for x in a if x["phase"] == "f"]
    # linear layers run in bf16, layer_norm in float32 (CUDA autocast lists)
    assert any(x["op"].startswith("aten.addmm") and x["dtype"] == "bfloat16" for x in fwd)
    assert any(x["op"].startswith("aten.native_layer_norm") and x["dtype"] == "float32" for x in fwd)
    # outside the probe, autocast("cuda") on a CPU-only machine is left as torch has it
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=False):
        pass


def test_convolution_calls_are_recorded(tmp_path):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    m(torch.randn(1, 3, 8, 8))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)

    def step(b):
        m(torch.randn(b, 3, 8, 8)).sum().backward()
        opt.step()
        opt.zero_grad()

    doc = oomdoc_probe.trace(step, tmp_path / "t.json", model=m, optimizer=opt)
    S = doc["strings"]
    calls = [S[e[1]] for e in doc["runs"][1]["events"] if e[0] == "c"]
    assert any(c.startswith("aten.convolution.") for c in calls)
    assert any(c.startswith("aten.convolution_backward") for c in calls)


def test_bias_gradient_sums_are_recorded(tmp_path):
    # a Linear on [b, 5, 16]: the bias gradient sums the [b * 5, 64] output gradient over its rows
    torch.manual_seed(0)
    m = torch.nn.Linear(16, 64)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)

    def step(b):
        m(torch.randn(b, 5, 16)).square().mean().backward()
        opt.step()
        opt.zero_grad()

    doc = oomdoc_probe.trace(step, tmp_path / "t.json", model=m, optimizer=opt, batch_sizes=(2,))
    S = doc["strings"]
    sums = [e[2] for e in doc["runs"][-1]["events"] if e[0] == "c" and S[e[1]].startswith("aten.sum.dim_IntList")
            and e[3] == "b"]
    assert sums, "no sum call recorded in backward"
    s = sums[0]
    assert s["dtype"] == "float32"
    rows = 1
    for d in s["dims"]:
        rows *= s["shapes"][0][d]
    assert rows == 2 * 5 and s["shapes"][0][-1] == 64
    assert len(s["strides"][0]) == len(s["shapes"][0])


def test_cross_entropy_under_autocast_keeps_half_log_probabilities_and_an_fp32_copy(tmp_path):
    # aten's cross_entropy calls log_softmax with the logits' dtype (autocast keeps it), then
    # nll_loss, which autocast runs in float32
    m, opt, step = mlp_setup()
    doc = oomdoc_probe.trace(lambda b: step(b, autocast=True), tmp_path / "t.json", batch_sizes=(2,),
                             model=m, optimizer=opt)
    a = allocs(doc, doc["runs"][1])
    fwd = [x for x in a if x["phase"] == "f"]
    assert any(x["op"].startswith("aten._log_softmax") and x["dtype"] == "bfloat16" for x in fwd)
    saved = set(doc["runs"][1]["saved"])
    assert any(x["dtype"] == "float32" and x["shape"] == [2, 4] and x["id"] in saved for x in fwd)


def test_checkpoint_recomputes_under_the_emulated_autocast(tmp_path):
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(
        torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
        for _ in range(2))
    opt = torch.optim.SGD(blocks.parameters(), lr=0.1)

    def step(b):
        x = torch.randn(b, 4, 8, 8)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            for blk in blocks:
                x = checkpoint(blk, x, use_reentrant=False)
            loss = x.float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    doc = oomdoc_probe.trace(step, tmp_path / "t.json", batch_sizes=(1, 2), model=blocks, optimizer=opt)
    a = allocs(doc, doc["runs"][2])
    # the recomputed convolutions in backward run in bf16, as on CUDA
    conv_bwd = [x for x in a if x["phase"] == "b" and x["op"].startswith("aten.convolution.")]
    assert conv_bwd and all(x["dtype"] == "bfloat16" for x in conv_bwd)
    # and the checkpoint function is restored afterwards
    import torch.utils.checkpoint as ckpt
    assert "oomdoc" not in getattr(ckpt._checkpoint_without_reentrant_generator, "__qualname__", "")


def test_checkpointed_attention_recomputation_is_freed(tmp_path):
    """Non-reentrant checkpointing recomputes a block in backward under a graph that never runs
    backward; in a real run that graph dies at once and the recomputed storages go when the
    checkpointed backward has used them. The probe must not keep them alive (it once did, by
    holding the autograd nodes of attention regions)."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    layers = torch.nn.ModuleList(
        torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True) for _ in range(3))
    opt = torch.optim.SGD(layers.parameters(), lr=0.1)

    def step(b):
        x = torch.randn(b, 8, 32)
        for layer in layers:
            x = checkpoint(layer, x, use_reentrant=False)
        x.square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    doc = oomdoc_probe.trace(step, tmp_path / "t.json", batch_sizes=(1, 2), model=layers, optimizer=opt)
    run = doc["runs"][2]
    recomputed = [a for a in allocs(doc, run) if a["phase"] == "b" and a["module"]]
    assert recomputed, "the recomputation shows as backward allocations with a module path"
    freed_in_backward = {e[1] for e in run["events"] if e[0] == "f" and e[2] == "b"}
    leaked = [a for a in recomputed if a["id"] not in freed_in_backward]
    assert not leaked, leaked
    # the recomputed attention calls are regions of their own, made in backward
    assert sum(r["phase"] == "b" for r in run["regions"]) == len(layers)


def test_sdpa_regions_record_a_mask_that_requires_grad(tmp_path):
    """CUDA's fused attention kernels refuse a mask that requires grad (a learned position bias),
    so the replay must know which calls have one."""
    torch.manual_seed(0)
    bias = torch.nn.Parameter(torch.zeros(1, 2, 8, 8))
    proj = torch.nn.Linear(16, 48)
    opt = torch.optim.SGD(list(proj.parameters()) + [bias], lr=0.1)

    def step(b):
        q, k, v = proj(torch.randn(b, 8, 16)).view(b, 8, 3, 2, 8).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out + F.scaled_dot_product_attention(q, k, v, attn_mask=bias.detach())
        out.square().mean().backward()
        opt.step()
        opt.zero_grad()

    doc = oomdoc_probe.trace(step, tmp_path / "t.json", batch_sizes=(1,), model=proj, optimizer=opt)
    learned, fixed = doc["runs"][1]["regions"]
    assert learned["has_mask"] and learned["mask_requires_grad"]
    assert fixed["has_mask"] and not fixed["mask_requires_grad"]


def conv_mlp_setup():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)

    def step(b):
        g = torch.Generator().manual_seed(b)
        x = torch.randn(b, 3, 8, 8, generator=g)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return m, opt, step


def test_low_precision_products_in_fp32_record_the_same_storages(tmp_path, monkeypatch):
    from oomdoc_probe import _recorder

    taken = []
    orig = _recorder._in_fp32

    def counting(func, args, kwargs):
        out = orig(func, args, kwargs)
        taken.append(str(func) if out is not None else None)
        return out

    monkeypatch.setattr(_recorder, "_in_fp32", counting)
    docs, weights = [], []
    for fast in (True, False):
        m, opt, step = conv_mlp_setup()
        docs.append(oomdoc_probe.trace(step, tmp_path / f"t{fast}.json", model=m, optimizer=opt,
                                       fast_low_precision=fast))
        weights.append([p.detach().clone() for p in m.parameters()])
    fast, slow = docs
    # the fast path ran the forward and backward convolutions and matrix products
    assert {"aten.convolution.default", "aten.convolution_backward.default", "aten.addmm.default",
            "aten.mm.default"} <= set(taken)
    assert fast["strings"] == slow["strings"]
    for a, b in zip(fast["runs"], slow["runs"]):
        assert a["events"] == b["events"]
        assert a["saved"] == b["saved"]
    # bf16 convolutions and matrix products ran (and were computed in fp32 on the fast path)
    ops = {x["op"] for x in allocs(fast, fast["runs"][1]) if x["dtype"] == "bfloat16"}
    assert any(o.startswith("aten.convolution.") for o in ops)
    assert any(o.startswith("aten.addmm") for o in ops)
    # both paths accumulate in fp32 and round once: the trained weights agree to bf16 rounding
    for p, q in zip(*weights):
        assert torch.allclose(p, q, rtol=1e-2, atol=1e-3)


def test_cuda_autocast_is_emulated_on_a_machine_with_a_gpu(tmp_path, monkeypatch):
    # The traced step runs on the CPU either way: a real CUDA autocast would leave it all in fp32.
    # (CUDA is made to look available while autocast is entered and the forward runs.)
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 4))
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    real = torch.cuda.is_available

    def step(b):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m(torch.randn(b, 16)).float().sum()
        monkeypatch.setattr(torch.cuda, "is_available", real)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    doc = oomdoc_probe.trace(step, tmp_path / "t.json", batch_sizes=(2,), model=m, optimizer=opt)
    assert doc["autocast"] == ["bfloat16"]
    a = allocs(doc, doc["runs"][1])
    assert any(x["op"].startswith("aten.addmm") and x["dtype"] == "bfloat16" for x in a if x["phase"] == "f")


def test_cross_attention_under_autocast_projects_key_and_value_together(tmp_path):
    # nn.MultiheadAttention with key is value (a decoder's cross-attention) projects both with one
    # packed matrix product; CUDA autocast casts inside F.multi_head_attention_forward, op by op,
    # so the memory is cast once and the identity holds
    torch.manual_seed(0)
    layer = torch.nn.TransformerDecoderLayer(32, 4, 64, 0.1, batch_first=True, norm_first=True)
    opt = torch.optim.AdamW(layer.parameters())

    def step(b):
        x, mem = torch.randn(b, 6, 32), torch.randn(b, 20, 32)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = layer(x, mem)
        y.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    doc = oomdoc_probe.trace(step, tmp_path / "t.json", batch_sizes=(2,))
    fwd = [a for a in allocs(doc, doc["runs"][1]) if a["module"] == "multihead_attn" and a["phase"] == "f"]
    casts_of_memory = [a for a in fwd if a["op"] == "aten._to_copy.default" and a["shape"] == [20, 2, 32]]
    assert len(casts_of_memory) == 1 and casts_of_memory[0]["dtype"] == "bfloat16"
    # the packed key/value weight [64, 32] is cast, and one product gives both projections
    assert any(a["op"] == "aten._to_copy.default" and a["shape"] == [64, 32] for a in fwd)
    assert any(a["op"] in ("aten.mm.default", "aten.addmm.default") and a["shape"][-1] == 64 for a in fwd)
    # the whole in-projection weight is not cast at the call's entry
    assert not any(a["op"] == "aten._to_copy.default" and a["shape"] == [96, 32] for a in fwd)


def test_linear_on_a_non_contiguous_input_adds_its_bias_in_place(tmp_path):
    # F.linear on a sequence-first view runs matmul then output.add_(bias); under a dispatch mode
    # aten takes the out-of-place add, which CUDA does not: the trace keeps the product's storage
    lin = torch.nn.Linear(32, 64)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)

    def step(b):
        x = torch.randn(b, 10, 32).transpose(0, 1)  # [10, b, 32], not contiguous for b > 1
        lin(x).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    doc = oomdoc_probe.trace(step, tmp_path / "t.json", batch_sizes=(2,))
    run = doc["runs"][1]
    fwd = [a for a in allocs(doc, run) if a["phase"] == "f"]
    assert not any(a["op"] == "aten.add.Tensor" for a in fwd)
    prod = [a for a in fwd if a["op"] == "aten.mm.default" and a["shape"] == [20, 64]]
    assert len(prod) == 1
    # the product's storage is the layer's output: alive until the square that reads it is done
    frees = [i for i, e in enumerate(run["events"]) if e[0] == "f" and e[1] == prod[0]["id"]]
    squares = [i for i, e in enumerate(run["events"]) if e[0] == "a" and doc["strings"][e[5]] == "aten.pow.Tensor_Scalar"]
    assert len(frees) == 1 and squares and frees[0] > squares[0]
    # outside linear layers an out-of-place add stays as it is
    def step2(b):
        x = torch.randn(b, 10, 32)
        (x @ lin.weight.t() + lin.bias).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    doc2 = oomdoc_probe.trace(step2, tmp_path / "t2.json", batch_sizes=(2,))
    assert any(a["op"] == "aten.add.Tensor" for a in allocs(doc2, doc2["runs"][1]) if a["phase"] == "f")


def test_autocast_casts_arguments_last_to_first_as_cuda_builds_do(tmp_path):
    # an H100 allocator history of F.linear under autocast: the bias cast, then the weight, then
    # the input; the order decides where equal-lifetime copies land in the caching allocator
    lin = torch.nn.Linear(32, 48)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)

    def step(b):
        x = torch.randn(b, 32)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = lin(x)
        y.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    doc = oomdoc_probe.trace(step, tmp_path / "t.json", batch_sizes=(3,))
    casts = [a["shape"] for a in allocs(doc, doc["runs"][1]) if a["op"] == "aten._to_copy.default"
             and a["phase"] == "f"]
    assert casts[:3] == [[48], [48, 32], [3, 32]]
