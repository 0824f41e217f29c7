"""What a resumed run needs besides the weights: RNG streams, and the data position across world sizes."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG's state as tensors and plain data, which a weights-only checkpoint load restores."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss),
                   float(cached_gaussian)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, (list, tuple)) and isinstance(numpy_state[1], torch.Tensor):
        name, keys, position, has_gauss, cached_gaussian = numpy_state
        numpy_state = (name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian)
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def reshard_position(batch_in_epoch: int, batch_size: int, old_world: int, new_world: int) -> int:
    """The batch of the epoch to continue from when a run saved by ``old_world`` processes resumes on ``new_world``.

    Global batch k of an epoch is the same samples whatever the world size (the unpadded sharding interleaves
    ranks), so the position reshards as a count of samples consumed.
    """
    if old_world == new_world or not batch_in_epoch:
        return batch_in_epoch
    consumed = batch_in_epoch * batch_size * old_world
    per_batch = batch_size * new_world
    resumed = math.ceil(consumed / per_batch)
    if consumed % per_batch:
        warnings.warn(f"resuming {old_world} -> {new_world} processes mid-epoch: the position ({consumed} samples) "
                      f"is not a multiple of the new global batch ({per_batch}); continuing at the next boundary, "
                      f"{resumed * per_batch - consumed} samples of this epoch are skipped",
                      RuntimeWarning, stacklevel=3)
    return resumed


class TrainerPosition:
    """Where a run is (epoch, step, data position, skipped steps) and what it was (config, image shape,
    architecture): the checkpoint's top-level keys besides the parts'."""

    def __init__(self, trainer):
        self.trainer = trainer

    def state_dict(self) -> dict:
        t = self.trainer
        return {"epoch": t.epoch, "batch_in_epoch": t.batch_in_epoch, "step": t.step,
                "world_size": t.dist.world_size, "skipped_steps": t.guard.skipped, "config": t.cfg.to_dict(),
                "image_shape": list(t.data.image_shape), "architecture": t.model.architecture}

    def load_state_dict(self, state: dict) -> None:
        t = self.trainer
        t.epoch, t.step = state["epoch"], state["step"]
        t.stopped = bool(t.cfg.optim.max_steps) and t.step >= t.cfg.optim.max_steps  # not one step past it
        t.kl_schedule.set_step(t.step)
        t.guard.skipped = state.get("skipped_steps", 0)
        old_world = state.get("world_size", 1)
        if t.dist.enabled or old_world > 1:
            # One saved RNG stream cannot serve several ranks: re-seed per rank and step, so that each rank's noise
            # stays distinct (the data order and the parameters still resume exactly).
            torch.manual_seed(t.cfg.runtime.seed + t.dist.rank + 1_000_003 * t.step)
        t.batch_in_epoch = reshard_position(state["batch_in_epoch"], t.cfg.data.batch_size, old_world,
                                            t.dist.world_size)


class RNGStreams:
    """Python's, numpy's and torch's RNG streams, as one checkpointed part."""

    state_dict = staticmethod(rng_state)
    load_state_dict = staticmethod(set_rng_state)


class ModelWeights:
    """The model's weights in a checkpoint: with master weights the float32 masters, loadable by any float32 copy of
    the model; with a frozen encoder only what trains (the rest is the released weights the model is built from)."""

    def __init__(self, model: torch.nn.Module, optimizer, master_weights: bool):
        self.model, self.optimizer, self.master_weights = model, optimizer, master_weights

    def state_dict(self) -> dict:
        state = self.optimizer.master_state_dict(self.model) if self.master_weights else self.model.state_dict()
        return self.model.trained_state_dict(state)

    def load_state_dict(self, state: dict) -> None:
        try:
            self.model.load_trained_state(state)
        except RuntimeError as exc:
            raise ValueError(f"it does not fit this model (was it trained with other model flags?): {exc}") from None


class OptimizerState:
    """The optimizer's state; on load, the flags this run built it with (fused, foreach, capturable) are kept over
    the saved ones, which another optimizer may have written."""

    def __init__(self, optimizer, master_weights: bool):
        self.optimizer, self.master_weights = optimizer, master_weights

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        try:
            self.optimizer.load_state_dict(state)
        except ValueError as exc:
            flag = "--no-master-weights" if self.master_weights else "the settings it was trained with"
            raise ValueError(f"{exc}; resume it with {flag}") from None
        kept = {k: v for k, v in self.optimizer.defaults.items() if k in ("fused", "foreach", "capturable")}
        for group in self.optimizer.param_groups:
            group.update(kept)
