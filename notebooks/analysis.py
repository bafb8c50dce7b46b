# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Analysing a trained run, step by step
#
# From a `dpq-train` workdir to a custom query against its index: the report's numbers,
# training curves, the checkpoint's codes, precision-recall and precision@K curves, how the
# codes use the code space, retrieved images, and a search with an image of your own.
# `dpq-report WORKDIR --output DIR` draws the same figures into one HTML page.
#
# The notebook expects a finished workdir, e.g. the README's ORL run (1–2 minutes on CPU):
#
# ```
# dpq-train --config=configs/orl_opqn.py --workdir=workdirs/orl_seen
# ```
#
# Set `WORKDIR` in the next cell, or the environment variable `DPQ_WORKDIR` (the CI test
# points it at a tiny run it trains). With papermill, the cell is tagged `parameters`.
# This file is `notebooks/analysis.py` (jupytext percent format); `analysis.ipynb` is
# generated from it with `jupytext --to ipynb notebooks/analysis.py`.

# %% tags=["parameters"]
import os

WORKDIR = os.environ.get("DPQ_WORKDIR", "workdirs/orl_seen")
NUM_QUERIES = 4  # query rows of the image grid
K = 8  # results per query

# %%
# %matplotlib inline
# ruff: noqa: E402 (notebook cells import what they use)
import sys

import numpy as np

import dpq_jax
from dpq_jax.analysis import evaluation, plots, runs

print(f"dpq_jax {dpq_jax.__version__}; kernel python: {sys.executable}")

# %% [markdown]
# ## 1. What the workdir holds
#
# `runs.load_run` reads `config.json`, `report.json`, `metrics.jsonl` and the split file;
# no JAX is needed for this part. Each row of the results table carries the protocol,
# split sizes, search and metric conventions its numbers were measured under.

# %%
run = runs.load_run(WORKDIR)
report = run.require_report()
print(f"{run.method} on {run.dataset}; {report['splits']}")
print(f"checkpoint step {report['selected_step']} (selected on {report['selected_on']})")
for row in runs.results_table([run]):
    numbers = ", ".join(f"{k}={v:.4f}" for k, v in row["metrics"].items())
    raw = ", ".join(f"{k}={v:.4f}" for k, v in row["raw_pixels"].items())
    print(
        f"[{row['eval']}] {row['bits']}-bit, {row['num_queries']} queries × "
        f"{row['num_database']} database items, {row['search']}: {numbers}"
    )
    print(f"    raw pixels: {raw}; codes: {row['code_stats']}")
    print(f"    conventions: {runs.format_conventions(row['conventions'])}")

# %% [markdown]
# ## 2. Training curves
#
# The loss at each logged step and the validation split's mAP, the metric the checkpoint
# was selected on (never the query split).

# %%
training = runs.training_table([run])
plots.training_figure(training)

# %% [markdown]
# ## 3. The checkpoint's codes
#
# The curves and code statistics are not stored in the workdir. `evaluation.encode_run`
# restores the report's checkpoint and encodes its query and database splits exactly as the
# evaluator did; recomputing the report's metrics from them is a check that the workdir,
# data and software still agree.

# %%
encoded = evaluation.encode_run(run)
recomputed = evaluation.recomputed_metrics(encoded)
reported = {r["bits"]: r["metrics"] for r in report["results"] if r["eval"] == encoded.eval_name}
for row in recomputed:
    for key, value in row["metrics"].items():
        print(
            f"{row['bits']}-bit {key}: report {reported[row['bits']][key]:.6f}, "
            f"recomputed {value:.6f}"
        )

# %% [markdown]
# ## 4. Precision-recall and precision@K
#
# Mean curves over the query split, with the report's tie and empty-query rules. For binary
# codes, the curve by Hamming radius (items within distance r) is drawn too.

# %%
pr_rank = evaluation.pr_table(encoded, by="rank")
plots.pr_figure(pr_rank, by="rank")

# %%
pr_radius = evaluation.pr_table(encoded, by="radius")  # empty for PQ codes
plots.pr_figure(pr_radius, by="radius") if pr_radius else print("PQ codes: no Hamming radius.")

# %%
precision_at_k = evaluation.precision_at_k_table(pr_rank)
for row in precision_at_k:
    if row["k"] in (1, 5, 10, 50):
        print(f"{row['bits']}-bit P@{row['k']} = {row['precision']:.4f}")
plots.precision_at_k_figure(pr_rank)

# %% [markdown]
# ## 5. How the codes use the code space
#
# PQ codes: how often each codeword of each codebook is used, and each codebook's usage
# entropy against its maximum log2 K. Binary codes: the fraction of database items with each
# bit set. Then the groups of identical database codes: items in one group cannot be told
# apart by the search.

# %%
usage = evaluation.code_usage_table(encoded)
for row in usage:
    print(
        f"{row['bits']}-bit: {row['distinct_codes']} distinct codes for "
        f"{int(row['group_sizes'].sum())} items, largest group {row['largest_code_group']}"
    )
plots.code_usage_figure(usage)

# %%
plots.code_groups_figure(usage)

# %% [markdown]
# ## 6. Retrieved images
#
# Queries spread over the query split, and their top results in the database as the run's
# index ranks them: green frames are relevant (same label), red are not.

# %%
top = evaluation.top_k_table(encoded, num_queries=NUM_QUERIES, k=K)
plots.retrieval_grid_figure(top, encoded.source.images, title=run.name)

# %% [markdown]
# ## 7. A custom query against the index
#
# `Retriever` (`dpq_jax.search.retriever`) encodes raw images with the run's evaluation
# preprocessing and searches the method's index. `Retriever.from_workdir(WORKDIR)` restores
# the checkpoint itself; here it reuses the model restored above. The database is the
# report's database split; the query is a new image: a query face mirrored and darkened.
# To search with a file instead: `np.asarray(PIL.Image.open(path).convert("L"))[..., None]`
# (`"RGB"` for colour models), of the size the run was trained on.

# %%
from dpq_jax.search.retriever import Retriever

retriever = Retriever(encoded.config, encoded.method, encoded.model, encoded.meta)
retriever.add(encoded.source.images[encoded.db_indices], ids=encoded.db_indices)
print(f"indexed {len(retriever)} images: {retriever.index.metadata()}")

query_index = int(encoded.query_indices[0])
image = encoded.source.images[query_index]
custom = (image[:, ::-1].astype(np.float32) * 0.8).astype(np.uint8)  # mirrored, darker
ids, scores = retriever.search(custom[None], k=K)
labels = np.asarray(encoded.source.labels)
relevant = evaluation.relevant(labels[[query_index]], labels[ids])
for rank, (i, s, rel) in enumerate(zip(ids[0], scores[0], relevant[0], strict=True), 1):
    print(f"#{rank}: item {i}, label {labels[i]}, score {s:.4g}, relevant {bool(rel)}")

# %%
custom_row = {
    "query_index": query_index,
    "query_image": custom,
    "query_name": "custom query",
    "query_label": labels[query_index],
    "result_indices": ids[0],
    "relevant": relevant[0],
}
plots.retrieval_grid_figure([custom_row], encoded.source.images, title="custom query")
