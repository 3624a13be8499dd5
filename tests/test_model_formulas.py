"""The looped block against its formulas, written out by hand on tiny float64 tensors.

Every reference below is computed from the parameters (read by attribute) with plain tensor
arithmetic; none of them calls deqloop's modules, norms, RoPE tables or masks. All parameters,
RMSNorm weights and biases included, are set to random values first, so a missing norm cannot
hide behind a weight of 1 and a missing bias behind a bias of 0.

Formulas (h the residual stream, g a sublayer, n an RMSNorm with its own weight, merge(h, y) =
h + y, or GRUCell(input=y, hidden=h) with ``residual="gru"``):

    pre: merge(h, g(n(h)))   peri: merge(h, n2(g(n1(h))))   post: n(merge(h, g(h)))
    sandwich: n_out(merge(h, g(n_in(h))))
    recall none: h = z; external: h = W_z z + b_z + W_e e + b_e; internal: g's input u (after the
    pre-norm, if any) becomes W_z u + b_z + W_e e + b_e, added to the plain stream h.
    block: h = attn_residual(h); h = mlp_residual(h). The norms and the injection pair are the
    block's, used by both sublayers (the paper's form), or each sublayer's own (the earlier form,
    which also has no biases and the QK-norm before RoPE).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from deqloop.model.attention import Attention, local_mask
from deqloop.model import EARLIER_FORMS, NORMS, RECALLS, LoopedDEQ
from deqloop.model.layers import MLP, Readout
from deqloop.model.norm import RMSNorm
from deqloop.model.rope import rope_table

TOL = dict(rtol=1e-12, atol=1e-12)
EPS = 1e-6  # RMSNorm's default epsilon
CPU = torch.device("cpu")


# -- randomizing parameters and reading them back ------------------------------------------------


def randomize(module: torch.nn.Module, seed: int = 1) -> None:
    """Set every parameter to random values: norm weights in ±[0.5, 1.5], never near 1 on
    average; linear weights ~ N(0, 1/fan_in); biases and embeddings ~ N(0, 0.5²)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if "norm" in name:
                sign = torch.where(torch.rand(p.shape, generator=gen) < 0.3, -1.0, 1.0)
                p.copy_(sign * (0.5 + torch.rand(p.shape, generator=gen, dtype=p.dtype)))
            elif p.dim() == 2 and "embedding" not in name:
                p.copy_(noise / math.sqrt(p.shape[1]))
            else:
                p.copy_(0.5 * noise)


class Reader:
    """Hands out parameters as plain tensors and remembers which were read, so a test can check
    that its reference used every parameter of the module under test."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def __call__(self, module: torch.nn.Module | None, what: str, name: str = "weight"):
        assert module is not None, f"{what} is missing"
        p = getattr(module, name)
        assert isinstance(p, torch.nn.Parameter), f"{what}.{name} is not a parameter"
        self.seen.add(id(p))
        return p.detach()

    def check_used_all(self, module: torch.nn.Module) -> None:
        unused = [n for n, p in module.named_parameters() if id(p) not in self.seen]
        assert not unused, f"parameters the formula does not account for: {unused}"


# -- the formulas -------------------------------------------------------------------------------


def ref_rmsnorm(x, weight, eps):
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * weight


def ref_gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def ref_linear(x, weight, bias=None):
    y = torch.einsum("...i,oi->...o", x, weight)
    return y if bias is None else y + bias


def coords_of(grid):
    """Row-major cell coordinates, as a list of tuples."""
    return list(itertools.product(*(range(n) for n in grid)))


def ref_angles(grid, head_dim, base):
    """(N, d/2) rotation angles: 1-D, plane i turns by n·base^(-i/(d/2)); 2-D, the first d/4
    planes by row·base^(-j/(d/4)), the last d/4 by col·base^(-j/(d/4))."""
    per_axis = head_dim // 2 // len(grid)
    rows = []
    for cell in coords_of(grid):
        rows.append([pos * base ** (-j / per_axis) for pos in cell for j in range(per_axis)])
    return torch.tensor(rows, dtype=torch.float64)


def ref_rotate(x, angles):
    """Rotate plane i = (dim i, dim i + d/2) of x (..., N, d) by angles[:, i]."""
    d = x.shape[-1]
    out = x.clone()
    for i in range(d // 2):
        a, b = x[..., i], x[..., i + d // 2]
        c, s = torch.cos(angles[:, i]), torch.sin(angles[:, i])
        out[..., i] = a * c - b * s
        out[..., i + d // 2] = a * s + b * c
    return out


def ref_allowed(grid, window):
    """(N, N) bool: token j within window // 2 of token i along every axis (None: all)."""
    if window is None:
        return None
    cells = coords_of(grid)
    r = window // 2
    return torch.tensor(
        [[all(abs(a - b) <= r for a, b in zip(ci, cj)) for cj in cells] for ci in cells]
    )


