"""Progressive (prefix) codes as a `PQMethod`: one model, every code length (DPQ-G, Progressive
OPQN).

The database is encoded once: `encode_fn` stores `codes = ([N, L, ...] uint8,)`, every level's
code. Head l (l = 1..L, `head = l - 1`) is the first l levels, flattened level-major
(`prefix_codes`), a code of `l · b` bits where b is one level's bits. It is searched with the
first l levels' full-dimension books (`prefix_codebooks`) and the progressive inner-product
table (`search.luts.lut_progressive`): score = <q, sum_{i <= l} hard_i>, with q the raw query
vector (`"raw"`, AQD) or the query's soft quantization at l levels (`"soft_quantized"`).

References:
  Gao, Zhu, Song, Zhao & Shen, "Beyond Product Quantization: Deep Progressive Quantization for
  Image Retrieval", IJCAI 2019, Sec. 3.4 (arXiv 1906.06698); METHODS.md §2.
"""

import functools
from typing import Any, ClassVar

import numpy as np

from dpq_jax.methods import base


def bits_per_level(codebook_size: int) -> int:
    """`ceil(log2 K)`, the bits one level's code takes (as `PQIndex.code_bits` counts them).

    Example:
      >>> bits_per_level(256), bits_per_level(16)
      (8, 4)
    """
    if not 2 <= codebook_size <= 256:
        raise ValueError(f"codebook_size K={codebook_size} must be in [2, 256] (uint8 codes).")
    return (codebook_size - 1).bit_length()


def prefix_code_lengths(num_levels: int, level_bits: int) -> tuple[int, ...]:
    """`(b, 2b, ..., Lb)`: the code length of each prefix of `num_levels` levels of b bits.

    Example:
      >>> prefix_code_lengths(4, 8)
      (8, 16, 24, 32)
    """
    return tuple(level * level_bits for level in range(1, num_levels + 1))


def prefix_codes(codes, head: int) -> np.ndarray:
    """Head `head`'s codes: the first l = head + 1 levels of `[N, L, ...]` codes, flattened
    level-major to `[N, l · (codes per level)]` uint8.

    Example:
      >>> prefix_codes(np.arange(12).reshape(2, 3, 2), 1).tolist()
      [[0, 1, 2, 3], [6, 7, 8, 9]]
    """
    codes = np.asarray(codes, np.uint8)
    return codes[:, : head + 1].reshape(codes.shape[0], -1)


def prefix_codebooks(books, num_levels: int) -> tuple[Any, ...]:
    """`(books[:B], books[:2B], ..., books[:LB])`: the books of each prefix of `num_levels`
    levels, from the `[L · B, K, D]` full-dimension books of all levels, level-major."""
    per_level = books.shape[0] // num_levels
    return tuple(books[: level * per_level] for level in range(1, num_levels + 1))


