"""Analysis of training workdirs: tables, figures and the `dpq-report` page.

- `runs`: read workdirs (config, report, metrics log, splits) into tables; no JAX needed.
- `evaluation`: what a workdir does not store, recomputed from the report's checkpoint
  (PR curves, precision@K, code usage, top-k lists).
- `code_stats`: codeword usage, entropy, bit balance and code-group sizes (NumPy).
- `plots`: matplotlib figures of those tables.
- `cli`: `dpq-report WORKDIR [WORKDIR ...] --output DIR`.

`notebooks/analysis.py` walks through the same steps.
"""
