"""The one-evaluation solvers: exactness on a linear ODE, measured order, the shared update."""

import pytest
import torch

from dip_export.sampling import SamplerSettings, plan_steps, sample
from dip_export.sampling.solvers import SolverState, solver_update

ONE_EVAL = ["euler", "ab2", "ab3", "dpmpp_2m", "unipc"]


class Field:
    """A denoiser over an analytic velocity field v(x, t): the backbone passes t on as the 'token'."""

    def __init__(self, v):
        self.v = v
        self.backbone_calls = 0

    def backbone(self, x, t, y):
        self.backbone_calls += 1
        return t.view(-1, 1, 1, 1).to(torch.float64).expand(-1, 1, 1, 1).clone()

    def detailer(self, x, tokens):
        return self.v(x.double(), tokens).float()


def _run(field, method, steps, x0=None, **kw):
    x0 = torch.linspace(-1.5, 1.5, 2 * 3 * 4 * 4).view(2, 3, 4, 4) if x0 is None else x0
    settings = SamplerSettings(steps=steps, cfg=1.0, method=method, **kw)
    return sample(field, x0, torch.zeros(2, dtype=torch.int64), 0, settings).double(), x0.double()


@pytest.mark.parametrize("method", ONE_EVAL)
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_exact_on_the_straight_line_ode(method, shift):
    # constant data prediction c: v = (c - x) / (1 - t), solution x(t) = t c + (1 - t) x(0)
    c = torch.linspace(-0.7, 0.9, 2 * 3 * 4 * 4, dtype=torch.float64).view(2, 3, 4, 4)
    out, _ = _run(Field(lambda x, t: (c - x) / (1 - t)), method, 7, shift=shift)
    torch.testing.assert_close(out, c, rtol=0, atol=2e-6)


@pytest.mark.parametrize("method", ["ab2", "ab3"])
def test_adams_is_exact_for_a_polynomial_in_t_once_the_history_is_full(method):
    # v = 1 + 2t + 3t^2 (order 3) or v = 1 + 2t (order 2); the start-up steps are lower order,
    # so compare the run with the exact integral after replacing them by the exact start
    k = {"ab2": 2, "ab3": 3}[method]
    coefs = [1.0, 2.0, 3.0][:k]
    plans = plan_steps(SamplerSettings(steps=9, method=method, shift=2.0))
    exact = lambda t: sum(a * t ** (j + 1) / (j + 1) for j, a in enumerate(coefs))  # noqa: E731
    x = torch.zeros(1, dtype=torch.float64)
    state = SolverState(x.clone(), torch.zeros_like(x), [torch.zeros_like(x) for _ in range(3)])
    for i, plan in enumerate(plans):
        if i < k:
            state.x.fill_(exact(plan.t))  # exact while the history fills (those steps are lower order)
        v = torch.tensor([sum(a * plan.t**j for j, a in enumerate(coefs))], dtype=torch.float64)
        solver_update(state, v, torch.tensor(plan.coef, dtype=torch.float64))
        if i >= k - 1:
            assert state.x.item() == pytest.approx(exact(plan.t_next), abs=1e-12)


def _smooth_field(x, t):
    return torch.cos(3 * t) * x * 0.8 + torch.sin(2 * t + 0.3) * 0.5 - 0.3 * x**2 * t


def _reference(x0, steps=4000):
    """RK4 with many steps: converged to far below the solvers' errors."""
    x, h = x0.clone(), 1.0 / steps
    for i in range(steps):
        t = torch.full((x.shape[0], 1, 1, 1), i * h, dtype=torch.float64)
        k1 = _smooth_field(x, t)
        k2 = _smooth_field(x + h / 2 * k1, t + h / 2)
        k3 = _smooth_field(x + h / 2 * k2, t + h / 2)
        k4 = _smooth_field(x + h * k3, t + h)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


