"""The training loop: small enough to read in one sitting.

``Trainer(cfg)`` builds the data, model, optimizer, the run plan and the components that decide for themselves
when to act (checkpointer, metrics, monitor, NaN guard). ``run(steps)`` takes optimizer steps from the current
data position; ``fit()`` runs the epochs, evaluating and checkpointing at each end. No step reads a device value
on the host: the NaN guard skips on the device, and metrics and counters are read on log steps.
"""

from __future__ import annotations

import gc
import math
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..checkpoint import Checkpointer, ensure_writable, load_checkpoint
from ..config import TrainConfig, save_resolved
from ..data import ImageDataset, load_dataset, make_loader
from ..data.convert import to_unit_float
from ..eval import evaluate_elbo
from ..models import build_model
from ..models.ema import WeightEMA
from ..models.loss_terms import LossTerm
from ..models.objective import NegativeELBO
from ..perf.machine import peak_memory_mb
from ..perf.stages import stage
from ..plan import RunPlan, plan_run
from .distributed import DistContext
from .guard import NaNGuard, non_finite_report
from .metrics import TrainMetrics
from .monitor import Monitor
from .preemption import StopRequest
from .optim import make_optimizer, native_master_step_available, skips_on_device
from .schedules import KLWeight, LearningRate
from .capture import WholeStep
from .noise import NoiseSeeds
from .state import reshard_position, rng_state, seed_everything, set_rng_state


class StepResult(NamedTuple):
    """One optimizer step's device tensors: this rank's sums, and whether the update was applied."""

    nll: torch.Tensor
    kl: torch.Tensor
    kl_per_dim: torch.Tensor
    term_sums: torch.Tensor | None
    applied: torch.Tensor


