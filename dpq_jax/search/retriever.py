"""Image retrieval with a trained model: encode images, index them, search with new images.

`Retriever` wraps a training workdir's checkpoint (`dpq_jax.inference.restore_model`) and the
index of its method's code type (`PQIndex` or `BinaryIndex`):

    r = Retriever.from_workdir("workdirs/orl_seen")        # best-on-validation checkpoint
    r.add(database_images, ids)                             # uint8 [N, H, W, C]
    ids, scores = r.search(query_images, k=10)              # [Q, 10] each, best first
    r.save("orl.index.npz")
    r = Retriever.load("orl.index.npz", "workdirs/orl_seen")

Images go through the run's evaluation preprocessing (`config.input.pp_eval`, e.g. resize,
center crop and normalization) one by one on the host, then through the model in batches of a
fixed size (the last batch is padded), so each image shape compiles once. Everything about the
codes is the method's (`dpq_jax.methods.base`): database images become its stored codes,
queries become what its index searches with (an ADC lookup table for the configured query
side, or packed query bits), by default on the query side the run was evaluated with. A model
with several code lengths serves one of them (`code_length`, default the longest). Search is
exact (ties: lower insertion position first).

The saved file is an ordinary index file whose metadata also records the checkpoint step,
model signature, code length, query side, preprocessing and a digest of the model's variables
(`inference.model_digest`); `load` refuses a workdir or checkpoint that did not produce the
codes, even one of the same config and step (another run, or a retrained workdir).

Images are checked where they enter: NaN or infinite values are refused, and so are pixel
values outside the range `config.input.pp_eval` expects (`expected_pixel_range`; [0, 255]
unless its `value_range` op says otherwise), including float images in [0, 1] given to a model
that expects [0, 255].
"""

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from dpq_jax import io_utils, parallel
from dpq_jax.data import pp as pp_lib
from dpq_jax.methods import base
from dpq_jax.search import adc
from dpq_jax.search import index as index_lib

RETRIEVER_FORMAT = "dpq_jax.retriever"
# 2: records `model_sha256` (the digest of the model's variables) and `workdir`.
RETRIEVER_FORMAT_VERSION = 2


def expected_pixel_range(pp_spec: str) -> tuple[float, float]:
    """The `[lo, hi]` pixel values a preprocessing spec is written for.

    `value_range(lo, hi, in_lo, in_hi)` declares its input range (default `[0, 255]`); other
    specs take uint8-like values in `[0, 255]` (`dpq_jax.data.pp.build`).

    Examples:
      >>> expected_pixel_range("resize(8,8)|value_range(-1,1)")
      (0.0, 255.0)
      >>> expected_pixel_range("value_range(0,1,in_lo=0,in_hi=1)")
      (0.0, 1.0)
    """
    for name, args, kwargs in pp_lib.parse(pp_spec):
        if name == "value_range":
            bound = inspect.signature(pp_lib.value_range).bind(*args, **kwargs)
            bound.apply_defaults()
            return float(bound.arguments["in_lo"]), float(bound.arguments["in_hi"])
        if name == "normalize":
            break  # normalizes the raw values: the uint8 contract holds
    return 0.0, 255.0


