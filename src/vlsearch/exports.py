"""Model exports that other tools load: the query tower (and the title encoder) as a
sentence-transformers model directory (``vlsearch export --format sentence-transformers``).

The exported directory is a plain sentence-transformers model: ``modules.json`` lists

0. :class:`VlsearchTextInput` — vlsearch's own text handling, which no stock module has:
   term sorting (``data.sort_terms``: "dress red" and "red dress" give one vector) and, for
   queries, Keyword Enhancement (click-log keywords as the second segment, from the
   ``keywords.json`` saved beside it), tokenized exactly as :class:`vlsearch.model.Retriever`
   does; then the BERT tower, saved as a standard Hugging Face BERT folder (``AutoModel``,
   ``AutoConfig`` and ``AutoTokenizer`` open ``0_VlsearchTextInput/`` on their own);
1. the stock ``Pooling`` (mean or CLS, as trained), 2. ``Dense`` (the tower's projection,
   no activation) and 3. ``Normalize``.

``SentenceTransformer(OUT, trust_remote_code=True).encode(texts)`` then equals ``Retriever.encode_queries(texts)``
(``--tower query``) or the title view of ``Retriever.encode_products`` (``--tower title``;
the whole product vector when the model is title-only) to float32 rounding. Module 0 is
imported as ``vlsearch.exports.VlsearchTextInput``, so the loading environment needs
vlsearch installed; sentence-transformers (since v5) asks for ``trust_remote_code=True``
before it imports any module class outside its own package, and no code is read from OUT.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from sentence_transformers.sentence_transformer.modules import InputModule

from vlsearch.errors import VlsearchError

FORMATS = ("sentence-transformers",)  # export formats `vlsearch export` writes
TOWERS = ("query", "title")  # which text tower is exported
INPUT_CONFIG_FILE = "vlsearch_text.json"  # module 0's own settings (config.json is the BERT's)
KEYWORDS_FILE = "keywords.json"
EXPORT_INFO_FILE = "vlsearch_export.json"  # what was exported from which model


class VlsearchTextInput(InputModule):
    """Sentence-transformers input module: vlsearch term sorting + Keyword Enhancement +
    tokenizer, then the BERT tower (outputs ``token_embeddings`` for the stock Pooling)."""

    config_file_name = INPUT_CONFIG_FILE
    config_keys: ClassVar[list[str]] = ["max_len", "sort_terms", "keyword_enhancement", "keywords_per_query",
                   "keyword_max_query_terms"]
    save_in_root = False

    def __init__(self, bert, tokenizer, keywords, max_len: int, sort_terms: bool,
                 keyword_enhancement: bool = False, keywords_per_query: int = 0,
                 keyword_max_query_terms: int = 0):
        super().__init__()
        self.bert = bert
        self.vlsearch_tokenizer = tokenizer
        self.keywords = keywords
        self.max_len = int(max_len)
        self.sort_terms = bool(sort_terms)
        self.keyword_enhancement = bool(keyword_enhancement)
        self.keywords_per_query = int(keywords_per_query)
        self.keyword_max_query_terms = int(keyword_max_query_terms)

    @property
    def tokenizer(self):  # sentence-transformers reads model.tokenizer (e.g. for max length)
        return self.vlsearch_tokenizer

    @property
    def max_seq_length(self) -> int:
        return self.max_len

    def get_embedding_dimension(self) -> int:
        return int(self.bert.config.hidden_size)

    def _keywords(self, texts: list[str]) -> list[list[str]]:
        if not self.keyword_enhancement or not len(self.keywords):
            return [[] for _ in texts]
        return [self.keywords.keywords(t, self.keywords_per_query, self.keyword_max_query_terms) for t in texts]

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
        from vlsearch.model.retriever import tokenize_with_keywords

        texts = [(prompt or "") + str(text) for text in inputs]
        ids, mask, types = tokenize_with_keywords(self.vlsearch_tokenizer, texts, self._keywords(texts),
                                                  self.max_len, self.sort_terms)
        return {"input_ids": torch.as_tensor(ids), "attention_mask": torch.as_tensor(mask),
                "token_type_ids": torch.as_tensor(types)}

    def forward(self, features: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        out = self.bert(input_ids=features["input_ids"], attention_mask=features["attention_mask"],
                        token_type_ids=features["token_type_ids"])
        features["token_embeddings"] = out.last_hidden_state
        return features

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        path = Path(output_path)
        self.bert.save_pretrained(path, safe_serialization=safe_serialization)
        self.vlsearch_tokenizer.save(path)
        self.keywords.save(path / KEYWORDS_FILE)
        self.save_config(output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs) -> VlsearchTextInput:
        from transformers import BertModel

        from vlsearch.model.keywords import KeywordTable
        from vlsearch.text import Tokenizer

        path = Path(model_name_or_path) / subfolder
        config = json.loads((path / INPUT_CONFIG_FILE).read_text(encoding="utf-8"))
        bert = BertModel.from_pretrained(path, add_pooling_layer=False)
        keywords = KeywordTable.load(path / KEYWORDS_FILE) if (path / KEYWORDS_FILE).exists() else KeywordTable()
        return cls(bert, Tokenizer.from_dir(path), keywords, **config)


def export_sentence_transformers(model_dir: str | Path, out_dir: str | Path, tower: str = "query") -> Path:
    """Write the ``tower`` of the model in ``model_dir`` as a sentence-transformers directory."""
    import copy

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling
    from torch import nn

    from vlsearch.model import Retriever
    from vlsearch.model.keywords import KeywordTable

    if tower not in TOWERS:
        raise VlsearchError(f"tower {tower!r}: expected one of {', '.join(TOWERS)}")
    retriever = Retriever.load(model_dir)
    cfg, model = retriever.config.model, retriever.model
    if cfg.architecture == "uni-encoder" and cfg.use_images and tower == "title":
        raise VlsearchError("the uni-encoder reads title and image patches in one sequence: its title "
                            "encoder does not stand alone")
    if tower == "query":
        encoder = model.query_tower
        projection = model.proj["query"] if model.query is not None else model.proj["text"]
        text_input = VlsearchTextInput(
            copy.deepcopy(encoder.bert), retriever.tokenizer, retriever.keywords, cfg.max_query_len,
            retriever.config.data.sort_terms, cfg.keyword_enhancement, cfg.keywords_per_query,
            cfg.keyword_max_query_terms)
    else:
        encoder, projection = model.text, model.proj["text"]
        text_input = VlsearchTextInput(copy.deepcopy(encoder.bert), retriever.tokenizer, KeywordTable(),
                                       cfg.max_title_len, retriever.config.data.sort_terms)
    hidden = encoder.hidden_size
    modules: list[nn.Module] = [text_input, Pooling(hidden, pooling_mode=encoder.pooling)]
    if isinstance(projection, nn.Linear):
        modules.append(Dense(hidden, projection.out_features, bias=projection.bias is not None,
                             activation_function=nn.Identity(),
                             init_weight=projection.weight.detach().clone(),
                             init_bias=None if projection.bias is None else projection.bias.detach().clone()))
    modules.append(Normalize())
    st = SentenceTransformer(modules=modules, device="cpu")
    st.eval()
    out = Path(out_dir)
    st.save(str(out))
    info = {"from_model": str(Path(model_dir).resolve()), "tower": tower, "architecture": cfg.architecture,
            "embed_dim": retriever.embed_dim, "sort_terms": retriever.config.data.sort_terms,
            "keyword_enhancement": tower == "query" and cfg.keyword_enhancement,
            "title_is_the_product_vector": tower == "title" and not cfg.use_images}
    (out / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return out


def export_model(model_dir: str | Path, out_dir: str | Path, fmt: str = "sentence-transformers",
                 tower: str = "query") -> Path:
    """``vlsearch export``: one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise VlsearchError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return export_sentence_transformers(model_dir, out_dir, tower)
