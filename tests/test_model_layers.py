"""The pieces of LoopedDEQ and its loop map: config, RoPE, attention, step, trajectory."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from deqloop.errors import ConfigError, ConfigKeyError, InputError
from deqloop.model import NORMS, RECALLS, LoopedDEQ, LoopedDEQConfig
from deqloop.model.attention import Attention, local_mask
from deqloop.model.norm import RMSNorm
from deqloop.model.rope import apply_rope, rope_table


def tiny(**overrides) -> LoopedDEQ:
    kwargs = dict(vocab_size=5, num_classes=3, grid=(6,), width=16, heads=2, max_iter=8)
    kwargs.update(overrides)
    return LoopedDEQ(**kwargs)


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("recall", "inner", "'none', 'external', 'internal'"),
        ("norm", "layer", "'pre', 'peri', 'post', 'sandwich'"),
        ("attention", "sliding", "'full', 'local'"),
        ("backward", "adjoint", "'implicit', 'phantom', 'unrolled', 'truncated', 'none'"),
        ("init", "ones", "'embed', 'zeros', 'noise'"),
        ("attention_backend", "flash", "'sdpa', 'math'"),
    ],
)
def test_unknown_choice_lists_allowed_values(field, value, allowed):
    with pytest.raises(ValueError, match=f"unknown {field} '{value}'; allowed: {allowed}"):
        tiny(**{field: value})


def test_unknown_solver_lists_registered_ones():
    with pytest.raises(ValueError, match=r"unknown solver 'newton'; allowed: .*'anderson'.*'picard'"):
        tiny(solver="newton")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(width=16, heads=3), r"width \(16\) must be divisible by heads \(3\)"),
        (dict(width=6, heads=2), "1-D grid needs a head dim divisible by 2, got 3"),
        (dict(grid=(4, 4), width=8, heads=4), "2-D grid needs a head dim divisible by 4, got 2"),
        (dict(attention="local", window=4), "window must be an odd positive kernel size, got 4"),
        (dict(grid=(2, 2, 2)), r"grid must be \(L,\) or \(H, W\)"),
        (dict(grid=(0,)), "grid must be"),
        (dict(max_iter=0), "max_iter must be an integer ≥ 1, got 0"),
        (dict(rtol=-1.0), r"rtol must be a finite number in \[0, inf\), got -1.0"),
    ],
)
def test_impossible_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_unknown_constructor_keyword_names_it_and_the_allowed_ones():
    with pytest.raises(ConfigKeyError, match=r"LoopedDEQ got unknown key\(s\) \['depth'\]; allowed: vocab_size, "):
        tiny(depth=4)


def test_config_round_trips_through_to_dict():
    model = tiny(grid=(4, 4), recall="external", norm="sandwich", solver_options={"m": 3})
    stored = model.config.to_dict()
    assert set(stored) == {"arch", "solve"}
    settings = {f.name: getattr(model.config.solve, f.name) for f in dataclasses.fields(model.config.solve) if f.init}
    assert stored == {"arch": dataclasses.asdict(model.config.arch), "solve": settings}
    assert settings["solver_options"] == {"m": 3} and "loop" not in stored["solve"]  # resolved values are not stored
    stored["arch"]["grid"] = list(stored["arch"]["grid"])  # as it comes back from JSON
    rebuilt = LoopedDEQ(LoopedDEQConfig.from_dict(stored))
    assert rebuilt.config == model.config
    assert rebuilt.config.arch.grid == (4, 4)
    flat = {**stored["arch"], **stored["solve"]}
    assert LoopedDEQ(**flat).config == model.config
    assert LoopedDEQ(LoopedDEQConfig.from_dict(flat)).config == model.config
    assert LoopedDEQConfig.from_flat(flat) == model.config
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes


def test_config_plus_keywords_replaces_fields():
    config = tiny().config
    model = LoopedDEQ(config, norm="peri")
    assert model.config.arch.norm == "peri" and model.config.arch.width == config.arch.width
    assert model.arch is model.config.arch and config.arch.norm == "post"  # the original is unchanged
    assert config.replace(max_iter=3).solve.max_iter == 3 and config.solve.max_iter == 8


# -- RMSNorm, RoPE, attention -----------------------------------------------------------------


def test_rmsnorm_gives_unit_rms_and_keeps_dtype():
    x = 5 * torch.randn(3, 7, 16, dtype=torch.bfloat16)
    y = RMSNorm(16)(x)
    assert y.dtype == torch.bfloat16
    rms = y.float().pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-2)


@pytest.mark.parametrize("grid, shift", [((12,), (3,)), ((5, 6), (2, 3))])
def test_rope_scores_depend_only_on_relative_position(grid, shift):
    d = 8
    cos, sin = rope_table(grid, d, 10000.0, torch.device("cpu"), torch.float64)
    big = tuple(n + s for n, s in zip(grid, shift))
    cos_big, sin_big = rope_table(big, d, 10000.0, torch.device("cpu"), torch.float64)
    q, k = torch.randn(2, d, dtype=torch.float64).unbind(0)
    N = cos.shape[0]
    # The same vectors at every cell of the small grid, and of the big grid offset by `shift`.
    qs = apply_rope(q.expand(N, d), cos, sin)
    ks = apply_rope(k.expand(N, d), cos, sin)
    index = torch.arange(len(cos_big)).view(big)[tuple(slice(s, None) for s in shift)].reshape(-1)
    qb = apply_rope(q.expand(N, d), cos_big[index], sin_big[index])
    kb = apply_rope(k.expand(N, d), cos_big[index], sin_big[index])
    torch.testing.assert_close(qs @ ks.T, qb @ kb.T)
    assert not torch.allclose(qs[0], qs[-1])  # and the rotation is not trivial


def test_rope_tables_are_cached_and_usable_for_backward_after_inference_mode():
    rope_table.cache_clear()
    with torch.inference_mode():
        cos, sin = rope_table((7,), 4, 10000.0, torch.device("cpu"), torch.float32)
    assert rope_table((7,), 4, 10000.0, torch.device("cpu"), torch.float32)[0] is cos
    q = torch.randn(7, 4, requires_grad=True)
    apply_rope(q, cos, sin).sum().backward()
    assert q.grad is not None


def test_local_mask_is_a_window_per_axis():
    m1 = local_mask((6,), 3, torch.device("cpu"))
    expected = (torch.arange(6)[:, None] - torch.arange(6)[None, :]).abs() <= 1
    assert torch.equal(m1, expected)
    m2 = local_mask((4, 5), 3, torch.device("cpu")).view(4, 5, 4, 5)
    assert m2[1, 1].sum() == 9 and m2[0, 0].sum() == 4  # 3x3 inside, 2x2 in a corner
    assert m2[1, 1, 2, 2] and not m2[1, 1, 3, 1]


@pytest.mark.parametrize("local", [False, True])
def test_attention_backends_agree(local):
    att = Attention(16, 2).double()
    x = torch.randn(3, 20, 16, dtype=torch.float64)
    cos, sin = rope_table((4, 5), 8, 10000.0, torch.device("cpu"), torch.float64)
    mask = local_mask((4, 5), 3, torch.device("cpu")) if local else None
    y_sdpa = att(x, cos, sin, mask)
    att.backend = "math"
    torch.testing.assert_close(att(x, cos, sin, mask), y_sdpa)


def test_local_attention_ignores_tokens_outside_the_window():
    model = tiny(grid=(16,), attention="local", window=3, recall="internal").double()
    x = torch.randint(0, 5, (1, 16))
    e = model.embed(x)
    z = torch.randn_like(e)
    z2, e2 = z.clone(), e.clone()
    z2[:, 10:] += 1.0  # far from tokens 0..8 (one step sees one neighbour per side)
    e2[:, 10:] -= 1.0
    out, out2 = model.step(z, e), model.step(z2, e2)
    torch.testing.assert_close(out[:, :9], out2[:, :9], rtol=0, atol=0)
    assert not torch.allclose(out[:, 9:], out2[:, 9:])


# -- the loop map -------------------------------------------------------------------------------


@pytest.mark.parametrize("recall, norm", list(itertools.product(RECALLS, NORMS)))
@pytest.mark.parametrize("grid", [(6,), (3, 4)])
def test_step_keeps_shape_and_is_finite(recall, norm, grid):
    model = tiny(grid=grid, recall=recall, norm=norm, attention="local", window=3)
    x = torch.randint(0, 5, (2, *grid))
    e = model.embed(x)
    assert e.shape == (2, *grid, 16)
    z = model.initial_state(e)
    for _ in range(3):
        z = model.step(z, e)
    assert z.shape == e.shape and z.dtype == torch.float32 and torch.isfinite(z).all()
    assert model.readout(z).shape == (2, *grid, 3)


def test_post_norm_state_is_normalized():
    model = tiny(norm="post")
    e = model.embed(torch.randint(0, 5, (2, 6)))
    z = model.step(10 * torch.randn_like(e), e)
    rms = z.pow(2).mean(-1).sqrt().detach()
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-4, atol=1e-4)


def test_initial_states():
    model = tiny(init_scale=0.01)
    e = model.embed(torch.randint(0, 5, (2, 6)))
    assert model.initial_state(e) is e
    assert torch.equal(model.initial_state(e, "zeros"), torch.zeros_like(e))
    torch.manual_seed(5)
    noise = model.initial_state(e, "noise")
    torch.manual_seed(5)
    assert torch.equal(noise, 0.01 * torch.randn(e.shape))  # init_scale × N(0, 1) from the global RNG
    torch.manual_seed(6)
    wide = model.initial_state(e, "noise", scale=0.5)
    torch.manual_seed(6)
    assert torch.equal(wide, 0.5 * torch.randn(e.shape))
    with pytest.raises(ValueError, match="allowed: 'embed', 'zeros', 'noise'"):
        model.initial_state(e, "random")


def test_recall_none_step_ignores_the_embedding():
    model = tiny(recall="none", grid=(3, 4))
    x1, x2 = torch.randint(0, 5, (2, 2, 3, 4))
    e1, e2 = model.embed(x1), model.embed(x2)
    assert not torch.equal(e1, e2)
    z = torch.randn_like(e1)
    for _ in range(5):
        a, b = model.step(z, e1), model.step(z, e2)
        assert torch.equal(a, b)
        z = a


def test_other_recalls_use_the_embedding():
    for recall in ("external", "internal"):
        model = tiny(recall=recall)
        x1, x2 = torch.randint(0, 5, (2, 2, 6))
        z = torch.randn(2, 6, 16)
        assert not torch.allclose(model.step(z, model.embed(x1)), model.step(z, model.embed(x2)))


def test_step_runs_on_longer_sequences_than_trained():
    model = tiny(grid=(8,), attention="local", window=5)
    x = torch.randint(0, 5, (2, 64))
    e = model.embed(x)
    z = model.step(e, e)
    assert z.shape == (2, 64, 16)
    # RoPE is relative and the window (5) local: token 30 sees tokens 28-32 as the middle token of
    # a 5-token grid sees the whole of it, and the first 6 tokens see only the first 8
    with torch.no_grad():
        torch.testing.assert_close(z[:, 30], model.step(e[:, 28:33], e[:, 28:33])[:, 2])
        torch.testing.assert_close(z[:, :6], model.step(e[:, :8], e[:, :8])[:, :6])


def test_embed_rejects_wrong_rank_and_float_tokens():
    model = tiny(grid=(3, 4))
    with pytest.raises(ValueError, match="2 grid axis"):
        model.embed(torch.zeros(2, 12, dtype=torch.long))
    with pytest.raises(InputError, match="integer"):  # a ValueError (and a TypeError: the dtype)
        model.embed(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="must match"):
        e = model.embed(torch.zeros(2, 3, 4, dtype=torch.long))
        model.step(e[:1], e)


# -- trajectory -----------------------------------------------------------------------------------


def test_trajectory_matches_manual_iteration_and_keeps_no_graph():
    model = tiny(recall="internal", norm="post")
    x = torch.randint(0, 5, (2, 6))
    seen = []
    for t, logits in model.trajectory(x, iters=4):
        assert torch.is_grad_enabled()  # the generator does not leak no_grad into this loop
        assert not logits.requires_grad
        seen.append((t, logits))
    assert [t for t, _ in seen] == [1, 2, 3, 4]
    with torch.no_grad():
        e = model.embed(x)
        z = e
        for t, logits in seen:
            z = model.step(z, e)
            torch.testing.assert_close(logits, model.readout(z))


def test_iterates_and_iterate_are_plain_steps_under_the_callers_grad_mode():
    model = tiny(recall="internal", norm="post")
    x = torch.randint(0, 5, (2, 6))
    e = model.embed(x)
    states = list(model.iterates(e, e, 3))
    assert len(states) == 3 and all(z.requires_grad for z in states)  # grad mode is the caller's
    z = e
    for state in states:
        z = model.step(z, e)
        torch.testing.assert_close(state, z)
    torch.testing.assert_close(model.iterate(e, e, 3), states[-1])
    assert model.iterate(e, e, 0) is e
    with torch.no_grad():
        assert not model.iterate(e, e, 2).requires_grad


def test_trajectory_defaults_to_max_iter_and_accepts_init():
    model = tiny(max_iter=3, recall="none")
    x1, x2 = torch.randint(0, 5, (2, 1, 6))
    a = list(model.trajectory(x1, init="zeros"))
    b = list(model.trajectory(x2, init="zeros"))
    assert len(a) == 3
    assert all(torch.equal(la, lb) for (_, la), (_, lb) in zip(a, b))


# -- forward-mode AD for the analysis --------------------------------------------------------------


@pytest.mark.parametrize("grid, attention", [((5,), "local"), ((2, 3), "full")])
def test_jvp_of_step_with_math_attention_matches_the_jacobian(grid, attention):
    model = tiny(grid=grid, width=8, heads=2, attention=attention, window=3, recall="internal")
    model = model.double()
    e = model.embed(torch.randint(0, 5, (1, *grid))).detach()
    z = torch.randn_like(e)
    v_z, v_e = torch.randn_like(z), torch.randn_like(e)
    with model.use_attention_backend("math"):
        _, jvp = torch.func.jvp(model.step, (z, e), (v_z, v_e))
    assert model.block.attn.backend == "sdpa"  # restored
    J_z, J_e = torch.autograd.functional.jacobian(model.step, (z, e))  # sdpa backend
    n = z.numel()
    expected = J_z.reshape(n, n) @ v_z.reshape(n) + J_e.reshape(n, n) @ v_e.reshape(n)
    torch.testing.assert_close(jvp.reshape(n), expected)


def test_unknown_attention_backend_is_rejected():
    with pytest.raises(ConfigError, match="unknown attention backend 'flash'; allowed: 'sdpa', 'math'"):
        with tiny().use_attention_backend("flash"):
            pass
