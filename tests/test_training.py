"""The training loop on the sample catalog: recall rises, metrics, resume, checkpoints, NaN stop."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import load_file
from transformers import BertConfig

from vlsearch.config import preset
from vlsearch.errors import WorkdirError
from vlsearch.model import Retriever
from vlsearch.training import (
    CheckpointError,
    PretrainingObjective,
    TrainingError,
    list_checkpoints,
    load_checkpoint,
    train,
)


def _config(steps: int, batch_size: int = 8):
    config = preset("tiny")
    config.images.backbone = "random-cnn"
    config.train.steps = steps
    config.train.batch_size = batch_size
    config.train.memory_bank_batches = 2
    config.train.log_every = 1
    config.train.eval_every = 0
    config.train.eval_at_start = False
    config.train.eval_k = 10
    config.train.checkpoint_every = 2
    config.train.num_threads = 1  # the test machine is small and shared
    return config


@pytest.fixture(scope="module")
def workdir(sample_catalog_dir, tmp_path_factory):
    from vlsearch.workdir import prepare

    out = tmp_path_factory.mktemp("train-workdir")
    prepare(sample_catalog_dir, out, _config(1), progress=False)
    return out


def _weights(model_dir):
    return load_file(model_dir / "model.safetensors")


def test_short_tiny_run_beats_the_untrained_model(workdir, tmp_path):
    config = _config(100, batch_size=32)
    config.train.eval_at_start = True
    config.train.eval_every = 50
    config.train.memory_bank_start = 0.3
    result = train(workdir, config, tmp_path / "run", progress=False)
    assert result.initial_val_recall is not None and result.val_recall is not None
    assert result.val_recall >= result.initial_val_recall + 0.2, result.format()
    assert "memory-bank negatives switch on at step 30" in result.format()  # explains the loss jump
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 101))
    for row in steps:
        assert {"loss", "loss_qpm", "loss_mpm", "loss_mlm", "loss_qpc", "temperature", "neg_in_batch",
                "neg_memory", "neg_cross_device", "lr", "samples_per_s"} <= set(row)
        # MBNS starts after 30 of 100 steps (row step s is the s-th step, index s - 1)
        assert (row["neg_memory"] > 0) == (row["step"] > 30), row
        assert row["neg_cross_device"] == 0  # one process
    assert [r["step"] for r in rows if "val_recall@10" in r] == [0, 50, 100]
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 0
    loaded = Retriever.load(tmp_path / "run")
    assert loaded.encode_queries(["red dress"]).shape == (1, config.model.embed_dim)
    assert len(loaded.keywords) > 0 and loaded.categories


def test_resume_continues_exactly(workdir, tmp_path):
    config = _config(6)
    train(workdir, config, tmp_path / "straight", progress=False)
    half = train(workdir, config, tmp_path / "resumed", steps=3, progress=False)
    assert half.steps == 3 and [p.name for p in list_checkpoints(tmp_path / "resumed" / "checkpoints")] == [
        "step-00000002", "step-00000003"]
    rest = train(workdir, config, tmp_path / "resumed", resume=True, progress=False)
    assert rest.resumed_from == 3 and rest.steps == 6
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        np.testing.assert_array_equal(straight[name], resumed[name], err_msg=name)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines if "loss" in json.loads(x)] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(WorkdirError, match="resume"):  # a second fresh run would mix two runs
        train(workdir, config, tmp_path / "resumed", progress=False)


def test_corrupt_checkpoint_is_refused_and_the_previous_one_used(workdir, tmp_path, capsys):
    config = _config(6)
    train(workdir, config, tmp_path / "run", steps=4, progress=False)
    newest = tmp_path / "run" / "checkpoints" / "step-00000004" / "tensors.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(newest.parent)
    result = train(workdir, config, tmp_path / "run", resume=True, progress=False)
    assert result.resumed_from == 2 and result.steps == 6
    assert "refusing" in capsys.readouterr().err
    (tmp_path / "run" / "checkpoints" / "step-00000006" / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000006")


def test_nan_loss_stops_with_the_step_and_last_checkpoint(workdir, tmp_path, monkeypatch):
    forward = PretrainingObjective.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(PretrainingObjective, "forward", poisoned)
    with pytest.raises(TrainingError, match=r"step 3: non-finite loss.*step-00000002"):
        train(workdir, _config(6), tmp_path / "run", progress=False)


def test_workdir_without_features_or_from_another_version_is_refused(workdir, tmp_path):
    copy = tmp_path / "wd"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("features"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["stages"].pop("features")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WorkdirError, match="feature cache"):
        train(copy, _config(2), tmp_path / "run", progress=False)
    manifest["format_version"] = 999
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WorkdirError, match="version"):
        train(copy, _config(2), tmp_path / "run", progress=False)


def test_two_process_ddp_run_uses_cross_device_negatives(workdir, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from test_training import _config
        from vlsearch.training import train
        config = _config(4)
        config.train.device = "cpu"
        config.train.cross_device_start = 0.5
        train({str(workdir)!r}, config, {str(tmp_path / "run")!r}, progress=False)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)],
        check=False, capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    cross = {r["step"]: r["neg_cross_device"] for r in rows if "loss" in r}
    assert cross[1] == cross[2] == 0 and cross[3] > 0 and cross[4] > 0  # CDNS after half of 4 steps
    tensors = load_file(tmp_path / "run" / "checkpoints" / "step-00000004" / "tensors.safetensors")
    assert {"bank.0.vectors", "bank.1.vectors"} <= set(tensors)  # both ranks' memory banks
    assert Retriever.load(tmp_path / "run").encode_queries(["shoes"]).shape[0] == 1


def test_layers_from_a_checkpoint_train_at_lr_and_new_layers_at_new_layer_lr():
    from torch import nn

    from vlsearch.config import TrainConfig
    from vlsearch.model.towers import TextEncoder
    from vlsearch.training import make_optimizer

    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16)
    pretrained = TextEncoder(config, "mean")
    pretrained.pretrained = True  # as if loaded from a checkpoint
    module = nn.ModuleDict({"tower": pretrained, "head": nn.Linear(8, 4)})
    optimizer = make_optimizer(module, TrainConfig(lr=1e-5, new_layer_lr=1e-3))
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert {lr_of[id(p)] for p in pretrained.parameters()} == {1e-5}
    assert {lr_of[id(p)] for p in module["head"].parameters()} == {1e-3}
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay_of[id(module["head"].bias)] == 0.0 and decay_of[id(module["head"].weight)] > 0


def test_tensorboard_option_logs_every_metric_beside_metrics_jsonl(workdir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = _config(4)
    config.train.tensorboard = True
    train(workdir, config, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "run" / config.train.tensorboard_dir))
    events.Reload()
    assert "loss" in events.Tags()["scalars"] and "lr" in events.Tags()["scalars"]
    logged = [(e.step, e.value) for e in events.Scalars("loss")]
    expected = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    assert [s for s, _ in logged] == [s for s, _ in expected] == [1, 2, 3, 4]
    assert np.allclose([v for _, v in logged], [v for _, v in expected], rtol=1e-6)
