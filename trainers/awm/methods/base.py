"""The methods seam: what a training method (AWM, Flow-GRPO, DiffusionNFT, AdvantageFlow) plugs
into the one shared trainer loop (``trainers/awm/recipe.py``).

The trainer owns everything the methods share, as ONE copy: the model-family seam, prompts and
group dealing, rewards, advantages (``compute_advantages``), LoRA adapters (``"default"`` = the
policy, ``"ema"`` = AWM's KL-EMA adapter / NFT's ``old`` adapter), the weight EMA, the optimizer
and LR schedule, DDP, checkpoints with bitwise resume, logging and in-loop evaluation.

A method is a small object (composition, no inheritance from the trainer) that decides:

* **rollout**: which adapter samples (``rollout_adapter``) and with which sampler (``sample``),
  and what each rollout must keep besides the scored clean latent ``x0`` (``RolloutChunk.extras``:
  per-sample tensors, first dimension = the chunk's batch; Flow-GRPO keeps its SDE latents and
  fp32 log-probs there). The trainer concatenates ``extras`` over the epoch into
  ``EpochBuffer.extras``, which every mid-epoch checkpoint carries (bitwise resume).
* **advantages**: what the loss sees, from the shared ``AdvantageResult`` (AWM: the rescaled A';
  Flow-GRPO: A clamped to +-adv_clip_max, not rescaled).
* **prepare_epoch**: no-grad work once per epoch after the rollout (AWM's pass 1: old log-probs);
  whatever it stores must live in the ``EpochBuffer`` (it is not re-run on a mid-epoch resume).
* **loss**: ``num_chunks`` backward passes per micro-batch (AWM 1; Flow-GRPO one per trained SDE
  step, as upstream) and ``chunk_loss`` for each. The trainer calls ``backward`` on each chunk's
  loss scaled by ``n_kept * world / total_kept / num_chunks`` and syncs DDP only on the last one.
* **after_step / end_epoch**: state updates after each optimizer step (AWM's KL-EMA adapter) and
  after an epoch's last step (NFT's ``old`` adapter). Adapter weights are checkpointed by the
  trainer (every ``lora_`` tensor); any other state a method keeps must be derivable from
  ``global_step`` or live in the buffer.

Randomness: a method draws every random number from a ``torch.Generator`` seeded with
``prompts.derive_seed``/``train_seed`` from (seed, epoch, rank, micro-batch[, chunk]), never from
the global RNG, so pass order and resume do not change values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from torch import Tensor

from trainers.awm.advantages import AdvantageResult
from trainers.awm.samplers import VelocityFn

if TYPE_CHECKING:  # the trainer passes itself; importing it at run time would be circular
    from trainers.awm.recipe import AWMTrainer, EpochBuffer


@dataclass
class RolloutChunk:
    """One rollout batch as a method's sampler returns it."""

    x0: Tensor  # (b, *latent_shape) float32: the latent that is decoded and scored
    nfe: int  # transformer evaluations per image (a CFG pass counts once, as the samplers count)
    extras: dict[str, Tensor] = field(default_factory=dict)  # per-sample, first dim b; kept in the buffer


class Method(Protocol):
    """The strategy the trainer loop calls; one instance per run (``methods.build_method``)."""

    name: str
    #: keys of ``chunk_loss``'s scalars that are averaged over micro-batches into ``train/<key>``
    metric_keys: tuple[str, ...]

    def rollout_adapter(self) -> str | None:
        """The adapter rollouts sample with (``None`` = the policy, ``"default"``)."""
        ...

    def sample(self, tr: AWMTrainer, vfn: VelocityFn, latents: Tensor, gens: list[Any]) -> RolloutChunk:
        """Sample one rollout batch from ``latents`` (its per-sample generators ``gens``), no grad."""
        ...

    def advantages(self, res: AdvantageResult) -> Tensor:
        """(N,) float32 advantages over all gathered samples, as the loss uses them."""
        ...

    def prepare_epoch(self, tr: AWMTrainer, buf: EpochBuffer, order: Tensor) -> None:
        """No-grad work after the rollout, before the epoch's first optimizer step."""
        ...

    def num_chunks(self, tr: AWMTrainer) -> int:
        """Backward passes per micro-batch."""
        ...

    def chunk_loss(self, tr: AWMTrainer, buf: EpochBuffer, idx: Tensor, mb: int, chunk: int,
                   cols: Tensor | slice | None) -> tuple[Tensor, dict[str, Tensor] | None]:
        """(loss, scalars) of chunk ``chunk`` of micro-batch ``mb`` (buffer rows ``idx``).

        ``cols`` selects the kept samples among ``idx`` (a slice when all are kept); ``None`` when
        none is: then return a zero loss still attached to the policy's graph (DDP needs every
        rank to run backward) and ``None`` scalars. The loss is the mean over kept samples; the
        trainer rescales it."""
        ...

    def after_step(self, tr: AWMTrainer, ema_step: int) -> dict[str, float]:
        """After each optimizer step (and the weight EMA): method state updates; metrics."""
        ...

    def end_epoch(self, tr: AWMTrainer, epoch: int) -> dict[str, float]:
        """After an epoch's last optimizer step, before its evaluation and checkpoint; metrics."""
        ...
