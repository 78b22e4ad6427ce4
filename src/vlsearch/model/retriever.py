"""``Retriever``: the trained model with its tokenizer and keyword table; build, save, load, encode.

A model directory holds ``model.safetensors`` (weights), ``config.json`` (format version,
the full Config, the text towers' BertConfig, the category list, the image backbone name,
patch grid and dim), the tokenizer files and ``keywords.json``. It is written to a
temporary directory and renamed into place (into an existing directory file by file,
``config.json`` last), and read without pickle.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import BertConfig

from vlsearch.config import Config, ConfigError, update
from vlsearch.errors import InputError, WorkdirError
from vlsearch.io import atomic_write, atomic_write_json, fsync_dir, read_json, temp_dir
from vlsearch.model.architectures import RetrievalModel, modalities
from vlsearch.model.keywords import KeywordTable, mine_from_workdir
from vlsearch.model.product_text import product_texts, template_fields
from vlsearch.model.towers import init_dir, text_config
from vlsearch.text import Encoded, Tokenizer, concat_encoded

MODEL_FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
KEYWORDS_FILE = "keywords.json"
TOKENIZER_FILE = "tokenizer.json"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, KEYWORDS_FILE, TOKENIZER_FILE)


def _tokenizer_for(config: Config):
    path = init_dir(config.model)
    return Tokenizer.minilm() if path is None else Tokenizer.from_dir(path)


def tokenize_with_keywords(tokenizer, texts: list[str], keywords: list[list[str]], max_len: int, sort: bool):
    """Encode ``texts``; a text with keywords (Keyword Enhancement) gets them as its second
    segment, the others are single segments. Rows keep the order of ``texts``. Also used by
    the sentence-transformers export (:mod:`vlsearch.exports`), so both tokenize alike."""
    plain = [i for i, k in enumerate(keywords) if not k]
    enhanced = [i for i, k in enumerate(keywords) if k]
    if not enhanced:
        return tokenizer.encode(texts, max_len, sort_terms=sort)
    if not plain:  # e.g. one served query with keywords: no merge, no padding copies
        return tokenizer.encode(texts, max_len, pairs=[" ".join(k) for k in keywords], sort_terms=sort)
    parts = [tokenizer.encode([texts[i] for i in plain], max_len, sort_terms=sort)]
    parts.append(tokenizer.encode(
        [texts[i] for i in enhanced], max_len, pairs=[" ".join(keywords[i]) for i in enhanced], sort_terms=sort,
    ))
    merged = concat_encoded([p for p in parts if p.input_ids.shape[0]], tokenizer.pad_id)
    order = np.argsort(np.asarray(plain + enhanced))
    return Encoded(*(a[order] for a in merged))


class Retriever:
    """Query/product encoders ready for inference (``encode_queries``, ``encode_products``)."""

    def __init__(self, config: Config, model: RetrievalModel, tokenizer, keywords: KeywordTable,
                 categories: list[str], image: dict[str, Any]):
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.keywords = keywords
        self.categories = list(categories)
        self.image = dict(image)  # backbone, grid, dim (and colour_levels when on)
        self._backbone = None

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        config: Config,
        workdir=None,
        *,
        patch_dim: int | None = None,
        grid: tuple[int, int] | None = None,
        categories: list[str] | None = None,
        keywords: KeywordTable | None = None,
    ) -> Retriever:
        """A fresh (initialised, untrained) retriever. With a work directory, the patch shape,
        categories and keywords come from it; otherwise from the arguments or the backbone."""
        image = {"backbone": config.images.backbone, "grid": list(grid or ()), "dim": patch_dim}
        if workdir is not None:
            categories = workdir.categories() if categories is None else categories
            if config.model.use_images:
                features = workdir.features()
                image = {"backbone": features.backbone, "grid": list(features.grid), "dim": features.dim}
                if features.colour_levels:
                    image["colour_levels"] = features.colour_levels
            if keywords is None and config.model.keyword_enhancement:
                keywords = mine_from_workdir(workdir, config.model)
        if image["dim"] is None or not image["grid"]:
            from vlsearch.images import get_backbone

            backbone = get_backbone(config.images.backbone, config.images)
            image = {k: v for k, v in backbone.describe().items() if k not in ("width", "height")}
        template_fields(config.model.product_text)  # a bad template fails before any work
        tokenizer = _tokenizer_for(config)
        text = text_config(config.model, tokenizer.vocab_size)
        model = RetrievalModel(
            config.model, text, int(image["dim"]), int(np.prod(image["grid"])), pretrained=init_dir(config.model)
        )
        return cls(config, model, tokenizer, keywords or KeywordTable(), categories or [], image)

    @classmethod
    def load(cls, model_dir: str | Path, device: str | torch.device = "cpu") -> Retriever:
        """Load a directory written by :meth:`save`; missing files or another format version
        raise :class:`WorkdirError`."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise WorkdirError(f"{model_dir}: model directory not found")
        missing = [name for name in REQUIRED_FILES if not (model_dir / name).exists()]
        if missing:
            raise WorkdirError(f"{model_dir}: not a complete model directory (missing {', '.join(missing)})")
        meta = read_json(model_dir / CONFIG_FILE)
        version = meta.get("format_version") if isinstance(meta, dict) else None
        if version != MODEL_FORMAT_VERSION:
            raise WorkdirError(
                f"{model_dir / CONFIG_FILE}: model format version {version!r}, this vlsearch reads "
                f"version {MODEL_FORMAT_VERSION}; train or export the model again"
            )
        try:
            config = update(Config(), meta["config"], source=str(model_dir / CONFIG_FILE))
            text = BertConfig.from_dict(meta["text_config"])
            image = meta["image"]
            categories = list(meta["categories"])
        except (KeyError, TypeError, ConfigError) as exc:
            raise WorkdirError(f"{model_dir / CONFIG_FILE}: malformed model config ({exc})") from None
        try:
            tokenizer = Tokenizer.from_dir(model_dir)
        except InputError as exc:
            raise WorkdirError(f"{model_dir}: cannot load the tokenizer ({exc})") from None
        keywords = KeywordTable.load(model_dir / KEYWORDS_FILE)
        model = RetrievalModel(config.model, text, int(image["dim"]), int(np.prod(image["grid"])))
        try:
            state = load_file(model_dir / WEIGHTS_FILE, device=str(device))
            model.load_state_dict(state, strict=True)
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise WorkdirError(f"{model_dir / WEIGHTS_FILE}: cannot load weights ({exc})") from None
        model.eval()  # loaded for inference: once here, never switched per call
        retriever = cls(config, model, tokenizer, keywords, categories, image)
        retriever.model.to(device)
        return retriever

    def save(self, model_dir: str | Path) -> Path:
        """Write the model directory atomically; returns its path."""
        model_dir = Path(model_dir)
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(model_dir.parent, prefix=f".{model_dir.name}.")
        try:
            state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            meta = {"format_version": str(MODEL_FORMAT_VERSION)}
            atomic_write(tmp / WEIGHTS_FILE, lambda path: save_file(state, path, metadata=meta))
            self.tokenizer.save(tmp)
            self.keywords.save(tmp / KEYWORDS_FILE)
            atomic_write_json(tmp / CONFIG_FILE, self.describe())
            for file in tmp.iterdir():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
            if not model_dir.exists():
                os.replace(tmp, model_dir)
            else:  # e.g. the training directory: move file by file, config.json (the marker) last
                (model_dir / CONFIG_FILE).unlink(missing_ok=True)
                names = sorted(p.name for p in tmp.iterdir() if p.name != CONFIG_FILE) + [CONFIG_FILE]
                for name in names:
                    os.replace(tmp / name, model_dir / name)
            fsync_dir(model_dir)
            fsync_dir(model_dir.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return model_dir

    def describe(self) -> dict[str, Any]:
        """The content of ``config.json``."""
        return {
            "format_version": MODEL_FORMAT_VERSION,
            "config": self.config.to_dict(),
            "text_config": self.model.text.bert.config.to_diff_dict(),
            "categories": self.categories,
            "image": self.image,
            "modalities": list(self.modalities),
            "embed_dim": self.embed_dim,
        }

    # --- properties -----------------------------------------------------------------------
    @property
    def modalities(self) -> tuple[str, ...]:
        """Names of the columns of the Modal Adaptation weights."""
        return modalities(self.config.model)

    @property
    def embed_dim(self) -> int:
        cfg = self.config.model
        return cfg.embed_dim if cfg.project else self.model.text.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Retriever:
        self.model.to(device)
        return self

    # --- tokenization ---------------------------------------------------------------------
    def query_keywords(self, texts: list[str]) -> list[list[str]]:
        """Keyword Enhancement for each query (empty lists when switched off)."""
        cfg = self.config.model
        if not cfg.keyword_enhancement or not len(self.keywords):
            return [[] for _ in texts]
        return [self.keywords.keywords(t, cfg.keywords_per_query, cfg.keyword_max_query_terms) for t in texts]

    def tokenize_queries(self, texts: list[str]):
        """Encoded queries; enhanced ones carry their keywords as the second segment."""
        texts = list(texts)
        return tokenize_with_keywords(self.tokenizer, texts, self.query_keywords(texts),
                                      self.config.model.max_query_len, self.config.data.sort_terms)

    def tokenize_titles(self, titles: list[str]):
        """Bare titles as the product tower reads them (no attribute text)."""
        return self.tokenizer.encode(list(titles), self.config.model.max_title_len, sort_terms=self.config.data.sort_terms)

    def product_texts(self, products: list) -> list[str]:
        """The product tower's text of each product: title + ``model.product_text`` attributes."""
        cfg = self.config.model
        return product_texts(products, cfg.product_text, cfg.product_text_separator, self.config.data.sort_terms)

    def tokenize_products(self, products: list):
        """Encoded product texts (``product_texts``; the title is already term-sorted there)."""
        return self.tokenizer.encode(self.product_texts(products), self.config.model.max_title_len)

    # --- encoding -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """Eval mode and no autograd; a model in training (validation during training) is
        switched to eval and back, a loaded one (always eval) is not touched."""
        was_training = self.model.training
        if was_training:
            self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            if was_training:
                self.model.train(True)

    def _tensor(self, array: np.ndarray, dtype=None) -> torch.Tensor:
        return torch.as_tensor(array, dtype=dtype, device=self.device)

    def encode_queries(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """L2-normalised query vectors, float32 ``[n, embed_dim]`` (Keyword Enhancement applied)."""
        texts = list(texts)
        batch_size = batch_size or self.config.model.encode_batch_size
        out = np.zeros((len(texts), self.embed_dim), dtype=np.float32)
        with self._inference():
            for lo in range(0, len(texts), batch_size):
                ids, mask, types = self.tokenize_queries(texts[lo:lo + batch_size])
                vec = self.model.encode_query(self._tensor(ids), self._tensor(mask), self._tensor(types))
                out[lo:lo + len(ids)] = vec.float().cpu().numpy()
        return out

    def encode_products(
        self,
        products: list,
        patches: np.ndarray | None = None,
        has_image: np.ndarray | None = None,
        return_weights: bool = False,
        batch_size: int | None = None,
    ):
        """L2-normalised product vectors float32 ``[n, embed_dim]``; with ``return_weights``
        also the Modal Adaptation weights ``[n, len(self.modalities)]``.

        ``patches`` (``[n, P, D]``, e.g. from the work directory's FeatureCache) and
        ``has_image`` default to running the backbone on each product's first image; with
        ``model.max_images`` N > 1 on up to N images: patches ``[n, N*P, D]`` and
        ``has_image [n, N]`` (``FeatureCache.product_images``)."""
        products = list(products)
        n = len(products)
        batch_size = batch_size or self.config.model.encode_batch_size
        use_images = self.config.model.use_images
        if use_images and patches is None:
            patches, has_image = self.extract_patches(products)
        if use_images and not isinstance(patches, np.ndarray):
            patches = np.asarray(patches)
        if use_images and has_image is None:
            images = max(1, self.config.model.max_images)
            has_image = np.abs(np.asarray(patches)).reshape(n, images, -1).sum(2) > 0
            has_image = has_image[:, 0] if images == 1 else has_image
        vectors = np.zeros((n, self.embed_dim), dtype=np.float32)
        weights = np.zeros((n, len(self.modalities)), dtype=np.float32)
        if n == 0:
            return (vectors, weights) if return_weights else vectors
        # Tokenize all, encode in order of token length (each batch padded only to its own
        # longest title), write each vector back to its product's row.
        all_ids, all_mask, _ = self.tokenize_products(products)
        lengths = all_mask.sum(axis=1)
        order = np.argsort(lengths, kind="stable")
        with self._inference():
            for lo in range(0, n, batch_size):
                rows = order[lo:lo + batch_size]
                width = max(1, int(lengths[rows].max()))
                ids, mask = all_ids[rows, :width], all_mask[rows, :width]
                batch_patches = batch_has = None
                if use_images:
                    batch_rows = np.sort(rows)  # memory-mapped patches read in row order
                    back = np.searchsorted(batch_rows, rows)
                    batch_patches = self._tensor(np.asarray(patches[batch_rows], dtype=np.float32)[back])
                    batch_has = self._tensor(np.asarray(has_image, dtype=bool)[rows])
                out = self.model.encode_product(self._tensor(ids), self._tensor(mask), batch_patches, batch_has)
                vectors[rows] = out.vectors.float().cpu().numpy()
                weights[rows] = out.weights.float().cpu().numpy()
        return (vectors, weights) if return_weights else vectors

    def extract_patches(self, products: list) -> tuple[np.ndarray, np.ndarray]:
        """Run the image backbone on each product's first image: patches ``[n, P, D]``, has_image
        ``[n]``; with ``model.max_images`` N > 1 on its first N images: ``[n, N*P, D]``, ``[n, N]``."""
        from vlsearch.images import get_backbone, load_image

        if self._backbone is None:
            # the patches the model was trained on: its backbone, with their colour histograms
            images = replace(self.config.images, colour_levels=self.image.get("colour_levels", 0))
            self._backbone = get_backbone(self.image["backbone"], images)
            if self._backbone.dim != int(self.image["dim"]):
                raise WorkdirError(
                    f"image backbone {self.image['backbone']!r} gives {self._backbone.dim}-d patches, the model "
                    f"was trained on {self.image['dim']}-d ones (images settings differ from the work dir's)"
                )
        backbone = self._backbone
        images = max(1, self.config.model.max_images)
        num_patches = int(np.prod(self.image["grid"]))
        patches = np.zeros((len(products), images, num_patches, int(self.image["dim"])), np.float32)
        has_image = np.zeros((len(products), images), dtype=bool)
        slots, pixels = [], []
        for i, product in enumerate(products):
            for k, path in enumerate(product.image_paths[:images]):
                try:
                    pixels.append(backbone.preprocess(load_image(path)))
                except InputError:
                    continue
                slots.append((i, k))
        batch = self.config.images.batch_size
        for lo in range(0, len(slots), batch):
            out = backbone(torch.stack(pixels[lo:lo + batch]).to(backbone.device))
            rows, ks = (np.array(a) for a in zip(*slots[lo:lo + batch]))
            # float16 round trip: the same values the feature cache stores
            patches[rows, ks] = out.cpu().numpy().astype(np.float16).astype(np.float32)
            has_image[rows, ks] = True
        if images == 1:
            return patches[:, 0], has_image[:, 0]
        return patches.reshape(len(products), images * num_patches, -1), has_image
