"""Pre-training: ``train(workdir, config, out_dir)`` and the pieces it is made of.

* :mod:`.data` - the click log sampled per step, tokenized once, served as batches;
* :mod:`.objective` - the pre-training objective module, optimizer groups, lr schedule;
* :mod:`.checkpoint` - atomic, verified checkpoints and resume;
* :mod:`.metrics` - ``metrics.jsonl`` / TensorBoard, the plot, validation recall;
* :mod:`.loop` - ``train``: build, restore, then step / log / evaluate / checkpoint, finish.

The names callers, benchmarks and tests import are re-exported here; file names and other
constants stay in their submodule.
"""

from vlsearch.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from vlsearch.training.data import Batch, ClickLog, ClickStream
from vlsearch.training.loop import TrainResult, train
from vlsearch.training.metrics import TrainingError, Validator
from vlsearch.training.objective import PretrainingObjective, StepOutput, lr_factor, make_optimizer

__all__ = [
    "Batch",
    "Checkpoint",
    "CheckpointError",
    "ClickLog",
    "ClickStream",
    "PretrainingObjective",
    "StepOutput",
    "TrainResult",
    "TrainingError",
    "Validator",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "lr_factor",
    "make_optimizer",
    "save_checkpoint",
    "train",
]
