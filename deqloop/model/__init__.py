"""The looped transformer: config (architecture + solve settings), layers, and the model.

    deqloop/model/config.py     Architecture, SolveSettings, LoopedDEQConfig
    deqloop/model/layers.py     MLP, injection (recall), residual sublayer with norms, block, readout
    deqloop/model/looped.py     LoopedDEQ: embed, step, iterate, solve, read out
    attention.py, rope.py, norm.py: the block's parts
"""

from deqloop.model.config import (
    ATTENTIONS,
    BACKWARDS,
    INITS,
    NORMS,
    RECALLS,
    SOLVE_SETTINGS,
    Architecture,
    LoopedDEQConfig,
    SolveSettings,
)
from deqloop.model.looped import LoopedDEQ, LoopOutput

__all__ = ["ATTENTIONS", "Architecture", "BACKWARDS", "INITS", "LoopOutput", "LoopedDEQ", "LoopedDEQConfig",
           "NORMS", "RECALLS", "SOLVE_SETTINGS", "SolveSettings"]
