"""The fine-tuning recipe: setup -> train (epochs, each saved by the CheckpointSaver) -> cleanup, readable top to bottom.

Reproducibility: the randomness of epoch e (data order, augmentation) is seeded from (seed, e)
and that of each step (dropout) from (seed, e, step). A run resumed from any checkpoint, at the
end of an epoch or mid-epoch after Ctrl-C, therefore continues exactly as an uninterrupted run.

Under torchrun (``medft.train.distributed``) every process runs this recipe on its share of each
batch, DistributedDataParallel averages the gradients, and rank 0 alone writes the run folder.
The data order of an epoch is the single-process one; augmentation and dropout are seeded from
(seed, e, rank) and (seed, e, step, rank). The validation Dice is summed over the processes'
shares of the validation cases, so every process takes the same early-stopping decision.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss, DiceLoss
from monai.optimizers import WarmupCosineSchedule
from tqdm.auto import tqdm

from medft import __version__
from medft.config import (
    SGD_MOMENTUM,
    RunConfig,
    TrainConfig,
    describe_differences,
    dump_config,
    latest_linear_probe_switch,
    linear_probe_stages,
    read_yaml,
)
from medft.data.manifest import load_manifest
from medft.data.preprocessing import Preprocessing
from medft.errors import MedftError
from medft.formats import run as run_folder
from medft.formats.checkpoint import Checkpoint
from medft.formats.run import EpochRecord, TrainingSummary
from medft.metrics import argmax_classes, confusion_counts, dice, foreground_mean
from medft.sliding_window import sw_batch_size
from medft.train import distributed
from medft.train.checkpoint import CheckpointSaver, restore_rng_states, rng_states
from medft.train.data import build_loaders, run_class_names
from medft.train.early_stopping import EarlyStopping
from medft.train.freezing import FreezeSchedule, TrainableCount, apply_freezing, parameter_groups, set_train_mode
from medft.train.lora import adapter_state_dict, add_lora, has_adapters, merged_state_dict, restore_adapted
from medft.train.metric_logger import MetricLogger
from medft.train.network import PreparedNetwork, prepare_network, to_channels_last
from medft.train.preprocessing import resolve_spacing, run_preprocessing

log = logging.getLogger("medft.train")


class TrainingInterrupted(Exception):
    """Ctrl-C: the state was saved to last.pt and the run can be resumed."""


class FineTuneRecipe:
    def __init__(self, config: RunConfig, run_dir: Path, resume: bool = False,
                 on_validation: Callable[[int, float], None] | None = None):
        """``on_validation(epoch, val_dice)`` runs after each validation, once the epoch is saved
        (hyperparameter search reports there; an exception it raises ends the run). Under
        torchrun it runs in every process with the same values: one that raises must raise in all
        of them (as it will when it decides from its arguments), or the launch ends in an error."""
        self.config, self.run_dir, self.resume = config, Path(run_dir), resume
        self.on_validation = on_validation
        self.start_epoch = self.start_step = 0
        self._epoch_loss = self._resumed_loss = (0.0, 0)  # (sum, steps) of the epoch's training loss
        self._stop_requested = False
        self.main = distributed.is_main()
        self.saver = CheckpointSaver(self.run_dir, self.main)
        self.logger = MetricLogger(self.run_dir, self.main)
        # Seeds of augmentation and dropout get the rank in a distributed run (processes draw differently).
        self._rank_salt: tuple[int, ...] = (distributed.rank(),) if distributed.is_distributed() else ()
        self._wrapped = None  # the DistributedDataParallel wrapper and the frozen set it was built for
        self._wrapped_frozen: set[str] | None = None
        self.generator = torch.Generator()  # the loaders' shuffling and augmentation, reseeded every epoch
        # Made by setup(), in this order:
        self.device: torch.device | None = None
        self.preprocessing: Preprocessing | None = None
        self.amp = False
        self.class_names: list[str] = []
        self.prepared: PreparedNetwork | None = None
        self.network: torch.nn.Module | None = None
        self.head: set[str] = set()
        self.train_loader = self.val_loader = self.train_transform = None
        self._unused: set[str] = set()  # parameters without a gradient, for DDP
        self.schedule: FreezeSchedule | None = None
        self.steps_per_epoch = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: WarmupCosineSchedule | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.loss_fn = None
        self.inferer: SlidingWindowInferer | None = None
        self.early: EarlyStopping | None = None
        self.trainable: TrainableCount | None = None  # of the last epoch trained
        # finetune.linear_probe_epochs auto: the epoch from which everything trains, None while the head probes
        self.probe_switch: int | None = None
        self._probe_best = -math.inf  # early stopping's best before the last validation

    # --- setup ---------------------------------------------------------------------------------

    def setup(self) -> None:
        """Everything a run needs, in the order that finds problems before any long work."""
        config = self.config
        resolve_spacing(config)  # before the run folder: config.yaml holds the spacing data.spacing auto resolves to
        self.device = self._setup_device()
        log.info("medft %s, resolved config:\n%s", __version__, dump_config(config))
        self.preprocessing = run_preprocessing(config)
        if self.main:
            self._record_preprocessing()
        log.info("preprocessing (%s):\n  %s", config.data.preprocessing, "\n  ".join(self.preprocessing.describe()))
        torch.manual_seed(config.seed)
        if config.train.deterministic:
            use_deterministic_algorithms()
        self.amp = self._setup_precision()
        manifest = load_manifest(config.data.manifest)
        self.class_names = run_class_names(config, manifest.class_names)
        self.prepared = self._setup_model()
        self.network, self.head = self.prepared.network, self.prepared.head
        self.train_loader, self.val_loader, self.train_transform = self._setup_data(manifest)
        self._check_forward()
        self._unused = self._unused_parameters()
        self.schedule = FreezeSchedule(config.freeze_stages, config.finetune.method)
        self.schedule.validate(self.network, self.head)  # a stage that does not fit fails now, not at epoch 20
        self.steps_per_epoch = min(len(self.train_loader), config.train.max_steps_per_epoch or math.inf)
        self.optimizer, self.scheduler = self._setup_optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and self.device.type == "cuda")
        self.loss_fn = _loss(config.train)
        self.inferer = SlidingWindowInferer(
            roi_size=config.data.spatial_size, sw_batch_size=self._windows_per_batch(),
            overlap=config.validation.overlap, mode="gaussian",
        )
        self.early = EarlyStopping(config.early_stopping.patience, config.early_stopping.min_delta)
        if self.resume:
            self._setup_resume()

    def _windows_per_batch(self) -> int:
        """The validation's sliding windows per forward pass: validation.sw_batch_size, else picked for the device
        (on a GPU, measured at setup: the gradients and optimizer state, not there yet, come out of the share of the
        free memory left to the rest)."""
        window = [self.prepared.in_channels, *self.config.data.spatial_size]
        return sw_batch_size(self.config.validation.sw_batch_size, self.network, window, self.device, self.amp)

    def _setup_device(self) -> torch.device:
        """The device, with the run folder prepared (by rank 0 once every process has joined)."""
        if not distributed.is_distributed():
            self._prepare_run_dir()
            return _device(self.config.train.device)
        # Join the other processes first, so that a problem rank 0 finds in the run folder ends them all.
        device = distributed.init(_device(self.config.train.device))
        self.logger.quiet_other_ranks()
        _on_main_then_share(self._prepare_run_dir)
        log.info("%d processes (this is rank 0), %s, global batch %d", distributed.world_size(), device,
                 self.config.train.batch_size * distributed.world_size())
        return device

    def _setup_precision(self) -> bool:
        amp = self.config.train.amp if self.config.train.amp is not None else self.device.type == "cuda"
        if amp and self.device.type == "cpu" and not cpu_has_bf16():
            log.warning("train.amp is on, but this CPU has no bfloat16 support (no AVX-512 BF16 or AMX): bfloat16 "
                        "autocast runs emulated, measured about 30 times slower than float32 on such a CPU "
                        "(benchmarks/RESULTS.md, item 7). Fix: --set train.amp=false")
        return amp

    def _setup_model(self) -> PreparedNetwork:
        prepared = prepare_network(self.config.model, len(self.class_names))
        lora = self.config.finetune.lora
        if self.config.finetune.method == "lora":
            targets = add_lora(prepared.network, prepared.head, lora)
            log.info("finetune.method lora: %s", targets.describe(prepared.network, lora.rank))
        if self.config.train.channels_last:
            to_channels_last(prepared.network, prepared.spatial_dims)
        prepared.network.to(self.device)
        if prepared.report is not None and self.main:
            (self.run_dir / run_folder.HEAD_ADAPTATION).write_text(prepared.report.table() + "\n")
            log.info("head adaptation:\n%s", prepared.report.table())
        return prepared

    def _setup_data(self, manifest) -> tuple:
        loaders = build_loaders(self.config, manifest, self.preprocessing, self.generator, self.prepared.in_channels,
                                distributed.rank(), distributed.world_size())
        log.info("%d training and %d validation cases", len(manifest.split("train")), len(manifest.split("val")))
        return loaders

    def _unused_parameters(self) -> set[str]:
        """Under torchrun, the parameters the loss gives no gradient (DDP must look for them every step)."""
        if not distributed.is_distributed():
            return set()
        example = torch.zeros(1, self.prepared.in_channels, *self.config.data.spatial_size, device=self.device)
        unused = distributed.unused_parameters(self.network, example)
        if unused:
            log.info("%d parameter tensors get no gradient from the loss (DDP looks for them every step)", len(unused))
        return unused

    def _setup_optimizer(self) -> tuple[torch.optim.Optimizer, WarmupCosineSchedule]:
        optim, epochs = self.config.optim, self.config.train.epochs
        groups = parameter_groups(self.network, self.head, optim.lr, optim.head_lr or 10 * optim.lr, optim.weight_decay)
        if optim.name == "sgd":
            momentum = SGD_MOMENTUM if optim.momentum is None else optim.momentum
            optimizer = torch.optim.SGD(groups, momentum=momentum, nesterov=True)
        else:
            optimizer = torch.optim.AdamW(groups)
        total = epochs * self.steps_per_epoch
        warmup = round(optim.warmup_epochs * self.steps_per_epoch)
        if warmup >= total > 0:
            log.warning("optim.warmup_epochs (%g) is not below train.epochs (%d): the learning rate rises for the whole run "
                        "and never reaches optim.lr. Fix: lower optim.warmup_epochs (e.g. --set optim.warmup_epochs=0)",
                        optim.warmup_epochs, epochs)
        return optimizer, WarmupCosineSchedule(optimizer, warmup_steps=warmup, t_total=total)

    def _setup_resume(self) -> None:
        state = self.saver.load_last()
        if state is None:  # stopped before its first checkpoint: nothing was saved, so start again
            self.logger.keep_epochs(0)
            log.warning("%s has no checkpoint yet: starting from epoch 0", self.run_dir)
            return
        source = f"the bundle {self.config.model.bundle}" if self.config.model.bundle else "model.network_def"
        self.saver.check_same_network(state, self.prepared.network_def, merged_state_dict(self.network), source)
        if state.adapter is not None:
            restore_adapted(self.network, state.model, state.adapter, f"{self.saver.last} ({source})")
        else:
            self.network.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.scaler.load_state_dict(state.scaler)
        self.early.load_state_dict(state.early_stopping)
        restore_rng_states(state.rng)
        self.start_epoch, self.start_step = state.epoch, state.step
        if state.linear_probe_switch is not None:
            self._switch_probe_at(state.linear_probe_switch)
        self._resumed_loss = tuple(state.epoch_loss)
        self.logger.keep_epochs(self.start_epoch)
        log.info("resumed from %s at epoch %d, step %d", self.saver.last, self.start_epoch, self.start_step)

    # --- train ---------------------------------------------------------------------------------

    def train(self) -> TrainingSummary:
        in_main_thread = threading.current_thread() is threading.main_thread()  # signals work there only
        previous = signal.signal(signal.SIGINT, self._request_stop) if in_main_thread else None
        stopping = self.config.early_stopping.enabled
        run_bar = tqdm(total=self.config.train.epochs, initial=self.start_epoch, desc="training", unit="epoch",
                       disable=None if self.main else True)  # the time left of the run; each epoch's steps below it
        try:
            for epoch in range(self.start_epoch, 0 if stopping and self.early.should_stop else self.config.train.epochs):
                record = self._run_epoch(epoch)
                self.logger.log_epoch(record)
                self._end_probe_if_due(epoch, record.val_dice)
                self._save_epoch(epoch + 1, record.best)
                run_bar.update()
                if record.validated:
                    run_bar.set_postfix(val_dice=f"{record.val_dice:.4f}")
                if self.on_validation is not None and record.validated:
                    self.on_validation(epoch, record.val_dice)
                if stopping and self.early.should_stop:
                    log.info("early stopping: no rise above %.4g in %d validations", self.early.min_delta, self.early.bad_validations)
                    break
        finally:
            run_bar.close()
            if in_main_thread:
                signal.signal(signal.SIGINT, previous)
        improved = self.early.best_epoch >= 0
        counted = self.trainable is not None
        summary = TrainingSummary(best_val_dice=self.early.best if improved else None,
                                  best_epoch=self.early.best_epoch if improved else None, run_dir=str(self.run_dir),
                                  trainable_parameters=self.trainable.parameters if counted else None,
                                  total_parameters=self.trainable.total_parameters if counted else None)
        if self.main:
            run_folder.write_summary(self.run_dir, summary)
        distributed.barrier()  # the processes end together, after rank 0's last write
        return summary

    def _run_epoch(self, epoch: int) -> EpochRecord:
        """Train one epoch at its freezing stage, and validate when it is due."""
        frozen = self._freeze_for(epoch)
        started = time.perf_counter()
        train_loss = distributed.all_reduce_mean(self._train_epoch(epoch, frozen))  # the global mean
        lr = self.scheduler.get_last_lr()
        val_dice = per_class = None
        if (epoch + 1) % self.config.train.val_every == 0 or epoch + 1 == self.config.train.epochs:
            dices = self._validate()
            val_dice = float(dices.nanmean()) if not dices.isnan().all() else math.nan
            per_class = dict(zip(self.class_names[1:], dices.tolist(), strict=True))
        self._probe_best = self.early.best  # while the head probes alone, the best of its validations (_end_probe_if_due)
        improved = val_dice is not None and self.early.update(val_dice, epoch)
        trainable = self.trainable = TrainableCount.of(self.network, frozen)
        return EpochRecord(epoch=epoch, train_loss=train_loss, lr=lr, frozen_tensors=len(frozen),
                           trainable_parameters=trainable.parameters, total_parameters=trainable.total_parameters,
                           seconds=round(time.perf_counter() - started, 3), best=improved, val_dice=val_dice,
                           val_dice_per_class=per_class)

    def _freeze_for(self, epoch: int) -> set[str]:
        """Freeze what the schedule (with finetune.method) freezes at ``epoch``, logged with what trains when the
        stage changes; the frozen names. Every process freezes the same names, so DDP wraps the same parameters."""
        frozen = self.schedule.frozen_at(self.network, self.head, epoch)
        apply_freezing(self.network, frozen)
        self._wrap(frozen)
        if self.schedule.changes_at(epoch) or epoch == self.start_epoch:
            stage, method = self.schedule.stage_at(epoch), self.schedule.method
            trainable = TrainableCount.of(self.network, frozen)
            log.info("epoch %d: freezing stage %s%s%s%s, %d of %d parameter tensors frozen; trainable: %s", epoch,
                     stage.preset or "none", f" + patterns {list(stage.patterns)}" if stage.patterns else "",
                     f" with finetune.method {method}" if method != "full" else "", self._lp_ft_phase(epoch),
                     len(frozen), trainable.total_tensors, trainable)
        return frozen

    def _lp_ft_phase(self, epoch: int) -> str:
        """What the stage at ``epoch`` is in LP-FT (finetune.linear_probe_epochs), for the log; empty without it."""
        n = self.config.finetune.linear_probe_epochs
        if n is None:
            return ""
        if n == "auto" and (self.probe_switch is None or epoch < self.probe_switch):
            return (" (LP-FT: linear probe, the head alone until its validation Dice stops rising, at the latest "
                    f"epoch {latest_linear_probe_switch(self.config.train.epochs)})")
        if n != "auto" and epoch < n:
            return f" (LP-FT: linear probe, the head alone until epoch {n})"
        return " (LP-FT: fine-tuning everything, the body at optim.lr)"

    def _end_probe_if_due(self, epoch: int, val_dice: float | None) -> None:
        """finetune.linear_probe_epochs auto, at the end of an epoch of the probe: everything trains from the next
        epoch on when this epoch's validation Dice does not rise above the probe's best before it by more than
        early_stopping.min_delta, or when the next epoch is the latest switch (train.epochs // 2).

        The probe's best is early stopping's best: while probing, every validation so far rose above the best before
        it (else the probe would have ended), so no other state is needed, and a resumed run decides the same. At the
        switch, early stopping counts its patience afresh (the probe's validations do not end the fine-tuning); best.pt
        keeps following the best validation Dice overall.
        """
        if self.config.finetune.linear_probe_epochs != "auto" or self.probe_switch is not None:
            return
        latest, probe_best = latest_linear_probe_switch(self.config.train.epochs), self._probe_best
        min_delta = self.config.early_stopping.min_delta
        if val_dice is not None and not (val_dice > probe_best + min_delta):  # a NaN does not rise either
            reason = (f"the head's validation Dice stopped rising at epoch {epoch} ({val_dice:.4f}, best {probe_best:.4f}, "
                      f"early_stopping.min_delta {min_delta:g})")
        elif epoch + 1 >= latest:
            reason = f"the probe reached its latest epoch, train.epochs // 2 = {latest}"
        else:
            return
        self._switch_probe_at(epoch + 1)
        self.early.restart_patience()
        log.info("LP-FT: %s: fine-tuning everything from epoch %d, the body at optim.lr; early stopping counts its "
                 "patience afresh from there", reason, epoch + 1)

    def _switch_probe_at(self, switch: int) -> None:
        """The freezing schedule of LP-FT auto once its switch is known: the head alone until ``switch``, then everything."""
        self.probe_switch = switch
        self.schedule = FreezeSchedule(linear_probe_stages(switch), self.config.finetune.method)

    def _train_epoch(self, epoch: int, frozen: set[str]) -> float:
        seed, salt = self.config.seed, self._rank_salt
        self.generator.manual_seed(_mix(seed, epoch))  # the data order: the same in every process
        self.train_transform.set_random_state(seed=_mix(seed, epoch, *salt) % 2**32)
        set_train_mode(self.network, frozen)
        first = self.start_step if epoch == self.start_epoch else 0
        total, count = self._resumed_loss if epoch == self.start_epoch else (0.0, 0)
        bar = tqdm(total=self.steps_per_epoch, initial=first, desc=f"epoch {epoch}/{self.config.train.epochs - 1}",
                   unit="step", leave=False, disable=None if self.main else True)
        for step, batch in enumerate(self.train_loader):
            if step >= self.steps_per_epoch:
                break
            if step < first:  # replay the data stream up to where an interrupted epoch stopped
                continue
            self._seed_step(_mix(seed, epoch, step, *salt))
            loss = self._step(batch)
            total, count = total + loss, count + 1
            self._epoch_loss = (total, count)
            bar.update()
            bar.set_postfix(loss=f"{loss:.4f}")
            if distributed.any_process(self._stop_requested):  # every process stops after the same step
                bar.close()
                self.saver.save_last(lambda: self._checkpoint(epoch, step + 1))  # noqa: B023 (called at once)
                distributed.barrier()  # no process ends (and gets the others killed) before the save
                raise TrainingInterrupted(
                    f"stopped at epoch {epoch}, step {step + 1}; state saved to {self.saver.last}. "
                    f"Continue with: medft train {self.run_dir / run_folder.CONFIG} --out {self.run_dir} --resume"
                )
        bar.close()
        return total / max(count, 1)

    def _seed_step(self, seed: int) -> None:
        """Seed the generators a step draws from (dropout). Not ``torch.manual_seed``: without CUDA it also
        queues a lazy CUDA seeding, whose cost shows in every step of a small network (benchmarks/RESULTS.md)."""
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)

    def _step(self, batch: dict) -> float:
        image, label = _plain(batch["image"]).to(self.device), _plain(batch["label"]).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.amp):
            output = self._trained(image)
        loss = _supervised_loss(self.loss_fn, output, label)  # in float32, also under mixed precision
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach())

    @torch.no_grad()
    def _validate(self) -> torch.Tensor:
        """Mean Dice per foreground class over the validation cases (NaN cases left out).

        Distributed: each process predicts its share of the cases (with the unwrapped network, no
        collective per case); the sums and counts of the per-case values are summed over the
        processes, and rank 0's result is the one every process uses.
        """
        self.network.eval()
        counts = []
        for case in self.val_loader:
            image = case["image"]
            with torch.autocast(self.device.type, enabled=self.amp):
                logits = self.inferer(_plain(image)[None].to(self.device), self.network)
            probs = torch.softmax(logits.float(), dim=1)[0].cpu()
            pred = argmax_classes(self.preprocessing.to_input_grid(probs, image))  # on the label's own grid
            counts.append(confusion_counts(pred[None], _plain(case["label"]).long(), len(self.class_names)))
        if not distributed.is_distributed():
            return foreground_mean(dice(torch.cat(counts)))
        classes = len(self.class_names)
        values = dice(torch.cat(counts))[:, 1:] if counts else torch.empty(0, classes - 1, dtype=torch.float64)
        known = ~values.isnan()
        sums = distributed.all_reduce_sum(torch.stack([values.nan_to_num().sum(0), known.sum(0).double()]))
        per_class = torch.where(sums[1] > 0, sums[0] / sums[1].clamp(min=1), torch.full_like(sums[0], math.nan))
        return distributed.broadcast_tensor(per_class)

    # --- checkpoints ---------------------------------------------------------------------------

    def _save_epoch(self, epochs_done: int, improved: bool) -> None:
        self.saver.save_epoch(lambda: self._checkpoint(epochs_done, 0), improved)

    def _checkpoint(self, epoch: int, step: int) -> Checkpoint:
        """The state after ``epoch`` full epochs and ``step`` steps of the next one."""
        return Checkpoint(
            epoch=epoch, step=step, model=merged_state_dict(self.network), class_names=self.class_names,
            network_def=self.prepared.network_def, optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), early_stopping=self.early.state_dict(),
            rng=rng_states(), preprocessing=self.preprocessing.to_dict(),
            epoch_loss=self._epoch_loss if step else (0.0, 0),  # so a mid-epoch resume logs the whole epoch's loss
            adapter=adapter_state_dict(self.network) if has_adapters(self.network) else None,
            linear_probe_switch=self.probe_switch,
        )

    # --- cleanup -------------------------------------------------------------------------------

    def cleanup(self) -> None:
        self.logger.close()
        if distributed.is_distributed():
            distributed.unwrap(self._wrapped)
            self._wrapped = None
            distributed.cleanup()

    def log_stop(self, exc: Exception) -> None:
        """The error that stops the run, into train.log (Ctrl-C logs its own line)."""
        if not isinstance(exc, TrainingInterrupted):
            self.logger.log_stop(exc)

    # --- helpers -------------------------------------------------------------------------------

    def _prepare_run_dir(self) -> None:
        saved = self.run_dir / run_folder.CONFIG
        if self.resume:
            if not saved.is_file():
                raise MedftError(f"{self.run_dir}: nothing to resume (no {run_folder.CONFIG}). Fix: train without --resume")
            if (self.run_dir / run_folder.INTERPOLATION).is_file():
                raise MedftError(f"{self.run_dir}: written by `medft interpolate`, its weights mix a run's and the bundle's, "
                                 f"with no training state to continue. Fix: resume the parent run ({run_folder.INTERPOLATION} "
                                 "names it), or train into another --out")
            differences = describe_differences(read_yaml(saved), self.config.model_dump(mode="json"))
            if differences:
                raise MedftError(
                    f"{saved}: the config differs from the one this run started with, in {differences}. Fix: resume with "
                    f"`medft train {saved} --out {self.run_dir} --resume`, or start a new run with another --out"
                )
        elif self.saver.holds_run():
            raise MedftError(
                f"{self.run_dir} already holds a run. Fix: add --resume to continue it, or give another --out"
            )
        else:  # a run stopped before its first checkpoint starts again: its epoch lines go
            self.logger.keep_epochs(0)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run_folder.write_config(self.run_dir, self.config)
        self.logger.open_log()

    def _record_preprocessing(self) -> None:
        """preprocessing.json: what the network is fed; on --resume it must not have changed (a bundle edited under the run)."""
        recorded = run_folder.read_preprocessing(self.run_dir) if self.resume else None
        if recorded is not None and recorded.to_dict() != self.preprocessing.to_dict():
            raise MedftError(
                f"{self.run_dir / run_folder.PREPROCESSING}: the run started with other preprocessing than "
                f"{self.config.model.bundle or 'the config'} gives now, so it cannot resume. Fix: restore the bundle as "
                "it was when the run started, or start a new run with another --out"
            )
        run_folder.write_preprocessing(self.run_dir, self.preprocessing)

    def _wrap(self, frozen: set[str]) -> None:
        """Distributed: a new DDP wrapper when the trainable parameters change (see distributed.wrap)."""
        if not distributed.is_distributed() or frozen == self._wrapped_frozen:
            return
        distributed.unwrap(self._wrapped)
        self._wrapped = None
        self._wrapped = distributed.wrap(self.network, self.device, self._unused)
        self._wrapped_frozen = set(frozen)

    def _trained(self, image: torch.Tensor):
        """The training forward pass: through DDP in a distributed run (it averages the gradients)."""
        return (self._wrapped if self._wrapped is not None else self.network)(image)

    def _check_forward(self) -> None:
        """A fake batch through the network before any long run (as MONAI's verify_net_in_out)."""
        from medft.bundle.adapt import dummy_forward_backward, segmentation_output_problem

        shape = dummy_forward_backward(self.network, self.prepared.in_channels, self.prepared.spatial_dims,
                                       self.config.data.spatial_size, size_option="data.spatial_size")
        problem = segmentation_output_problem(shape, self.prepared.spatial_dims)
        if problem:
            raise MedftError(problem)
        if shape[1] != len(self.class_names):
            raise MedftError(f"the network gives {shape[1]} output channels, expected {len(self.class_names)} classes")

    def _request_stop(self, signum, frame) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        log.warning("Ctrl-C: saving after this step (press again to stop at once, without saving)")


def run_training(config: RunConfig, run_dir: Path, resume: bool = False,
                 on_validation: Callable[[int, float], None] | None = None) -> TrainingSummary:
    recipe = FineTuneRecipe(config, run_dir, resume, on_validation)
    try:
        recipe.setup()
        return recipe.train()
    except Exception as exc:
        recipe.log_stop(exc)
        raise
    finally:
        recipe.cleanup()


def _mix(*parts: int) -> int:
    """A seed from several integers (seed, epoch, step) that does not collide for small values."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part + 1) % (2**63 - 1)
    return value


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor without MONAI's metadata, which every operation on a MetaTensor copies in Python: networks
    see plain tensors (the cost is measured in benchmarks/RESULTS.md)."""
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor


def _supervised_loss(loss_fn, output, label: torch.Tensor) -> torch.Tensor:
    """Loss of a network output; deep supervision (DynUNet: heads stacked on dim 1) weighs head i by 2^-i."""
    if isinstance(output, (list, tuple)):
        output = output[0]
    output = output.float()
    if output.ndim == label.ndim + 1:
        heads = output.unbind(1)
        weights = [0.5**i for i in range(len(heads))]
        return sum(w * loss_fn(h, label) for w, h in zip(weights, heads, strict=True)) / sum(weights)
    return loss_fn(output, label)


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def use_deterministic_algorithms() -> None:
    """Deterministic kernels, warning where torch has none. cuBLAS is deterministic only with a
    fixed workspace, which must be set before its first call (a value the user set is kept)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def _loss(train: TrainConfig):
    dice = {"to_onehot_y": True, "softmax": True, "batch": train.dice_batch, "include_background": train.dice_background}
    if train.loss == "dice_ce":
        return DiceCELoss(**dice, lambda_dice=train.dice_weight, lambda_ce=train.ce_weight)
    if train.loss == "dice":
        return DiceLoss(**dice)
    ce = torch.nn.CrossEntropyLoss()
    return lambda logits, label: ce(logits, label[:, 0].long())


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise MedftError("train.device is cuda but no CUDA device is available. Fix: set train.device: auto or cpu")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def _on_main_then_share(action: Callable[[], None]) -> None:
    """Run ``action`` on rank 0 only; when it fails, every process fails with its message (none waits)."""
    if distributed.is_main():
        try:
            action()
        except Exception as exc:
            distributed.broadcast_object(str(exc) if isinstance(exc, MedftError) else f"{type(exc).__name__}: {exc}")
            raise
        distributed.broadcast_object(None)
    else:
        error = distributed.broadcast_object(None)
        if error is not None:
            raise MedftError(f"rank 0 stopped: {error}")