def ref_attention(x, attn, read, grid, base, window, eps, what="attn", qk_norm=True, bias=True, after_rope=True):
    """proj(concat_h softmax(q_h k_hᵀ / √d + mask) v_h), x (B, N, D), with q_h = n_q(rope(q_h))
    (``after_rope``, the paper's) or rope(n_q(q_h)), likewise k_h; qkv and proj with biases when
    ``bias``; without ``qk_norm`` n_q and n_k are the identity."""
    B, N, D = x.shape
    H = attn.heads
    d = D // H

    def linear(layer, name, u):
        if not bias:
            assert layer.bias is None, f"{what}.{name} has a bias"
            return ref_linear(u, read(layer, f"{what}.{name}"))
        return ref_linear(u, read(layer, f"{what}.{name}"), read(layer, f"{what}.{name}", "bias"))

    qkv = linear(attn.qkv, "qkv", x)
    q, k, v = qkv[..., :D], qkv[..., D : 2 * D], qkv[..., 2 * D :]
    q, k, v = (t.reshape(B, N, H, d).permute(0, 2, 1, 3) for t in (q, k, v))  # (B, H, N, d)
    angles = ref_angles(grid, d, base)
    if qk_norm and after_rope:
        q, k = ref_rotate(q, angles), ref_rotate(k, angles)
    if qk_norm:
        q = ref_rmsnorm(q, read(attn.q_norm, f"{what}.q_norm"), eps)
        k = ref_rmsnorm(k, read(attn.k_norm, f"{what}.k_norm"), eps)
    if not (qk_norm and after_rope):
        q, k = ref_rotate(q, angles), ref_rotate(k, angles)
    scores = torch.einsum("bhic,bhjc->bhij", q, k) / math.sqrt(d)
    allowed = ref_allowed(grid, window)
    if allowed is not None:
        scores = torch.where(allowed, scores, torch.tensor(-math.inf, dtype=scores.dtype))
    weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    weights = weights / weights.sum(dim=-1, keepdim=True)
    y = torch.einsum("bhij,bhjc->bihc", weights, v).reshape(B, N, D)  # heads side by side
    return linear(attn.proj, "proj", y)


def ref_mlp(x, mlp, read, what="mlp"):
    """proj(gelu(fc(x)))."""
    fc_w, fc_b = read(mlp.fc, f"{what}.fc"), read(mlp.fc, f"{what}.fc", "bias")
    proj_w, proj_b = read(mlp.proj, f"{what}.proj"), read(mlp.proj, f"{what}.proj", "bias")
    return ref_linear(ref_gelu(ref_linear(x, fc_w, fc_b)), proj_w, proj_b)


def ref_inject(u, e, inj, read, what, bias):
    """W_z u + b_z + W_e e + b_e (no biases unless ``bias``)."""
    w_z = read(inj and inj.w_z, f"{what}.w_z")
    w_e = read(inj and inj.w_e, f"{what}.w_e")
    if not bias:
        assert inj.w_z.bias is None and inj.w_e.bias is None, f"{what} has biases"
        return ref_linear(u, w_z) + ref_linear(e, w_e)
    return ref_linear(u, w_z, read(inj.w_z, f"{what}.w_z", "bias")) + ref_linear(e, w_e, read(inj.w_e, f"{what}.w_e", "bias"))


def ref_gru(y, h, gru, read):
    """GRUCell(input=y, hidden=h) written out: r, u gates, candidate n, (1 − u) n + u h."""
    w_ih, w_hh = read(gru, "gru", "weight_ih"), read(gru, "gru", "weight_hh")
    b_ih, b_hh = read(gru, "gru", "bias_ih"), read(gru, "gru", "bias_hh")
    gi, gh = ref_linear(y, w_ih, b_ih), ref_linear(h, w_hh, b_hh)
    D = h.shape[-1]
    r = torch.sigmoid(gi[..., :D] + gh[..., :D])
    u = torch.sigmoid(gi[..., D : 2 * D] + gh[..., D : 2 * D])
    n = torch.tanh(gi[..., 2 * D :] + r * gh[..., 2 * D :])
    return (1 - u) * n + u * h


