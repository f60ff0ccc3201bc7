"""Rollout / eval samplers on a generic velocity model (spec sections 1.3, 3.1, traps 9.5, 9.6).

A :data:`VelocityFn` maps ``(x (B, ...), t (B,))`` (SD3: (B, C, H, W); FLUX: packed (B, L, 4C)) to the rectified-flow velocity
``v = dx/dt`` with ``x_t = (1 - t) x0 + t eps`` and ``t`` = SD3 sigma in [0, 1]. The trainer wraps
the SD3 transformer (``timestep = 1000 * t``, text embeddings bound); tests use analytic fields.
``x`` arrives in the solver's working dtype (float32, or float64 for float64 latents) and ``t`` in
float32; the wrapper casts to the model dtype as needed, and the result is cast back to the
working dtype.

* :func:`flow_sigmas` -- ``FlowMatchEulerDiscreteScheduler``'s default shifted sigma grid (SD3).
* :func:`flux_sigmas`, :func:`flux_mu` -- ``FluxPipeline``'s grid: linspace(1, 1/N, N) with the
  resolution-dependent exponential ("dynamic") shift mu (objectives.md 4.2).
* :func:`euler_sample` -- deterministic Euler ODE (eval) or Flow-GRPO's Euler-SDE for the first
  steps (``use_sa_solver=False`` path).
* :func:`sa_solver_sample` -- SA-Solver (Xue et al. 2023, stochastic Adams predictor-corrector,
  data prediction) in the flow-matching parameterisation ``alpha_t = 1 - t, sigma_t = t``,
  the default AWM rollout sampler.

Randomness: every Gaussian draw is taken from ``generator``; a list of generators (one per batch
element) draws each sample's noise from its own generator, so one rollout can be reproduced
independently of the batch it ran in (given a batch-invariant velocity function).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Generators",
    "SampleOutput",
    "VelocityFn",
    "euler_sample",
    "flow_sigmas",
    "flux_mu",
    "flux_sigmas",
    "randn_per_sample",
    "sa_solver_grid",
    "sa_solver_sample",
]

VelocityFn = Callable[[Tensor, Tensor], Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class SampleOutput:
    """Result of a sampler: the final clean latent and the (unmodified) sigma grid.

    ``x0`` (B, C, H, W) is in the solver's working dtype (float32 for fp16/bf16/fp32 latents,
    float64 for float64). ``sigmas`` is the (N+1,) grid handed in (ending in 0), never the
    SA-Solver's edited copy. ``nfe`` counts velocity evaluations.
    """

    x0: Tensor
    sigmas: Tensor
    nfe: int

    @property
    def training_grid(self) -> Tensor:
        """(N,) ``scheduler.timesteps / 1000`` as upstream stores it for ``time_type`` sampling:
        float32 ``(sigmas[:-1] * 1000) / 1000`` (bit-equal to diffusers' ``timesteps / 1000``
        because diffusers computes ``timesteps = sigmas * 1000`` in float32)."""
        return (self.sigmas[:-1].to(torch.float32) * 1000) / 1000


def flow_sigmas(num_steps: int, shift: float, *, num_train_timesteps: int = 1000) -> Tensor:
    """(num_steps + 1,) float32 sigma grid of ``FlowMatchEulerDiscreteScheduler(shift=shift)
    .set_timesteps(num_steps)`` (static shift, no dynamic shifting, no karras/exponential/beta),
    followed by the terminal 0.

    Reproduces diffusers: the training schedule (float32) gives ``sigma_max = shift(1)`` and
    ``sigma_min = shift(1/num_train_timesteps)``; inference ``timesteps = linspace(sigma_max*T,
    sigma_min*T, N)`` (float64 numpy), ``sigmas = shift(timesteps / T)`` -- note the shift is
    applied a second time to the already shifted endpoints, as diffusers does -- cast to float32.
    For shift=3, N=14: [1.0, .9731, .9430, ..., .2062, .0089, 0].
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    n_train = int(num_train_timesteps)
    train_t = torch.from_numpy(np.linspace(1, n_train, n_train, dtype=np.float32)[::-1].copy())
    train_sig = train_t / n_train
    train_sig = shift * train_sig / (1 + (shift - 1) * train_sig)
    sigma_max, sigma_min = train_sig[0].item(), train_sig[-1].item()
    ts = np.linspace(sigma_max * n_train, sigma_min * n_train, num_steps)
    sig = ts / n_train
    sig = shift * sig / (1 + (shift - 1) * sig)
    sig_t = torch.from_numpy(sig).to(torch.float32)
    return torch.cat([sig_t, torch.zeros(1, dtype=torch.float32)])


