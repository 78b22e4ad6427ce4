"""Dataclass configs for every stage (data, images, model, train, index, serve), TOML I/O, presets.

Every field has a default and a one-line comment; code paths read these fields instead of
holding magic constants. A TOML file on disk mirrors the nesting of :class:`Config`
(``[data]``, ``[images]``, ``[model]``, ``[train]``, ``[index]``, ``[serve]``); unknown
keys are refused with the section and key named, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

# The short-list fill's relaxation order: [serve] fill_relax_order, and the order the index
# stores each logged query's fill lists in ([index] qid_fill_relax_order)
FILL_RELAX_ORDER: tuple[str, ...] = ("colour", "usage", "gender")


class ConfigError(ValueError):
    """A config file or value is invalid; the message names the file, section and key."""


@dataclass
class DataConfig:
    """Catalog loading, mocked queries, splits and evaluation sets (``vlsearch prepare``)."""

    seed: int = 13  # drives product/query splits and the mocked-query generator
    limit: int | None = None  # load at most this many catalog rows (None: all)
    heldout_product_fraction: float = 0.1  # products never seen in training (cold-start eval)
    valid_query_fraction: float = 0.05  # share of distinct query attribute-sets kept for validation
    test_query_fraction: float = 0.05  # share of distinct query attribute-sets kept for test
    queries_per_product: int = 4  # mocked queries generated from each product
    typo_rate: float = 0.03  # chance that a generated query gets one typo
    max_eval_queries: int = 2000  # cap on queries per BEIR eval split (sampled with the seed)
    brand_min_products: int = 2  # a title prefix must start this many titles to count as a brand
    sort_terms: bool = True  # sort query/title terms lexicographically (as in the papers)


@dataclass
class ImageConfig:
    """Frozen CNN backbone that turns each product image into a grid of patch vectors."""

    backbone: str = "efficientnet-lite0"  # name in the backbone registry (vlsearch.images)
    width: int = 96  # input width in pixels (images are resized to width x height)
    height: int = 128  # input height in pixels; 96x128 gives 4 rows x 3 cols at stride 32
    # a colour histogram of each patch's pixels appended to its vector: levels per RGB channel
    # (soft bins, levels**3 values, square-rooted; vlsearch.images.colour); 0 = CNN features only
    colour_levels: int = 0
    batch_size: int = 16  # images per forward pass during extraction (16-32 fastest on CPU)
    chunk_size: int = 512  # images between two durable progress records (resume granularity)
    num_threads: int = 1  # torch threads for extraction (0: torch default; 1 best on shared CPUs)
    decode_workers: int = 1  # DataLoader worker processes decoding ahead of the CNN (0: inline)


@dataclass
class ModelConfig:
    """Towers, fusion and similarity (MAKE / Delving); baselines are settings of these fields."""

    architecture: str = "make"  # make | uni-encoder | dual-encoder | mixed-encoder
    init: str = "minilm"  # minilm (packaged all-MiniLM-L6-v2) | random | PATH to a local BERT dir
    hidden_size: int = 384  # transformer width (ignored when init loads a checkpoint)
    num_layers: int = 6  # text transformer depth (ignored when init loads a checkpoint)
    num_heads: int = 12  # attention heads (ignored when init loads a checkpoint)
    intermediate_size: int = 1536  # feed-forward width (ignored when init loads a checkpoint)
    image_layers: int = 2  # depth of the image transformer over projected patch vectors
    embed_dim: int = 256  # size of the L2-normalised output vectors
    max_query_len: int = 24  # query tokens (plus keyword segment) after tokenization
    max_title_len: int = 40  # product-text tokens (title + attribute text) after tokenization
    # attribute text after the title for the product tower, in order: str.format parts over
    # brand, category and attribute keys, e.g. ["colour {colour}", "{sub_category}"]; a part
    # whose field a product lacks is left out; [] = title only (vlsearch.model.product_text)
    product_text: tuple[str, ...] = ()
    product_text_separator: str = ", "  # joins the title and the template's parts
    use_images: bool = True  # False: title-only product tower (ablation)
    # images per product the image tower reads (catalog order, patches of up to N images with
    # a learned image-position embedding and a mask over absent ones); 1 = the first image only
    max_images: int = 1
    modal_adaptation: bool = True  # per-product softmax weights over title/image/fused vectors
    keyword_enhancement: bool = True  # enrich short queries with click-log keywords
    keywords_per_query: int = 4  # keywords appended to a query by Keyword Enhancement
    keyword_max_query_terms: int = 3  # only queries with at most this many terms are enhanced
    init_temperature: float = 0.05  # initial tau of the matching softmax (learnable)
    dropout: float = 0.1  # dropout inside the towers
    pooling: str = "mean"  # text pooling: mean (how MiniLM was trained) | cls (as in the papers)
    project: bool = True  # linear projection to embed_dim (False: output the pooled hidden state)
    tied_projection_init: bool = True  # make: the query head starts as a copy of the title head
    fusion_layers: int = 1  # transformer layers of the fusion step (make, mixed-encoder)
    ma_hidden_size: int = 128  # hidden units of the Modal Adaptation MLP
    keyword_min_term_count: int = 3  # clicks a query term needs before it gets keywords
    keyword_min_pair_count: int = 2  # clicks a (query term, title term) pair needs to count
    keywords_per_term: int = 8  # top-PMI keywords stored per query term in keywords.json
    encode_batch_size: int = 128  # texts/products per forward pass in Retriever.encode_*
    # text towers run a batch in up to N groups of rows of similar length, each trimmed to its
    # own widest row: the same outputs up to float rounding, fewer padded tokens; 1 = one pass
    length_groups: int = 1


@dataclass
class TrainConfig:
    """Optimisation, objectives, negative sampling and checkpoints (``vlsearch train``)."""

    seed: int = 13  # drives data order, masking and random init
    steps: int = 1000  # optimiser steps
    batch_size: int = 64  # (query, product) pairs per step and per process
    lr: float = 5e-5  # peak learning rate (AdamW) of towers loaded from a checkpoint
    new_layer_lr: float = 1e-3  # peak learning rate of layers that start from random weights
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_fraction: float = 0.05  # share of steps with linear warm-up, then linear decay
    grad_clip: float = 1.0  # max global gradient norm
    # objective weights (0 switches an objective off)
    w_qpm: float = 1.0  # query-product matching (contrastive)
    w_mpm: float = 0.1  # masked patch modeling
    w_mlm: float = 0.1  # masked language modeling on queries and titles
    w_qpc: float = 0.1  # query-product classification (AM-Softmax over categories)
    w_tia: float = 0.0  # title-image alignment (contrastive; beyond the papers, vlsearch.objectives.alignment)
    mpm_kind: str = "contrastive"  # contrastive (Delving) | regression (MAKE)
    mpm_mask_ratio: float = 0.25  # share of image patches masked for MPM
    mpm_init_temperature: float = 0.1  # initial tau_m of contrastive MPM (learnable)
    mlm_probability: float = 0.15  # share of tokens selected for MLM (80/10/10)
    mlm_every: int = 1  # MLM on every N-th step only (its second pass of both towers is costly)
    mlm_fraction: float = 1.0  # share of the batch's pairs MLM runs on (the first ceil(f*B))
    qpc_margin: float = 0.35  # AM-Softmax additive margin
    qpc_scale: float = 30.0  # AM-Softmax scale
    logq_correction: bool = True  # subtract log Q(p) from matching logits
    memory_bank: bool = True  # MBNS: FIFO queue of recent product vectors as negatives
    memory_bank_batches: int = 16  # queue size in batches
    memory_bank_start: float = 0.3  # fraction of training after which MBNS is used
    memory_bank_weight: float = 0.5  # alpha: weight of memory-bank negatives in the denominator
    cross_device: bool = True  # CDNS: product vectors of other ranks as negatives
    cross_device_start: float = 0.3  # fraction of training after which CDNS is used
    cross_device_weight: float = 1.0  # beta: weight of cross-device negatives (beta > alpha)
    log_every: int = 10  # steps between metrics.jsonl lines
    eval_every: int = 200  # steps between validation Recall@K (0: only at the end)
    eval_k: int = 100  # K of validation Recall@K
    eval_max_products: int = 5000  # validation corpus cap (sampled, relevant ones kept)
    checkpoint_every: int = 200  # steps between atomic checkpoints
    keep_checkpoints: int = 2  # checkpoints kept on disk
    num_threads: int = 0  # torch CPU threads (0: torch's default)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    bf16: bool = True  # bf16 autocast on CUDA
    cpu_bf16: bool = False  # bf16 autocast on CPU too (AVX-512 bf16 / AMX); weights stay fp32
    freeze_word_embeddings: bool = False  # text towers' word embeddings (tied MLM output) frozen
    adam_beta2: float = 0.98  # AdamW second-moment decay (beta1 stays 0.9)
    eval_at_start: bool = True  # validation Recall@K before the first step (untrained baseline)
    eval_split: str = "valid"  # work-directory eval split used for validation
    tensorboard: bool = False  # also log every metrics.jsonl row to TensorBoard (needs `pip install tensorboard`)
    tensorboard_dir: str = "tensorboard"  # TensorBoard event folder, relative to the model directory


@dataclass
class IndexConfig:
    """Offline export and indexing (``vlsearch index``)."""

    kind: str = "ivf"  # flat | ivf | hnsw
    nlist: int = 0  # IVF coarse clusters (0: about 4*sqrt(N))
    nprobe: int = 16  # IVF clusters visited per search
    hnsw_m: int = 32  # HNSW graph degree
    hnsw_ef_search: int = 128  # HNSW search breadth
    export_batch_size: int = 256  # products encoded per batch during export
    export_dtype: str = "float32"  # float32 | float16 on disk
    export_device: str = "cpu"  # product encoding: cpu, or cuda (under torchrun: cuda:LOCAL_RANK)
    qid_top_k: int = 200  # products stored per logged query in the qid table
    # a logged query whose constraints allow fewer than qid_top_k products also gets the lists
    # of its short-list fill stored (index/fill_lists.py), relaxing these fields in this order
    # as [serve] fill_relax_order does (empty: none stored, the fill searches live)
    qid_fill_relax_order: tuple[str, ...] = FILL_RELAX_ORDER
    recall_sample_queries: int = 500  # queries used to report ANN recall@100 against exact
    lexical_stemmer: str = "english"  # tantivy Snowball stemmer of the BM25 fields ("" for none)
    onnx_query_encoder: bool = True  # export the query tower to model/query.onnx (needs onnxruntime)
    onnx_parity_queries: int = 200  # logged queries the ONNX export is checked on against torch
    onnx_min_cosine: float = 0.9999  # ONNX vs torch cosine every parity query must reach, else no export
    keep_versions: int = 3  # published index versions kept on disk
    backend: str = "faiss"  # faiss (in-process, one machine) | milvus (pymilvus: milvus-lite or a server)
    milvus_uri: str = "work/milvus.db"  # milvus: a file path runs milvus-lite embedded, http://host:19530 a server
    milvus_token_env: str = "VLSEARCH_MILVUS_TOKEN"  # milvus: env variable holding the token (never stored)
    milvus_prefix: str = "vlsearch"  # milvus: collection name prefix; alias <prefix>_current is published
    milvus_lexical: bool = True  # milvus: BM25 lexical channel inside Milvus (False: tantivy in-process)
    milvus_qid_table: bool = True  # milvus: qid table as a Milvus collection (False: memory-mapped files)
    milvus_timeout_s: float = 10.0  # milvus: seconds per serving call before the server counts as unreachable
    milvus_build_timeout_s: float = 600.0  # milvus: seconds per build call (create, insert, flush, load)
    update_rebuild_changed_fraction: float = 0.3  # live updates: rebuild advised past this changed share
    update_rebuild_residual_ratio: float = 1.2  # ... or when updated vectors sit this much farther from IVF centroids
    update_residual_sample: int = 10000  # build vectors sampled to measure the IVF baseline residual
    update_residual_min_vectors: int = 100  # updated vectors needed before the residual ratio counts
    update_qid_research_limit: int = 0  # qid entries an update searches again at most (rest dropped; 0: all)
    # Query understanding mined from the catalog titles and the click log (index/evidence.py)
    mine_max_phrase_terms: int = 2  # longest mined phrase, in terms
    mine_min_support: int = 20  # products (catalog) or clicks (log) a phrase needs per source
    mine_min_confidence: float = 0.9  # share of a source its value set must reach
    mine_max_values: int = 3  # largest value set a mined constraint may have
    mine_min_lift: float = 1.5  # value-set share over its base rate: below, the phrase says nothing
    mine_ambiguous: str = "union"  # agreeing multi-value terms ("sneakers"): union (hard) | soft
    mine_single_source_confidence: float = 0.98  # one source alone (the other silent) is hard from this share
    mine_hard_fields: tuple[str, ...] = ("brand", "category", "colour", "usage")  # others: soft only
    spell_min_query_count: int = 0  # >0: logged-query terms in this many distinct queries join the spelling vocabulary


@dataclass
class ServeConfig:
    """Online engine and HTTP service (``vlsearch serve``)."""

    default_k: int = 100  # results per query when k is not given
    max_k: int = 1000  # largest k accepted
    max_query_chars: int = 256  # longer queries get a 4xx
    max_filter_fields: int = 16  # fields in one request's filters (more: 400)
    max_filter_values: int = 64  # values of one filter field (GET: half from filter=, half from filters=)
    max_value_chars: int = 256  # characters of one filter value or field name (more: 400)
    max_json_depth: int = 8  # nesting of [ and { in a request body or filters JSON (deeper: 400)
    max_body_bytes: int = 65536  # request body size (larger: 413, never read whole)
    max_image_bytes: int = 16 * 1024 * 1024  # a catalog image larger than this is not served (404)
    timeout_keep_alive: int = 5  # seconds an idle keep-alive connection stays open
    timeout_header: float = 10.0  # seconds a client has to send a complete request head (then closed)
    limit_concurrency: int = 256  # connections + running requests at once (more: 503)
    backlog: int = 2048  # pending TCP connections the listening socket queues
    max_header_bytes: int = 16384  # request line + headers size (larger: the connection is closed)
    timeout_graceful_shutdown: int = 10  # seconds running requests get to finish on shutdown
    channels: tuple[str, ...] = ("embedding", "lexical")  # retrieval channels merged
    lexical_weight: float = 0.3  # weight of the lexical channel in the merge
    filter_selective_fraction: float = 0.05  # filters matching less than this share run inside ANN
    overfetch_factor: float = 2.0  # broad filters: fetch k / (filter's share) * factor from ANN, then post-filter
    filter_widen_search: bool = True  # selective filters scale nprobe/efSearch by 1/selectivity
    rrf_k: int = 60  # reciprocal-rank fusion: channel score = weight / (rrf_k + rank)
    # Every channel fetches this many results (at least offset + k) before fusion, so the
    # order of the top results never depends on k (Elasticsearch's rank_window_size).
    fusion_depth: int = 100
    max_offset: int = 1000  # largest pagination offset accepted
    # Null-result recovery: when fewer than relax_below products satisfy every constraint,
    # query-understanding constraints are dropped one at a time (caller filters never) until
    # enough do: first the single drop that suffices, earliest in relax_order, else the
    # earliest of relax_order. 0 switches it off.
    relax_below: int = 1
    relax_order: tuple[str, ...] = ("usage", "gender", "colour", "sub_category", "master_category",
                                    "category", "brand")
    filter_cache_size: int = 256  # constraint sets whose row masks are kept (LRU)
    understanding_cache_size: int = 4096  # normalised query texts whose auto constraints are kept (LRU)
    product_cache_size: int = 65536  # product rows whose parsed attributes are kept (LRU; hits' metadata)
    synonyms: bool = False  # also use the hand-written phrase tables stored in the lexicon
    soft_weight: float = 0.5  # fused-score boost of a hit matching a soft preference, in units of a rank-1 RRF score
    # Short lists filled: when the hard constraints allow fewer than k products, the rest
    # are the nearest products with the auto constraints on these fields dropped, one more
    # field at a time in this order (category, brand and caller filters are always kept);
    # such hits are marked relaxed. Empty: no fill.
    fill_relax_order: tuple[str, ...] = FILL_RELAX_ORDER
    qid_fill: bool = True  # a logged query's fill uses the lists stored with the qid table (False: searched live)
    reload_check: bool = True  # each search checks whether a new index version was published
    qid_table: bool = True  # answer logged queries from the qid table (False: always encode + ANN)
    torch_threads: int = 1  # torch intra-op threads in `vlsearch serve` (1 is fastest for one short query)
    query_encoder: str = "auto"  # auto (ONNX when the version has model/query.onnx) | onnx | torch
    onnx_threads: int = 1  # onnxruntime intra-op threads per worker
    workers: int = 0  # `vlsearch serve` worker processes (0: one per CPU core)
    spelling: bool = True  # correct query terms unknown to the catalog vocabulary (index/spelling.py)
    spell_min_term_chars: int = 4  # shorter unknown terms are left as typed (too ambiguous)
    spell_two_edit_chars: int = 6  # terms at least this long may be two edits away, shorter ones one
    spell_max_edit_distance: int = 2  # largest Damerau-Levenshtein distance of a correction
    host: str = "127.0.0.1"  # bind address
    port: int = 8000  # bind port


@dataclass
class Config:
    """All settings of one run; ``Config.load(path)`` reads TOML, ``save`` writes it."""

    data: DataConfig = field(default_factory=DataConfig)
    images: ImageConfig = field(default_factory=ImageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    @classmethod
    def load(cls, path: str | Path, base: Config | None = None) -> Config:
        """Read a TOML file over ``base`` (default: all defaults)."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        return update(base or cls(), raw, source=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(tomli_w.dumps(to_dict(self)), encoding="utf-8")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass to plain dict, dropping None (TOML has no null) and tuples to lists."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return clean(asdict(obj))


