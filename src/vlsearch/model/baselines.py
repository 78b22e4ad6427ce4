"""Named baselines and ablations: config overrides applied over a preset (quality benchmark).

``BASELINES[name]`` is a nested dict like ``config.PRESETS``; ``apply_baseline(config, name)``
returns a new Config. ``full`` is MAKE + contrastive MPM + MBNS + CDNS; the ablations switch
one thing off ``full`` (or add one: ``+attrs``, title + attribute text for the product tower); ``zero-shot-minilm`` is the packaged all-MiniLM-L6-v2 used as is.
"""

from __future__ import annotations

from typing import Any

from vlsearch.config import Config, ConfigError, update
from vlsearch.model.product_text import ATTRIBUTE_TEXT

_IN_BATCH = {"memory_bank": False, "cross_device": False}
_MAKE = {
    "model": {"architecture": "make", "modal_adaptation": True, "keyword_enhancement": True},
    "train": {"mpm_kind": "regression", **_IN_BATCH},
}


def _make(**train: Any) -> dict[str, Any]:
    return {"model": dict(_MAKE["model"]), "train": {**_MAKE["train"], **train}}


def _full(**model: Any) -> dict[str, Any]:
    out = _make(mpm_kind="contrastive", memory_bank=True, cross_device=True)
    out["model"].update(model)
    return out


def _with(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    """``base`` with more fields in some sections."""
    out = {k: dict(v) for k, v in base.items()}
    for section, values in sections.items():
        out.setdefault(section, {}).update(values)
    return out


_OTHER = {"modal_adaptation": False, "keyword_enhancement": False}


def _dual(train: dict[str, Any] | None = None, **model: Any) -> dict[str, Any]:
    """The dual encoder trained by in-batch matching alone, with Modal Adaptation."""
    return {"model": {"architecture": "dual-encoder", "modal_adaptation": True, "keyword_enhancement": False,
                      **model},
            "train": {"w_mpm": 0.0, "w_mlm": 0.0, "w_qpc": 0.0, **_IN_BATCH, **(train or {})}}


# weight of title-image alignment in the rows that add it (vlsearch.objectives.alignment)
_TIA = {"w_tia": 0.5}

BASELINES: dict[str, dict[str, Any]] = {
    "uni-encoder": {
        "model": {"architecture": "uni-encoder", **_OTHER},
        "train": {"mpm_kind": "regression", **_IN_BATCH},
    },
    "dual-encoder": {
        "model": {"architecture": "dual-encoder", **_OTHER},
        "train": {"w_mpm": 0.0, "w_mlm": 0.0, "w_qpc": 0.0, **_IN_BATCH},
    },
    "mixed-encoder": {
        "model": {"architecture": "mixed-encoder", **_OTHER},
        "train": {"mpm_kind": "regression", **_IN_BATCH},
    },
    "make": _make(),
    "make+contrastive-mpm": _make(mpm_kind="contrastive"),
    "make+mbns": _make(memory_bank=True),
    "make+cdns": _make(cross_device=True),
    # the cheaper step: bf16 autocast on CPU (fp32 logits), to be judged against "make"
    "make+bf16": _make(cpu_bf16=True),
    "full": _full(),
    "title-only": _full(use_images=False),
    "no-ma": _full(modal_adaptation=False),
    "no-ke": _full(keyword_enhancement=False),
    # the product tower reads the title + attribute text (vlsearch.model.product_text)
    "make+attrs": _with(_make(), model={"product_text": list(ATTRIBUTE_TEXT)}),
    "full+attrs": _with(_full(), model={"product_text": list(ATTRIBUTE_TEXT)}),
    "title-only+attrs": _with(_full(use_images=False), model={"product_text": list(ATTRIBUTE_TEXT)}),
    # in-batch matching only (MNRL-like): shared text tower + image tower with Modal
    # Adaptation over the two vectors; the image question asked of this training
    "dual-encoder+ma": _dual(),
    "dual-encoder-title-only": _dual(use_images=False),
    "dual-encoder+attrs": _dual(product_text=list(ATTRIBUTE_TEXT)),
    # + title-image alignment: the image vector must pick out its own title (beyond the papers)
    "dual-encoder+tia": _dual(_TIA),
    # terms reach the dense towers in natural order (the qid still sorts them)
    "no-sort": _with(_full(), data={"sort_terms": False}),
    "no-sort+attrs": _with(_full(), data={"sort_terms": False}, model={"product_text": list(ATTRIBUTE_TEXT)}),
    "zero-shot-minilm": {
        "model": {
            "architecture": "dual-encoder", "init": "minilm", "use_images": False,
            "pooling": "mean", "project": False, **_OTHER,
        },
        "train": {"steps": 0},
    },
}


def apply_baseline(config: Config, name: str) -> Config:
    """``config`` with the overrides of baseline ``name``."""
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; expected one of {sorted(BASELINES)}")
    return update(config, BASELINES[name], source=f"baseline {name}")


def zero_shot_minilm(config: Config | None = None) -> Config:
    """The zero-shot all-MiniLM-L6-v2 setting: shared text tower, title-only, mean pooling, no KE, 0 steps."""
    return apply_baseline(config or Config(), "zero-shot-minilm")
