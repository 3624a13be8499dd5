"""The paper's block (ashlab11/generalization, deepthinking/models/attention.py) as deqloop's
default, and each variant of its sweep, against formulas written out by hand on tiny float64
tensors; old checkpoints keep their earlier forms.

The paper's internal recall, one injection pair shared by both sublayers, one set of norms:

    s1 = Post(z  + Peri(Attn(W_x Pre(z)  + b_x + W_h e + b_h)))
    z' = Post(s1 + Peri(MLP (W_x Pre(s1) + b_x + W_h e + b_h)))

(W_x, b_x is deqloop's ``inject.w_z``; W_h, b_h its ``inject.w_e``; Pre / Peri / Post the identity
where the norm placement has none.) The GRU residual replaces each ``+`` by
``GRUCell(input=branch, hidden=stream)``.
"""

from __future__ import annotations

import pytest
import torch

from deqloop.checkpoint import FORMAT, CheckpointError, load_checkpoint, load_model, save_checkpoint
from deqloop.cli import main
from deqloop.errors import ConfigError
from deqloop.model import EARLIER_FORMS, NORMS, LoopedDEQ
from deqloop.model.layers import Block
from deqloop.run import Run
from deqloop.train import TrainConfig
from tests.test_model_formulas import (
    EPS,
    TOL,
    Reader,
    randomize,
    ref_attention,
    ref_block,
    ref_gru,
    ref_linear,
    ref_mlp,
    ref_rmsnorm,
)

D = 8


def tiny(**kw) -> LoopedDEQ:
    model = LoopedDEQ(vocab_size=5, num_classes=3, grid=(4,), width=D, heads=2, mlp_ratio=2, rope_base=100.0,
                      **kw).double()
    randomize(model)
    return model


