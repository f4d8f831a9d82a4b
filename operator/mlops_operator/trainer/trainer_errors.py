"""The trainer's failure vocabulary: a reason, a message a person can act on, and an exit code.

The TrainingJob's Job runs the trainer with a ``podFailurePolicy`` that fails the Job at once on
exit code 3 (:data:`EXIT_PERMANENT`): bad data or a bad spec is not fixed by running the same pod
again, so it must not burn through ``backoffLimit`` (no retry storm). Exit code 1
(:data:`EXIT_TRANSIENT`) is left to the Job's ordinary retries: MLflow or the dataset's server was
unreachable, and may be back on the next attempt.
"""

from __future__ import annotations

from typing import Final, Literal

Reason = Literal[
    "InvalidSpec",
    "DatasetUnreachable",
    "DatasetMalformed",
    "DataValidationFailed",
    "EstimatorNotAllowed",
    "InvalidHyperparameters",
    "TrainingFailed",
    "MLflowUnavailable",
    "RegistrationFailed",
    "RayUnavailable",
]

EXIT_OK: Final = 0
EXIT_TRANSIENT: Final = 1
EXIT_PERMANENT: Final = 3


class TrainerError(Exception):
    """A failure with a condition reason. ``transient`` decides the exit code (1 vs 3)."""

    def __init__(self, reason: Reason, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message
        self.transient = transient or reason == "MLflowUnavailable"

    @property
    def exit_code(self) -> int:
        return EXIT_TRANSIENT if self.transient else EXIT_PERMANENT

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"