class Trainer:
    """Train a VAE from a ``TrainConfig``. ``dataset`` overrides ``cfg.data``; ``model`` overrides ``cfg.model``'s
    architecture with any module that has ``encode(x)`` and ``decode(z)`` (vaefast.models.protocol), keeping its
    likelihood, clamp and backend; ``loss_terms`` adds perceptual or adversarial terms to the loss
    (vaefast.models.loss_terms); ``dist`` joins a DDP job."""

    def __init__(self, cfg: TrainConfig, dataset: ImageDataset | None = None, *, model: nn.Module | None = None,
                 loss_terms: list[LossTerm] | None = None, dist: DistContext | None = None):
        cfg.validate()
        self.cfg = cfg
        self.dist = dist or DistContext()
        rank, world_size = self.dist.rank, self.dist.world_size
        device = self.dist.device(cfg.device)
        seed_everything(cfg.seed + rank)  # distinct noise per rank; DDP broadcasts rank 0's initial weights
        self.data = dataset if dataset is not None else load_dataset(
            cfg.data, cfg.test_fraction, cfg.seed, image_size=cfg.image_size, skip_bad=cfg.skip_bad_images)
        self.loader, self.loader_kind, why = make_loader(
            cfg.loader, self.data, cfg.batch_size, device=device, seed=cfg.seed, rank=rank,
            world_size=world_size, skip_bad=cfg.skip_bad_images, num_workers=cfg.num_workers, flip=cfg.flip)
        self.steps_per_epoch = math.ceil(len(self.loader) / cfg.grad_accum)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.plan: RunPlan = plan_run(
            device=device, precision=cfg.precision, compile=cfg.compile, compile_mode=cfg.compile_mode,
            master_weights=cfg.master_weights, distributed=self.dist.enabled, total_steps=self.total_steps,
            native_master_step=native_master_step_available())
        if rank == 0 and cfg.progress:
            print(f"vaefast: {self.data.describe()}; loader {self.loader_kind} ({why}); {world_size} "
                  f"process{'es' if world_size > 1 else ''}; plan: {self.plan.describe()}", file=sys.stderr)
        torch.manual_seed(cfg.seed)  # the same initial weights whatever the rank and the data source
        self.model = build_model(cfg.model, self.data.image_shape, model).to(device)
        if cfg.activation_checkpointing:
            self.model.enable_activation_checkpointing()
        if cfg.channels_last:
            self.model.use_channels_last()
        # Built before the DDP wrap: with master weights it takes the float32 weights and converts the model to bf16.
        self.optimizer = make_optimizer(cfg.optimizer, self.model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                        device=device, master_weights=self.plan.master_weights)
        torch.manual_seed(cfg.seed + rank)
        self.objective = NegativeELBO(self.model, cfg.free_bits, loss_terms, samples=cfg.samples,
                                      objective=cfg.objective, estimator=cfg.estimator).to(device)
        if self.dist.enabled:
            device_ids = [device.index] if device.type == "cuda" else None
            self.objective = DDP(self.objective, device_ids=device_ids)
        self.lr_schedule = LearningRate(self.optimizer, cfg.lr_schedule, self.total_steps, device=device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.plan.precision == "fp16")
        self.out = Path(cfg.out)
        self.checkpointer = Checkpointer(self.out, cfg.keep_checkpoints, enabled=self.dist.is_main,
                                         every=cfg.checkpoint_every)
        if self.dist.is_main:
            ensure_writable(self.out)
        self.monitor = Monitor(self.out, enabled=self.dist.is_main, progress=cfg.progress,
                               tensorboard=cfg.tensorboard)
        self.metrics = TrainMetrics(self.monitor, self.dist, device, cfg.log_every,
                                    term_names=[term.name for term in self._loss_terms])
        self.guard = NaNGuard(cfg.max_bad_steps, device)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.stopped = False  # cfg.max_steps reached, or a signal asked to stop
        self.preempted = False  # stopped by SIGTERM/SIGINT
        self.stop_request: StopRequest | None = None
        self.last_checkpoint: Path | None = None
        self.noise_seeds = NoiseSeeds(cfg.seed, rank, device) if cfg.noise == "seeded" else None
        self.kl_schedule = KLWeight(self.total_steps, cfg.beta, cfg.kl_warmup_steps, cfg.kl_cycles, device=device)
        self._term_w_value, self._term_w = None, None
        self._unit_scale = None
        # Per batch size, and kept: a captured step holds on to the tensor it saw.
        self._scales: dict[int, torch.Tensor] = {}
        # Compile after the DDP wrap, as PyTorch recommends: DDP's graph-break points then match its buckets.
        compile_loss = self.plan.compile and not self.plan.whole_step
        self.loss_fn = torch.compile(self.objective, mode=self.plan.compile_mode) if compile_loss else self.objective
        self.whole_step = WholeStep.for_device(self._step, device) if self.plan.whole_step else None
        self.ema = self._make_ema(self.load(cfg.resume) if cfg.resume else None)
        if self.dist.is_main:
            save_resolved(cfg, self.out)

    # The plan's answers, under the names the summary and callers use.
    device = property(lambda self: self.plan.device)
    precision = property(lambda self: self.plan.precision)
    master_weights = property(lambda self: self.plan.master_weights)
    compiled = property(lambda self: self.plan.compile)

    def train_step(self, micro_batches: list[torch.Tensor] | torch.Tensor):
        """One optimizer step over ``micro_batches`` (gradient accumulation), exact under DDP.

        The loss is the sum over the global batch divided by its all-reduced size, so ranks with short or empty
        last batches, and accumulation, give the single-process gradient. Returns this rank's (nll, kl, per-dim
        KL, extra loss terms) sums (the last None without terms) and ``applied``, a device flag that is False
        when a non-finite loss or gradient skipped the update. Nothing here reads a device value on the host
        (tests/test_sync_free.py counts it). It does not advance ``step``: ``run`` does. Under whole-step the
        result's tensors belong to the captured graph: read them before the next step.
        """
        if isinstance(micro_batches, torch.Tensor):
            micro_batches = [micro_batches]
        self._update_term_weights()
        result = self.whole_step(micro_batches) if self.whole_step is not None else self._step(micro_batches)
        self.guard.publish(lambda: self.diagnose(torch.cat(micro_batches)))
        return result

    def _step(self, micro_batches: list[torch.Tensor]) -> StepResult:
        """The step itself, all on the device: what whole-step compiles and captures. Everything it changes
        outside its outputs (weights, moments, the schedules' and guard's counters) is changed in place."""
        # Device tensors, not floats: torch.compile would specialize on (and recompile for) each new Python float,
        # a per-step host-to-device copy would wait for the stream, and a captured step would freeze the value.
        kl_w = self.kl_schedule.value()
        term_w = self._term_w
        scale = self._loss_scale(sum(len(x) for x in micro_batches))
        self.optimizer.zero_grad(set_to_none=True)
        finite = sums = None
        for i, x in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # DDP all-reduces gradients only on the last micro-batch of the step.
            sync = nullcontext() if last or not self.dist.enabled else self.objective.no_sync()
            with sync:
                if self.plan.cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                noise_seed = self.noise_seeds.next() if self.noise_seeds is not None else None
                with self.plan.autocast():
                    loss, *part = self.loss_fn(x, kl_w, scale, term_w, noise_seed)
                with stage("backward"):
                    self.scaler.scale(loss).backward()
            finite = torch.isfinite(loss) if finite is None else finite & torch.isfinite(loss)
            if self.plan.cuda_graphs:  # replays reuse their output buffers: copy out what outlives the step
                part = [t if t is None else t.clone() for t in part]
            sums = part if sums is None else [a if a is None else a + b for a, b in zip(sums, part)]
        self.scaler.unscale_(self.optimizer)
        # skip: a float device flag, 1.0 when the update must not be applied (GradScaler's found_inf convention).
        skip = (~finite).float()
        if self.cfg.clip_grad is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad, foreach=True)
            grads_bad = (~torch.isfinite(grad_norm)).float()
        else:
            grads_bad = self._grads_nonfinite()
        if not self.scaler.is_enabled():  # with fp16 the scaler itself skips steps whose gradients overflowed
            if isinstance(grads_bad, bool):  # the native check answered on the host (CPU memory, no sync)
                skip = torch.ones_like(skip) if grads_bad else skip
            else:
                skip = torch.maximum(skip, grads_bad.view(skip.shape))
        if self.dist.enabled:
            # All ranks take the same decision, so they never diverge: any rank's NaN skips the step everywhere.
            skip = self.dist.all_reduce_(skip.view(1), op=torch.distributed.ReduceOp.MAX)
        skip = skip.view(())
        with stage("optimizer"):
            self._optimizer_step(skip)
        self.guard.count(skip)
        self.kl_schedule.advance()
        return StepResult(*sums, applied=skip == 0)

    def _optimizer_step(self, skip: torch.Tensor) -> None:
        """Apply the update unless ``skip`` is set, decided on the device: torch's fused Adam and MasterWeightAdam
        take the flag as GradScaler's ``found_inf`` and leave parameters, moments and step counts untouched when it
        is set, and the EMA's lerp is weighted by it. The LR schedule follows the step count, skipped steps too."""
        self._update_weights(skip)
        self.lr_schedule.advance()
        if self.ema is not None:
            self.ema.update(skip)

    # Never traced: under torch.compile (2.13) Adam.step passed found_inf=None to the fused kernel, so a NaN step
    # updated the weights (tests/test_whole_step.py). Eager, it is the one fused kernel anyway, and a CUDA graph
    # capture records it all the same.
    @torch.compiler.disable
    def _update_weights(self, skip: torch.Tensor) -> None:
        if skips_on_device(self.optimizer):
            if not self.scaler.is_enabled():  # with fp16 the scaler passes its own overflow flag
                self.optimizer.found_inf = skip
            self.scaler.step(self.optimizer)
        elif not bool(skip):  # an optimizer without found_inf support: the decision is read on the host
            self.scaler.step(self.optimizer)
        self.scaler.update()

    def run(self, steps: int | None = None, on_step: Callable[[int], None] | None = None) -> int:
        """Take optimizer steps from the current data position and return how many ran.

        ``steps=None`` runs to the end of the current epoch; a number runs that many, moving on to the next epoch
        when one ends (with no evaluation in between). Either stops early at ``cfg.max_steps``. After each step the
        components act (metrics, logs, checkpoints), then ``on_step(step)`` is called, e.g. ``profiler.step``.
        """
        done = 0
        self.metrics.restart_clock()
        while not self.stopped and (steps is None or done < steps):
            self.loader.set_epoch(self.epoch)
            for group in self._step_groups():
                self._advance(group)
                done += 1
                if on_step is not None:
                    on_step(self.step)
                if self.stopped or done == steps:
                    return done
            if steps is None:
                break
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return done

    def fit(self) -> dict:
        """Train to ``cfg.epochs`` (or ``cfg.max_steps``) and return the summary that ``--json`` prints. SIGTERM or
        SIGINT stops it at the next step boundary with a checkpoint (vaefast.train.preemption)."""
        test = None
        with StopRequest() as self.stop_request:
            while self.epoch < self.cfg.epochs and not self.stopped:
                started = time.perf_counter()
                self.run()
                if self.batch_in_epoch < len(self.loader):  # stopped mid-epoch: keep the exact data position
                    self.last_checkpoint = self.save()
                    break
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                test = self._end_epoch(time.perf_counter() - started)
        self.monitor.close()
        return self.summary(test or self.evaluate())

    def _advance(self, group: list[torch.Tensor]) -> None:
        result = self.train_step(group)
        self.step += 1
        self.batch_in_epoch += len(group)
        images = sum(len(x) for x in group)
        self.metrics.record(images, result)
        if self.metrics.is_log_step(self.step) or self.checkpointer.is_due(self.step):
            self.guard.check()  # before logging or saving: a run past its NaN limit stops here, its checkpoint intact
        self.metrics.maybe_log(self.step, self._log_context)
        self.metrics.lap(self.step, images)
        if self.checkpointer.is_due(self.step):
            self.last_checkpoint = self.save() or self.last_checkpoint
        self.metrics.restart_clock()  # checkpoint writes are not training time
        self.stopped = bool(self.cfg.max_steps) and self.step >= self.cfg.max_steps
        if self._stop_requested():
            self.stopped = self.preempted = True

    def _stop_requested(self) -> bool:
        """A signal asked to stop: at once in one process; under DDP at a log step, where the ranks agree."""
        local = self.stop_request is not None and self.stop_request.requested
        if not self.dist.enabled:
            return local
        if not self.metrics.is_log_step(self.step):
            return False
        flag = torch.tensor([float(local)], device=self.device)
        return bool(self.dist.all_reduce_(flag, op=torch.distributed.ReduceOp.MAX))

    def _log_context(self) -> tuple[dict, str]:
        extra = {"train/lr": float(self.lr_schedule.values[0]), "train/skipped_steps": self.guard.skipped}
        return extra, f"epoch {self.epoch + 1}/{self.cfg.epochs} step {self.step}/{self.total_steps}"

    def _step_groups(self):
        """The epoch's remaining micro-batches, grad_accum at a time (the last group may be smaller)."""
        group = []
        batches = iter(self.loader.batches(self.batch_in_epoch))
        while True:
            with stage("data"):
                x = next(batches, None)
            if x is None:
                break
            group.append(x)
            if len(group) == self.cfg.grad_accum:
                yield group
                group = []
        if group:
            yield group

    def _end_epoch(self, seconds: float) -> dict:
        self.guard.check()
        test = self.evaluate()
        collapse = self.metrics.end_epoch(self.step, self.model.latent_shape)
        self.monitor.log(self.step, {"epoch": self.epoch, "epoch_seconds": seconds,
                                     **{f"test/{k}": v for k, v in test.items() if k != "kl_per_dim"},
                                     **{f"train/{k}": v for k, v in collapse.items()}})
        self.monitor.progress_line(
            f"epoch {self.epoch}/{self.cfg.epochs}: test -ELBO {test['neg_elbo_nats']:.2f} nats "
            f"({test['bpd']:.4f} bpd), {collapse.get('active_units', 0)}/{collapse.get('latent_dim', 0)} "
            f"active units, {self.metrics.images_per_s:,.0f} img/s", final=True)
        self._log_images()
        self.last_checkpoint = self.save()
        return test

    def summary(self, test: dict) -> dict:
        """The run's outcome; a collective under DDP (global throughput: all ranks' images over the slowest)."""
        return {
            "images_per_s": self.metrics.global_throughput(),
            "test_neg_elbo_nats": test["neg_elbo_nats"],
            "test_bpd": test["bpd"],
            "test_recon_nats": test["recon_nats"],
            "test_kl_nats": test["kl_nats"],
            "active_units": test["active_units"],
            "checkpoint": str(self.last_checkpoint or self.checkpointer.latest() or ""),
            "epochs": self.epoch,
            "steps": self.step,
            "skipped_steps": self.guard.skipped,
            "preempted": self.preempted,
            "compiled": self.compiled,
            "precision": self.precision,
            "master_weights": self.master_weights,
            "device": str(self.device),
            "loader": self.loader_kind,
            "world_size": self.dist.world_size,
            "peak_memory_mb": peak_memory_mb(self.device),
        }

    def _loss_scale(self, local_count: int) -> torch.Tensor:
        """world_size / global batch size, as a tensor (a Python float would make torch.compile specialize).

        One process needs no collective, and the tensor is reused while the batch size stays the same."""
        if self.dist.enabled:
            # From pinned memory without blocking: a plain host-to-device copy would wait for the CUDA stream.
            local = torch.tensor([float(local_count)], pin_memory=self.device.type == "cuda")
            count = self.dist.all_reduce_(local.to(self.device, non_blocking=True))
            return self.dist.world_size / count.clamp_min(1.0)
        if local_count not in self._scales:
            self._scales[local_count] = torch.tensor(1.0 / max(local_count, 1), device=self.device)
        return self._scales[local_count]

    @property
    def _loss_terms(self) -> list[LossTerm]:
        objective = self.objective.module if self.dist.enabled else self.objective
        return list(objective.loss_terms)

    def _update_term_weights(self) -> torch.Tensor | None:
        """The extra terms' weights at this step, in one device tensor written in place (a captured step reads
        that tensor) and only when a weight changes."""
        weights = tuple(term.weight_at(self.step) for term in self._loss_terms)
        if weights and weights != self._term_w_value:
            if self._term_w is None:
                self._term_w = torch.tensor(weights, device=self.device)
            else:
                self._term_w.copy_(torch.tensor(weights), non_blocking=True)
            self._term_w_value = weights
        return self._term_w

    def _grads_nonfinite(self) -> torch.Tensor | bool:
        """1.0 where a gradient is non-finite: one multi-tensor pass (GradScaler's own kernel, with a scale of 1)
        instead of a norm per parameter, or with master weights the optimizer's read-only native check of the bf16
        gradients, answered on the host. The private torch kernel is pinned by the gradient-only NaN test in
        tests/test_trainer.py."""
        if self.master_weights:
            return not self.optimizer.grads_finite()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        found_inf = torch.zeros(1, device=self.device)
        if self._unit_scale is None:
            self._unit_scale = torch.ones(1, device=self.device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, self._unit_scale)
        return found_inf

    def diagnose(self, x: torch.Tensor) -> str:
        with torch.no_grad(), self.plan.autocast():
            nll, out = NegativeELBO(self.model).terms(x)
        return non_finite_report({"input": x, "mu": out.mu, "logvar": out.logvar, "z": out.z,
                                  "decoder output": out.decoded, "reconstruction loss": nll, "kl": out.kl}, self.model)

    def close(self) -> None:
        """Release the DDP wrapper before the process group is destroyed.

        Seen with gloo: a Reducer freed at interpreter exit destroys its process group while a gloo worker thread
        waits for the GIL, and the process hangs. Dropping it here, while the group is alive, and meeting at a
        barrier avoids that.
        """
        self.objective = self.loss_fn = None
        gc.collect()
        if self.dist.enabled:
            torch.distributed.barrier()

    def evaluate(self) -> dict:
        return evaluate_elbo(self.model, self.data.test, batch_size=max(self.cfg.batch_size, 500),
                             device=self.device, autocast=self.plan.autocast())

    @torch.no_grad()
    def _log_images(self) -> None:
        if self.monitor.writer is None:
            return
        self.model.eval()
        x = to_unit_float(self.data.test[:8], self.device)
        z = torch.randn((8, *self.model.latent_shape), device=self.device)
        # Under the training precision, as the steps run (with master weights the model itself is bf16).
        with self.plan.autocast():
            recon = self.model.likelihood.mean(self.model(x).decoded).float()
            samples = self.model.likelihood.mean(self.model.decode(z)).float()
        self.model.train()
        self.monitor.images("reconstructions", torch.cat([x, recon]), self.step)
        self.monitor.images("samples", samples, self.step)

    def state_dict(self) -> dict:
        return {
            # With master weights: the float32 masters, loadable by any float32 copy of the model.
            "model": self.optimizer.master_state_dict(self.model) if self.master_weights else self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": self.lr_schedule.state_dict(),
            "rng": rng_state(),
            **({"noise": self.noise_seeds.state_dict()} if self.noise_seeds is not None else {}),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "world_size": self.dist.world_size,
            "skipped_steps": self.guard.skipped,
            "config": self.cfg.to_dict(),
            "image_shape": list(self.data.image_shape),
            "architecture": self.model.architecture,
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def save(self) -> Path | None:
        """Write a checkpoint, unless the last step was skipped as non-finite: then the state may hold what made it
        so (a poisoned weight), and the previous checkpoint stays the newest. Past the NaN limit this raises."""
        self.guard.check()
        if self.guard.consecutive:
            warnings.warn(f"no checkpoint at step {self.step}: the last {self.guard.consecutive} step(s) were "
                          "non-finite, so the previous checkpoint stays the newest", RuntimeWarning, stacklevel=2)
            return None
        return self.checkpointer.save(self.state_dict(), self.step)

    def _make_ema(self, resumed: dict | None) -> WeightEMA | None:
        """Built after a resume: loading the optimizer state replaces the master tensors the EMA reads."""
        if not self.cfg.ema:
            return None
        masters = {id(p): self.optimizer.state[p]["master"] for p in self.model.parameters()} \
            if self.master_weights else None
        ema = WeightEMA.for_model(self.model, self.cfg.ema, masters)
        if resumed is not None and "ema" in resumed:
            ema.load_state_dict(resumed["ema"])
        return ema

    def load(self, path) -> dict:
        state = load_checkpoint(path, map_location=self.device, trust=self.cfg.trust_checkpoint,
                                fallback=self.cfg.resume_fallback)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {path} does not fit this model (was it trained with other model flags? "
                             f"its model config: {state['config'].get('model')}): {exc}") from None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            flag = "--no-master-weights" if self.master_weights else "the settings it was trained with"
            raise ValueError(f"cannot resume {path}: {exc}; resume it with {flag}") from None
        for group in self.optimizer.param_groups:  # a state saved by another optimizer brings its own flags
            group.update({k: v for k, v in self.optimizer.defaults.items() if k in ("fused", "foreach", "capturable")})
        self.lr_schedule.attach(self.optimizer)  # the loaded groups brought the saved lr values
        self.scaler.load_state_dict(state["scaler"])
        self.lr_schedule.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        if self.noise_seeds is not None and "noise" in state:
            self.noise_seeds.load_state_dict(state["noise"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.kl_schedule.set_step(self.step)
        self.guard.skipped = state.get("skipped_steps", 0)
        old_world = state.get("world_size", 1)
        if self.dist.enabled or old_world > 1:
            # One saved RNG stream cannot serve several ranks: re-seed per rank and step, so that each rank's noise
            # stays distinct (the data order and the parameters still resume exactly).
            torch.manual_seed(self.cfg.seed + self.dist.rank + 1_000_003 * self.step)
        self.batch_in_epoch = reshard_position(state["batch_in_epoch"], self.cfg.batch_size, old_world,
                                               self.dist.world_size)
        return state
