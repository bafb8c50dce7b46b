"""`dpq-search`: index images with a trained model and print or write the top-k for queries.

    # Index a folder (one subfolder per class, or flat) or a dataset with a run's checkpoint:
    dpq-search index --workdir=workdirs/orl_seen --database=photos/ --output=photos.npz
    dpq-search index --workdir=workdirs/orl_seen --database=dataset:orl_faces:database \\
        --output=orl_db.npz

    # Search: query images (files, folders or a dataset split) against a saved index ...
    dpq-search query --workdir=workdirs/orl_seen --index=photos.npz --queries a.png b.png --k=5
    # ... or index and search in one go, writing JSON or CSV:
    dpq-search query --workdir=workdirs/orl_seen --database=photos/ --queries=queries/ \\
        --k=10 --format=csv --output=top10.csv

Image sources (`--database`, `--queries`):
- a path: an image file, or a folder searched recursively for images (`.png`, `.jpg`, `.pgm`,
  ...); files in a subfolder of the folder get that subfolder's name as their label;
- `dataset:NAME` (every item of a registered dataset, `dpq_jax.registry`) or
  `dataset:NAME:SPLIT`, a split of the run's protocol (`train`, `query`, `database`,
  `val_query`, `val_database`), read from `<workdir>/splits` as the run used it; ids are the
  dataset indices;
- `tfds:NAME:SPLIT`: a prepared TFDS dataset read without TensorFlow
  (`tfds.data_source`, feature `--image_key`), from `--data_dir`.

Each result row holds the query, rank, database id, score (PQ codes: inner product, or squared
distance for a distance query side such as OPQN's `l2`; binary codes: Hamming distance), and
the database item's name and label. The index file is a
`Retriever` file (`dpq_jax.search.retriever`); item names and labels are kept in its metadata.

Safety: `--output` is checked before any work: it may not be a folder, lie in a missing folder,
be one of the inputs (`--index`, `--database`, `--queries`), or be one of the training run's
own files in the workdir. `--workdir`, `--index` and `--output` may be URIs such as
`gs://bucket/run` (image sources are local); in object storage any prefix is a folder. Outputs are written to a temporary file and renamed, so a crash never
leaves a half-written file or destroys the previous one. An index is bound to the exact
checkpoint that built it; a damaged checkpoint is refused. Known problems print one line,
`dpq-search: error: ...`, and exit with status 1.
"""

import argparse
import csv
import io
import json
import os
import pathlib
import sys
from collections.abc import Iterator, Sequence

import numpy as np

# Bad input and known failures: one line on stderr, exit status 1 (others keep their traceback).
KNOWN_ERRORS = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)
# What training writes in a workdir; `--output` may not overwrite it.
RUN_FOLDERS = ("checkpoints", "checkpoints_damaged", "splits", "tensorboard")
RUN_FILES = ("config.json", "report.json", "metrics.jsonl", "pr_curve.png")
# PIL modes of images with more than 8 bits per channel: converting them to 8-bit grey or RGB
# clips every value above 255 (a 16-bit PNG becomes nearly all white).
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pbm", ".bmp", ".gif", ".tif", ".tiff")
FORMATS = ("text", "json", "csv")
_LOAD_CHUNK = 1024  # images decoded and encoded per step, to bound host memory


class Items:
    """Images of a source with their display names, labels and ids.

    Attributes:
      names: `[N]` display names (relative path, or `dataset[index]`).
      labels: `[N]` label strings (class folder or dataset label), "" when unknown.
      ids: `[N]` int64 ids (dataset index for datasets, else position).
      images: a callable `(start, stop) -> list of [H, W, C] uint8 arrays`.
    """

    def __init__(self, names, labels, ids, images):
        self.names, self.labels, self.ids, self.images = list(names), list(labels), ids, images

    def __len__(self) -> int:
        return len(self.names)

    def chunks(self) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
        for start in range(0, len(self), _LOAD_CHUNK):
            stop = min(start + _LOAD_CHUNK, len(self))
            yield self.images(start, stop), self.ids[start:stop]


