"""Compute-optimal model size and token count: Chinchilla's three approaches and Epoch AI's re-fit.

Training compute is C = 6 N D FLOPs (N parameters, D tokens). For a budget C:

- Approaches 1 and 2 are power laws N_opt = N_ref (C / C_ref)^a, D_opt = C / (6 N_opt). The paper
  reports a = 0.50 (approach 1) and 0.49 (approach 2) but not the prefactors; we derive both numbers
  from the paper's own projections (Table 3 for approach 1, Table A3 for approach 2) by choosing
  (a, N_ref) that minimise the worst relative error over all nine rows of FLOPs and tokens. That gives
  a = 0.498 with N_ref = 66.7B at Gopher's budget (5.76e23) for approach 1 and a = 0.490 with
  N_ref = 62.6B for approach 2; every row is then within 4% (see docs/planning.md).
- Approach 3 and Epoch AI's re-fit are the parametric loss L(N, D) = E + A/N^alpha + B/D^beta.
  Minimising it subject to 6 N D = C gives N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b with
  a = beta/(alpha+beta), b = alpha/(alpha+beta), G = (alpha A / (beta B))^(1/(alpha+beta)).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Union

from jaxlm.plan import PlanError

FLOPS_PER_PARAM_TOKEN = 6.0  # forward 2 + backward 4 multiply-adds per parameter per token
GOPHER_FLOPS = 5.76e23  # Gopher's training budget, Chinchilla's reference point


def training_flops(params: float, tokens: float) -> float:
    return FLOPS_PER_PARAM_TOKEN * params * tokens


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """N_opt = n_ref * (C / c_ref)^a; the tokens follow from C = 6 N D."""

    label: str
    a: float
    n_ref: float
    c_ref: float = GOPHER_FLOPS

    def params(self, flops: float) -> float:
        return self.n_ref * (flops / self.c_ref) ** self.a

    def tokens(self, flops: float) -> float:
        return flops / (FLOPS_PER_PARAM_TOKEN * self.params(flops))

    def flops_for_params(self, params: float) -> float:
        """The budget for which a model of `params` parameters is compute-optimal."""
        return self.c_ref * (params / self.n_ref) ** (1.0 / self.a)


@dataclasses.dataclass(frozen=True)
class LossLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta (loss in nats per token)."""

    label: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    @property
    def a(self) -> float:  # N_opt ∝ C^a
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:  # D_opt ∝ C^b
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def loss(self, params: float, tokens: float) -> float:
        return self.E + self.A / params**self.alpha + self.B / tokens**self.beta

    def params(self, flops: float) -> float:
        return self.G * (flops / FLOPS_PER_PARAM_TOKEN) ** self.a

    def tokens(self, flops: float) -> float:
        return (flops / FLOPS_PER_PARAM_TOKEN) ** self.b / self.G

    def flops_for_params(self, params: float) -> float:
        return FLOPS_PER_PARAM_TOKEN * (params / self.G) ** (1.0 / self.a)

    def optimal_loss(self, flops: float) -> float:
        return self.loss(self.params(flops), self.tokens(flops))

    def flops_for_loss(self, target: float) -> float:
        """The smallest budget whose compute-optimal model reaches `target` loss."""
        if target <= self.E:
            raise PlanError(f"loss {target:.4g} is at or below the irreducible loss E = {self.E} of "
                            f"{self.label}; no budget reaches it")
        lo, hi = 0.0, 200.0  # log10 FLOPs; optimal_loss falls monotonically with the budget
        for _ in range(200):
            mid = (lo + hi) / 2
            if self.optimal_loss(10.0**mid) > target:
                lo = mid
            else:
                hi = mid
        return 10.0**hi


Law = Union[PowerLaw, LossLaw]

LAWS: dict[str, Law] = {
    "approach1": PowerLaw("Chinchilla approach 1 (min over training curves)", a=0.498, n_ref=66.7e9),
    "approach2": PowerLaw("Chinchilla approach 2 (IsoFLOP profiles)", a=0.490, n_ref=62.6e9),
    "approach3": LossLaw("Chinchilla approach 3 (parametric fit)", E=1.69, A=406.4, B=410.7,
                         alpha=0.34, beta=0.28),
    "epoch": LossLaw("Epoch AI re-fit of approach 3 (Besiroglu et al. 2024)", E=1.82, A=482.01,
                     B=2085.43, alpha=0.3478, beta=0.3658),
}


@dataclasses.dataclass(frozen=True)
class Allocation:
    """What a law recommends for one budget."""

    law: str
    flops: float
    params: float
    tokens: float
    loss: Optional[float]  # predicted loss (parametric laws only)

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params


def allocate(flops: float, laws: dict[str, Law] = LAWS) -> list[Allocation]:
    """The compute-optimal (N, D) for a budget of `flops`, from every law."""
    if not (flops > 0 and math.isfinite(flops)):
        raise PlanError(f"the compute budget must be a positive number of FLOPs, got {flops!r}")
    out = []
    for key, law in laws.items():
        n, d = law.params(flops), law.tokens(flops)
        loss = law.loss(n, d) if isinstance(law, LossLaw) else None
        out.append(Allocation(key, flops, n, d, loss))
    return out


@dataclasses.dataclass(frozen=True)
class Check:
    """How a chosen (N, D) compares with the compute-optimal choice for the same budget."""

    law: str
    flops: float
    params: float
    tokens: float
    optimal_params: float
    optimal_tokens: float
    loss: Optional[float]  # predicted loss of the chosen (N, D)
    optimal_loss: Optional[float]  # predicted loss of the optimal model at the same budget
    equivalent_flops: Optional[float]  # budget at which an optimal model reaches the chosen loss

    @property
    def params_ratio(self) -> float:  # > 1: model larger than optimal (under-trained)
        return self.params / self.optimal_params

    @property
    def tokens_ratio(self) -> float:
        return self.tokens / self.optimal_tokens

    @property
    def compute_wasted(self) -> Optional[float]:
        """Fraction of the budget an optimal allocation would not have needed for the same loss."""
        if self.equivalent_flops is None:
            return None
        return 1.0 - self.equivalent_flops / self.flops


def check_allocation(params: float, tokens: float, laws: dict[str, Law] = LAWS) -> list[Check]:
    """E.g. check_allocation(175e9, 300e9): GPT-3 against each law's optimum for its budget."""
    for name, value in (("parameters", params), ("tokens", tokens)):
        if not (value > 0 and math.isfinite(value)):
            raise PlanError(f"the number of {name} must be positive, got {value!r}")
    flops = training_flops(params, tokens)
    out = []
    for key, law in laws.items():
        n_opt, d_opt = law.params(flops), law.tokens(flops)
        loss = optimal = equivalent = None
        if isinstance(law, LossLaw):
            loss, optimal = law.loss(params, tokens), law.loss(n_opt, d_opt)
            equivalent = law.flops_for_loss(loss)
        out.append(Check(key, flops, params, tokens, n_opt, d_opt, loss, optimal, equivalent))
    return out


def flops_from_hardware(devices: int, peak_flops: float, days: float, mfu: float) -> float:
    """The budget `devices` deliver in `days` at model FLOPs utilisation `mfu`."""
    if devices <= 0 or days <= 0:
        raise PlanError(f"devices and days must be positive, got devices={devices}, days={days}")
    if not 0 < mfu <= 1:
        raise PlanError(f"MFU is a fraction in (0, 1], got {mfu} (e.g. 0.4 for 40%)")
    return devices * peak_flops * mfu * days * 86400.0
