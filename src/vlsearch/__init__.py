"""vlsearch: text-to-multimodal product retrieval for e-commerce search."""

__version__ = "0.1.0"
