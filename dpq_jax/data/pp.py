"""Per-example preprocessing ops, chained by a spec string (after big_vision's pp registry).

A spec is `|`-separated op calls with Python-literal arguments, for example

    "resize(35,29)|random_crop(32,26)|flip_lr|value_range(0,1)|normalize((0.5,),(0.5,))"

Every op works on one NumPy image `[H, W, C]` and takes a `np.random.Generator` (random ops
draw from it, the others ignore it), so the pipeline controls all randomness per example.

Ops: `resize(h, w)` or `resize(s)` (PIL bilinear; one size: shorter side, as torchvision's
`Resize(s)`), `random_crop(h, w, pad=0)`, `center_crop(h, w)`,
`flip_lr(p=0.5)`, `value_range(lo, hi, in_lo=0, in_hi=255)`, `normalize(mean, std)`.
Add one with `@register_op("name")` on a factory `(*args) -> fn(image, rng) -> image`.

Example:
  >>> fn = build("center_crop(2,2)|value_range(0,1)")
  >>> fn(np.full((4, 4, 1), 255, np.uint8), None)[..., 0]
  array([[1., 1.],
         [1., 1.]], dtype=float32)
"""

import ast
from collections.abc import Callable

import numpy as np
from PIL import Image

Op = Callable[[np.ndarray, np.random.Generator | None], np.ndarray]
OPS: dict[str, Callable[..., Op]] = {}


def register_op(name: str):
    """Decorator registering an op factory under `name`."""

    def wrap(factory):
        OPS[name] = factory
        return factory

    return wrap


def _positive_ints(op: str, **sizes) -> None:
    for key, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"pp op {op}: {key} must be a positive int, got {value!r}.")