# Error ratio per halving of the step, from noise to data. Every solver starts with one Euler step
# and the data-prediction ones end with a first-order step (lambda is infinite at t = 0 and 1), so
# order 2 is the asymptotic limit of all; the multistep grid halves the end steps, and at these step
# counts the third-order interior of ab3 and of UniPC (order-2 predictor + corrector) still shows.
@pytest.mark.parametrize(
    ("method", "lo", "hi"), [("euler", 1.5, 3), ("ab2", 3, 6), ("ab3", 5, 9.5), ("dpmpp_2m", 3, 6), ("unipc", 5, 9.5)]
)
def test_measured_order(method, lo, hi):
    x0 = torch.linspace(-1.0, 1.0, 2 * 3 * 4 * 4, dtype=torch.float64).view(2, 3, 4, 4)
    ref = _reference(x0)
    errors = []
    for n in (16, 32, 64):
        out, _ = _run(Field(_smooth_field), method, n, x0=x0.float())
        errors.append((out - ref).abs().max().item())
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert min(ratios) > lo and max(ratios) < hi, (errors, ratios)


@pytest.mark.parametrize(("method", "order"), [("ab2", 2), ("ab3", 3)])
def test_measured_order_of_the_multistep_formula(method, order):
    """Started from the exact solution while the history fills: the error falls as h^order."""
    x0 = torch.linspace(-1.0, 1.0, 2 * 3 * 4 * 4, dtype=torch.float64).view(2, 3, 4, 4)
    errors = []
    for n in (16, 32, 64):
        plans = plan_steps(SamplerSettings(steps=n, method=method))
        exact_at = {0.0: x0}
        for plan in plans[:order]:  # exact start: the reference integrator up to each history point
            exact_at[plan.t_next] = _reference_to(x0, plan.t_next)
        state = SolverState(x0.clone(), torch.zeros_like(x0), [torch.zeros_like(x0) for _ in range(3)])
        for i, plan in enumerate(plans):
            if i < order:
                state.x.copy_(exact_at[plan.t])
            t = torch.full((2, 1, 1, 1), plan.t, dtype=torch.float64)
            solver_update(state, _smooth_field(state.x, t), torch.tensor(plan.coef, dtype=torch.float64))
        errors.append((state.x - _reference(x0)).abs().max().item())
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert min(ratios) > 0.75 * 2**order and max(ratios) < 1.5 * 2**order, (errors, ratios)


def _reference_to(x0, t_end, steps=2000):
    x, h = x0.clone(), t_end / steps
    for i in range(steps):
        t = torch.full((x.shape[0], 1, 1, 1), i * h, dtype=torch.float64)
        k1 = _smooth_field(x, t)
        k2 = _smooth_field(x + h / 2 * k1, t + h / 2)
        k3 = _smooth_field(x + h / 2 * k2, t + h / 2)
        k4 = _smooth_field(x + h * k3, t + h)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


@pytest.mark.parametrize("method,order", [("ab2", 2), ("ab3", 3)])
@pytest.mark.parametrize("steps,shift", [(10_000, 1.0), (10_000, 3.0), (37, 0.4)])
def test_adams_coefficients_are_exact_on_polynomials_of_their_order(method, order, steps, shift):
    # each step's coefficients integrate every polynomial of degree < order exactly over [t, t_next],
    # on the warped (non-uniform) grid, also where the steps are 1e-4 wide
    plans = plan_steps(SamplerSettings(steps=steps, method=method, shift=shift))
    times = [p.t for p in plans]
    worst = 0.0
    for i in range(order - 1, steps):
        t, t_next, coef = times[i], plans[i].t_next, plans[i].coef
        nodes = [times[i - j] for j in range(order)]
        for degree in range(order):
            poly = lambda s: (s - 0.37) ** degree  # noqa: B023, E731
            exact = ((t_next - 0.37) ** (degree + 1) - (t - 0.37) ** (degree + 1)) / (degree + 1)
            got = sum(coef[8 + j] * poly(nodes[j]) for j in range(order))
            worst = max(worst, abs(got - exact) / (abs(t_next - t) * max(abs(t - 0.37), abs(t_next - 0.37), 0.1) ** degree))
    assert worst < 1e-11