def check_pixels(images: Sequence[np.ndarray], pp_spec: str, *, preprocessed: bool) -> None:
    """Refuses images whose values the model's preprocessing would silently mis-read.

    Args:
      images: `[H, W, C]` arrays (uint8 or float).
      pp_spec: the run's `config.input.pp_eval`.
      preprocessed: the images are model inputs already (then only finiteness is checked).

    Raises:
      ValueError: NaN or infinite values; values outside `expected_pixel_range(pp_spec)`;
        float images in [0, 1] where [0, 255] is expected.
    """
    lo, hi = np.inf, -np.inf
    for position, img in enumerate(images):
        if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
            raise ValueError(
                f"Image {position} of the batch has NaN or infinite values; they would be "
                "encoded and ranked as garbage. Fix or drop that image."
            )
        if img.size:
            lo, hi = min(lo, float(img.min())), max(hi, float(img.max()))
    if preprocessed or lo > hi:
        return
    want_lo, want_hi = expected_pixel_range(pp_spec)
    tolerance = 1e-3 * (want_hi - want_lo)
    if lo < want_lo - tolerance or hi > want_hi + tolerance:
        raise ValueError(
            f"The images have values in [{lo:g}, {hi:g}], but the model's preprocessing "
            f"{pp_spec!r} expects pixel values in [{want_lo:g}, {want_hi:g}]. Rescale them "
            "(16-bit images: divide by 257 and pass uint8)."
        )
    floats = any(np.issubdtype(img.dtype, np.floating) for img in images)
    if floats and want_hi - want_lo > 2 and want_lo < hi <= want_lo + 1:
        raise ValueError(
            f"The float images have values in [{lo:g}, {hi:g}], like [0, 1] intensities, but "
            f"the model's preprocessing {pp_spec!r} expects pixel values in [{want_lo:g}, "
            f"{want_hi:g}]: multiply them by {want_hi - want_lo:g} (or pass uint8 images)."
        )


def default_query_side(config, method) -> str:
    """The query side the run was evaluated with: the final evaluator's, else the first's.

    Falls back to the method's default query side when the config names none.
    """
    evals = config.get("evals") or {}
    cfgs = sorted(evals.values(), key=lambda cfg: not cfg.get("final", False))  # final first
    for cfg in cfgs:
        if cfg.get("query_side"):
            return cfg.get("query_side")
    return method.default_query_side


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