def ref_residual(h, e, g, read, c, eps, norms, norms_at, inject=None, inject_at="", gru=None):
    """One sublayer g with its norms, (internal) recall and merge, from the formula's name alone:
    ``norms`` owns norm_in / norm_branch / norm_out (read at ``norms_at``), ``inject`` is the
    injection pair internal recall uses, ``gru`` the merge's cell (None: addition)."""

    def n(which, x):
        return ref_rmsnorm(x, read(getattr(norms, which), f"{norms_at}.{which}"), eps)

    def inj(u):
        return u if c.recall != "internal" else ref_inject(u, e, inject, read, inject_at, c.bias)

    def merge(h, y):
        return h + y if gru is None else ref_gru(y, h, gru, read)

    if c.norm == "pre":
        return merge(h, g(inj(n("norm_in", h))))
    if c.norm == "peri":
        return merge(h, n("norm_branch", g(inj(n("norm_in", h)))))
    if c.norm == "post":
        return n("norm_out", merge(h, g(inj(h))))
    if c.norm == "sandwich":
        return n("norm_out", merge(h, g(inj(n("norm_in", h)))))
    raise AssertionError(f"no formula for norm {c.norm!r}")


def ref_block(block, c, z, e, grid, read, at="block"):
    """One block, written out: external recall, attention residual, MLP residual; the norms and
    the injection pair are the block's (shared) or each sublayer's own, as configured."""
    eps = EPS
    if c.recall == "external":
        h = ref_inject(z, e, block.inject, read, f"{at}.inject", c.bias)
    else:
        h = z
    window = c.window if c.attention == "local" else None

    def attn(u):
        return ref_attention(u, block.attn, read, tuple(grid), c.rope_base, window, eps, qk_norm=c.qk_norm,
                             bias=c.bias, after_rope=c.qk_norm_order == "after_rope", what=f"{at}.attn")

    def mlp(u):
        return ref_mlp(u, block.mlp, read, what=f"{at}.mlp")

    gru = block.gru if c.residual == "gru" else None
    for name, g in (("attn_res", attn), ("mlp_res", mlp)):
        res = getattr(block, name)
        norms, norms_at = (block, at) if c.norm_weights == "shared" else (res, f"{at}.{name}")
        inject, inject_at = ((block.inject, f"{at}.inject") if c.recall_maps == "shared"
                             else (res.inject, f"{at}.{name}.inject"))
        h = ref_residual(h, e, g, read, c, eps, norms, norms_at, inject, inject_at, gru)
    return h


def ref_step(model, z, e, read):
    """f(z; e) of LoopedDEQ.step, written out: each block in order (one unless ``blocks > 1``)."""
    c = model.config.arch
    B, *grid, D = z.shape
    z, e = z.reshape(B, -1, D), e.reshape(B, -1, D)
    blocks = [model.block] if c.blocks == 1 else list(model.block)
    for i, block in enumerate(blocks):
        z = ref_block(block, c, z, e, grid, read, at="block" if c.blocks == 1 else f"block.{i}")
    return z.reshape(B, *grid, D)


# -- the pieces ---------------------------------------------------------------------------------


def test_rmsnorm_formula_with_non_unit_weight():
    norm = RMSNorm(6).double()
    randomize(norm)
    assert not torch.allclose(norm.weight, torch.ones(6, dtype=torch.float64))
    x = 3 * torch.randn(2, 5, 6, dtype=torch.float64)
    read = Reader()
    expected = ref_rmsnorm(x, read(norm, "norm"), EPS)
    read.check_used_all(norm)
    torch.testing.assert_close(norm(x), expected, **TOL)
    # eps matters at small scale: here mean(x²) ≈ 1e-7, under eps = 1e-6.
    tiny = 1e-4 * x
    torch.testing.assert_close(norm(tiny), ref_rmsnorm(tiny, norm.weight.detach(), EPS), **TOL)


def test_mlp_formula():
    mlp = MLP(6, 10).double()
    randomize(mlp)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    read = Reader()
    expected = ref_mlp(x, mlp, read)
    read.check_used_all(mlp)
    torch.testing.assert_close(mlp(x), expected, **TOL)


