"""A run's record of its epochs: metrics.jsonl, TensorBoard and train.log, written by rank 0 alone."""
from __future__ import annotations

import logging
from pathlib import Path

from medft.errors import find_user_error
from medft.formats import run as run_folder
from medft.formats.run import EpochRecord

log = logging.getLogger("medft.train")


class MetricLogger:
    """Every epoch goes to metrics.jsonl, TensorBoard and the log (train.log and the console). On ranks
    other than 0 it writes nothing, and the medft logger shows warnings only (rank 0 tells the story)."""

    def __init__(self, run_dir: Path, main: bool):
        self.run_dir, self.main = Path(run_dir), main
        self._tensorboard = None  # made at the first epoch: a run that fails its checks leaves no event file
        self._log_file: logging.Handler | None = None
        self._level: int | None = None  # the medft logger's level before a rank other than 0 quieted it

    def quiet_other_ranks(self) -> None:
        if not self.main:
            logger = logging.getLogger("medft")
            self._level = logger.level
            logger.setLevel(logging.WARNING)

    def open_log(self) -> None:
        """train.log in the run folder (appended to on --resume); the only file handler of the medft logger."""
        if not self.main:
            return
        logger = logging.getLogger("medft")
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
                handler.close()
        self._log_file = logging.FileHandler(self.run_dir / run_folder.LOG)
        self._log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(self._log_file)
        logger.setLevel(logging.INFO)

    def log_epoch(self, record: EpochRecord) -> None:
        if not self.main:
            return
        run_folder.append_epoch(self.run_dir, record)
        board = self._board()
        board.add_scalar("train/loss", record.train_loss, record.epoch)
        if record.validated:
            board.add_scalar("val/dice", record.val_dice, record.epoch)
            for name, value in record.val_dice_per_class.items():
                board.add_scalar(f"val/dice_{name}", value, record.epoch)
        board.flush()
        val = f", val Dice {record.val_dice:.4f}" if record.validated else ""
        log.info("epoch %d: loss %.4f%s%s (%.1f s)", record.epoch, record.train_loss, val,
                 " (best)" if record.best else "", record.seconds)

    def keep_epochs(self, epochs_done: int) -> None:
        """Forget the epochs from ``epochs_done`` on: the resumed run does them again."""
        if self.main:
            run_folder.keep_epochs(self.run_dir, epochs_done)

    def log_stop(self, exc: Exception) -> None:
        """The error that stops the run, into train.log: a user error as its ``public`` text, another as its
        type and message. Not through the logger, whose console handler would print it a second time."""
        if self._log_file is None:
            return
        error = find_user_error(exc)
        text = error.public if error is not None else f"internal error ({type(exc).__name__}: {exc})"
        self._log_file.handle(logging.makeLogRecord(
            {"name": log.name, "levelno": logging.ERROR, "levelname": "ERROR", "msg": f"stopped: {text}"}))

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._log_file is not None:  # what the process logs next (an evaluation, say) is not this run's
            logging.getLogger("medft").removeHandler(self._log_file)
            self._log_file.close()
            self._log_file = None
        if self._level is not None:
            logging.getLogger("medft").setLevel(self._level)
            self._level = None

    def _board(self):
        if self._tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(self.run_dir / run_folder.TENSORBOARD))
        return self._tensorboard