def flux_mu(image_seq_len: int, *, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
            max_shift: float = 1.15) -> float:
    """mu of FLUX's dynamic shift: linear in the packed image sequence length L, from ``base_shift`` at
    ``base_seq_len`` to ``max_shift`` at ``max_seq_len`` (``pipeline_flux.calculate_shift``).
    512 px (L = 1024): 0.63; 64 px on the tiny /2 VAE (L = 256): 0.5."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def flux_sigmas(num_steps: int, mu: float) -> Tensor:
    """(num_steps + 1,) float32 sigma grid of ``FluxPipeline``: ``sigmas = linspace(1, 1/N, N)`` (cast to
    float32 as the scheduler does), shifted by ``e^mu / (e^mu + 1/sigma - 1)`` (``time_shift_type``
    "exponential", ``use_dynamic_shifting=True``), followed by the terminal 0. Bit-equal to
    ``FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).set_timesteps(sigmas=..., mu=mu)``.

    Unlike SD3's grid the last nonzero sigma is large (0.27 at N = 6, mu = 0.63; 0.065 at N = 28): the
    final step jumps straight to 0 from there (objectives.md trap 6)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    base = np.linspace(1.0, 1 / num_steps, num_steps).astype(np.float32)
    e = math.exp(mu)
    sig = e / (e + (1 / base - 1))  # numpy keeps float32 (python scalars are weak), as in diffusers
    return torch.cat([torch.from_numpy(np.asarray(sig)).to(torch.float32), torch.zeros(1, dtype=torch.float32)])