def test_the_blocks_mlp_is_mlp_ratio_times_the_width_wide():
    for width, ratio, hidden in ((8, 2.0, 16), (8, 4.0, 32), (12, 1.5, 18)):
        block = LoopedDEQ(vocab_size=5, num_classes=3, grid=(4,), width=width, heads=2, mlp_ratio=ratio).block
        assert block.mlp.fc.weight.shape == (hidden, width) and block.mlp.proj.weight.shape == (width, hidden)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_the_gate_scales_the_branch_by_its_clamped_value(norm):
    """h + clamp(γ, −cap, cap) ⊙ g(Pre(h)) (pre), Post(h + clamp(γ) ⊙ g(h)) (post), γ set on both
    sides of the cap."""
    from deqloop.model.residual import Residual

    res = Residual(4, norm, gate=0.5, gate_cap=0.75).double()
    randomize(res)
    with torch.no_grad():
        res.gate.copy_(torch.tensor([-2.0, -0.5, 0.3, 2.0], dtype=torch.float64))
    gamma = torch.tensor([-0.75, -0.5, 0.3, 0.75], dtype=torch.float64)
    h = torch.randn(2, 3, 4, dtype=torch.float64)
    e = torch.randn(2, 3, 4, dtype=torch.float64)

    def g(u):
        return u * u - 1.0

    if norm == "pre":
        expected = h + gamma * g(ref_rmsnorm(h, res.norm_in.weight.detach(), EPS))
    else:
        expected = ref_rmsnorm(h + gamma * g(h), res.norm_out.weight.detach(), EPS)
    torch.testing.assert_close(res(h, e, g), expected, **TOL)


def test_readout_formula():
    head = Readout(8, 3).double()
    randomize(head)
    z = 2 * torch.randn(2, 4, 8, dtype=torch.float64)
    read = Reader()
    u = ref_rmsnorm(z, read(head.norm, "head.norm"), EPS)
    u = ref_gelu(ref_linear(u, read(head.fc, "head.fc"), read(head.fc, "head.fc", "bias")))
    expected = ref_linear(u, read(head.out, "head.out"), read(head.out, "head.out", "bias"))
    read.check_used_all(head)
    torch.testing.assert_close(head(z), expected, **TOL)
    model = LoopedDEQ(vocab_size=5, num_classes=3, grid=(4,), width=8, heads=2).double()
    model.head.load_state_dict(head.state_dict())
    torch.testing.assert_close(model.readout(z), expected, **TOL)