def _need_rng(op: str, rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"pp op {op} is random and needs a np.random.Generator, got {rng!r}.")
    return rng


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """The `(H, W)` of torchvision's `Resize(size)` with an int: the shorter side becomes
    `size`, the longer `int(size * long / short)` (truncated, as torchvision rounds).

    Example:
      >>> short_side_size(250, 180, 120)  # a portrait face crop
      (166, 120)
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


@register_op("resize")
def resize(h: int, w: int | None = None) -> Op:
    """Resizes to `h x w` with PIL's bilinear filter (antialiased when shrinking).

    With one argument, `resize(s)` is torchvision's `Resize(s)`: the shorter side becomes `s`
    and the aspect ratio is kept (`short_side_size`); an image already of that size is left
    as it is. uint8 input stays uint8 (PIL mode "L", rounded); other input is resized as
    float32 (mode "F"). Each channel is resized on its own.
    """
    if w is None:
        _positive_ints("resize", size=h)
    else:
        _positive_ints("resize", h=h, w=w)

    def fn(image, rng=None):
        del rng
        out_h, out_w = (h, w) if w is not None else short_side_size(*image.shape[:2], h)
        if w is None and (out_h, out_w) == image.shape[:2]:
            return image  # as torchvision: no resampling when the size already matches
        if image.dtype == np.uint8:
            mode, dtype = "L", np.uint8
        else:
            mode, dtype = "F", np.float32
        channels = [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(image[..., c], dtype), mode).resize(
                    (out_w, out_h), Image.Resampling.BILINEAR
                )
            )
            for c in range(image.shape[-1])
        ]
        return np.stack(channels, axis=-1)

    return fn


def _check_fits(op: str, image: np.ndarray, h: int, w: int) -> None:
    if h > image.shape[0] or w > image.shape[1]:
        raise ValueError(
            f"pp op {op}: cannot cut {h}x{w} out of a {image.shape[0]}x{image.shape[1]} "
            "image; resize first or crop smaller."
        )


@register_op("random_crop")
def random_crop(h: int, w: int, pad: int = 0) -> Op:
    """Zero-pads by `pad` on each side, then cuts a uniformly placed `h x w` window.

    The top offset is drawn first, then the left one, each with `rng.integers` over all
    valid positions.
    """
    _positive_ints("random_crop", h=h, w=w)
    if not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pp op random_crop: pad must be an int >= 0, got {pad!r}.")

    def fn(image, rng=None):
        rng = _need_rng("random_crop", rng)
        if pad:
            image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
        _check_fits("random_crop", image, h, w)
        top = rng.integers(0, image.shape[0] - h + 1)
        left = rng.integers(0, image.shape[1] - w + 1)
        return image[top : top + h, left : left + w]

    return fn


@register_op("center_crop")
def center_crop(h: int, w: int) -> Op:
    """Cuts the central `h x w` window (offsets rounded down)."""
    _positive_ints("center_crop", h=h, w=w)

    def fn(image, rng=None):
        del rng
        _check_fits("center_crop", image, h, w)
        top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
        return image[top : top + h, left : left + w]

    return fn


@register_op("flip_lr")
def flip_lr(p: float = 0.5) -> Op:
    """Mirrors left-right when `rng.random() < p`."""
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"pp op flip_lr: p must lie in [0, 1], got {p!r}.")

    def fn(image, rng=None):
        rng = _need_rng("flip_lr", rng)
        return image[:, ::-1] if rng.random() < p else image

    return fn


@register_op("value_range")
def value_range(lo: float, hi: float, in_lo: float = 0.0, in_hi: float = 255.0) -> Op:
    """Maps `[in_lo, in_hi]` (uint8 range by default) linearly onto `[lo, hi]`, as float32."""
    if in_hi == in_lo:
        raise ValueError("pp op value_range: in_lo and in_hi must differ.")
    scale = (hi - lo) / (in_hi - in_lo)

    def fn(image, rng=None):
        del rng
        out = image.astype(np.float32)  # A copy, so the in-place updates below are safe.
        out -= in_lo
        out *= scale
        out += lo
        return out

    return fn


@register_op("normalize")
def normalize(mean, std) -> Op:
    """`(image - mean) / std` per channel, as float32; mean and std have 1 or C entries."""
    mean = np.atleast_1d(np.asarray(mean, np.float32))
    std = np.atleast_1d(np.asarray(std, np.float32))
    if mean.ndim != 1 or std.ndim != 1 or np.any(std <= 0):
        raise ValueError(
            f"pp op normalize: mean and std must be numbers or flat tuples, std > 0; got "
            f"{mean.tolist()}, {std.tolist()}."
        )

    def fn(image, rng=None):
        del rng
        for name, v in (("mean", mean), ("std", std)):
            if v.size not in (1, image.shape[-1]):
                raise ValueError(
                    f"pp op normalize: {name} has {v.size} entries but the image has "
                    f"{image.shape[-1]} channels; give 1 or {image.shape[-1]}."
                )
        out = image.astype(np.float32)  # A copy, so the in-place updates below are safe.
        out -= mean
        out /= std
        return out

    return fn


def parse(spec: str) -> list[tuple[str, tuple, dict]]:
    """Splits a spec into `(op_name, args, kwargs)` triples.

    Args:
      spec: `|`-separated ops, e.g. `"random_crop(32,32,pad=4)|flip_lr"`.

    Returns:
      One `(name, args, kwargs)` per op, in order; empty for `""`.

    Raises:
      ValueError: malformed op text, non-literal arguments, or an unknown op (the message
        lists the registered ops).
    """
    calls = []
    for text in (t.strip() for t in spec.split("|")):
        if not text:
            continue
        try:
            node = ast.parse(text, mode="eval").body
            if isinstance(node, ast.Name):
                name, args, kwargs = node.id, (), {}
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                name = node.func.id
                args = tuple(ast.literal_eval(a) for a in node.args)
                kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
            else:
                raise ValueError("not of the form name or name(literal, ...)")
        except (SyntaxError, ValueError) as e:
            raise ValueError(
                f"pp spec {spec!r}: cannot parse {text!r} ({e}); write ops as name or "
                "name(arg, key=value) with Python literals, separated by '|'."
            ) from None
        if name not in OPS:
            raise ValueError(f"pp spec {spec!r}: unknown op {name!r}; known ops: {sorted(OPS)}.")
        calls.append((name, args, kwargs))
    return calls


def build(spec: str) -> Callable[[np.ndarray, np.random.Generator | None], np.ndarray]:
    """Compiles a spec into `fn(image uint8 [H, W, C], rng) -> float32 [H', W', C]`.

    Args:
      spec: `|`-separated ops (see the module docstring); `""` only casts to float32.

    Returns:
      A function applying the ops in order; `rng` may be None when no op is random.

    Raises:
      ValueError: at build time for a bad spec or bad op arguments; at call time for an image
        that is not `[H, W, C]` or that an op cannot handle.
    """
    ops = []
    for name, args, kwargs in parse(spec):
        try:
            ops.append(OPS[name](*args, **kwargs))
        except TypeError as e:
            raise ValueError(f"pp op {name}: bad arguments {args} {kwargs} ({e}).") from None

    def fn(image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(
                f"pp: images must be [H, W, C]; got shape {image.shape}. Add a channel axis "
                "for grey images."
            )
        for op in ops:
            image = op(image, rng)
        return np.asarray(image, np.float32)

    return fn
