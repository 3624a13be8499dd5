"""The looped transformer: config (architecture + solve settings), layers, and the model.

    deqloop/model/config.py     ModelSettings, Architecture, SolveSettings, LoopedDEQConfig
    deqloop/model/residual.py   around each sublayer: injection (recall), norms, residual merge
    deqloop/model/layers.py     MLP, the block, a stack of untied blocks, readout
    deqloop/model/looped.py     LoopedDEQ: embed, step, iterate, solve, read out
    attention.py, rope.py, norm.py: the block's parts
"""

from deqloop.model.config import (
    ATTENTIONS,
    BACKWARDS,
    EARLIER_FORMS,
    INITS,
    NORM_WEIGHTS,
    NORMS,
    QK_NORM_ORDERS,
    RECALL_MAPS,
    RECALLS,
    RESIDUALS,
    SOLVE_SETTINGS,
    Architecture,
    LoopedDEQConfig,
    ModelSettings,
    SolveSettings,
)
from deqloop.model.looped import LoopedDEQ, LoopOutput

__all__ = ["ATTENTIONS", "Architecture", "BACKWARDS", "EARLIER_FORMS", "INITS", "LoopOutput", "LoopedDEQ", "LoopedDEQConfig",
           "ModelSettings", "NORMS", "NORM_WEIGHTS", "QK_NORM_ORDERS", "RECALLS", "RECALL_MAPS", "RESIDUALS", "SOLVE_SETTINGS",
           "SolveSettings"]
