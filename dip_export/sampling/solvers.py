"""The one-evaluation solvers: each a small function from the step's times to 11 coefficients.

Every solver's step is the same linear update over a short history (`solver_update`), so the plain
sampler and the whole-step CUDA graph run identical arithmetic; only the host-side coefficients
differ. With v the guided velocity at the current point x (time t):

    m       = p x + q v                                   # what the history stores (v, or x0 = x + (1 - t) v)
    hist    = [m, hist[0], hist[1]]                       # newest first
    x_c     = ax x + ap x_prev + cc . hist                # corrector (UniPC); identity for the others
    x_prev  = x_c
    x       = a x_c + c . hist                            # predictor to the next grid time

Coefficient layout: [p, q, ax, ap, cc0, cc1, cc2, a, c0, c1, c2]. Flow convention: x_t = t x_data
+ (1 - t) noise, so alpha = t, sigma = 1 - t, lambda = log(t / (1 - t)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dip_export.sampling.rules import SamplerSettings, eval_weight, runs_paired, solver_grid

HISTORY = 3  # entries kept: enough for ab3 and UniPC's order-2 corrector
N_COEF = 11
P, Q, AX, AP, CC, A, C = 0, 1, 2, 3, 4, 7, 8  # offsets into the coefficient vector


@dataclass(frozen=True)
class StepPlan:
    """One network evaluation of a one-evaluation solver: where, with which weight, and its update."""

    t: float
    t_next: float
    w: float
    paired: bool
    coef: np.ndarray  # (N_COEF,) float64


@dataclass
class SolverState:
    """The static tensors a step reads and writes (preallocated: the CUDA graph replays over them)."""

    x: Tensor
    x_prev: Tensor
    hist: list[Tensor]

    @classmethod
    def like(cls, x: Tensor) -> SolverState:
        return cls(x.clone(), torch.zeros_like(x), [torch.zeros_like(x) for _ in range(HISTORY)])


def solver_update(state: SolverState, v: Tensor, coef: Tensor) -> None:
    """The step after the evaluation, in place; `coef` is a (N_COEF,) float32 tensor on x's device."""
    x, h = state.x, state.hist
    m = coef[P] * x + coef[Q] * v
    h[2].copy_(h[1])
    h[1].copy_(h[0])
    h[0].copy_(m)
    xc = coef[AX] * x + coef[AP] * state.x_prev + coef[CC] * h[0] + coef[CC + 1] * h[1] + coef[CC + 2] * h[2]
    state.x_prev.copy_(xc)
    x.copy_(coef[A] * xc + coef[C] * h[0] + coef[C + 1] * h[1] + coef[C + 2] * h[2])


def _lam(t: float) -> float:
    if t <= 0.0:
        return -math.inf
    if t >= 1.0:
        return math.inf
    return math.log(t) - math.log1p(-t)


def _identity() -> np.ndarray:
    coef = np.zeros(N_COEF)
    coef[AX] = 1.0
    coef[A] = 1.0
    return coef


def _adams(ts: list[float], t_next: float, order: int) -> np.ndarray:
    """Adams-Bashforth in t on a non-uniform grid: integrate the Lagrange polynomial through the last
    `order` velocities over [t, t_next].

    The basis is formed in step units, tau = (t' - t) / (t_next - t), where the nodes are O(1)
    numbers whatever the step size, and integrated over [0, 1] by Gauss-Legendre quadrature (exact
    for these degrees); monomials in absolute t lose digits to cancellation at small steps.
    """
    coef = _identity()
    coef[Q] = 1.0
    k = min(order, len(ts))
    h = t_next - ts[0]
    tau = (np.asarray(ts[:k], dtype=np.float64) - ts[0]) / h  # (k,) tau[0] = 0, older nodes negative
    points, weights = _GAUSS
    for j in range(k):
        basis = np.ones_like(points)
        for m in range(k):
            if m != j:
                basis *= (points - tau[m]) / (tau[j] - tau[m])
        coef[C + j] = h * float(weights @ basis)
    return coef


