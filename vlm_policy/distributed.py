"""Data-parallel training over ``torch.distributed``: one process per GPU (or per CPU slot), started by torchrun.

    torchrun --nproc-per-node=2 -m vlm_policy train --env gym_cards/NumberLine-v0 --model tiny

Every process holds the whole model, plays its own envs (seeded by rank) and collects its own
rollouts; SB3's own ``PPO.learn`` runs unchanged in each. What makes the processes one run:

* **the same start**: rank 0's weights are broadcast before training (:func:`broadcast_module`);
* **averaged gradients before clipping**: a hook on every trainable parameter averages its gradient
  across processes as soon as the backward pass has accumulated it (:class:`GradientAverager`), so
  SB3's ``clip_grad_norm_`` and the optimizer step see the same gradient everywhere (the semantics of
  ``DistributedDataParallel``, which SB3's ``evaluate_actions`` calls cannot go through);
* **the same decisions**: SB3 would take its ``target_kl`` early stop on each process's own
  minibatch, and a process that stops while another steps deadlocks the next all-reduce. Under
  :class:`AgreedEarlyStop` the processes average the approximate KL of each minibatch and stop
  together (SB3's own check is switched off); the policy's NaN guard agrees likewise
  (:func:`any_process`); every process has the same number of minibatches by construction;
* **one writer**: rank 0 alone writes logs, checkpoints, results and plots;
* **a final check**: :func:`check_same_weights` compares a digest of every process's trainable
  weights with rank 0's and fails loudly on a difference.

NCCL on CUDA (one GPU per process: ``LOCAL_RANK``), gloo on the CPU. Several nodes work through
torchrun's rendezvous (``--nnodes``, ``--rdzv-endpoint``); see the README.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from stable_baselines3.common.buffers import DictRolloutBuffer
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the run (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE = DistributedContext()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str = "auto", timeout_s: float | None = None) -> DistributedContext:
    """Joins the process group torchrun describes in the environment (a no-op for one process).

    :param device: the run's ``--device``; CUDA runs use NCCL with GPU ``LOCAL_RANK``, the CPU gloo.
    :param timeout_s: how long a process waits in a collective before failing (default: the
        ``VLM_CARDS_DIST_TIMEOUT_S`` environment variable, else 2 hours: the other processes wait
        while rank 0 alone evaluates, which takes long for a real model on many episodes).
    :return: this process's rank, the number of processes and its local rank.
    """
    if timeout_s is None:
        timeout_s = float(os.environ.get("VLM_CARDS_DIST_TIMEOUT_S", 7200))
    if not launched_by_torchrun():
        return SINGLE
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = _wants_cuda(device)
    if use_cuda:
        if torch.cuda.device_count() <= local:
            raise RuntimeError(f"process {rank} wants GPU {local}, but this node has {torch.cuda.device_count()}; "
                               "start at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(rank=rank, world_size=world, local_rank=local)


def shutdown() -> None:
    """Leaves the process group cleanly at the end of a data-parallel run (a no-op without one).

    A barrier first, so that no process leaves while another is still in a collective; then the group
    is destroyed. Last, a short sleep that releases the GIL: gloo's worker threads free a finished
    collective's tensors a moment after the caller has its result, and doing so takes the GIL. If the
    interpreter is already shutting down by then, the thread is killed inside a C++ destructor and
    the whole process aborts (SIGABRT, exit status 134 under torchrun) after its work was done and
    saved. This was measured: 4 of 51 spawns of the tests' 2-process checks aborted at exit on
    torch 2.13 (core dump: ``~AsyncAllgatherWork`` in ``ProcessGroupGloo::runLoop`` waiting for the
    GIL during ``Py_FinalizeEx``).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
    time.sleep(0.25)


def current() -> DistributedContext:
    """The context of an initialised process group (a single process otherwise)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return SINGLE
    return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def device_for(context: DistributedContext, device: str) -> str:
    """Each process's device: its own GPU under NCCL, else ``device`` as given."""
    if context.enabled and _wants_cuda(device):
        return f"cuda:{context.local_rank}"
    return device


