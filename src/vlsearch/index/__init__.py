"""Offline indexing: vector export, FAISS ANN index, qid table, tantivy index, query understanding.

``build_index(workdir, model_dir, out_dir, config)`` (in :mod:`vlsearch.index.builder`) runs
them all and publishes a self-contained index version.
"""
