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