def _gauss_on_unit_interval(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (x + 1.0), 0.5 * w


_GAUSS = _gauss_on_unit_interval(HISTORY)  # exact for degree <= 2 * HISTORY - 1


def _euler(ts: list[float], t_next: float, settings: SamplerSettings) -> np.ndarray:
    coef = _identity()
    coef[Q] = 1.0
    coef[C] = float(np.float32(t_next) - np.float32(ts[0]))  # the release's float32 dt
    return coef


def _data_history(ts: list[float], t_next: float, limit: int) -> int:
    """How many history entries a data-prediction step may use: all lambdas (and h) finite."""
    if not math.isfinite(_lam(t_next)):
        return 1
    usable = 1
    while usable < min(limit, len(ts)) and math.isfinite(_lam(ts[usable])):
        usable += 1
    return usable if math.isfinite(_lam(ts[0])) else 1


def _dpmpp_2m(ts: list[float], t_next: float, settings: SamplerSettings) -> np.ndarray:
    """DPM-Solver++(2M), data prediction x0 = x + (1 - t) v; first order where lambda is infinite."""
    coef = _identity()
    s, t = ts[0], t_next
    coef[P], coef[Q] = 1.0, 1.0 - s
    coef[A] = (1.0 - t) / (1.0 - s)
    scale = t - s * (1.0 - t) / (1.0 - s)  # -alpha_t (exp(-h) - 1), finite at both ends
    if _data_history(ts, t_next, 2) == 2:
        r = (_lam(s) - _lam(ts[1])) / (_lam(t) - _lam(s))
        coef[C], coef[C + 1] = scale * (1 + 1 / (2 * r)), -scale / (2 * r)
    else:
        coef[C] = scale
    return coef


def _unipc_terms(ts: list[float], offset: int, t: float, order: int, corrector: bool) -> tuple[float, float, np.ndarray]:
    """UniPC (bh2, data prediction) from s = ts[offset] to t: (sigma ratio, m0 weight, D weights).

    Returns a, the weight of m_s, and the weights over the history of the B(h)-term."""
    s = ts[offset]
    lam_s = _lam(s)
    h = _lam(t) - lam_s
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)
    a = (1.0 - t) / (1.0 - s)
    alpha = t
    w_m0 = -alpha * h_phi_1
    d = np.zeros(HISTORY)
    rks: list[float] = []
    d_rows: list[np.ndarray] = []
    for j in range(1, order):  # older entries beyond s
        if offset + j >= len(ts):
            break
        rk = (_lam(ts[offset + j]) - lam_s) / h
        row = np.zeros(HISTORY)
        row[offset + j], row[offset] = 1.0 / rk, -1.0 / rk
        rks.append(rk)
        d_rows.append(row)
    if corrector:
        row = np.zeros(HISTORY)
        row[0], row[offset] = 1.0, -1.0  # D1_t = m_t - m_s
        d_rows.append(row)
    k = len(rks) + 1
    if corrector or k > 1:
        rk_all = np.array([*rks, 1.0])
        big_r = np.stack([rk_all**i for i in range(k)])
        b = []
        h_phi_k = h_phi_1 / hh - 1.0
        factorial = 1.0
        for i in range(1, k + 1):
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        if corrector:
            rhos = np.array([0.5]) if k == 1 else np.linalg.solve(big_r, np.array(b))
        else:
            rhos = np.array([0.5]) if k == 2 else np.linalg.solve(big_r[:-1, :-1], np.array(b[:-1]))
        for rho, row in zip(rhos, d_rows, strict=True):
            d += -alpha * b_h * rho * row
    return a, w_m0, d


def _unipc(ts: list[float], t_next: float, settings: SamplerSettings) -> np.ndarray:
    """UniPC-2 (bh2): predictor of order <= 2; the corrector refines the current point with its own
    evaluation (reused by the predictor), so one evaluation per step."""
    coef = _identity()
    coef[P], coef[Q] = 1.0, 1.0 - ts[0]
    if len(ts) >= 2 and math.isfinite(_lam(ts[1])) and math.isfinite(_lam(ts[0])):
        kc = _data_history(ts[1:], ts[0], 2)  # corrector order: the previous predictor's
        a, w_m0, d = _unipc_terms(ts, 1, ts[0], kc, corrector=True)
        coef[AX], coef[AP] = 0.0, a
        coef[CC : CC + HISTORY] = d
        coef[CC + 1] += w_m0
    k = _data_history(ts, t_next, 2)
    a, w_m0, d = _unipc_terms(ts, 0, t_next, k, corrector=False)
    coef[A] = a
    coef[C : C + HISTORY] = d
    coef[C] += w_m0
    return coef


SolverFn = Callable[[list[float], float, SamplerSettings], np.ndarray]
SOLVER_FNS: dict[str, SolverFn] = {
    "euler": _euler,
    "ab2": lambda ts, tn, s: _adams(ts, tn, 2),
    "ab3": lambda ts, tn, s: _adams(ts, tn, 3),
    "dpmpp_2m": _dpmpp_2m,
    "unipc": _unipc,
}


def plan_steps(settings: SamplerSettings) -> list[StepPlan]:
    """Every evaluation of a one-evaluation solver (all but Heun), computed on the host once."""
    grid, restarts = solver_grid(settings)
    fn = SOLVER_FNS[settings.method]
    plans: list[StepPlan] = []
    ts: list[float] = []  # times of the history entries, newest first
    for i in range(settings.steps):
        t, t_next = grid[i], grid[i + 1]
        ts = [t] if i in restarts else [t, *ts[: HISTORY - 1]]
        w = eval_weight(settings, t)
        plans.append(StepPlan(t, t_next, w, runs_paired(settings, t, w), fn(ts, t_next, settings)))
    return plans