class Retriever:
    """Encode, index and search images with a trained model.

    Build it with `Retriever.from_workdir` or `Retriever.load`; the constructor takes the
    pieces `restore_model` returns.

    Args:
      config: the run's config (`restore_model`'s first output).
      method: its `Method`.
      model: the NNX model in eval mode.
      meta: the checkpoint's JSON metadata (`step`, `signature`).
      query_side: one of `method.query_sides` (e.g. OPQN: `"soft_quantized"`, `"raw"`, `"l2"`);
        default: the one the run was evaluated with (`default_query_side`).
      code_length: which of the model's code lengths to serve, in bits; default the longest.
      batch_size: images per model call; default the run's eval batch size. With a mesh, a
        multiple of its device count.
      mesh: optional `"data"` mesh: batches are split over its devices and the database is
        searched sharded; default: one device.

    Raises:
      ValueError: unknown query side or code length, bad batch size.
    """

    def __init__(
        self,
        config,
        method,
        model,
        meta: dict,
        *,
        query_side: str | None = None,
        code_length: int | None = None,
        batch_size: int | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ):
        query_side = method.check_query_side(
            default_query_side(config, method) if query_side is None else query_side
        )
        code_lengths = method.code_lengths(config.model)
        code_length = max(code_lengths) if code_length is None else code_length
        if code_length not in code_lengths:
            raise ValueError(
                f"The model has code lengths {code_lengths} bits; got code_length={code_length!r}."
            )
        if batch_size is None:
            batch_size = config.input.get("eval_batch_size", config.input.batch_size)
        batch_size = _check_positive_int("batch_size", batch_size)
        if mesh is not None:
            adc.check_mesh(mesh)
            parallel.check_batch_size(batch_size, mesh)
        self.config, self.method, self.meta = config, method, meta
        self.query_side = query_side
        self.batch_size = batch_size
        self.mesh = mesh
        self.pp_spec = str(config.input.pp_eval)
        self._pp = pp_lib.build(self.pp_spec)
        self.in_channels = int(meta["signature"]["in_channels"])
        self.checkpoint_step = int(meta["step"])
        self.code_length = int(code_length)
        self.head = code_lengths.index(code_length)
        # Code parameters (PQ: the head's codebooks; None for binary codes), on the host.
        self.code_params = jax.device_get(base.head_params(method.code_params(model), self.head))
        self.extra: dict | None = None  # the user's metadata of a loaded file
        self.workdir: str | None = None  # set by from_workdir, recorded in saved files
        self._model = model

        graphdef, state = nnx.split(model)
        if mesh is not None:
            state = jax.device_put(state, parallel.replicated(mesh))
        self._state = state
        self._traces = 0  # compilations of the model functions (tests check "jit once")

        def run(fn, state, images):
            self._traces += 1  # runs at trace time only
            model = nnx.merge(graphdef, state)
            model.eval()  # running BatchNorm statistics, no dropout
            return fn(model, images)

        self._encode_fn = jax.jit(functools.partial(run, method.encode_fn))
        self._query_fn = jax.jit(functools.partial(run, method.query_fn))
        self._checked_shapes: set[tuple[int, ...]] = set()
        self._codes: list[np.ndarray] = []
        self._ids: list[np.ndarray] = []
        self._index = None

    # ----------------------------------------------------------------------------------------
    # Construction and files.
    # ----------------------------------------------------------------------------------------

    @classmethod
    def from_workdir(
        cls,
        workdir: str,
        step: int | str = "best",
        query_side: str | None = None,
        *,
        code_length: int | None = None,
        batch_size: int | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ) -> "Retriever":
        """An empty retriever over a training workdir's checkpoint.

        Args:
          workdir: a `train_and_evaluate` workdir.
          step: `"best"` (best on validation, else latest), `"latest"` or a step number.
          query_side: see the class docstring.
          code_length: see the class docstring.
          batch_size: see the class docstring.
          mesh: see the class docstring.

        Raises:
          FileNotFoundError: not a training workdir.
          dpq_jax.checkpointing.CheckpointError: no usable checkpoint.
          ValueError: as the constructor.
        """
        from dpq_jax import inference  # heavy (optax, orbax); only needed here

        config, method, model, meta = inference.restore_model(workdir, step)
        r = cls(
            config,
            method,
            model,
            meta,
            query_side=query_side,
            code_length=code_length,
            batch_size=batch_size,
            mesh=mesh,
        )
        r.workdir = io_utils.abspath(workdir)
        return r

    @functools.cached_property
    def model_digest(self) -> str:
        """SHA-256 of the model's variables (`inference.model_digest`): what binds an index
        file to the exact checkpoint that encoded it."""
        from dpq_jax import inference

        return inference.model_digest(self._model)

    def save(self, path, *, extra: dict | None = None):
        """Writes the index and the retriever's provenance to `path` (an index `.npz`).

        Args:
          path: destination file.
          extra: optional JSON dict of the caller's own metadata (e.g. item names), returned
            as `Retriever.extra` by `load`.

        Returns:
          The path written.

        Raises:
          ValueError: `extra` is not a JSON dict.
        """
        info = {
            "format": RETRIEVER_FORMAT,
            "format_version": RETRIEVER_FORMAT_VERSION,
            "method": self.method.name,
            "query_side": self.query_side,
            "code_length": self.code_length,
            "checkpoint_step": self.checkpoint_step,
            "signature": self.meta["signature"],
            "pp_eval": self.pp_spec,
            "model_sha256": self.model_digest,
            "workdir": self.workdir,
            "user": extra,
        }
        return self.index.save(path, extra={"retriever": info})

    @classmethod
    def load(
        cls,
        path,
        workdir: str,
        *,
        step: int | None = None,
        batch_size: int | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ) -> "Retriever":
        """Reloads a retriever saved with `save`, over the workdir that produced it.

        Args:
          path: the index file.
          workdir: the training workdir.
          step: checkpoint step; default the one recorded in the file (which must match).
          batch_size: see the class docstring.
          mesh: see the class docstring.

        Returns:
          The retriever with the saved items, ids and query side; `extra` holds the caller's
          saved metadata.

        Raises:
          FileNotFoundError: no index file or no workdir.
          ValueError: a damaged file, a file not written by `Retriever.save`, or a workdir /
            checkpoint whose model did not produce these codes: another model, a workdir
            without the recorded step, or other parameters (another run of the same config).
          dpq_jax.checkpointing.CheckpointError: the checkpoint is damaged.
        """
        index, meta = index_lib.load_index_metadata(path)
        info = (meta.get("extra") or {}).get("retriever")
        if not isinstance(info, dict):
            raise ValueError(
                f"{str(path)!r} was not written by Retriever.save (no retriever metadata); load "
                "it with dpq_jax.search.index.load_index instead."
            )
        if info.get("format") != RETRIEVER_FORMAT or info.get("format_version", 0) > (
            RETRIEVER_FORMAT_VERSION
        ):
            raise ValueError(
                f"{str(path)!r}: unsupported retriever format {info.get('format')!r} version "
                f"{info.get('format_version')!r}; upgrade dpq_jax."
            )
        saved_step = int(info["checkpoint_step"])
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer))):
            raise ValueError(
                f"step must be an int checkpoint step or None (the file's own), got {step!r}."
            )
        if step is not None and int(step) != saved_step:
            raise ValueError(
                f"{str(path)!r} holds codes of checkpoint step {saved_step}, not {step}; "
                "re-index the images with that checkpoint or omit step."
            )
        from dpq_jax import inference

        built_by = info.get("workdir") or "another workdir"
        steps = inference.checkpoint_steps(workdir)
        if saved_step not in steps:
            raise ValueError(
                f"{str(path)!r} was built with checkpoint step {saved_step} of {built_by}, but "
                f"{workdir!r} has no step {saved_step} (its steps: {steps}): the index comes "
                "from another model. Pass the workdir that built it, or re-index the images."
            )
        r = cls.from_workdir(
            workdir,
            saved_step,
            info["query_side"],
            code_length=info.get("code_length"),
            batch_size=batch_size,
            mesh=mesh,
        )
        if r.meta["signature"] != info["signature"]:
            raise ValueError(
                f"{str(path)!r} was built by another model ({info['signature']}), not the one in "
                f"{workdir!r} ({r.meta['signature']}); pass the workdir that built it."
            )
        saved_digest = info.get("model_sha256")
        if saved_digest is None:
            logging.warning(
                "%s records no model digest (written by an older dpq_jax): it is checked "
                "against %s by config signature and codebooks only.",
                path,
                workdir,
            )
        elif saved_digest != r.model_digest:
            raise ValueError(
                f"{str(path)!r} was built by other model parameters (from {built_by}) than "
                f"checkpoint step {saved_step} of {workdir!r}: parameter digest "
                f"{saved_digest[:12]}... != {r.model_digest[:12]}... (same config and step are "
                "not enough). Pass the workdir that built it, or re-index the images."
            )
        if not r.method.index_matches(
            index, params=r.code_params, code_length=r.code_length, query_side=r.query_side
        ):
            raise ValueError(
                f"The codes in {str(path)!r} ({index.metadata()}) are not those of the model in "
                f"{workdir!r} (other codebooks, code length or metric): the index was built by "
                "another model. Re-index the images."
            )
        r._codes, r._ids = [r.method.stored_codes(index)], [index.ids]
        r._index = index
        r.extra = info.get("user")
        return r

    # ----------------------------------------------------------------------------------------
    # Encoding.
    # ----------------------------------------------------------------------------------------

    def preprocess(self, images, *, preprocessed: bool = False) -> np.ndarray:
        """Model inputs `[N, h, w, C]` float32 from images (see `encode`)."""
        items = self._as_images(images)
        check_pixels(items, self.pp_spec, preprocessed=preprocessed)
        if preprocessed:
            for img in items:
                if not np.issubdtype(img.dtype, np.floating):
                    raise ValueError(
                        "preprocessed=True needs float model inputs; got dtype "
                        f"{img.dtype}. Pass raw uint8 images with preprocessed=False."
                    )
            out = items
        else:
            # Seeded per position, as the evaluation pipeline does, in case pp_eval is random.
            out = [self._pp(img, np.random.default_rng([0, i])) for i, img in enumerate(items)]
        shapes = sorted({x.shape for x in out})
        if len(shapes) != 1:
            raise ValueError(
                f"Images preprocess to different shapes {shapes[:4]} with pp_eval "
                f"{self.pp_spec!r}; resize them to one size first."
            )
        return np.stack(out).astype(np.float32)

    def _as_images(self, images) -> list[np.ndarray]:
        if isinstance(images, (np.ndarray, jax.Array)):
            arr = np.asarray(images)
            if arr.ndim != 4:
                hint = " (one image: add a batch axis, images[None])" if arr.ndim == 3 else ""
                raise ValueError(
                    f"images must be [N, H, W, C], got shape {arr.shape}{hint}. Grey images "
                    "need a trailing channel axis (images[..., None])."
                )
            items = list(arr)
        elif isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
            items = [np.asarray(img) for img in images]
            for img in items:
                if img.ndim != 3:
                    raise ValueError(
                        f"each image must be [H, W, C], got shape {img.shape}; grey images need "
                        "a trailing channel axis (image[..., None])."
                    )
        else:
            raise ValueError(
                f"images must be an array [N, H, W, C] or a list of [H, W, C] arrays, got "
                f"{type(images).__name__}."
            )
        if not items:
            raise ValueError("No images given (N = 0).")
        for img in items:
            if img.shape[-1] != self.in_channels:
                raise ValueError(
                    f"The model was trained on {self.in_channels}-channel images, got an image "
                    f"of shape {img.shape}; convert the images (e.g. PIL .convert('L' or 'RGB'))."
                )
            if not (img.dtype == np.uint8 or np.issubdtype(img.dtype, np.floating)):
                hint = ""
                if img.itemsize == 2:
                    hint = " (16-bit images: divide by 257 and cast to uint8)"
                raise ValueError(
                    f"images must be uint8 (or float pixel values in [0, 255]), got "
                    f"{img.dtype}{hint}."
                )
        return items

    def _run(self, fn, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """`fn(state, batch)` over fixed-size padded batches; host arrays, padding dropped."""
        num, b = inputs.shape[0], self.batch_size
        shape = (b, *inputs.shape[1:])
        if shape not in self._checked_shapes:
            spec = jax.ShapeDtypeStruct(shape, jnp.float32)
            try:
                jax.eval_shape(fn, self._state, spec)
            except Exception as e:  # any backbone shape error: name the shape and the fix
                raise ValueError(
                    f"The model cannot take inputs of shape {inputs.shape[1:]} (after pp_eval "
                    f"{self.pp_spec!r}): {type(e).__name__}: {str(e)[:300]}. Pass images of the "
                    "size the run was trained on."
                ) from e
            self._checked_shapes.add(shape)
        padded = np.zeros((-(-num // b) * b, *inputs.shape[1:]), np.float32)
        padded[:num] = inputs
        outputs = []
        for start in range(0, padded.shape[0], b):
            batch = padded[start : start + b]
            if self.mesh is not None:
                batch = jax.device_put(batch, parallel.data_sharding(self.mesh))
            outputs.append(fn(self._state, batch))
        host = jax.device_get(outputs)  # one transfer: the loop above stays asynchronous
        return jax.tree.map(lambda *parts: np.concatenate(parts)[:num], *host)

    def encode(self, images, *, preprocessed: bool = False) -> np.ndarray:
        """Database codes of images.

        Args:
          images: uint8 `[N, H, W, C]` (or a list of `[H, W, C]` arrays, sizes may differ), or
            float pixel values in `[0, 255]`; `config.input.pp_eval` is applied to each.
          preprocessed: the images are already model inputs (float, after pp_eval).

        Returns:
          The method's stored codes of the served code length: `[N, M]` uint8 PQ codes, or
          `[N, b]` uint8 0/1 bits for binary codes.

        Raises:
          ValueError: no images, not `[N, H, W, C]`, wrong channel count or dtype, sizes the
            preprocessing or the model cannot take.
        """
        inputs = self.preprocess(images, preprocessed=preprocessed)
        return self.method.database_codes(self._run(self._encode_fn, inputs), self.head)

    def query_outputs(self, images, *, preprocessed: bool = False) -> dict:
        """The method's query-side outputs of images (e.g. OPQN: `feats [Q, D]` and
        `probs ([Q, M, K],)`)."""
        return self._run(self._query_fn, self.preprocess(images, preprocessed=preprocessed))

    def search_queries(self, images, *, preprocessed: bool = False):
        """What the index searches with for query images on this retriever's query side: ADC
        lookup tables `[Q, M, K]` (PQ) or packed query codes `[Q, W]` (binary)."""
        return self.method.search_queries(
            self.query_outputs(images, preprocessed=preprocessed),
            head=self.head,
            params=self.code_params,
            query_side=self.query_side,
        )

    def query_vectors(self, images, *, preprocessed: bool = False) -> np.ndarray:
        """Queries for the FAISS index `faiss_export` builds from `self.index`: float `[Q, D]`
        vectors whose inner-product / L2 tables are exactly this retriever's tables (PQ), or
        FAISS's byte codes `[Q, ceil(b / 8)]` (binary)."""
        return self.method.faiss_queries(
            self.query_outputs(images, preprocessed=preprocessed),
            head=self.head,
            params=self.code_params,
            query_side=self.query_side,
        )

    # ----------------------------------------------------------------------------------------
    # The database.
    # ----------------------------------------------------------------------------------------

    def add(self, images, ids=None, *, preprocessed: bool = False) -> np.ndarray:
        """Encodes images and appends them to the database.

        Args:
          images: as `encode`.
          ids: `[N]` integer item ids, unique over the whole database; default: the next
            integers after the largest id so far (0, 1, ... for an empty database).
          preprocessed: as `encode`.

        Returns:
          The `[N]` int64 ids added.

        Raises:
          ValueError: as `encode`, or ids of the wrong shape or type, or ids already present.
        """
        items = self._as_images(images)  # validate before encoding anything
        num = len(items)
        if ids is None:
            start = int(max((i.max() for i in self._ids if i.size), default=-1)) + 1
            ids = np.arange(start, start + num, dtype=np.int64)
        else:
            ids = np.asarray(ids)
            if ids.shape != (num,) or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(
                    f"ids must be {num} integers (one per image), got {ids.dtype}{list(ids.shape)}."
                )
            ids = ids.astype(np.int64)
            seen = np.concatenate([*self._ids, ids])
            if np.unique(seen).size != seen.size:
                values, counts = np.unique(seen, return_counts=True)
                raise ValueError(
                    f"ids must be unique; repeated: {values[counts > 1][:10].tolist()}."
                )
        codes = self.encode(items, preprocessed=preprocessed)
        self._codes.append(codes)
        self._ids.append(ids)
        self._index = None
        return ids

    @property
    def index(self):
        """The database as the method's index (`PQIndex` or `BinaryIndex`) with the item ids."""
        if self._index is None:
            if not self._codes:
                raise ValueError("The retriever's database is empty; add images with add() first.")
            self._index = self.method.index(
                np.concatenate(self._codes),
                params=self.code_params,
                ids=np.concatenate(self._ids),
                query_side=self.query_side,
            )
        return self._index

    def __len__(self) -> int:
        return sum(c.shape[0] for c in self._codes)

    def search(
        self, images, k: int, *, preprocessed: bool = False, **search_options: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best database items for each query image.

        Args:
          images: query images, as `encode`.
          k: results per query, `1 <= k <= len(self)`.
          preprocessed: as `encode`.
          **search_options: passed to the index's `search` (`chunk_size`, `ties`, ...).

        Returns:
          `(ids [Q, k] int64, scores [Q, k])`, best first: for PQ codes float32 inner products
          (descending) or squared distances (ascending, distance query sides such as OPQN's
          `"l2"`); for binary codes int32 Hamming distances (ascending).

        Raises:
          ValueError: empty database, `k` not in `[1, len(self)]`, bad images.
        """
        num = len(self)
        if num == 0:
            raise ValueError("The retriever's database is empty; add images with add() first.")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num:
            raise ValueError(f"k must be an int in [1, {num}] (the database size), got {k!r}.")
        queries = self.search_queries(images, preprocessed=preprocessed)
        scores, ids = self.index.search(queries, int(k), mesh=self.mesh, **search_options)
        return ids, scores