def randn_per_sample(
    shape: Sequence[int], generator: Generators, *, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Standard normal of ``shape`` (B, ...). Drawn in float32 on each generator's device and then
    moved, so values do not depend on the target dtype/device. With a list of generators, row i
    comes only from ``generator[i]``."""
    shape = tuple(shape)
    if generator is None:
        return torch.randn(shape, device=device, dtype=torch.float32).to(dtype)
    if isinstance(generator, torch.Generator):
        z = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
        return z.to(device=device, dtype=dtype)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]}")
    rows = [
        torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float32).to(device) for g in gens
    ]
    return torch.stack(rows).to(dtype)


def _check_sigmas(sigmas: Tensor, min_len: int, who: str) -> list[float]:
    if sigmas.ndim != 1 or sigmas.numel() < min_len:
        raise ValueError(
            f"{who}: sigmas must be 1-D with at least {min_len} entries, got shape {tuple(sigmas.shape)}"
        )
    s = [float(v) for v in sigmas.detach().cpu().tolist()]
    if any(not math.isfinite(v) for v in s):
        raise ValueError(f"{who}: sigmas contain non-finite values")
    if any(b >= a for a, b in itertools.pairwise(s)):
        raise ValueError(f"{who}: sigmas must be strictly decreasing, got {s}")
    if s[0] > 1.0 or s[-1] < 0.0:
        raise ValueError(f"{who}: sigmas must lie in [0, 1], got first={s[0]}, last={s[-1]}")
    return s


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _eval(velocity_fn: VelocityFn, x: Tensor, t: float, t_dtype: torch.dtype) -> Tensor:
    t_vec = torch.full((x.shape[0],), t, device=x.device, dtype=t_dtype)
    v = velocity_fn(x, t_vec)
    if v.shape != x.shape:
        raise ValueError(f"velocity_fn returned shape {tuple(v.shape)} for input {tuple(x.shape)}")
    return v.to(x.dtype)


# --------------------------------------------------------------------------------------------
# Euler ODE / Flow-GRPO Euler-SDE
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def euler_sample(
    velocity_fn: VelocityFn,
    latents: Tensor,
    sigmas: Tensor,
    *,
    noise_level: float = 0.0,
    sde_frac: float = 0.0,
    generator: Generators = None,
) -> SampleOutput:
    """Euler sampler over ``sigmas`` (N+1 values, decreasing, normally ending in 0).

    Step k (sigma = s_k, sigma' = s_{k+1}, dt = sigma' - sigma < 0):
      * ODE (``noise_level == 0`` or ``k >= sde_frac*N``): ``x <- x + dt * v``.
      * SDE (Flow-GRPO ``sde_step_with_logprob``, spec 3.1), for steps ``k < sde_frac * N``
        (upstream ``i < num_inference_steps * sde_frac``, i.e. ``ceil(sde_frac*N)`` steps):
        ``std = a * sqrt(sigma / (1 - (sigma == 1 ? s_1 : sigma)))``,
        ``mean = x (1 + std^2 dt / (2 sigma)) + v (1 + std^2 (1 - sigma) / (2 sigma)) dt``,
        ``x <- mean + std sqrt(-dt) z``.
    The state is updated in float32 (or float64) as upstream (``latents.float()``). NFE = N.
    """
    s = _check_sigmas(sigmas, 2, "euler_sample")
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    if not 0.0 <= sde_frac <= 1.0:
        raise ValueError(f"sde_frac must be in [0, 1], got {sde_frac}")
    n = len(s) - 1
    wd = _work_dtype(latents.dtype)
    sig32 = sigmas.detach().to(torch.float32)
    x = latents.to(wd)
    nfe = 0
    for k in range(n):
        sigma, sigma_next = sig32[k].to(x.device, wd), sig32[k + 1].to(x.device, wd)
        v = _eval(velocity_fn, x, float(sig32[k]), torch.float32)
        nfe += 1
        dt = sigma_next - sigma
        a = noise_level if k < n * sde_frac else 0.0
        if a == 0.0:
            x = x + dt * v
            continue
        denom_sigma = sig32[1].to(x.device, wd) if float(sig32[k]) == 1.0 else sigma
        std = torch.sqrt(sigma / (1 - denom_sigma)) * a
        mean = x * (1 + std**2 / (2 * sigma) * dt) + v * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt
        z = randn_per_sample(x.shape, generator, device=x.device, dtype=wd)
        x = mean + std * torch.sqrt(-dt) * z
    return SampleOutput(x0=x, sigmas=sigmas, nfe=nfe)


# --------------------------------------------------------------------------------------------
# SA-Solver (data prediction, flow matching)
# --------------------------------------------------------------------------------------------
#
# Notation: alpha_t = 1 - t, sigma_t = t, lambda_t = log(alpha_t / sigma_t) (half-log-SNR),
# D(x, t) = x - t v(x, t) (data prediction), tau = stochasticity at the *target* time t.
# One step from s (= t_prev[-1]) to t, h = lambda_t - lambda_s > 0, c = 1 + tau^2 (SA-Solver
# paper, data-prediction form, Eq. 15/18 with Lagrange interpolation of D in lambda):
#
#   x_t = (sigma_t / sigma_s) e^{-tau^2 h} x_s
#         + c * sigma_t e^{-tau^2 lambda_t} * sum_i D_i int_{lambda_s}^{lambda_t} e^{c l} L_i(l) dl
#         + sigma_t sqrt(1 - e^{-2 tau^2 h}) z
#
# Since sigma_t e^{-tau^2 lambda_t} e^{c lambda_t} = sigma_t e^{lambda_t} = alpha_t, we evaluate the
# integral in the local variable u = l - lambda_t in [-h, 0]:
#
#   gradient part = c * alpha_t * sum_i D_i int_{-h}^{0} e^{c u} L_i(lambda_t + u) du,
#
# which avoids the exp(c*lambda) / polynomial cancellation of the monomial closed form (the
# upstream reference evaluates that form in float32). Coefficients are python floats (float64).
# The order-2 "few steps" terms of the reference implementation (an O(h^3) modification in the
# spirit of UniPC) are included:
#   predictor: + alpha_t q(c h) / (c h_prev) (D_0 - D_1),   h_prev = lambda_s - lambda_{s-1}
#   corrector: + alpha_t q(c h) / (c h)      (D_0 - D_1),   D_0 = D at the new point
# with q(z) = z^2/2 - z + 1 - e^{-z}.


def _int_exp_monomials(c: float, h: float, max_n: int) -> list[float]:
    """J_n = int_{-h}^{0} e^{c u} u^n du for n = 0..max_n (h > 0, c >= 1), stable for small c*h.

    With u = -h w: J_n = (-1)^n h^{n+1} K_n(z), K_n(z) = int_0^1 e^{-z w} w^n dw, z = c h.
    """
    z = c * h
    ks: list[float] = []
    if z < 0.5:
        # power series: K_n = sum_k (-z)^k / (k! (n + k + 1))
        for n in range(max_n + 1):
            total, term, k = 0.0, 1.0, 0
            while True:
                contrib = term / (n + k + 1)
                total += contrib
                k += 1
                term *= -z / k
                if abs(term) < 1e-18 * max(abs(total), 1e-300) or k > 60:
                    break
            ks.append(total)
    else:
        # upward recurrence, stable for z >= 0.5 at these low orders
        ez = math.exp(-z)
        k_prev = -math.expm1(-z) / z
        ks.append(k_prev)
        for n in range(1, max_n + 1):
            k_prev = (n * k_prev - ez) / z
            ks.append(k_prev)
    return [((-1) ** n) * h ** (n + 1) * ks[n] for n in range(max_n + 1)]


def _q(z: float) -> float:
    """q(z) = z^2/2 - z + 1 - e^{-z} (= z^3/6 - z^4/24 + ...), stable for small z."""
    if z < 0.1:
        total, term, k = 0.0, z**3 / 6.0, 3
        while abs(term) > 1e-30:
            total += term
            k += 1
            term *= -z / k
        return total
    return z * z / 2 - z - math.expm1(-z)


def _lagrange_integrals(nodes: Sequence[float], c: float, h: float) -> list[float]:
    """int_{-h}^{0} e^{c u} L_i(u) du for the Lagrange basis L_i on ``nodes`` (local u)."""
    k = len(nodes)
    j = _int_exp_monomials(c, h, k - 1)
    out = []
    for i in range(k):
        # monomial coefficients (ascending powers) of L_i(u) = prod_{m != i} (u - u_m)/(u_i - u_m)
        poly = [1.0]
        denom = 1.0
        for m in range(k):
            if m == i:
                continue
            new = [0.0] * (len(poly) + 1)
            for p_idx, a in enumerate(poly):
                new[p_idx] += -nodes[m] * a
                new[p_idx + 1] += a
            poly = new
            denom *= nodes[i] - nodes[m]
        out.append(sum(a * j[p_idx] for p_idx, a in enumerate(poly)) / denom)
    return out


def _lam(t: float) -> float:
    return math.log((1.0 - t) / t)


def _sa_step(
    x: Tensor,
    d_list: Sequence[Tensor],
    lam_nodes: Sequence[float],
    s: float,
    t: float,
    tau: float,
    z: Tensor | None,
    *,
    h_prev: float | None,
    corrector: bool,
) -> Tensor:
    """One SA predictor (``corrector=False``) or corrector step from s to t.

    ``d_list[i]`` is the data prediction at half-log-SNR ``lam_nodes[i]`` (newest first). For the
    predictor the nodes are (lambda_s, lambda_{s-1}, ...); for the corrector (lambda_t, lambda_s, ...).
    """
    lam_s, lam_t = _lam(s), _lam(t)
    h = lam_t - lam_s
    c = 1.0 + tau * tau
    alpha_t, sigma_t, sigma_s = 1.0 - t, t, s
    order = len(d_list)
    coeffs = _lagrange_integrals([ln - lam_t for ln in lam_nodes], c, h)
    coeffs = [c * alpha_t * b for b in coeffs]
    if order == 2:
        if corrector:
            extra = alpha_t * _q(c * h) / (c * h)
        else:
            assert h_prev is not None
            extra = alpha_t * _q(c * h) / (c * h_prev)
        coeffs[0] += extra
        coeffs[1] -= extra
    out = (sigma_t / sigma_s) * math.exp(-tau * tau * h) * x
    for b, d in zip(coeffs, d_list, strict=True):
        out = out + b * d
    if tau > 0.0:
        assert z is not None
        out = out + (sigma_t * math.sqrt(-math.expm1(-2.0 * tau * tau * h))) * z
    return out


def sa_solver_grid(sigmas: Tensor) -> Tensor:
    """The SA-Solver's edited time grid, as a float32 COPY (upstream edits ``scheduler.sigmas`` in
    place, trap 9.5): ``t[-2] = max(t[-2], t[-3] / 2)`` then ``t[0] = 1 - 1e-3``.

    The tail edit exists for SD3's grid, whose last nonzero sigma is tiny (0.0089 at N = 14, shift 3):
    the step to it would be a huge jump in half-log-SNR (lambda 1.35 -> 4.7) and the solver's final
    data prediction ``D(x, t[N-1])`` is taken there. Upstream raises it to half the previous sigma
    (``t[-2] = t[-3] / 2``, 0.1031). That assumption is explicit here: the tail is raised to
    ``t[-3] / 2`` only when it lies below it, which is exactly upstream's edit on every SD3 grid
    (its tail is always below half the previous sigma) and leaves FLUX's grid alone, whose last
    nonzero sigma is already large (0.27 at N = 6, 0.17 at N = 10, 512 px; objectives.md trap 6):
    upstream's edit would *lower* it (0.2730 -> 0.2421) and the rollout would stop at a time the
    training grid (``scheduler.timesteps / 1000``) does not hold."""
    t = sigmas.detach().to(torch.float32).clone()
    t[-2] = torch.maximum(t[-2], t[-3] / 2)
    t[0] = 1 - 1e-3
    return t


@torch.no_grad()
def sa_solver_sample(
    velocity_fn: VelocityFn,
    latents: Tensor,
    sigmas: Tensor,
    *,
    noise_level: float,
    noise_window: tuple[float, float] = (0.3, 0.9),
    predictor_order: int = 2,
    corrector_order: int = 2,
    pc_mode: str = "PEC",
    generator: Generators = None,
) -> SampleOutput:
    """SA-Solver rollout (spec 1.3), data prediction, flow-matching schedule.

    Args:
        velocity_fn: ``v(x, t)``; called with ``t`` (B,) float32.
        latents: initial noise x_T (B, C, H, W).
        sigmas: (N+1,) scheduler sigmas ending in 0 (e.g. :func:`flow_sigmas` or
            ``scheduler.sigmas``); not modified. The solver runs on the edited copy
            :func:`sa_solver_grid` (t[0] = 0.999, t[N-1] = max(t[N-1], t[N-2]/2): SD3's tiny tail
            is raised as upstream, FLUX's grid keeps its own).
        noise_level: tau inside ``noise_window`` (inclusive, compared in float32 like upstream's
            ``0.3 <= t <= 0.9`` on a float32 tensor) at each step's *target* time; 0 outside.
            ``noise_level=0`` is a deterministic ODE solver (PickScore config).
        predictor_order, corrector_order: 1..4 and 0..4 (0 = no corrector).
        pc_mode: "PEC" (one evaluation per step, NFE = N) or "PECE" (re-evaluates after each
            correction).
        generator: a generator or one per sample. Noise is drawn only for steps with tau > 0; the
            predictor and corrector of a step share it (upstream).

    Upstream options fixed as in ``sa_solver.py``: ``disable_first_corrector``,
    ``lower_order_final`` and ``skip_final_step`` are all True; the final step is
    ``denoise_to_zero``: the returned x0 is the latest data prediction D(x, t[N-1]).

    Returns:
        SampleOutput(x0, sigmas (the unmodified input), nfe).
    """
    s_list = _check_sigmas(sigmas, 3, "sa_solver_sample")
    if s_list[-1] != 0.0:
        raise ValueError(f"sa_solver_sample: sigmas must end in 0, got {s_list[-1]}")
    if not 1 <= predictor_order <= 4:
        raise ValueError(f"predictor_order must be in 1..4, got {predictor_order}")
    if not 0 <= corrector_order <= 4:
        raise ValueError(f"corrector_order must be in 0..4, got {corrector_order}")
    if pc_mode not in ("PEC", "PECE"):
        raise ValueError(f"pc_mode must be 'PEC' or 'PECE', got {pc_mode!r}")
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    steps = len(s_list) - 1
    warm = max(predictor_order, corrector_order - 1)
    if steps < warm:
        raise ValueError(
            f"SA-Solver with orders ({predictor_order}, {corrector_order}) needs >= {warm} steps, got {steps}"
        )

    grid32 = sa_solver_grid(sigmas)
    grid = [float(v) for v in grid32.tolist()]
    if any(b >= a for a, b in itertools.pairwise(grid)):
        raise ValueError(f"edited SA-Solver grid is not strictly decreasing: {grid}")
    lo32 = float(torch.tensor(noise_window[0], dtype=torch.float32))
    hi32 = float(torch.tensor(noise_window[1], dtype=torch.float32))

    def tau_at(t: float) -> float:
        return float(noise_level) if lo32 <= t <= hi32 else 0.0

    wd = _work_dtype(latents.dtype)
    x = latents.to(wd)
    nfe = 0

    def data_pred(xx: Tensor, t: float) -> Tensor:
        nonlocal nfe
        nfe += 1
        return xx - t * _eval(velocity_fn, xx, t, torch.float32)

    t_prev = [grid[0]]
    d_prev = [data_pred(x, grid[0])]

    for step in range(1, steps + 1):
        t = grid[step]
        if step < warm:
            p_used = min(predictor_order, step)
            c_used = min(corrector_order, step + 1)
        else:  # lower_order_final
            p_used = min(predictor_order, steps - step + 1)
            c_used = min(corrector_order, steps - step + 2)
        if step == steps:  # skip_final_step: denoise_to_zero
            x = d_prev[-1]
            break
        tau = tau_at(t)
        z = randn_per_sample(x.shape, generator, device=x.device, dtype=wd) if tau > 0 else None
        s = t_prev[-1]
        lam_hist = [_lam(tp) for tp in t_prev]
        h_prev = lam_hist[-1] - lam_hist[-2] if len(lam_hist) >= 2 else None
        # predictor (Adams-Bashforth), nodes newest first
        x_p = _sa_step(
            x,
            [d_prev[-(i + 1)] for i in range(p_used)],
            [lam_hist[-(i + 1)] for i in range(p_used)],
            s,
            t,
            tau,
            z,
            h_prev=h_prev,
            corrector=False,
        )
        d_new = data_pred(x_p, t)
        d_prev.append(d_new)
        # disable_first_corrector: upstream only checks it in its warm-up loop (step < warm)
        do_correct = corrector_order > 0 and not (step < warm and step == 1)
        if do_correct:
            nodes = [_lam(t)] + lam_hist[::-1]  # newest first: lambda_t, lambda_s, ...
            x = _sa_step(
                x,
                [d_prev[-(i + 1)] for i in range(c_used)],
                nodes[:c_used],
                s,
                t,
                tau,
                z,
                h_prev=None,
                corrector=True,
            )
            if pc_mode == "PECE":
                d_prev[-1] = data_pred(x, t)
        else:
            x = x_p
        t_prev.append(t)
        if step >= warm:
            del d_prev[0]
    return SampleOutput(x0=x, sigmas=sigmas, nfe=nfe)