@pytest.mark.parametrize("bias, order", [(True, "after_rope"), (False, "before_rope")], ids=["paper", "earlier"])
@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize(
    "grid, window", [((5,), None), ((5,), 3), ((3, 4), None), ((3, 4), 3)], ids=str
)
def test_attention_formula_with_rope_and_mask(grid, window, backend, bias, order):
    D, H = 16, 2
    attn = Attention(D, H, qk_norm=True, backend=backend, bias=bias, qk_norm_order=order).double()
    randomize(attn)
    N = math.prod(grid)
    x = torch.randn(2, N, D, dtype=torch.float64)
    cos, sin = rope_table(grid, D // H, 100.0, CPU, torch.float64)
    mask = None if window is None else local_mask(grid, window, CPU)
    read = Reader()
    expected = ref_attention(x, attn, read, grid, 100.0, window, EPS, bias=bias, after_rope=order == "after_rope")
    read.check_used_all(attn)
    torch.testing.assert_close(attn(x, cos, sin, mask), expected, **TOL)
    # The other order gives another map once the q/k norm weights are not all equal.
    other = ref_attention(x, attn, Reader(), grid, 100.0, window, EPS, bias=bias, after_rope=order != "after_rope")
    assert not torch.allclose(other, expected)


# -- the block, every norm placement × every recall ---------------------------------------------


FORMS = {"paper": {}, "earlier": EARLIER_FORMS, "gru": {"residual": "gru"}}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("attention", ["full", "local"])
@pytest.mark.parametrize("recall", RECALLS)
@pytest.mark.parametrize("norm", NORMS)
def test_step_matches_the_block_formula(norm, recall, attention, form):
    model = LoopedDEQ(
        vocab_size=5,
        num_classes=3,
        grid=(4,),
        width=8,
        heads=2,
        mlp_ratio=2,
        norm=norm,
        recall=recall,
        attention=attention,
        window=3,  # local: each of the 4 tokens sees itself and its neighbours only
        rope_base=100.0,
        **FORMS[form],
    ).double()
    randomize(model)
    gen = torch.Generator().manual_seed(2)
    z = 1.5 * torch.randn(2, 4, 8, generator=gen, dtype=torch.float64)
    e = torch.randn(2, 4, 8, generator=gen, dtype=torch.float64)
    read = Reader()
    expected = ref_step(model, z, e, read)
    read.check_used_all(model.block)
    torch.testing.assert_close(model.step(z, e), expected, **TOL)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("norm, recall", [("pre", "external"), ("sandwich", "internal")])
def test_step_without_qk_norm_matches_the_block_formula(norm, recall, backend):
    model = LoopedDEQ(vocab_size=5, num_classes=3, grid=(2, 2), width=16, heads=2, mlp_ratio=2, norm=norm,
                      recall=recall, qk_norm=False, attention_backend=backend, rope_base=100.0).double()
    randomize(model)
    assert model.block.attn.backend == backend
    gen = torch.Generator().manual_seed(3)
    z = 1.5 * torch.randn(2, 2, 2, 16, generator=gen, dtype=torch.float64)
    e = torch.randn(2, 2, 2, 16, generator=gen, dtype=torch.float64)
    read = Reader()
    expected = ref_step(model, z, e, read)
    read.check_used_all(model.block)  # no q/k norm weights exist to leave unread
    torch.testing.assert_close(model.step(z, e), expected, **TOL)


# -- the state: initial values, iterates, dtypes ----------------------------------------------------


def tiny_model(**kw) -> LoopedDEQ:
    model = LoopedDEQ(vocab_size=5, num_classes=3, grid=(4,), width=8, heads=2, mlp_ratio=2, **kw).double()
    randomize(model)
    return model


def test_initial_state_formulas():
    model = tiny_model(init="noise", init_scale=0.25)
    e = torch.randn(3, 4, 8, dtype=torch.float64)
    assert model.initial_state(e, "embed") is e
    assert torch.equal(model.initial_state(e, "zeros"), torch.zeros_like(e))
    torch.manual_seed(11)
    noise = torch.randn_like(e)
    torch.manual_seed(11)
    torch.testing.assert_close(model.initial_state(e), 0.25 * noise, **TOL)  # the configured init and scale
    torch.manual_seed(11)
    torch.testing.assert_close(model.initial_state(e, scale=3.0), 3.0 * noise, **TOL)
    torch.manual_seed(11)
    torch.testing.assert_close(model.initial_state(e, "noise", scale=0.5), 0.5 * noise, **TOL)


def test_forward_starts_from_the_overriding_init_scale():
    """One Picard evaluation keeps z0 (the only iterate whose residual is known): z = scale · noise."""
    model = tiny_model()  # configured: init "embed", init_scale 0.1
    x = torch.randint(0, 5, (2, 4))
    e = model.embed(x).detach()
    torch.manual_seed(5)
    noise = torch.randn_like(e)
    torch.manual_seed(5)
    out = model(x, solver="picard", max_iter=1, init="noise", init_scale=2.0, backward="none")
    torch.testing.assert_close(out.z, 2.0 * noise, **TOL)
    torch.testing.assert_close(out.logits, model.readout(2.0 * noise), **TOL)


def test_iterate_and_trajectory_follow_the_step():
    model = tiny_model()
    x = torch.randint(0, 5, (2, 4))
    with torch.no_grad():
        e = model.embed(x)
        zs = [e]
        for _ in range(3):
            zs.append(model.step(zs[-1], e))
        assert model.iterate(e, e, 0) is e
        torch.testing.assert_close(model.iterate(e, e, 3), zs[3], **TOL)
    got = list(model.trajectory(x, 3))
    assert [t for t, _ in got] == [1, 2, 3]
    for (t, logits) in got:
        torch.testing.assert_close(logits, model.readout(zs[t]), **TOL)
    assert list(model.trajectory(x, 0)) == []


def test_step_keeps_the_state_dtype_and_rope_tables_are_at_least_float32():
    model = LoopedDEQ(vocab_size=5, num_classes=3, grid=(4,), width=8, heads=2, recall="external")
    z = torch.randn(2, 4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.block(z, z, *model._geometry((4,), CPU)).dtype == torch.bfloat16  # the block's own
        assert model.step(z, z).dtype == torch.float32
    cos, sin, _ = model._geometry((4,), CPU)
    assert cos.dtype == sin.dtype == torch.float32
    cos, sin, _ = model.double()._geometry((4,), CPU)
    assert cos.dtype == sin.dtype == torch.float64
