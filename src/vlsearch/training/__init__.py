"""Pre-training: ``train(workdir, config, out_dir)`` and the pieces it is made of.

* :mod:`.data` - the click log sampled per step, tokenized once, served as batches;
* :mod:`.objective` - the pre-training objective module, optimizer groups, lr schedule;
* :mod:`.checkpoint` - atomic, verified checkpoints and resume;
* :mod:`.metrics` - ``metrics.jsonl`` / TensorBoard, the plot, validation recall;
* :mod:`.loop` - ``train``: build, restore, then step / log / evaluate / checkpoint, finish.

The names callers and tests import are re-exported here.
"""

from vlsearch.training.checkpoint import (
    CHECKPOINT_DIR,
    CHECKPOINT_FORMAT,
    CHECKPOINT_STATE,
    CHECKPOINT_TENSORS,
    Checkpoint,
    CheckpointError,
    flatten_optimizer,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    unflatten_optimizer,
)
from vlsearch.training.data import Batch, ClickLog, ClickStream
from vlsearch.training.loop import TrainResult, train
from vlsearch.training.metrics import (
    LOSS_TERMS,
    METRICS_FILE,
    PLOT_FILE,
    MetricsLog,
    TrainingError,
    Validator,
    plot_metrics,
)
from vlsearch.training.objective import PretrainingObjective, StepOutput, lr_factor, make_optimizer

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_STATE",
    "CHECKPOINT_TENSORS",
    "LOSS_TERMS",
    "METRICS_FILE",
    "PLOT_FILE",
    "Batch",
    "Checkpoint",
    "CheckpointError",
    "ClickLog",
    "ClickStream",
    "MetricsLog",
    "PretrainingObjective",
    "StepOutput",
    "TrainResult",
    "TrainingError",
    "Validator",
    "flatten_optimizer",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "lr_factor",
    "make_optimizer",
    "plot_metrics",
    "save_checkpoint",
    "train",
    "unflatten_optimizer",
]
