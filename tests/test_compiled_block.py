"""The compiled block: few graphs over a run whose batches shrink and change length, and a warning
when dynamo's recompile limit is reached (past it the block would run eagerly)."""

from __future__ import annotations

import pytest
import torch

from deqloop.model.compiled import CompiledBlock
from deqloop.train import Trainer
from test_train import tiny_config


@pytest.fixture
def eager_backend(monkeypatch):
    monkeypatch.setattr(CompiledBlock, "backend", "eager")  # dynamo's tracing and guards, no code generation


@pytest.mark.slow  # about 20 s of tracing
def test_a_run_compiles_one_graph_per_grad_mode_and_length_change(tmp_path, eager_backend):
    c = tiny_config(tmp_path, loss="equilibrium", depth_offset=None, max_iter=12, compile=True, steps=6,
                    backward="phantom", eval_size=8, eval_iters=(2, 12), batch_size=16, rtol=1e-2)
    trainer = Trainer(c)
    trainer.run()
    # the solve drops converged rows, the phantom steps take gradients, evaluation runs without,
    # and the curriculum changes the length (3 to 6 bits): the grad and no-grad graph, each
    # compiled again once when the first length change makes the token count dynamic (7 before)
    assert trainer.model._compiled_block.graphs <= 4


def test_reaching_the_recompile_limit_warns(eager_backend):
    # dynamo's own patch: a monkeypatch of its config module leaves the setting hidden after the test
    with torch._dynamo.config.patch(recompile_limit=2):
        torch._dynamo.reset()
        block = CompiledBlock(lambda z, e, cos, sin, mask: z * cos.sum() + e * sin.sum())
        z, e, cos = torch.ones(4, 3, 2), torch.ones(4, 3, 2), torch.ones(3, 1)
        block(z, e, cos, cos, None)
        assert block.graphs == 1
        with pytest.warns(UserWarning, match="compiled 2 times.*recompile limit"), torch.no_grad():
            block(z.requires_grad_(), e, cos, cos, None)  # ... another grad mode: a second graph
        assert block.graphs == 2
        block(torch.ones(7, 5, 2), torch.ones(7, 5, 2), torch.ones(5, 1), torch.ones(5, 1), None)  # dynamic: no new graph
        assert block.graphs == 2