def update(obj: Any, raw: dict[str, Any], source: str = "config") -> Any:
    """Return a copy of dataclass ``obj`` with ``raw`` applied; unknown keys raise ConfigError."""
    known = {f.name: f for f in fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(
                f"{source}: unknown key {key!r} in [{type(obj).__name__}]; "
                f"expected one of {sorted(known)}"
            )
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [{key}] must be a table")
            changes[key] = update(current, value, f"{source} [{key}]")
        else:
            changes[key] = _coerce(current, value, f"{source}: {key}")
    return dataclasses.replace(obj, **changes)


def _coerce(current: Any, value: Any, where: str) -> Any:
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(value)
    if current is not None and not isinstance(value, type(current)):
        raise ConfigError(f"{where} must be {type(current).__name__}, got {value!r}")
    return value


PRESETS: dict[str, dict[str, Any]] = {
    # random init, 2 small layers: unit tests and smoke runs
    "tiny": {
        "model": {
            "init": "random", "hidden_size": 64, "num_layers": 2, "num_heads": 2,
            "intermediate_size": 128, "image_layers": 1, "embed_dim": 64,
        },
        "train": {"batch_size": 32, "lr": 1e-3, "steps": 200, "memory_bank_batches": 4},
    },
    # CPU default: query and title towers from all-MiniLM-L6-v2, small image transformer
    "minilm": {"model": {"init": "minilm", "image_layers": 2, "embed_dim": 256}},
    # the papers' size, for GPUs
    "paper": {
        "model": {
            "init": "random", "hidden_size": 768, "num_layers": 12, "num_heads": 12,
            "intermediate_size": 3072, "image_layers": 12, "embed_dim": 256,
        },
        "train": {"batch_size": 256, "lr": 1e-4, "new_layer_lr": 1e-4},
    },
}


def preset(name: str) -> Config:
    """A named preset (tiny, minilm, paper) applied over the defaults."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return update(Config(), PRESETS[name], source=f"preset {name}")


def apply_overrides(config: Config, items: list[str] | tuple[str, ...], source: str = "--set") -> Config:
    """``SECTION.KEY=VALUE`` overrides (e.g. ``train.steps=300``) applied over ``config``.

    VALUE is read as a TOML value (``300``, ``0.5``, ``true``, ``["a", "b"]``, ``"text"``);
    anything that is not valid TOML is taken as a plain string (``index.kind=ivf``). Unknown
    sections or keys and wrongly typed values raise ConfigError naming the override.
    """
    for item in items or ():
        path, sep, text = str(item).partition("=")
        section, dot, key = path.strip().partition(".")
        if not sep or not dot or not section or not key:
            raise ConfigError(f"{source} {item!r}: expected SECTION.KEY=VALUE, e.g. train.steps=300")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        config = update(config, {section: {key: value}}, source=f"{source} {item!r}")
    return config