def states(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (1.5 * torch.randn(2, 4, D, generator=gen, dtype=torch.float64),
            torch.randn(2, 4, D, generator=gen, dtype=torch.float64))


def norm_of(block, which, read):
    """The block's RMSNorm ``which`` as a function (the identity where the placement has none)."""
    layer = getattr(block, which)
    if layer is None:
        return lambda x: x
    weight = read(layer, f"block.{which}")
    return lambda x: ref_rmsnorm(x, weight, EPS)


def attn_and_mlp(block, read):
    attn = lambda u: ref_attention(u, block.attn, read, (4,), 100.0, None, EPS)  # noqa: E731  bias, after RoPE
    mlp = lambda u: ref_mlp(u, block.mlp, read)  # noqa: E731
    return attn, mlp


@pytest.mark.parametrize("norm", NORMS)
def test_one_block_is_the_papers_shared_internal_recall(norm):
    model = tiny(norm=norm)  # the defaults: recall internal, shared maps and norms, biases
    block = model.block
    z, e = states()
    read = Reader()
    Pre, Peri, Post = (norm_of(block, w, read) for w in ("norm_in", "norm_branch", "norm_out"))
    W_x, b_x = read(block.inject.w_z, "W_x"), read(block.inject.w_z, "b_x", "bias")
    W_h, b_h = read(block.inject.w_e, "W_h"), read(block.inject.w_e, "b_h", "bias")
    Attn, MLP = attn_and_mlp(block, read)
    s1 = Post(z + Peri(Attn(ref_linear(Pre(z), W_x) + b_x + ref_linear(e, W_h) + b_h)))
    z1 = Post(s1 + Peri(MLP(ref_linear(Pre(s1), W_x) + b_x + ref_linear(e, W_h) + b_h)))
    read.check_used_all(block)  # nothing else: one injection pair, one set of norms
    torch.testing.assert_close(model.step(z, e), z1, **TOL)
    assert not list(block.attn_res.parameters()) and not list(block.mlp_res.parameters())


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("width", [8, 16])
def test_recall_adds_exactly_its_injection_pair(norm, width):
    def count(**kw):
        return LoopedDEQ(vocab_size=5, num_classes=3, grid=(4,), width=width, heads=2, norm=norm, **kw).num_parameters()

    none = count(recall="none")
    assert count(recall="internal") - none == 2 * width**2 + 2 * width  # W_x, b_x, W_h, b_h, once
    assert count(recall="external") - none == 2 * width**2 + 2 * width
    assert count(recall="internal", recall_maps="per_sublayer") - none == 4 * width**2 + 4 * width
    earlier = {k: v for k, v in EARLIER_FORMS.items() if k != "recall_maps"}
    assert count(recall="internal", recall_maps="per_sublayer", **earlier) - count(recall="none", **earlier) == 4 * width**2
    # biases: 3D on qkv and D on the output projection, and the injection's 2D
    assert count(recall="internal") - count(recall="internal", bias=False) == 4 * width + 2 * width
    # one norm per placement per block, or one per sublayer
    norms = {"pre": 1, "peri": 2, "post": 1, "sandwich": 2}[norm]
    assert count(recall="none", norm_weights="per_sublayer") - none == norms * width


def test_the_gru_residual_is_torchs_gru_cell_in_the_formula():
    """The paper's gru row: residual gru with peri norm, one cell per block for both sublayers:
    s1 = GRUCell(Peri(Attn(W_x Pre(z) + b_x + W_h e + b_h)), z), z' likewise from s1."""
    model = tiny(norm="peri", residual="gru")
    block = model.block
    cell = torch.nn.GRUCell(D, D).double()
    cell.load_state_dict(block.gru.state_dict())
    assert not any(a is b for a, b in zip(cell.parameters(), block.gru.parameters()))

    def gru(y, h):  # GRUCell(input, hidden) over the tokens
        return cell(y.reshape(-1, D), h.reshape(-1, D)).reshape(h.shape)

    z, e = states()
    read = Reader()
    read(block.gru, "gru", "weight_ih"), read(block.gru, "gru", "weight_hh")  # copied into cell
    read(block.gru, "gru", "bias_ih"), read(block.gru, "gru", "bias_hh")
    Pre, Peri = norm_of(block, "norm_in", read), norm_of(block, "norm_branch", read)
    assert block.norm_out is None
    W_x, b_x = read(block.inject.w_z, "W_x"), read(block.inject.w_z, "b_x", "bias")
    W_h, b_h = read(block.inject.w_e, "W_h"), read(block.inject.w_e, "b_h", "bias")
    Attn, MLP = attn_and_mlp(block, read)
    s1 = gru(Peri(Attn(ref_linear(Pre(z), W_x) + b_x + ref_linear(e, W_h) + b_h)), z)
    z1 = gru(Peri(MLP(ref_linear(Pre(s1), W_x) + b_x + ref_linear(e, W_h) + b_h)), s1)
    read.check_used_all(block)
    torch.testing.assert_close(model.step(z, e), z1, **TOL)
    # the GRU written out (r, u, n gates) in the formula tests is torch's cell
    y, h = states(5)
    torch.testing.assert_close(ref_gru(y, h, block.gru, Reader()), gru(y, h), **TOL)
    names = [n for n, _ in model.named_parameters() if ".gru." in n]
    assert names == ["block.gru.weight_ih", "block.gru.weight_hh", "block.gru.bias_ih", "block.gru.bias_hh"]


def test_the_untied_baseline_applies_its_different_blocks_in_order():
    model = tiny(recall="none", blocks=15, norm="pre")
    blocks = list(model.block)
    assert len(blocks) == 15 and all(isinstance(b, Block) for b in blocks)
    # distinct parameters: no tensor shared between blocks, and their values differ
    ids = [id(p) for b in blocks for p in b.parameters()]
    assert len(ids) == len(set(ids))
    qkv = [b.attn.qkv.weight for b in blocks]
    assert all(not torch.equal(qkv[i], qkv[j]) for i in range(15) for j in range(i))
    per_block = sum(p.numel() for p in blocks[0].parameters())
    assert model.num_parameters() == 15 * per_block + sum(p.numel() for n, p in model.named_parameters()
                                                          if not n.startswith("block."))
    # one iteration = the blocks applied in order, each by its own hand-written formula
    z, e = states()
    read = Reader()
    h = z
    for i, block in enumerate(blocks):
        h = ref_block(block, model.arch, h, e, (4,), read, at=f"block.{i}")
    read.check_used_all(model.block)
    torch.testing.assert_close(model.step(z, e), h, **TOL)
    # every block's attention switches backend together (a compiled model runs eagerly under "math")
    compiled = LoopedDEQ(model.config.replace(compile=True)).double()
    compiled.load_state_dict(model.state_dict())
    with compiled.use_attention_backend("math"):
        assert {b.attn.backend for b in compiled.block} == {"math"}
        torch.testing.assert_close(compiled.step(z, e), h, **TOL)
    assert {b.attn.backend for b in compiled.block} == {"sdpa"} and compiled._compiled_block is None
    fresh = LoopedDEQ(vocab_size=5, num_classes=3, grid=(4,), width=D, heads=2, recall="none", blocks=15)
    assert fresh.block[0].attn.qkv.weight.data_ptr() != fresh.block[1].attn.qkv.weight.data_ptr()
    assert not torch.equal(fresh.block[0].attn.qkv.weight, fresh.block[1].attn.qkv.weight)


def test_impossible_and_unknown_forms_are_errors():
    with pytest.raises(ConfigError, match="gate scales the branch of the additive residual"):
        tiny(residual="gru", gate=0.5)
    with pytest.raises(ConfigError, match="unknown residual 'lstm'.*add.*gru"):
        tiny(residual="lstm")
    with pytest.raises(ConfigError, match="unknown recall_maps 'both'"):
        tiny(recall_maps="both")
    with pytest.raises(ConfigError, match="unknown qk_norm_order 'never'"):
        tiny(qk_norm_order="never")
    with pytest.raises(ConfigError, match="blocks must be"):
        tiny(blocks=0)
    with pytest.raises(ConfigError, match="bias must be True or False"):
        tiny(bias=1)


def test_a_checkpoint_of_the_earlier_format_loads_with_the_earlier_forms(tmp_path):
    """Format 2 stored no recall_maps, norm_weights, bias or qk_norm_order: those mean deqloop's
    earlier forms (per-sublayer maps and norms, no biases, QK-norm before RoPE)."""
    c = TrainConfig.from_flat(task_options={"length": 4}, width=D, heads=2, mlp_ratio=2.0, loss="progressive", max_iter=3,
                    steps=2, warmup_steps=0, out=str(tmp_path), **EARLIER_FORMS)
    model = LoopedDEQ(c.model_config())
    randomize(model)
    model_config, train_config = c.model_config().to_dict(), c.to_flat()  # format 2 stored the flat form
    for key in EARLIER_FORMS:
        del model_config["arch"][key], train_config[key]
    assert model_config["arch"]["residual"] == "add" and model_config["arch"]["blocks"] == 1
    for key in ("residual", "blocks"):  # neither field existed either
        del model_config["arch"][key], train_config[key]
    path = save_checkpoint(tmp_path / "old.pt", {"format": 2, "model_config": model_config,
                                                 "model": model.state_dict(), "train_config": train_config})
    assert set(torch.load(path, weights_only=True)["model"]) == set(model.state_dict())  # the earlier keys
    loaded = load_model(path)
    for key, value in EARLIER_FORMS.items():
        assert getattr(loaded.arch, key) == value
    assert loaded.arch.residual == "add" and loaded.arch.blocks == 1
    x = torch.randint(0, 2, (3, 4))
    with torch.no_grad():
        e = model.embed(x)
        torch.testing.assert_close(loaded.step(e, e), model.eval().step(e, e))
    run = Run.load(path)
    assert run.model.config == c.model_config() == run.config.model_config()
    assert {k: getattr(run.config.model, k) for k in EARLIER_FORMS} == EARLIER_FORMS
    stored = load_checkpoint(path)["train_config"]  # what a resume compares with: every new field filled in
    assert {k: stored[k] for k in (*EARLIER_FORMS, "residual", "blocks")} == {**EARLIER_FORMS, "residual": "add",
                                                                               "blocks": 1}
    assert load_checkpoint(path)["model_config"]["arch"]["bias"] is False
    # the same config stored as the current format means the current defaults: those weights do not fit
    state = torch.load(path, weights_only=True)
    save_checkpoint(tmp_path / "new.pt", {**state, "format": FORMAT})
    with pytest.raises(CheckpointError, match="not those of its stored model config.*missing: block.attn.proj.bias"):
        load_model(tmp_path / "new.pt")


def test_every_form_is_a_training_flag_and_the_untied_baseline_trains_and_evaluates(tmp_path, capsys):
    out = tmp_path / "fixed"
    argv = ["train", "--task", "prefix_sums", "--length", "4", "--min-length", "3", "--hard-length", "6",
            "--width", "8", "--heads", "2", "--mlp-ratio", "2", "--recall", "none", "--blocks", "3",
            "--residual", "gru", "--norm", "peri", "--no-bias", "--qk-norm-order", "before_rope",
            "--norm-weights", "per_sublayer", "--loss", "progressive", "--max-iter", "1", "--steps", "2",
            "--warmup-steps", "0", "--batch-size", "4", "--eval-size", "4", "--eval-iters", "1", "--threads", "1",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    run = Run.load(out / "last.pt")
    arch = run.model.arch
    assert (arch.blocks, arch.recall, arch.residual, arch.norm, arch.bias, arch.qk_norm_order, arch.norm_weights) == (
        3, "none", "gru", "peri", False, "before_rope", "per_sublayer")
    assert run.train_depth == 1 and len(run.model.block) == 3
    assert main(["eval", str(out / "last.pt"), "--iters", "1", "--n", "4", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main([*argv[:-1], str(tmp_path / "maps"), "--recall", "internal", "--recall-maps", "per_sublayer",
                 "--blocks", "1", "--residual", "add"]) == 0
    model = Run.load(tmp_path / "maps" / "last.pt").model
    arch = model.arch
    assert (arch.recall, arch.recall_maps, arch.blocks, arch.residual) == ("internal", "per_sublayer", 1, "add")
    assert model.block.inject is None and model.block.attn_res.inject is not model.block.mlp_res.inject
    assert model.block.gru is None and model.block.attn_res.inject.w_z.bias is None  # --no-bias kept
