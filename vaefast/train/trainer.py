"""The training loop: wiring plus a step, small enough to read in one sitting.

``Trainer(cfg)`` gets its parts from ``vaefast.train.build`` (data, model, objective, run folder, resume) and wires
the components that decide for themselves when to act (checkpointer, metrics, monitor, snapshots, NaN guard).
``run(steps)`` takes optimizer steps from the current data position; ``fit()`` runs the epochs, evaluating and
checkpointing at each end. No step reads a device value on the host: the NaN guard skips on the device, and metrics,
counters and snapshots are read on their own steps.
"""

from __future__ import annotations

import gc
import math
import time
from contextlib import nullcontext
from functools import partial
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import clip_grad_norm_

from ..config import TrainConfig
from ..data import ImageDataset
from ..data.sampling import micro_batch_groups
from ..eval import evaluate_elbo
from ..instrument import stage
from ..models.ema import WeightEMA
from ..models.loss_terms import LossTerm
from ..models.objective import ObjectiveOutput
from ..plan import RunPlan, plan_run
from . import build
from .capture import WholeStep
from .distributed import DistContext
from .guard import NaNGuard, SkipDecision, diagnose_non_finite, nonfinite_flag
from .metrics import StepResult, TrainMetrics
from .noise import NoiseSeeds
from .optim import apply_update, make_optimizer, native_master_step_available
from .preemption import StopRequest
from .recipe import LDMRecipe
from .schedules import KLWeight, LearningRate
from .snapshots import Snapshots
from .step_inputs import StepInputs
from .state import ModelWeights, OptimizerState, RNGStreams, TrainerPosition, seed_everything
from .summary import RunSummary


