"""Product images, one concern a module:

* ``loading``: :func:`load_image` (decode a file into RGB, or an error naming it);
* ``backbones``: the frozen CNN registry (:class:`Backbone`, :func:`get_backbone`);
* ``cache``: the resumable on-disk feature cache (:class:`FeatureCache`);
* ``features``: :func:`extract_features`, the backbone over each product's first image.

Importing the package loads torch (through ``backbones``).
"""

from vlsearch.images.backbones import (
    Backbone,
    EfficientNetLiteBackbone,
    RandomCNNBackbone,
    backbone_names,
    get_backbone,
    register_backbone,
)
from vlsearch.images.cache import FORMAT_VERSION, INDEX_FILE, PATCHES_FILE, CacheMeta, FeatureCache
from vlsearch.images.features import ExtractionStats, extract_features, extract_product_features
from vlsearch.images.loading import load_image

__all__ = [
    "FORMAT_VERSION",
    "INDEX_FILE",
    "PATCHES_FILE",
    "Backbone",
    "CacheMeta",
    "EfficientNetLiteBackbone",
    "ExtractionStats",
    "FeatureCache",
    "RandomCNNBackbone",
    "backbone_names",
    "extract_features",
    "extract_product_features",
    "get_backbone",
    "load_image",
    "register_backbone",
]