def _path_items(spec: str, channels: int, relative: bool) -> Items:
    from dpq_jax import io_utils

    if io_utils.is_remote(spec):
        raise ValueError(
            f"{spec!r}: image sources are read from local paths; copy the images to a local "
            "folder first (e.g. gcloud storage cp -r), or use dataset:... or tfds:...."
        )
    root = pathlib.Path(spec)
    if root.is_file():
        files, base = [root], None
    elif root.is_dir():
        files = sorted(
            p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        base = root
        if not files:
            raise ValueError(f"No images ({', '.join(IMAGE_SUFFIXES)}) under {spec!r}.")
    else:
        raise ValueError(f"{spec!r} is not an image file, a folder, dataset:... or tfds:....")
    if base is None:
        names, labels = [str(root)], [""]
    else:
        rel = [p.relative_to(base) for p in files]
        names = [(r if relative else root / r).as_posix() for r in rel]
        labels = [r.parts[0] if len(r.parts) > 1 else "" for r in rel]
    return Items(
        names,
        labels,
        np.arange(len(files), dtype=np.int64),
        lambda a, b: [_read_image(p, channels) for p in files[a:b]],
    )


def _read_image(path: pathlib.Path, channels: int) -> np.ndarray:
    """uint8 `[H, W, C]`; refuses images of more than 8 bits per channel instead of clipping."""
    from PIL import Image

    from dpq_jax.data import image_io

    try:
        with Image.open(path) as im:
            mode = im.mode
    except (OSError, ValueError):
        mode = None  # read_image names the file and the problem
    if mode in _WIDE_MODES:
        raise ValueError(
            f"{path} is a {mode!r} image (more than 8 bits per pixel); read as 8-bit it would "
            "be clipped to nearly all white. Convert it to 8 bits first (16-bit: divide by 257)."
        )
    return image_io.read_image(path, channels, what="dpq-search")


def _dataset_items(spec: str, retriever, workdir: str, data_dir: str | None) -> Items:
    from dpq_jax import registry
    from dpq_jax.data import protocols

    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise ValueError(f"Expected dataset:NAME or dataset:NAME:SPLIT, got {spec!r}.")
    name = parts[1]
    config = retriever.config
    if data_dir is None:
        data_dir = config.input.get("data_dir") or None
    if name not in registry.names("dataset"):
        raise ValueError(
            f"Unknown dataset {name!r} in {spec!r}; registered datasets: "
            f"{', '.join(registry.names('dataset'))}."
        )
    source = registry.get("dataset", name)(data_dir=data_dir)
    if len(parts) == 3:
        splits = protocols.get_splits(
            config.protocol,
            source.labels,
            int(config.seed),
            split_dir=os.path.join(workdir, "splits"),
        )
        arrays = splits.arrays()
        if parts[2] not in arrays:
            raise ValueError(
                f"Unknown split {parts[2]!r} of protocol {config.protocol}; use one of "
                f"{sorted(arrays)}."
            )
        indices = np.asarray(arrays[parts[2]], np.int64)
    else:
        indices = np.arange(len(source), dtype=np.int64)
    labels = np.asarray(source.labels)
    return Items(
        [f"{name}[{i}]" for i in indices],
        [_label_text(labels[i]) for i in indices],
        indices,
        lambda a, b: list(source.images[indices[a:b]]),
    )


def _label_text(label) -> str:
    label = np.asarray(label)
    if label.ndim == 0:
        return str(label.item())
    return ",".join(str(i) for i in np.flatnonzero(label))  # multi-hot: the positive classes


def _tfds_items(spec: str, data_dir: str | None, image_key: str, channels: int) -> Items:
    parts = spec.split(":")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ValueError(f"Expected tfds:NAME:SPLIT, got {spec!r}.")
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ValueError("tfds: sources need tensorflow-datasets installed.") from e
    import dpq_jax.data.orl  # noqa: F401  (registers the project's TFDS builders)

    _, name, split = parts
    data = tfds.data_source(name, split=split, data_dir=data_dir)
    num = len(data)
    if num == 0:
        raise ValueError(f"{spec!r} is empty.")
    first = data[0]
    if image_key not in first:
        raise ValueError(f"{spec!r} has no feature {image_key!r}; features: {sorted(first)}.")

    def images(a, b):
        out = []
        for i in range(a, b):
            img = np.asarray(data[i][image_key])
            if img.dtype != np.uint8:
                raise ValueError(
                    f"{spec!r}: feature {image_key!r} holds {img.dtype} values, not uint8 "
                    "images; pick the image feature with --image_key."
                )
            out.append(img[..., None] if img.ndim == 2 else img)
        return out

    labels = ["" if "label" not in first else _label_text(data[i]["label"]) for i in range(num)]
    return Items([f"{name}:{split}[{i}]" for i in range(num)], labels, np.arange(num), images)


def load_items(
    spec: str,
    retriever,
    *,
    workdir: str,
    data_dir=None,
    image_key: str = "image",
    relative: bool = True,
) -> Items:
    """The images named by a source spec (see the module docstring).

    Folder items are named by their path relative to the folder (`relative=True`, for a
    database) or by their full path (queries).

    Raises:
      ValueError: an unknown or empty source, an unreadable image.
    """
    if spec.startswith("dataset:"):
        return _dataset_items(spec, retriever, workdir, data_dir)
    if spec.startswith("tfds:"):
        return _tfds_items(spec, data_dir, image_key, retriever.in_channels)
    return _path_items(spec, retriever.in_channels, relative)


def build_index(retriever, items: Items) -> dict:
    """Adds all items to the retriever; returns the item metadata kept in the index file."""
    for images, ids in items.chunks():
        retriever.add(images, ids)
    return {"names": items.names, "labels": items.labels, "ids": items.ids.tolist()}


def search_rows(retriever, queries: Sequence[Items], k: int, catalog: dict) -> list[dict]:
    """Top-k result rows for every query image of every source."""
    by_id = {}
    if catalog:
        by_id = {
            int(i): (n, lab)
            for i, n, lab in zip(catalog["ids"], catalog["names"], catalog["labels"], strict=True)
        }
    rows = []
    for items in queries:
        for start, (images, _) in zip(range(0, len(items), _LOAD_CHUNK), items.chunks()):
            ids, scores = retriever.search(images, k)
            for row, (qid, qscore) in enumerate(zip(ids, scores, strict=True)):
                query = items.names[start + row]
                for rank, (i, s) in enumerate(zip(qid, qscore, strict=True), start=1):
                    name, label = by_id.get(int(i), ("", ""))
                    rows.append(
                        {
                            "query": query,
                            "rank": rank,
                            "id": int(i),
                            "score": float(s),
                            "name": name,
                            "label": label,
                        }
                    )
    return rows


def format_rows(rows: list[dict], fmt: str) -> str:
    """Renders result rows as `text`, `json` (a list of queries) or `csv` (one row per hit)."""
    if fmt == "json":
        grouped: dict[str, list] = {}
        for r in rows:
            hit = {key: r[key] for key in ("rank", "id", "score", "name", "label")}
            grouped.setdefault(r["query"], []).append(hit)
        return json.dumps([{"query": q, "results": h} for q, h in grouped.items()], indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, ["query", "rank", "id", "score", "name", "label"])
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    lines, last = [], None
    for r in rows:
        if r["query"] != last:
            lines.append(f"query {r['query']}")
            last = r["query"]
        extra = f"  {r['name']}" + (f"  label={r['label']}" if r["label"] else "")
        lines.append(f"  {r['rank']:>4}  id={r['id']:<8} score={r['score']:.6g}{extra}")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpq-search", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--workdir", required=True, help="training workdir (checkpoint, config)")
        p.add_argument("--step", default=None, help="checkpoint: best (default), latest or N")
        p.add_argument(
            "--query_side",
            default=None,
            help="one of the method's query sides (OPQN: soft_quantized, raw, l2); default: "
            "the side the run was evaluated with",
        )
        p.add_argument(
            "--code_length",
            type=int,
            default=None,
            help="bits: which code length of a multi-length model to use (default: longest)",
        )
        p.add_argument("--batch_size", type=int, default=None, help="images per model call")
        p.add_argument("--data_dir", default=None, help="TFDS data_dir for dataset/tfds sources")
        p.add_argument("--image_key", default="image", help="image feature of tfds sources")

    p_index = sub.add_parser("index", help="encode a database and save the index")
    common(p_index)
    p_index.add_argument("--database", required=True, help="image source to index")
    p_index.add_argument("--output", required=True, help="index file to write (.npz)")

    p_query = sub.add_parser("query", help="top-k for query images")
    common(p_query)
    group = p_query.add_mutually_exclusive_group(required=True)
    group.add_argument("--index", help="index file from `dpq-search index`")
    group.add_argument("--database", help="image source to index on the fly")
    p_query.add_argument("--queries", nargs="+", required=True, help="query image sources")
    p_query.add_argument("--k", type=int, default=10, help="results per query")
    p_query.add_argument("--format", choices=FORMATS, default="text")
    p_query.add_argument("--output", default=None, help="file to write (default: stdout)")
    return parser