class Trainer:
    """Train a VAE from a ``TrainConfig`` (``cfg.recipe``: the ELBO or the LDM recipe, vaefast.train.recipe).
    ``dataset`` overrides ``cfg.data``; ``model`` overrides ``cfg.model``'s architecture with any module that has
    ``encode(x)`` and ``decode(z)`` (vaefast.models.protocol), keeping its likelihood, clamp and backend;
    ``loss_terms`` adds frozen terms to the ELBO (vaefast.models.loss_terms); ``dist`` joins a DDP job; ``resumed``
    is the already-read checkpoint of ``cfg.checkpoint.resume``."""

    def __init__(self, cfg: TrainConfig, dataset: ImageDataset | None = None, *, model: nn.Module | None = None,
                 loss_terms: list[LossTerm] | None = None, dist: DistContext | None = None,
                 resumed: dict | None = None):
        cfg.validate()
        self.cfg, self.dist = cfg, dist or DistContext()
        device = self.dist.device(cfg.runtime.device)
        state = build.read_resume(cfg, device, resumed)
        seed_everything(cfg.runtime.seed + self.dist.rank)  # distinct noise per rank; DDP broadcasts rank 0's weights
        self.data, self.loader, self.loader_kind, why = build.load_data(cfg, dataset, self.dist, device)
        self.steps_per_epoch = math.ceil(len(self.loader) / cfg.optim.grad_accum)
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        r = cfg.runtime
        self.plan: RunPlan = plan_run(
            device=device, precision=r.precision, compile=r.compile, compile_mode=r.compile_mode,
            master_weights=r.master_weights, distributed=self.dist.enabled, total_steps=self.total_steps,
            native_master_step=native_master_step_available(), recipe=cfg.recipe.ldm)
        build.announce(f"{self.data.describe()}; loader {self.loader_kind} ({why}); {self.dist.describe()}; "
                       f"plan: {self.plan.describe()}", self.dist, cfg)
        self.model = build.make_model(cfg, self.data.image_shape, model, device)
        self.recipe = LDMRecipe(cfg, self.model, self.data.image_shape, self.dist, device, self.total_steps) \
            if cfg.recipe.ldm else None
        # Built before the DDP wrap: with master weights it takes the float32 weights and converts the model to bf16.
        self.optimizer = make_optimizer(cfg.optim.optimizer, self.model, lr=cfg.optim.lr, betas=cfg.optim.betas,
                                        weight_decay=cfg.optim.weight_decay, device=device,
                                        master_weights=self.plan.master_weights,
                                        extra_params=self.recipe.trained_parameters() if self.recipe else ())
        torch.manual_seed(r.seed + self.dist.rank)
        self.objective = build.make_objective(cfg, self.model, loss_terms, self.dist, device, self.recipe)
        self._wire(device, None if state is None else state["step"])
        if state is not None:
            build.restore(self.checkpointer, cfg, state)

    def _wire(self, device: torch.device, resumed_step: int | None) -> None:
        """The step's components, and the stateful ones registered with the checkpointer in restore order."""
        cfg = self.cfg
        self.lr_schedule = LearningRate.for_run(self.optimizer, cfg.optim, self.total_steps, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.plan.precision == "fp16")
        self.checkpointer, self.monitor = build.open_run_folder(cfg, self.dist, resumed_step)
        objective = self.objective.module if self.dist.enabled else self.objective
        self.step_inputs = StepInputs(objective.loss_terms, self.dist, device)
        self.metrics = TrainMetrics(self.monitor, self.dist, device, cfg.logging.log_every,
                                    term_names=objective.metric_names)
        self.guard = NaNGuard(cfg.optim.max_bad_steps, device, companions=[self.recipe.guard] if self.recipe else [])
        self.skip_decision = SkipDecision(objective, self.optimizer, device,
                                          scaler_enabled=self.scaler.is_enabled(), dist=self.dist)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.stopped = self.preempted = False  # stopped: max_steps reached or a signal; preempted: by a signal
        self.stop_request: StopRequest | None = None  # while fit() runs
        self.last_checkpoint = None
        seeded = cfg.objective.noise == "seeded"
        self.noise_seeds = NoiseSeeds(cfg.runtime.seed, self.dist.rank, device) if seeded else None
        self.kl_schedule = KLWeight.for_run(cfg.objective, self.total_steps, device, self.model.encoder_frozen)
        masters = self.optimizer.masters() if self.master_weights else None
        self.snapshots = Snapshots(self.monitor, self.data.test, cfg.logging.image_every, self.plan, self.recipe)
        self.ema = WeightEMA.for_model(self.model, cfg.optim.ema, masters) if cfg.optim.ema else None
        # Compile after the DDP wrap, as PyTorch recommends: DDP's graph-break points then match its buckets.
        compile_loss = self.plan.compile and not self.plan.whole_step
        self.loss_fn = torch.compile(self.objective, mode=self.plan.compile_mode) if compile_loss else self.objective
        self._update_weights = partial(apply_update, self.optimizer, self.scaler)
        if self.plan.compile or self.plan.whole_step:
            # Never traced: under torch.compile (2.13) Adam.step passed found_inf=None to the fused kernel, so a NaN
            # step updated the weights (tests/test_whole_step.py). It is one fused kernel anyway, and a CUDA graph
            # capture records it all the same. (Wrapped only here: disable() imports torch._dynamo.)
            self._update_weights = torch.compiler.disable(self._update_weights)
        self.whole_step = WholeStep.for_device(self._step, device) if self.plan.whole_step else None
        parts = {"model": ModelWeights(self.model, self.optimizer, self.master_weights),
                 "optimizer": OptimizerState(self.optimizer, self.master_weights), "scaler": self.scaler,
                 "scheduler": self.lr_schedule, "rng": RNGStreams(), "noise": self.noise_seeds,
                 None: TrainerPosition(self), "ema": self.ema, "recipe": self.recipe}
        for name, part in ((name, part) for name, part in parts.items() if part is not None):
            self.checkpointer.register(name, part)

    # The plan's answers, under the names the summary and callers use.
    device = property(lambda self: self.plan.device)
    precision = property(lambda self: self.plan.precision)
    master_weights = property(lambda self: self.plan.master_weights)
    compiled = property(lambda self: self.plan.compile)

    def train_step(self, micro_batches: list[torch.Tensor] | torch.Tensor) -> StepResult:
        """One optimizer step over ``micro_batches`` (gradient accumulation), exact under DDP.

        The loss is the sum over the global batch divided by its all-reduced size, so ranks with short or empty
        last batches, and accumulation, give the single-process gradient. Nothing here reads a device value on the
        host (tests/test_sync_free.py counts it). It does not advance ``step``: ``run`` does. The result's tensors
        are the caller's to keep (under whole-step, copies of the captured graph's outputs).
        """
        if isinstance(micro_batches, torch.Tensor):
            micro_batches = [micro_batches]
        self.step_inputs.update_term_weights(self.step)
        result = self.whole_step(micro_batches) if self.whole_step is not None else self._step(micro_batches)
        self.guard.publish(lambda: self.diagnose(torch.cat(micro_batches)))
        return result

    def _step(self, micro_batches: list[torch.Tensor]) -> StepResult:
        """The step itself, all on the device: what whole-step compiles and captures. Everything it changes
        outside its outputs (weights, moments, the schedules' and guard's counters) is changed in place."""
        kl_w, term_w = self.kl_schedule.value(), self.step_inputs.term_weights  # device tensors (step_inputs.py)
        scale = self.step_inputs.loss_scale(sum(len(x) for x in micro_batches))
        self.optimizer.zero_grad(set_to_none=True)
        if self.recipe is not None:
            self.recipe.zero_grad()
        bad = sums = None
        for i, x in enumerate(micro_batches):
            out = self._micro_step(x, kl_w, scale, term_w, sync=i == len(micro_batches) - 1)
            bad = nonfinite_flag(out.loss) if bad is None else torch.maximum(bad, nonfinite_flag(out.loss))
            part = [out.nll, out.kl, out.kl_per_dim, out.term_sums]
            if self.plan.cuda_graphs:  # replays reuse their output buffers: copy out what outlives the step
                part = [t if t is None else t.clone() for t in part]
            sums = part if sums is None else [a if a is None else a + b for a, b in zip(sums, part)]
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.clip_grad
        grad_norm = clip_grad_norm_(self.skip_decision.model.parameters(), clip, foreach=True) if clip else None
        skip = self.skip_decision(bad, grad_norm)
        with stage("optimizer"):
            self._update_weights(skip)
            self.lr_schedule.advance()  # the schedules follow the step count, skipped steps too
            if self.ema is not None:
                self.ema.update(skip)
            if self.recipe is not None:
                self.recipe.update(self.step)
        self.guard.count(skip)
        self.kl_schedule.advance()
        return StepResult(*sums, applied=skip.logical_not())  # a 0.0 flag: applied

    def _micro_step(self, x: torch.Tensor, kl_w, scale, term_w, sync: bool) -> ObjectiveOutput:
        """One micro-batch's forward and backward; DDP all-reduces gradients on ``sync`` only (the step's last)."""
        with nullcontext() if sync or not self.dist.enabled else build.no_sync(self.objective, self.recipe):
            if self.plan.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            noise_seed = self.noise_seeds.next() if self.noise_seeds is not None else None
            with self.plan.autocast():
                out = self.loss_fn(x, kl_w, scale, term_w, noise_seed)
                if self.recipe is not None:  # its backward runs LPIPS and D under the run's autocast
                    return self.recipe.backward(out, kl_w, scale, self.step)
            with stage("backward"):
                self.scaler.scale(out.loss).backward()
        return out

    def run(self, steps: int | None = None, on_step: Callable[[int], None] | None = None) -> int:
        """Take optimizer steps from the current data position and return how many ran.

        ``steps=None`` runs to the end of the current epoch; a number runs that many, moving on to the next epoch
        when one ends (with no evaluation in between). Either stops early at ``max_steps``. After each step the
        components act (metrics, logs, checkpoints), then ``on_step(step)`` is called, e.g. ``profiler.step``.
        """
        done = 0
        self.metrics.restart_clock()
        while not self.stopped and (steps is None or done < steps):
            self.loader.set_epoch(self.epoch)
            for group in micro_batch_groups(self.loader.batches(self.batch_in_epoch), self.cfg.optim.grad_accum):
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

    def fit(self) -> RunSummary:
        """Train to ``epochs`` (or ``max_steps``) and return the run's summary. SIGTERM or SIGINT stops it at the
        next step boundary with a checkpoint (vaefast.train.preemption)."""
        test = None
        with StopRequest() as self.stop_request:
            while self.epoch < self.cfg.optim.epochs and not self.stopped:
                started = time.perf_counter()
                self.run()
                if self.batch_in_epoch < len(self.loader):  # stopped mid-epoch: keep the exact data position
                    self.last_checkpoint = self.save()
                    break
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                test = self._end_epoch(time.perf_counter() - started)
        self.checkpointer.wait()  # the last write is complete (or its error raised) before the summary names it
        self.monitor.close()
        return self.summary(test or self.evaluate())

    def _advance(self, group: list[torch.Tensor]) -> None:
        result = self.train_step(group)
        self.step += 1
        self.batch_in_epoch += len(group)
        images = sum(len(x) for x in group)
        self.metrics.record(images, result, self.model.latent_shape)
        self.monitor.advance(self.step, self.total_steps)
        due = self.checkpointer.is_due(self.step)
        if self.metrics.is_log_step(self.step) or due:
            self.guard.check()  # before logging or saving: a run past its NaN limit stops here, its checkpoint intact
        self.metrics.maybe_log(self.step, self._log_context)
        self.metrics.lap(self.step, images)
        self.snapshots.after_step(self.step, self.model)
        if due:
            self.last_checkpoint = self.save() or self.last_checkpoint
        self.metrics.restart_clock()  # checkpoint writes are not training time
        self.stopped = bool(self.cfg.optim.max_steps) and self.step >= self.cfg.optim.max_steps
        if self.stop_request is not None and self.stop_request.agreed(self.dist, self.metrics.is_log_step(self.step),
                                                                      self.device):
            self.stopped = self.preempted = True

    def _log_context(self) -> tuple[dict, str]:
        extra = {"train/lr": float(self.lr_schedule.values[0]), "train/skipped_steps": self.guard.skipped,
                 **({"train/skipped_disc_steps": self.recipe.guard.skipped} if self.recipe else {})}
        return extra, f"epoch {self.epoch + 1}/{self.cfg.optim.epochs} step {self.step}/{self.total_steps}"

    def _end_epoch(self, seconds: float) -> dict:
        self.guard.check()
        test = self.evaluate()
        collapse = self.metrics.end_epoch(self.step, self.model.latent_shape)
        self.monitor.epoch_result(self.step, self.epoch, self.cfg.optim.epochs, seconds, test, collapse,
                                  self.metrics.images_per_s)
        self.snapshots.at_evaluation(self.step, self.model)
        self.last_checkpoint = self.save()
        return test

    def summary(self, test: dict) -> RunSummary:
        """The run's outcome; a collective under DDP (global throughput: all ranks' images over the slowest)."""
        return RunSummary.of(self, test)

    def diagnose(self, x: torch.Tensor) -> str:
        return diagnose_non_finite(self.model, self.plan, x)

    def close(self) -> None:
        """Release the DDP wrappers while the process group lives (a Reducer freed at exit can hang gloo)."""
        self.objective = self.loss_fn = self.recipe = None
        gc.collect()
        if self.dist.enabled:
            torch.distributed.barrier()

    def evaluate(self) -> dict:
        """The test ELBO; with the LDM recipe also PSNR, SSIM, (RGB data) LPIPS and rFID of reconstructions."""
        test = evaluate_elbo(self.model, self.data.test, batch_size=max(self.cfg.data.batch_size, 500),
                             device=self.device, autocast=self.plan.autocast())
        if self.recipe is not None:
            test.update(self.recipe.quality(self.model, self.data.test, self.device, self.plan.autocast()))
        return test

    def save(self):
        """Start writing a checkpoint (in the background: ``checkpointer.wait()`` waits for it), unless the last step
        was skipped as non-finite: then the state may hold what made it so (a poisoned weight), and the previous
        checkpoint stays the newest. Past the NaN limit this raises."""
        self.guard.check()
        if self.guard.consecutive:
            self.monitor.note(f"no checkpoint at step {self.step}: the last {self.guard.consecutive} step(s) were "
                              "non-finite, so the previous checkpoint stays the newest")
            return None
        return self.checkpointer.save(self.checkpointer.state(), self.step)