def _wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is true on any (one process: ``flag``)."""
    if not current().enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def sum_across(values: Iterable[float]) -> list[float]:
    """Element-wise sums of ``values`` over the processes (float64)."""
    values = list(values)
    if not current().enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every process."""
    if not current().enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order (on every process)."""
    context = current()
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_module(module: nn.Module) -> None:
    """Copies rank 0's parameters and buffers into every process's ``module``."""
    if not current().enabled:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def sum_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Adds every process's gradients into each (one all-reduce over them all, flattened)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not current().enabled or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset: offset + grad.numel()].view_as(grad))
        offset += grad.numel()


class GradientAverager:
    """Averages each trainable parameter's gradient across processes once the backward pass has
    accumulated it (``register_post_accumulate_grad_hook``), i.e. before any clipping or step.

    Every process runs the same backward passes over the same model, so the hooks fire in the same
    order everywhere and the all-reduces pair up. One backward pass per optimizer step is assumed
    (PPO's: micro-batches are checkpointed chunks of a single backward); SFT, which accumulates
    several backward passes, calls :func:`sum_gradients` once instead.

    :param parameters: the parameters to synchronise (those without ``requires_grad`` are skipped).
    """

    def __init__(self, parameters: Iterable[nn.Parameter]) -> None:
        self.world_size = current().world_size
        self.handles = [p.register_post_accumulate_grad_hook(self._reduce) for p in parameters if p.requires_grad]

    def _reduce(self, parameter: torch.Tensor) -> None:
        if parameter.grad is None:
            return
        parameter.grad.div_(self.world_size)
        dist.all_reduce(parameter.grad)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class AgreedEarlyStop:
    """SB3's ``target_kl`` early stop, decided on the approximate KL averaged over the processes.

    SB3 computes each minibatch's approximate KL, ``mean((r - 1) - log r)`` with ``r`` the ratio of the
    new to the old probability, and skips the rest of the update once it exceeds ``1.5 * target_kl``
    (before that minibatch's step). Here SB3's own check is off (``target_kl=None``) and the same rule
    runs on the global mean, through two standard extension points: the rollout buffer
    (:class:`AgreedStopRolloutBuffer`, PPO's ``rollout_buffer_class``) hands over each minibatch's old
    log-probabilities and yields no more minibatches once the processes agreed to stop, and a step
    pre-hook on the policy's optimizer (``register_step_pre_hook``), where all processes meet, takes
    the decision on the policy's new log-probabilities; a stopped step has no gradients, so it changes
    no weight and no optimizer state.

    :param algorithm: the SB3 PPO, built with ``rollout_buffer_class=AgreedStopRolloutBuffer``.
    :param target_kl: as SB3's ``target_kl``.
    """

    def __init__(self, algorithm: Any, target_kl: float) -> None:
        buffer = algorithm.rollout_buffer
        if not isinstance(buffer, AgreedStopRolloutBuffer):
            raise ValueError("a data-parallel early stop needs PPO(..., rollout_buffer_class=AgreedStopRolloutBuffer) "
                             f"(from vlm_policy.distributed), not {type(buffer).__name__}")
        self.threshold = 1.5 * float(target_kl)
        self.stopped = False
        self.old_log_prob: torch.Tensor | None = None
        self.stops = 0  # updates cut short, for tests and logs
        self.policy = algorithm.policy
        self.buffer = buffer
        buffer.early_stop = self
        self.hook = algorithm.policy.optimizer.register_step_pre_hook(self._before_step)

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.stopped or self._exceeded(self.policy.last_log_prob):
            self.stopped = True
            self.stops += 1
            optimizer.zero_grad(set_to_none=True)  # parameters without a gradient are skipped by the step

    def _exceeded(self, log_prob: torch.Tensor | None) -> bool:
        if log_prob is None or self.old_log_prob is None:
            return False
        log_ratio = log_prob.detach().to(self.old_log_prob.device) - self.old_log_prob
        local = ((torch.exp(log_ratio) - 1) - log_ratio).double()
        total, count = sum_across([float(local.sum()), float(local.numel())])
        return total / max(count, 1.0) > self.threshold

    def remove(self) -> None:
        self.hook.remove()
        self.buffer.early_stop = None


class AgreedStopRolloutBuffer(DictRolloutBuffer):
    """SB3's dict rollout buffer that serves an :class:`AgreedEarlyStop`: it records each minibatch's old
    log-probabilities for the stop's rule and ends the update's minibatches once the stop is taken."""

    early_stop: AgreedEarlyStop | None = None

    def get(self, batch_size: int | None = None) -> Iterator[Any]:
        if self.early_stop is not None and self.early_stop.stopped:
            return  # before SB3's shuffle, as SB3 leaves its epochs: the same random draws follow
        for samples in super().get(batch_size):
            if self.early_stop is not None:
                if self.early_stop.stopped:
                    return
                self.early_stop.old_log_prob = samples.old_log_prob.detach()
            yield samples

    def reset(self) -> None:  # a new rollout: its update starts with every minibatch allowed
        super().reset()
        if self.early_stop is not None:
            self.early_stop.stopped = False


@contextlib.contextmanager
def data_parallel(algorithm: Any, target_kl: float | None) -> Iterator[AgreedEarlyStop | None]:
    """Within the block ``algorithm.learn`` (SB3's PPO, built with ``target_kl=None`` and, for an early
    stop, ``rollout_buffer_class=AgreedStopRolloutBuffer``) trains data-parallel: rank 0's weights
    everywhere first, averaged gradients, the agreed early stop (the block's value, None without
    ``target_kl``) and NaN guard. A no-op in a single process."""
    if not current().enabled:
        yield None
        return
    policy = algorithm.policy
    if getattr(algorithm, "target_kl", None) is not None:
        raise ValueError("build PPO with target_kl=None for a data-parallel run: the early stop is agreed across "
                         "processes instead (pass target_kl to data_parallel)")
    early_stop = AgreedEarlyStop(algorithm, target_kl) if target_kl else None
    broadcast_module(policy)
    averager = GradientAverager(policy.parameters())
    policy.agree_across_processes = True
    try:
        yield early_stop
    finally:
        policy.agree_across_processes = False
        averager.remove()
        if early_stop is not None:
            early_stop.remove()


def weights_digest(parameters: Iterable[torch.Tensor]) -> str:
    """A SHA-256 over the exact bytes of the given tensors (in order)."""
    digest = hashlib.sha256()
    for tensor in parameters:
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_same_weights(module: nn.Module, what: str = "trainable weights") -> str:
    """Fails on every process unless all hold exactly rank 0's trainable weights; returns the digest."""
    digest = weights_digest(p for p in module.parameters() if p.requires_grad)
    digests = gather_objects(digest)
    differing = [rank for rank, other in enumerate(digests) if other != digests[0]]
    if differing:
        raise RuntimeError(f"after training, processes {differing} hold other {what} than rank 0 (digests "
                           f"{[d[:12] for d in digests]}): the data-parallel run diverged and its result is not "
                           "one model; nothing was kept from the other processes")
    return digest
