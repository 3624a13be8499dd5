"""Fixed-point training and analysis tools for any map f, not only :class:`~deqloop.LoopedDEQ`.

    from deqloop.tools import jacobian_penalty, fixed_point_states, correction_weights, spectral_radius

    loss = loss + 0.1 * jacobian_penalty(f, z_star)            # Hutchinson ‖∂f/∂z‖²_F / dim
    states, sol = fixed_point_states(f, z0, "broyden", "phantom", states=3, max_iter=24)
    loss = sum(w * criterion(head(z), y) for w, z in zip(correction_weights(len(states)), states))
    rho = spectral_radius(f, z_star).radius                    # ρ(∂f/∂z) per sample

Each is the one implementation the library has: ``LoopedDEQ``'s trainer (the ``jac_reg`` and
``fp_states`` recipes) and its stability monitor and analysis call these. States may be tensors
or tuples, lists and dicts of them (as for :func:`deqloop.solve`).
"""

from deqloop.tools.correction import correction_weights, fixed_point_states, segments
from deqloop.tools.penalty import jacobian_penalty
from deqloop.tools.spectral import map_jacobian, spectral_radius

__all__ = ["correction_weights", "fixed_point_states", "jacobian_penalty", "map_jacobian", "segments",
           "spectral_radius"]
