"""Stage 1, ingest: a dataset source (IDX, NumPy, CSV, Parquet, image folders, CIFAR batches, URLs,
sklearn's digits) into versioned, validated Parquet with a manifest and a content hash; reading stored
splits back; preparing pixels as a model's inputs.

May import: vae's root modules (errors, paths, config, user_code, cluster). Nothing else in vae.
"""
