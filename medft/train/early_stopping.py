"""Early stopping on a validation metric that should rise (Dice)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class EarlyStopping:
    patience: int
    min_delta: float
    best: float = -math.inf
    best_epoch: int = -1
    bad_validations: int = 0
    # The value of the last rise above min_delta: a rise counts when it clears this by min_delta, so
    # small rises that add up to more than min_delta count as one (as in Keras and Lightning).
    baseline: float = -math.inf

    def update(self, value: float, epoch: int) -> bool:
        """Record a validation result; True when it is the best so far.

        The best checkpoint follows any rise; patience resets only on a rise above min_delta over
        the value of the last such rise. A NaN result (no foreground in any validation case) never
        counts as a rise.
        """
        improved = not math.isnan(value) and value > self.best
        if not math.isnan(value) and value > self.baseline + self.min_delta:
            self.baseline, self.bad_validations = value, 0
        else:
            self.bad_validations += 1
        if improved:
            self.best, self.best_epoch = value, epoch
        return improved

    def restart_patience(self) -> None:
        """Count patience afresh from the next validation (as from the first), keeping the best: at a phase change
        (LP-FT's switch from the head alone to everything), so that the earlier phase's validations do not end the next."""
        self.bad_validations, self.baseline = 0, -math.inf

    @property
    def should_stop(self) -> bool:
        return self.bad_validations >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
