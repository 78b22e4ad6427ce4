"""Cheaper training steps (MLM every N steps / on a fraction of the batch, bf16 autocast on CPU,
frozen word embeddings, text towers run in length groups): each is deterministic and keeps the matching loss of 20 steps on the
sample catalog within tolerance of today's default."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlsearch.config import ConfigError, preset
from vlsearch.model import Retriever
from vlsearch.training import PretrainingObjective, train

pytestmark = pytest.mark.slow

STEPS = 20
TOLERANCE = 0.15  # relative difference of the mean QPM loss over the last 10 steps


def _config(**train_overrides):
    config = preset("tiny")
    config.images.backbone = "random-cnn"
    config.model.keyword_enhancement = False
    t = config.train
    t.steps, t.batch_size, t.log_every, t.eval_every, t.eval_at_start = STEPS, 16, 1, 0, False
    t.checkpoint_every, t.num_threads, t.device = 0, 1, "cpu"
    t.memory_bank = t.cross_device = False
    for key, value in train_overrides.items():
        setattr(t, key, value)
    return config


@pytest.fixture(scope="module")
def workdir(sample_catalog_dir, tmp_path_factory):
    from vlsearch.workdir import prepare

    out = tmp_path_factory.mktemp("switch-workdir")
    prepare(sample_catalog_dir, out, _config(), progress=False)
    return out


def _qpm_curve(workdir, tmp_path, name, **overrides) -> list[float]:
    result = train(workdir, _config(**overrides), tmp_path / name, progress=False)
    return [r["loss_qpm"] for r in result.history if "loss" in r]


@pytest.fixture(scope="module")
def reference(workdir, tmp_path_factory):
    return _qpm_curve(workdir, tmp_path_factory.mktemp("reference"), "model")


@pytest.mark.parametrize("overrides", [
    {"mlm_every": 4}, {"mlm_fraction": 0.25}, {"cpu_bf16": True},
    {"freeze_word_embeddings": True},
    {"mlm_every": 4, "cpu_bf16": True, "freeze_word_embeddings": True},
], ids=lambda o: "+".join(o))
def test_switch_is_deterministic_and_keeps_the_loss(workdir, tmp_path, reference, overrides):
    first = _qpm_curve(workdir, tmp_path, "a", **overrides)
    second = _qpm_curve(workdir, tmp_path, "b", **overrides)
    assert first == second  # same seed, same stream, same numbers
    assert len(first) == STEPS and first != reference  # the switch did change the run
    ref, got = np.mean(reference[STEPS // 2:]), np.mean(first[STEPS // 2:])
    assert abs(got - ref) <= TOLERANCE * ref, (got, ref)
    assert np.mean(first[STEPS // 2:]) < np.mean(first[:3])  # still learning


def test_mlm_runs_only_on_its_steps_and_rows(workdir):
    from vlsearch.training import ClickStream
    from vlsearch.workdir import Workdir

    config = _config(mlm_fraction=0.25)
    wd = Workdir.open(workdir)
    retriever = Retriever.build(config, wd)
    trainer = PretrainingObjective(retriever, config)
    batch = ClickStream(wd, retriever, config, rank=0).batch(0)
    seen = []
    heads = {trainer.mlm_title, trainer.mlm_query or trainer.mlm_title}
    hooks = [h.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0])) for h in heads]
    try:
        out = trainer(batch, torch.Generator().manual_seed(0))
        assert "mlm" in out.terms and seen == [4, 4]  # ceil(0.25 * 16) titles and queries
        seen.clear()
        out = trainer(batch, torch.Generator().manual_seed(0), with_mlm=False)
        assert "mlm" not in out.terms and seen == []
    finally:
        for hook in hooks:
            hook.remove()


def test_frozen_word_embeddings_get_no_gradient(workdir):
    from vlsearch.workdir import Workdir

    config = _config(freeze_word_embeddings=True)
    trainer = PretrainingObjective(Retriever.build(config, Workdir.open(workdir)), config)
    assert not trainer.model.text.word_embeddings.weight.requires_grad
    assert trainer.model.text.bert.encoder.layer[0].attention.self.query.weight.requires_grad


@pytest.mark.parametrize("field,value", [("mlm_fraction", 0.0), ("mlm_fraction", 1.5), ("mlm_every", 0)])
def test_bad_switch_values_are_refused(workdir, field, value):
    from vlsearch.workdir import Workdir

    config = _config(**{field: value})
    with pytest.raises(ConfigError, match=f"train.{field}"):
        PretrainingObjective(Retriever.build(config, Workdir.open(workdir)), config)


def test_length_groups_give_the_same_tower_outputs(workdir):
    """Rows run in groups of similar length, each trimmed to its widest: the same outputs at
    every real position, pooled vectors equal, and the groups are narrower than the batch."""
    from vlsearch.training import ClickStream
    from vlsearch.workdir import Workdir

    wd = Workdir.open(workdir)
    config = _config()
    retriever = Retriever.build(config, wd)
    batch = ClickStream(wd, retriever, config, rank=0).batch(0)
    tower = retriever.model.query_tower.eval()
    lengths = batch.q_mask.sum(1)
    assert len(set(lengths.tolist())) > 1  # the batch has rows of several lengths
    widths = []
    hook = tower.bert.register_forward_hook(lambda m, args, kwargs, out: widths.append(kwargs["input_ids"].shape),
                                            with_kwargs=True)
    with torch.inference_mode():
        whole = tower.hidden(batch.q_ids, batch.q_mask, batch.q_types)
        tower.length_groups = 4
        grouped = tower.hidden(batch.q_ids, batch.q_mask, batch.q_types)
    hook.remove()
    assert widths[0] == batch.q_ids.shape and len(widths) == 5
    assert sum(rows for rows, _ in widths[1:]) == batch.q_ids.shape[0]
    assert min(width for _, width in widths[1:]) < batch.q_ids.shape[1]
    with torch.inference_mode():
        pooled = tower(batch.q_ids, batch.q_mask, batch.q_types)[0]
        tower.length_groups = 1
        reference = tower(batch.q_ids, batch.q_mask, batch.q_types)[0]
    real = batch.q_mask.bool()
    torch.testing.assert_close(grouped[real], whole[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, reference, rtol=1e-5, atol=1e-5)


def test_length_groups_keep_the_training_loss(workdir, tmp_path, reference):
    """Same batches; dropout draws its masks group by group, so the curve is that of another
    dropout stream: deterministic and within the switches' tolerance."""
    config = _config()
    config.model.length_groups = 4
    first = [r["loss_qpm"] for r in train(workdir, config, tmp_path / "a", progress=False).history if "loss" in r]
    second = [r["loss_qpm"] for r in train(workdir, config, tmp_path / "b", progress=False).history if "loss" in r]
    assert first == second and len(first) == STEPS
    ref, got = np.mean(reference[STEPS // 2:]), np.mean(first[STEPS // 2:])
    assert abs(got - ref) <= TOLERANCE * ref, (got, ref)


def test_length_groups_must_be_positive():
    config = _config()
    config.model.length_groups = 0
    with pytest.raises(ValueError, match="length_groups"):
        Retriever.build(config)


def test_title_image_alignment_trains_the_image_tower_and_needs_both_views(workdir):
    from vlsearch.training import ClickStream
    from vlsearch.workdir import Workdir

    wd = Workdir.open(workdir)
    config = _config(w_tia=0.5)
    retriever = Retriever.build(config, wd)
    trainer = PretrainingObjective(retriever, config)
    batch = ClickStream(wd, retriever, config, rank=0).batch(0)
    out = trainer(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.terms["tia"]) and out.terms["tia"].item() > 0
    out.terms["tia"].backward()
    image_weight = trainer.model.image.patches.project.weight
    assert image_weight.grad is not None and image_weight.grad.abs().sum() > 0
    assert trainer.tia.match.tau.log_tau.grad is not None  # its own temperature learns
    without = PretrainingObjective(Retriever.build(_config(), wd), _config())
    assert "tia" not in without(batch, torch.Generator().manual_seed(0)).terms  # off by default
    title_only = _config(w_tia=0.5)
    title_only.model.use_images = False
    with pytest.raises(ConfigError, match="train.w_tia"):
        PretrainingObjective(Retriever.build(title_only, wd), title_only)