class ProgressiveMethod(base.PQMethod):
    """A `PQMethod` with progressive codes (module docstring).

    Subclasses implement the network side (`build`, `loss_fn`, `encode_fn` storing every
    level's codes, `query_fn` returning `soft [Q, L, D]` and the `raw_query` vectors) and
    `codebooks_fn` (`prefix_codebooks` of the model's books). Query sides: `"raw"` and
    `"soft_quantized"`, in the order of `query_sides` (the first is the default).
    """

    query_sides: ClassVar[tuple[str, ...]] = ("raw", "soft_quantized")
    config_name: ClassVar[str]  # the method in missing-field messages, e.g. "DPQ"
    # Each level has `model.quantizer.num_codebooks` = M subspace books (codes [N, L, M]);
    # False: one full-dimension book per level (codes [N, L]).
    subspace_books: ClassVar[bool] = False
    raw_query: ClassVar[str] = "feats"  # the `query_fn` output the "raw" side scores with
    books_description: ClassVar[str] = "first l levels"  # for `describe_search`

    # --- sizes ----------------------------------------------------------------------------
    def quantizer_sizes(self, model_cfg) -> tuple[int, int, int]:
        """`(L, M, K)` of `model.quantizer`, checked: `num_levels` L >= 1, `num_codebooks`
        M >= 1 (1 without `subspace_books`) and `codebook_size` K in [2, 256].

        Raises:
          ValueError: a missing field or a size out of range.
        """
        field = functools.partial(base.field, what=self.config_name)
        quantizer = field(model_cfg, "quantizer")
        levels = int(field(quantizer, "num_levels"))
        books = int(field(quantizer, "num_codebooks")) if self.subspace_books else 1
        size = int(field(quantizer, "codebook_size"))
        if levels < 1:
            raise ValueError(f"model.quantizer.num_levels must be >= 1, got {levels}.")
        if books < 1:
            raise ValueError(f"model.quantizer.num_codebooks must be >= 1, got {books}.")
        bits_per_level(size)
        return levels, books, size

    def code_lengths(self, model_cfg) -> tuple[int, ...]:
        """`(b, 2b, ..., Lb)` with b = M·ceil(log2 K): one code length per prefix of the levels."""
        levels, books, size = self.quantizer_sizes(model_cfg)
        return prefix_code_lengths(levels, books * bits_per_level(size))

    # --- codes ------------------------------------------------------------------------------
    def database_codes(self, database, head: int) -> np.ndarray:
        """Head l = `head + 1`: the first l levels of the stored `[N, L]` / `[N, L, M]` codes,
        `[N, l]` / `[N, l·M]` (level-major, the order of `codebooks_fn`'s books)."""
        codes = np.asarray(database["codes"][0], np.uint8)
        if codes.ndim != (3 if self.subspace_books else 2):
            layout = "[N, L, M]" if self.subspace_books else "[N, L]"
            raise ValueError(
                f"Method {self.name!r} stores codes {layout}; got shape "
                f"{codes.shape}. Encode the database with this method's encode_fn."
            )
        return prefix_codes(codes, head)

    # --- search -----------------------------------------------------------------------------
    def _prefix_query(self, queries, head: int, query_side: str):
        if query_side == "raw":
            return queries[self.raw_query]
        if query_side == "soft_quantized":
            return queries["soft"][:, head]
        raise ValueError(f"query_side must be one of {self.query_sides}, got {query_side!r}.")

    def query_tables(self, queries, *, head, codebooks, query_side):
        """`[Q, B, K]` progressive inner-product tables `<q, c_bk>` over the B books of the
        l = head + 1 leading levels (`lut_progressive`), with q the `raw_query` vector or the
        query's l-level soft quantization."""
        from dpq_jax.search import luts as luts_lib

        books = int(np.shape(codebooks)[0])
        if books % (head + 1) or (not self.subspace_books and books != head + 1):
            raise ValueError(f"Head {head} searches {head + 1} levels; got {books} books.")
        vectors = self._prefix_query(queries, head, query_side)
        return luts_lib.lut_progressive(vectors, codebooks, books)

    def query_vectors(self, queries, *, head, codebooks, query_side):
        """The `[Q, D]` query vectors of the tables (raw, or the l-level soft quantization)."""
        del codebooks
        return np.asarray(self._prefix_query(queries, head, query_side), np.float32)

    def index(self, codes, *, params, ids=None, query_side):
        from dpq_jax.search import index as index_lib

        del query_side
        return index_lib.PQIndex(
            np.asarray(params, np.float32),
            codes,
            ids,
            method=self.name,
            metric="ip",
            progressive=True,
        )

    def index_matches(self, index, *, params, code_length, query_side):
        return bool(getattr(index, "progressive", False)) and super().index_matches(
            index, params=params, code_length=code_length, query_side=query_side
        )

    def describe_search(self, query_side):
        return (
            f"progressive ADC (inner product, {self.books_description}), query side {query_side!r}"
        )