def _step(value):
    if value is None or value in ("best", "latest"):
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--step must be best, latest or an integer, got {value!r}.") from None


def check_output(output: str, *, inputs: Sequence[tuple[str, str | None]], workdir: str) -> None:
    """Refuses an `--output` that cannot be written or would destroy something, before any work.

    Args:
      output: the `--output` path.
      inputs: `(flag, value)` of every input source (`dataset:`/`tfds:` specs are skipped).
      workdir: the training workdir, whose run files are protected.

    Raises:
      ValueError: `output` is a folder, lies in a missing folder, is an input, or is one of
        the training run's files.
    """
    from dpq_jax import io_utils

    path = io_utils.as_path(output)
    remote = io_utils.is_remote(output)
    if path.is_dir():
        raise ValueError(
            f"--output {output!r} is a folder; give a file name, e.g. --output={path / 'out'}."
        )
    parent = path.parent
    if not remote and not parent.is_dir():
        raise ValueError(
            f"--output {output!r}: folder {str(parent)!r} does not exist; create it first "
            f"(mkdir -p {parent}) or write elsewhere."
        )
    real = io_utils.abspath(output) if remote else os.path.realpath(path)
    for flag, value in inputs:
        if value is None or value.startswith(("dataset:", "tfds:")):
            continue
        if remote or io_utils.is_remote(value):
            same = io_utils.is_remote(value) and io_utils.abspath(value) == real
        else:
            same = os.path.realpath(value) == real
            if not same and path.exists() and os.path.exists(value):
                same = os.path.samefile(value, path)  # hard links
        if same:
            raise ValueError(
                f"--output {output!r} is also the input {flag}={value}; writing it would destroy "
                "that input. Write to another file."
            )
    if remote != io_utils.is_remote(workdir):
        return  # one local, one in object storage: the output cannot be a run file
    root = io_utils.abspath(workdir) if remote else os.path.realpath(workdir)
    if remote:
        inside = real[len(root) + 1 :] if real.startswith(root + "/") else None
    elif os.path.commonpath([root, real]) == root and real != root:
        inside = os.path.relpath(real, root)
    else:
        inside = None
    if inside is not None:
        inside = pathlib.PurePosixPath(inside)
        name = inside.name.lower()
        if inside.parts[0] in RUN_FOLDERS or (
            len(inside.parts) == 1 and (name in RUN_FILES or "lock" in name)
        ):
            raise ValueError(
                f"--output {output!r} would overwrite the training run's own file "
                f"{inside.as_posix()} in the workdir; write to another file."
            )


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.strerror}: {error.filename}"
    return " ".join(str(error).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit status (0 ok, 1 bad input). See the module docstring.

    Known problems (`KNOWN_ERRORS`: bad input, missing files, damaged or foreign checkpoints,
    index files that do not match) print one line `dpq-search: error: ...` to stderr;
    unexpected errors keep their traceback.
    """
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except KNOWN_ERRORS as e:
        print(f"dpq-search: error: {_one_line(e)}", file=sys.stderr)
        return 1


def _run(args) -> int:
    step = _step(args.step)
    if args.output is not None:
        queries = args.queries if args.command == "query" else []
        check_output(
            args.output,
            inputs=[
                ("--index", getattr(args, "index", None)),
                ("--database", args.database),
                *(("--queries", q) for q in queries),
            ],
            workdir=args.workdir,
        )
    from dpq_jax.search.retriever import Retriever  # heavy; after --help and argument errors

    options = dict(batch_size=args.batch_size)
    if args.command == "query" and args.index:
        if args.query_side is not None or args.code_length is not None:
            raise ValueError(
                "--query_side and --code_length are fixed by the index file; drop them "
                "with --index."
            )
        if isinstance(step, str):
            raise ValueError(
                "With --index, --step must be the checkpoint step number the index was "
                "built with (default: the step recorded in the file)."
            )
        retriever = Retriever.load(args.index, args.workdir, step=step, **options)
        catalog = (retriever.extra or {}).get("items", {})
    else:
        retriever = Retriever.from_workdir(
            args.workdir,
            "best" if step is None else step,
            args.query_side,
            code_length=args.code_length,
            **options,
        )
        database = load_items(
            args.database,
            retriever,
            workdir=args.workdir,
            data_dir=args.data_dir,
            image_key=args.image_key,
        )
        catalog = build_index(retriever, database)
    if args.command == "index":
        path = retriever.save(args.output, extra={"items": catalog})
        print(
            f"Indexed {len(retriever)} images ({retriever.index.code_bits}-bit codes, "
            f"query side {retriever.query_side}) into {path}.",
            file=sys.stderr,
        )
        return 0
    queries = [
        load_items(
            spec,
            retriever,
            workdir=args.workdir,
            data_dir=args.data_dir,
            image_key=args.image_key,
            relative=False,
        )
        for spec in args.queries
    ]
    text = format_rows(search_rows(retriever, queries, args.k, catalog), args.format)
    if args.output:
        from dpq_jax import io_utils

        with io_utils.atomic_write(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"Wrote {args.output}.", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _drop_closed_event_loop_noise() -> None:
    """Silences orbax's 'Event loop is closed' reports at exit, after a failed restore.

    Tensorstore calls back into orbax's closed asyncio loop from a background thread; Python
    reports each as an unraisable exception after the process printed its error line, and a
    screen of identical tracebacks would bury that line. Other reports pass through.
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    sys.unraisablehook = hook


def run() -> None:
    """Console-script entry point (`dpq-search`)."""
    _drop_closed_event_loop_noise()
    sys.exit(main())


if __name__ == "__main__":
    run()
