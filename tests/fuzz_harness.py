"""Property-based fuzzing of segzoo's inputs: each *kind* of input, its generator and its expected outcome.

A kind is a Hypothesis strategy of cases plus a ``check(case, workdir)`` that runs segzoo's real code on the case
(in this process) and classifies what happened against the outcome table:

- ``correct``: the result equals the expected one (computed independently of the code under test);
- ``error (exit N)``: a SegzooError whose message names the file or the configuration key, with its exit code;
- ``skipped``: with ``dataset.on_bad_sample: skip``, the item was left out and counted;
- failures: ``traceback`` (any other exception), ``wrong`` (a result or an error that differs from the table: a
  silent wrong number, an error that names neither file nor key, an unreadable file kept by the check).

Adding a kind (e.g. COCO keypoint JSON, SAM prompt JSON) = one ``Kind(...)`` in :data:`KINDS`: a strategy, a check
and the line of the README table. ``tests/test_fuzz.py`` runs every kind briefly; ``tests/benchmarks/
bench_reliability.py`` runs thousands of cases and prints the counts per kind and outcome.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from segzoo.errors import SegzooError

CORRECT, SKIPPED, TRACEBACK, WRONG = "correct", "skipped", "traceback", "wrong"
FAILURES = frozenset({TRACEBACK, WRONG})


def error_outcome(exc: SegzooError) -> str:
    """``error (exit N)`` for a user-facing error."""
    return f"error (exit {exc.exit_code})"


@dataclass(frozen=True)
class Kind:
    """One kind of fuzzed input: cases, how to check one, and what the README table promises for it."""

    name: str
    title: str
    expected: str
    strategy: Callable[[], st.SearchStrategy]
    check: Callable[[Any, Path], tuple[str, str]]


@dataclass
class Tally:
    """Outcomes of one kind: counts, and the first failing cases with what went wrong."""

    kind: str
    counts: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def failed(self) -> int:
        return sum(n for outcome, n in self.counts.items() if outcome in FAILURES)


def _guarded(kind: Kind, case: Any, workdir: Path) -> tuple[str, str]:
    """``kind.check`` with anything escaping it counted as a traceback."""
    try:
        return kind.check(case, workdir)
    except Exception:  # noqa: BLE001 - the harness records every unexpected exception
        return TRACEBACK, traceback.format_exc(limit=6)


def run_kind(kind: Kind, examples: int, root: Path, random_seed: int = 0, keep: int = 5) -> Tally:
    """Run ``examples`` generated cases of ``kind`` (each in a fresh folder under ``root``); their tally."""
    tally = Tally(kind.name)

    @seed(random_seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(kind.strategy())
    def probe(case: Any) -> None:
        workdir = Path(tempfile.mkdtemp(dir=root))
        try:
            outcome, detail = _guarded(kind, case, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        tally.counts[outcome] += 1
        if outcome in FAILURES and len(tally.failures) < keep:
            tally.failures.append(f"{outcome}: {_short(case)}\n{detail}")

    probe()
    return tally


def _short(case: Any, limit: int = 300) -> str:
    text = repr(case)
    return text if len(text) <= limit else text[:limit] + "..."


def _names_any(message: str, names: list[str]) -> bool:
    return any(name and name in message for name in names)


# ====================================================================================================== config
def _base_config() -> dict:
    """A valid configuration (built-in dataset, training mode) into which one key is fuzzed."""
    return {"operation_mode": "training", "dataset": {"name": "synthetic_shapes"}, "mlflow": {"enabled": False}}


def _set_key(data: dict, key: str, value: Any) -> dict:
    data = copy.deepcopy(data)
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            return data
    node[leaf] = value
    return data


def _stored(cfg: Any, key: str) -> Any:
    """The value stored for ``key``; None for a key of another model family (warned about and ignored)."""
    for part in key.split("."):
        if not hasattr(cfg, part):
            return None
        cfg = getattr(cfg, part)
    return cfg


def _scalars() -> st.SearchStrategy:
    return st.one_of(
        st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 70000),
        st.floats(allow_nan=True, allow_infinity=True), st.floats(-2.0, 2.0),
        st.text(max_size=12), st.sampled_from(["", "1/0", "1/127.5", "nan", "inf", "-1", "0", "1e999", "\x00",
                                               "yes", "(1, 2, 3)", "[64,64,3]", "../", "median_frequency"]))


def _config_values() -> st.SearchStrategy:
    from segzoo.config.validate import all_key_paths

    value = st.recursive(_scalars(), lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                              st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                         max_leaves=6)
    return st.tuples(st.sampled_from(all_key_paths()), value)


def _check_config_value(case: tuple[str, Any], workdir: Path) -> tuple[str, str]:
    from segzoo.config import load_config
    from segzoo.config.ranges import RANGES
    from segzoo.config.validate import all_key_paths

    key, value = case
    try:
        cfg = load_config(_set_key(_base_config(), key, value))
    except SegzooError as exc:
        message = str(exc)
        if key in message or _names_any(message, [f"{k}:" for k in all_key_paths()]):
            return error_outcome(exc), ""
        return WRONG, f"the error names no key: {message}"
    stored = _stored(cfg, key) if "." in key or hasattr(cfg, key) else None
    if key in RANGES and stored is not None and not isinstance(stored, str):
        values = stored if RANGES[key].each else [stored]
        if not all(RANGES[key].contains(float(v)) for v in values):
            return WRONG, f"{key}={stored!r} accepted outside {RANGES[key].describe()}"
    if isinstance(stored, float) and not np.isfinite(stored):
        return WRONG, f"{key}={stored!r} accepted"
    return CORRECT, ""


# ====================================================================================================== images
_SAVABLE = {"PNG": ("RGB", "RGBA", "L", "LA", "P", "I;16", "1"), "JPEG": ("RGB", "L", "CMYK"),
            "BMP": ("RGB", "L", "P", "1")}
_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp"}


@st.composite
def _image_case(draw: Callable) -> dict:
    fmt = draw(st.sampled_from(sorted(_SAVABLE)))
    return {"format": fmt, "mode": draw(st.sampled_from(_SAVABLE[fmt])), "height": draw(st.integers(1, 40)),
            "width": draw(st.integers(1, 40)), "seed": draw(st.integers(0, 2**16)),
            "extension": draw(st.sampled_from([_EXTENSIONS[fmt]] * 3 + [".png", ".jpg", ".jpeg", ".bmp"])),
            "orientation": draw(st.sampled_from([None, 1, 3, 6, 8]))}


def _source_image(case: dict) -> tuple[Image.Image, np.ndarray]:
    """A random image of the case's mode and the RGB uint8 pixels segzoo must read back from a lossless file."""
    rng = np.random.default_rng(case["seed"])
    h, w, mode = case["height"], case["width"], case["mode"]
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if mode == "RGB":
        return Image.fromarray(rgb), rgb
    if mode == "RGBA":
        alpha = rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
        return Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA"), rgb  # alpha dropped, not blended
    if mode in ("L", "LA"):
        gray = rgb[..., 0]
        image = Image.fromarray(gray, "L")
        return (image.convert("LA") if mode == "LA" else image), np.repeat(gray[..., None], 3, axis=2)
    if mode == "1":
        bits = rgb[..., 0] > 127
        return Image.fromarray(bits), np.repeat((bits * 255).astype(np.uint8)[..., None], 3, axis=2)
    if mode == "P":
        palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
        index = rng.integers(0, 256, (h, w), dtype=np.uint8)
        image = Image.fromarray(index, "L")
        image.putpalette(palette.reshape(-1).tolist())
        return image, palette[index]
    if mode == "I;16":
        values = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        high = (values >> 8).astype(np.uint8)  # segzoo's rule: 16-bit gray keeps its high byte
        return Image.fromarray(values), np.repeat(high[..., None], 3, axis=2)
    cmyk = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    return Image.fromarray(cmyk, "CMYK"), np.zeros((h, w, 3), np.uint8)  # lossy only: compared with Pillow's decode


def _save(image: Image.Image, path: Path, fmt: str, orientation: int | None) -> None:
    options: dict[str, Any] = {"quality": 90} if fmt == "JPEG" else {}
    if orientation is not None and fmt in ("PNG", "JPEG"):
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif
    image.save(path, format=fmt, **options)


def _check_image(case: dict, workdir: Path) -> tuple[str, str]:
    from segzoo.data.layouts import Sample
    from segzoo.data.loader import read_image, scan_samples
    from segzoo.data.masks import ClassMapper

    image, expected = _source_image(case)
    path = workdir / f"image{case['extension']}"
    _save(image, path, case["format"], case["orientation"])
    if case["format"] == "JPEG":  # lossy: the reference is the file's own decode, in its stored orientation
        with Image.open(path) as decoded:
            expected = np.array(decoded.convert("RGB"))
    try:
        got = read_image(path)
    except SegzooError as exc:
        return WRONG, f"a valid {case['mode']} {case['format']} image was refused: {exc}"
    if got.dtype != np.uint8 or got.shape != expected.shape or not np.array_equal(got, expected):
        return WRONG, f"pixels differ: got {got.shape} {got.dtype}, expected {expected.shape}"
    mask = workdir / "mask.png"
    Image.fromarray(np.zeros(got.shape[:2], np.uint8)).save(mask)
    if scan_samples([Sample("image", path, mask)], ClassMapper(2)) != [Sample("image", path, mask)]:
        return WRONG, "the check refused a valid pair"
    return CORRECT, ""


# ============================================================================================ truncated images
@st.composite
def _truncated_case(draw: Callable) -> dict:
    case = draw(_image_case())
    case["orientation"] = None
    case["cut"] = draw(st.floats(0.0, 1.0, exclude_max=True))
    case["garbage"] = draw(st.booleans()) and draw(st.integers(0, 3)) == 0
    case["on_bad"] = draw(st.sampled_from(["error", "skip"]))
    return case


def _check_truncated(case: dict, workdir: Path) -> tuple[str, str]:
    from segzoo.data.layouts import Sample
    from segzoo.data.loader import read_image, scan_samples
    from segzoo.data.masks import ClassMapper

    image, _ = _source_image(case)
    full = workdir / "full"
    _save(image, full, case["format"], None)
    data = full.read_bytes()
    path = workdir / f"cut{case['extension']}"
    if case["garbage"]:
        path.write_bytes(bytes(random.Random(case["seed"]).randrange(256) for _ in range(int(case["cut"] * 300))))
    else:
        path.write_bytes(data[: int(case["cut"] * len(data))])
    mask = workdir / "mask.png"
    Image.fromarray(np.zeros((case["height"], case["width"]), np.uint8)).save(mask)
    sample, ok = Sample("cut", path, mask), Sample("ok", full.rename(workdir / "ok.png"), mask)
    try:
        got = read_image(path)
    except SegzooError as exc:
        got, read_error = None, exc
    skipped: list[dict] = []
    try:
        kept = scan_samples([sample, ok], ClassMapper(2), case["on_bad"], skipped=skipped)
    except SegzooError as exc:
        if got is not None:
            return WRONG, f"the check refused a file that reads fine: {exc}"
        return (error_outcome(exc), "") if str(path) in str(exc) else (WRONG, f"file not named: {exc}")
    if got is None:
        if case["on_bad"] == "error" or kept != [ok] or [s["item"] for s in skipped] != [str(path)]:
            return WRONG, f"the check kept a file that cannot be read ({read_error})"
        return SKIPPED, ""
    if not np.array_equal(got, read_image(ok.image_path)):
        return WRONG, "a truncated file was read with different pixels"
    return (CORRECT, "") if kept == [sample, ok] else (WRONG, "the check refused a file that reads fine")


# ======================================================================================================= masks
MASK_FLAWS = ("none", "palette", "gray_rgb", "la", "uint16", "exif", "wrong_size", "colour", "out_of_range",
              "uint16_out_of_range", "not_an_image", "truncated")


@st.composite
def _mask_case(draw: Callable) -> dict:
    return {"flaw": draw(st.sampled_from(MASK_FLAWS)), "classes": draw(st.integers(2, 30)),
            "height": draw(st.integers(2, 30)), "width": draw(st.integers(2, 30)),
            "seed": draw(st.integers(0, 2**16)), "ignore_void": draw(st.booleans()),
            "on_bad": draw(st.sampled_from(["error", "skip"]))}


def _write_mask(case: dict, path: Path) -> np.ndarray | None:
    """Write the case's mask file; the mapped class mask segzoo must read, or None when it must be refused."""
    rng = np.random.default_rng(case["seed"])
    h, w, n, flaw = case["height"], case["width"], case["classes"], case["flaw"]
    values = rng.integers(0, n, (h, w), dtype=np.uint8)
    if case["ignore_void"]:
        values[rng.random((h, w)) < 0.2] = 255
    if flaw in ("none", "exif", "truncated", "not_an_image"):
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(values).save(path, exif=exif if flaw == "exif" else None)
        if flaw == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
            return None
        if flaw == "not_an_image":
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 40, dtype=np.uint8)))
            return None
        return values
    if flaw == "palette":
        image = Image.fromarray(values, "L")
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tolist())
        image.save(path)
        return values
    if flaw == "gray_rgb":
        Image.fromarray(np.repeat(values[..., None], 3, axis=2)).save(path)
        return values
    if flaw == "la":
        Image.fromarray(np.stack([values, np.full_like(values, 255)], axis=2), "LA").save(path)
        return values
    if flaw == "uint16":
        Image.fromarray(values.astype(np.uint16)).save(path)
        return values
    if flaw == "wrong_size":
        Image.fromarray(values[: max(1, h - 1)]).save(path)
        return None
    if flaw == "colour":
        rgb = np.repeat(values[..., None], 3, axis=2)
        rgb[0, 0] = (1, 2, 3)
        Image.fromarray(rgb).save(path)
        return None
    if flaw == "out_of_range":
        values[rng.integers(0, h), rng.integers(0, w)] = rng.integers(n, 255)
        Image.fromarray(values).save(path)
        return None
    big = values.astype(np.uint16)
    big[0, 0] = 300 + int(rng.integers(0, 60000))
    Image.fromarray(big).save(path)
    return None


def _check_mask(case: dict, workdir: Path) -> tuple[str, str]:
    from segzoo.data.layouts import Sample
    from segzoo.data.loader import load_pair, scan_samples
    from segzoo.data.masks import ClassMapper

    image = workdir / "image.png"
    Image.fromarray(np.zeros((case["height"], case["width"], 3), np.uint8)).save(image)
    mask = workdir / "mask.png"
    expected = _write_mask(case, mask)
    sample, mapper = Sample("s", image, mask), ClassMapper(case["classes"])
    if case["on_bad"] == "skip":
        good = workdir / "good.png"
        Image.fromarray(np.zeros((case["height"], case["width"]), np.uint8)).save(good)
        skipped: list[dict] = []
        kept = scan_samples([sample, Sample("g", image, good)], mapper, "skip", skipped=skipped)
        if expected is None:
            ok = [s.id for s in kept] == ["g"] and [s["mask"] for s in skipped] == [str(mask)]
            return (SKIPPED, "") if ok else (WRONG, f"a bad {case['flaw']} mask was kept")
        return (CORRECT, "") if len(kept) == 2 else (WRONG, f"a valid {case['flaw']} mask was skipped")
    try:
        scan_samples([sample], mapper)
        _, got = load_pair(sample, mapper)
    except SegzooError as exc:
        if expected is not None:
            return WRONG, f"a valid {case['flaw']} mask was refused: {exc}"
        return (error_outcome(exc), "") if str(mask) in str(exc) else (WRONG, f"file not named: {exc}")
    if expected is None:
        return WRONG, f"a {case['flaw']} mask was accepted"
    return (CORRECT, "") if np.array_equal(got, expected) else (WRONG, "mask values differ")


# ===================================================================================================== id lists
@st.composite
def _id_list_case(draw: Callable) -> dict:
    ids = [f"img{i}" for i in range(4)]
    line = st.one_of(st.sampled_from(ids), st.sampled_from([f"/x/val/{i}.png /x/valannot/{i}.png" for i in ids]),
                     st.just(""), st.just("# comment"), st.text(max_size=15), st.sampled_from(["img9", "a\\b\\img1"]))
    return {"lines": draw(st.lists(line, max_size=8)), "binary": draw(st.booleans()) and draw(st.booleans()),
            "seed": draw(st.integers(0, 2**16))}


def _check_id_list(case: dict, workdir: Path) -> tuple[str, str]:
    from segzoo.data.layouts import _id_of, list_samples

    images, masks = workdir / "images", workdir / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(images / f"img{i}.png")
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(masks / f"img{i}.png")
    listing = workdir / "list.txt"
    if case["binary"]:
        listing.write_bytes(bytes(random.Random(case["seed"]).randrange(256) for _ in range(40)))
    else:
        listing.write_text("\n".join(case["lines"]), encoding="utf-8")
    try:
        samples = list_samples(images, masks, listing)
    except SegzooError as exc:
        return (error_outcome(exc), "") if str(listing) in str(exc) else (WRONG, f"list not named: {exc}")
    if case["binary"]:
        return CORRECT, ""  # binary garbage that happens to decode to known ids is a list like any other
    wanted = [_id_of(line.split("#", 1)[0].strip()) for line in case["lines"]
              if line.split("#", 1)[0].strip()]
    return (CORRECT, "") if [s.id for s in samples] == wanted else (WRONG, f"ids {[s.id for s in samples]}")


# ======================================================================================================= JSON
def _mutations() -> st.SearchStrategy:
    return st.tuples(st.sampled_from(["delete", "wrong_type", "truncate", "not_an_object"]), st.integers(0, 10**6),
                     st.sampled_from([None, "text", -1, 1e308, [], {}, True]))


def _leaf_paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in [prefix + (k,), *_leaf_paths(v, prefix + (k,))]]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in [prefix + (i,), *_leaf_paths(v, prefix + (i,))]]
    return []


def _mutated_text(data: Any, mutation: tuple) -> tuple[str, tuple | None]:
    """JSON text of ``data`` damaged by ``mutation``, and the path it touched (None: the whole file)."""
    how, pick, replacement = mutation
    text = json.dumps(data, indent=2)
    if how == "truncate":
        return text[: pick % max(1, len(text))], None
    if how == "not_an_object":
        return json.dumps(replacement), None
    paths = _leaf_paths(data)
    path = paths[pick % len(paths)]
    damaged = copy.deepcopy(data)
    node = damaged
    for part in path[:-1]:
        node = node[part]
    if how == "delete":
        del node[path[-1]]
    else:
        node[path[-1]] = replacement
    return json.dumps(damaged, indent=2), path


def _json_case() -> st.SearchStrategy:
    return st.tuples(st.sampled_from(["rules", "training_state", "manifest"]), _mutations(), st.booleans())


_TINY_TFLITE = "model.tflite"


def _tiny_tflite(folder: Path, seed_value: int = 0) -> Path:
    from reliability_helpers import conv_model

    return conv_model(folder / _TINY_TFLITE, classes=3, size=8, seed=seed_value)


def _check_rules(mutation: tuple, workdir: Path) -> tuple[str, str]:
    from segzoo.benchmarking.estimate import DEFAULT_RULES, estimate_stm32mp2

    model = _tiny_tflite(workdir)
    original = json.loads(DEFAULT_RULES.read_text(encoding="utf-8"))
    text, touched = _mutated_text(original, mutation)
    rules = workdir / "rules.json"
    rules.write_text(text, encoding="utf-8")
    reference = estimate_stm32mp2(model)
    try:
        result = estimate_stm32mp2(model, rules_path=rules)
    except SegzooError as exc:
        return (error_outcome(exc), "") if str(rules) in str(exc) else (WRONG, f"rules file not named: {exc}")
    if not (np.isfinite(result["latency_ms"]) and result["latency_ms"] >= 0):
        return WRONG, f"edited rules ({touched}) gave a latency of {result['latency_ms']}"
    if _same_kind_edit(original, touched, mutation) or np.isclose(result["latency_ms"], reference["latency_ms"]):
        return CORRECT, ""  # another valid value (a user's edit) or a change of metadata only
    return WRONG, f"damaged rules ({touched}) gave {result['latency_ms']} ms instead of an error"


def _same_kind_edit(original: Any, touched: tuple | None, mutation: tuple) -> bool:
    """Whether a mutation is a plausible edit rather than damage: a number replaced by a number, a list or mapping by
    another, a list item removed."""
    if touched is None:
        return False
    node = original
    for part in touched[:-1]:
        node = node[part]
    if mutation[0] == "delete":
        return isinstance(node, list)
    old, new = node[touched[-1]], mutation[2]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
    return numbers or type(old) is type(new)


def _check_training_state(mutation: tuple, workdir: Path, with_sidecar: bool) -> tuple[str, str]:
    from segzoo.errors import ConfigError, ModelError
    from segzoo.io import write_text

    saved = workdir / "saved_models"
    saved.mkdir()
    state = {"epochs_done": 3, "monitor": "val_miou", "best": 0.41, "best_epoch": 2}
    text, touched = _mutated_text(state, mutation)
    write_text(saved / "training_state.json", json.dumps(state, indent=2), checksum=with_sidecar)
    (saved / "training_state.json").write_text(text, encoding="utf-8")
    (saved / "last_model.keras").write_bytes(b"stand-in")
    try:
        loaded = _resume_state(workdir)
    except (ConfigError, ModelError) as exc:
        return (error_outcome(exc), "") if "training_state.json" in str(exc) or str(workdir) in str(exc) else (
            WRONG, f"state file not named: {exc}")
    if with_sidecar and text != json.dumps(state, indent=2):
        return WRONG, "a damaged state with a checksum was accepted"
    if loaded["epochs_done"] != json.loads(text).get("epochs_done"):
        return WRONG, "epochs_done differs"
    if touched and touched[0] == "epochs_done":
        return WRONG, f"a damaged epochs_done was accepted: {loaded['epochs_done']!r}"
    return CORRECT, ""


def _resume_state(run_dir: Path) -> dict:
    """What ``training.resume_training_from`` reads from a run (the same code, without TensorFlow)."""
    from segzoo.training.state import read_resumable_state

    return read_resumable_state(run_dir, "saved_models")


def _check_manifest(mutation: tuple, workdir: Path) -> tuple[str, str]:
    from segzoo.deployment.bundle import MANIFEST, BundleError, verify_bundle

    bundle = workdir / "bundle"
    bundle.mkdir()
    files = {"a.tflite": b"model bytes", "labels.txt": b"a\nb\n"}
    import hashlib

    for name, data in files.items():
        (bundle / name).write_bytes(data)
    manifest = {"format": "segzoo-bundle/1", "app": "x", "model": "a.tflite",
                "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()}}
    text, touched = _mutated_text(manifest, mutation)
    (bundle / MANIFEST).write_text(text, encoding="utf-8")
    problems = verify_bundle(bundle)
    entry_damaged = touched is None or (touched[0] == "files" and (len(touched) != 2 or mutation[0] != "delete"))
    if entry_damaged and not problems and text != json.dumps(manifest, indent=2):
        try:
            again = json.loads(text)
            still_checks = all(again["files"].get(n) == manifest["files"][n] for n in again["files"])
        except (ValueError, TypeError, AttributeError, KeyError):
            still_checks = False
        if not still_checks:
            return WRONG, f"a damaged manifest ({touched}) verified"
    return (error_outcome(BundleError()) if problems else CORRECT), ""


def _check_json(case: tuple, workdir: Path) -> tuple[str, str]:
    which, mutation, flag = case
    if which == "rules":
        return _check_rules(mutation, workdir)
    if which == "training_state":
        return _check_training_state(mutation, workdir, flag)
    return _check_manifest(mutation, workdir)


# ============================================================================ annotations: prompts, polygons
_POINT = st.fixed_dictionaries({"x": st.floats(0, 500), "y": st.floats(0, 500), "label": st.sampled_from([0, 1])})


@st.composite
def _prompts_case(draw: Callable) -> tuple[dict, tuple | None]:
    document = draw(st.dictionaries(st.sampled_from(["a.jpg", "b.png", "c d.jpg", "é.jpg"]),
                                    st.lists(_POINT, min_size=1, max_size=4), min_size=1, max_size=3))
    how = draw(st.sampled_from(["none", "delete", "wrong_type", "truncate", "not_an_object", "extra_field",
                                "empty_list", "nan"]))
    return document, (how, draw(st.integers(0, 10**6)), draw(st.sampled_from([None, "1", -1, 2, 1.5, [], {}, True])))


def _check_prompts(case: tuple[dict, tuple], workdir: Path) -> tuple[str, str]:
    from segzoo.tasks.promptable_segmentation.prompts import load_prompts

    document, (how, pick, replacement) = case
    path = workdir / "prompts.json"
    if how == "none":
        text = json.dumps(document)
    elif how in ("extra_field", "empty_list", "nan"):
        damaged = copy.deepcopy(document)
        image = sorted(damaged)[pick % len(damaged)]
        if how == "empty_list":
            damaged[image] = []
        else:
            point = damaged[image][pick % len(damaged[image])]
            point["x" if how == "nan" else "z"] = float("nan") if how == "nan" else 1
        text = json.dumps(damaged)
    else:
        text, _ = _mutated_text(document, (how, pick, replacement))
    path.write_text(text, encoding="utf-8")
    try:
        got = load_prompts(path)
    except SegzooError as exc:
        return (error_outcome(exc), "") if str(path) in str(exc) else (WRONG, f"file not named: {exc}")
    try:
        parsed = json.loads(text)
        expected = {image: [(float(p["x"]), float(p["y"]), p["label"]) for p in points]
                    for image, points in parsed.items()}
        valid = all(isinstance(points, list) and points and all(
            set(p) == {"x", "y", "label"} and all(_finite(p[k]) for k in ("x", "y")) and p["label"] in (0, 1)
            and not isinstance(p["label"], bool) and isinstance(p["label"], int) for p in points)
            for points in parsed.values())
    except (AttributeError, TypeError, KeyError, ValueError):
        valid = False
    if not valid:
        return WRONG, f"malformed prompts accepted: {text[:200]}"
    return (CORRECT, "") if {k: [(p.x, p.y, p.label) for p in v] for k, v in got.items()} == expected else (
        WRONG, "points differ")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


@st.composite
def _polygons_case(draw: Callable) -> list[str]:
    number = st.one_of(st.floats(0, 1), st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3))
    good = st.builds(lambda c, xy: " ".join([str(c), *map(str, xy)]), st.integers(0, 80),
                     st.lists(st.floats(0, 1), min_size=6, max_size=12).filter(lambda v: len(v) % 2 == 0))
    bad = st.one_of(st.text(max_size=20), st.builds(lambda v: " ".join(map(str, v)), st.lists(number, max_size=9)))
    return draw(st.lists(st.one_of(good, good, bad, st.just("")), max_size=6))


def _check_polygons(lines: list[str], workdir: Path) -> tuple[str, str]:
    from segzoo.tasks.promptable_segmentation.dataset import read_polygons

    path = workdir / "labels.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        got = read_polygons(path)
    except SegzooError as exc:
        return (error_outcome(exc), "") if str(path) in str(exc) else (WRONG, f"file not named: {exc}")
    expected = []
    for line in (text for text in "\n".join(lines).splitlines() if text.strip()):
        fields = line.split()
        try:
            class_id, values = int(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            return WRONG, f"line {line!r} accepted"
        if len(values) % 2 or len(values) < 6 or not all(0.0 <= v <= 1.0 for v in values):
            return WRONG, f"line {line!r} accepted"
        expected.append((class_id, values))
    same = [(p.class_id, p.vertices.reshape(-1).tolist()) for p in got] == expected
    return (CORRECT, "") if same else (WRONG, "polygons differ")


# ================================================================================================ checkpoints
HEADER_BYTES = {"torch_zip": 30, "torch_legacy": 13, "pdparams": 11, "tflite": 8}
"""The structural header of each format, which the format lets a reader check: the zip local file header, the legacy
magic-number pickle, the pickle PROTO+FRAME opcodes, the flatbuffer root offset and 'TFL3' identifier. Damage after
it, in a file without a checksum, is undetectable by design (it is what the sha256 sidecars of segzoo's files are
for)."""


def _damage(data: bytearray, damage: str, pick: int, count: int, header: int) -> bytearray:
    """Truncate at a random offset, or flip ``count`` bits in the header or anywhere."""
    if damage == "truncate":
        return data[: pick % len(data)]
    span = header if damage == "header" else len(data)
    for k in range(count):
        data[(pick + 7919 * k) % min(span, len(data))] ^= 1 << ((pick >> 3) + k) % 8
    return data


def _checkpoint_case() -> st.SearchStrategy:
    return st.tuples(st.sampled_from(["torch_zip", "torch_legacy", "pdparams"]),
                     st.sampled_from(["truncate", "header", "flip_anywhere"]), st.integers(0, 10**9),
                     st.integers(1, 8))


def _check_checkpoint(case: tuple, workdir: Path) -> tuple[str, str]:
    from segzoo.checkpoints import read_state_dict
    from segzoo.checkpoints.writers import write_pdparams, write_torch_legacy, write_torch_zip
    from segzoo.io import sidecar_path

    fmt, damage, pick, count = case
    rng = np.random.default_rng(pick % 1000)
    state = {"conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
             "conv.bias": rng.normal(size=4).astype(np.float32), "bn.num_batches_tracked": np.array(7, np.int64)}
    path = workdir / {"torch_zip": "m.pth", "torch_legacy": "m.pth.tar", "pdparams": "m.pdparams"}[fmt]
    {"torch_zip": write_torch_zip, "torch_legacy": write_torch_legacy, "pdparams": write_pdparams}[fmt](path, state)
    has_sidecar = damage == "flip_anywhere"
    if not has_sidecar:
        sidecar_path(path).unlink()  # a third-party file: no checksum
    path.write_bytes(bytes(_damage(bytearray(path.read_bytes()), damage, pick, count, HEADER_BYTES[fmt])))
    try:
        got = read_state_dict(path)
    except SegzooError as exc:
        return (error_outcome(exc), "") if str(path) in str(exc) else (WRONG, f"file not named: {exc}")
    if has_sidecar:
        return WRONG, "a damaged checkpoint with a checksum was read"
    same = set(got) == set(state) and all(np.array_equal(got[k], state[k]) for k in state)
    return (CORRECT, "") if same else (WRONG, "damaged header read with different weights")


# ====================================================================================================== tflite
def _tflite_case() -> st.SearchStrategy:
    return st.tuples(st.sampled_from(["truncate", "header", "flip_anywhere"]), st.integers(0, 10**9),
                     st.integers(1, 8))


def _check_tflite(case: tuple, workdir: Path) -> tuple[str, str]:
    from segzoo.io import write_with
    from segzoo.runners import load_runner

    damage, pick, count = case
    path = workdir / "m.tflite"
    write_with(path, lambda tmp: _tiny_tflite(workdir, pick % 7).rename(tmp))
    x = np.random.default_rng(1).uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)
    reference = load_runner(path, num_threads=1).predict(x)
    has_sidecar = damage == "flip_anywhere"
    if not has_sidecar:
        from segzoo.io import sidecar_path

        sidecar_path(path).unlink()
    path.write_bytes(bytes(_damage(bytearray(path.read_bytes()), damage, pick, count, HEADER_BYTES["tflite"])))
    for reader in _TFLITE_READERS:  # the other ways segzoo opens a .tflite must agree or fail clearly
        try:
            reader(path)
        except SegzooError as exc:
            if str(path) not in str(exc):
                return WRONG, f"{reader.__name__}: file not named: {exc}"
    try:
        got = load_runner(path, num_threads=1).predict(x)
    except SegzooError as exc:
        return (error_outcome(exc), "") if str(path) in str(exc) else (WRONG, f"file not named: {exc}")
    if has_sidecar:
        return WRONG, "a damaged model with a checksum was loaded"
    if got.shape != reference.shape or not np.array_equal(got, reference):
        return WRONG, "a damaged header gave different outputs"
    return CORRECT, ""


def _read_flatbuffer(path: Path) -> Any:
    from segzoo.litert.flatbuffer import quantization_problem, read_flatbuffer

    return quantization_problem(read_flatbuffer(path))


def _analyze(path: Path) -> Any:
    from segzoo.benchmarking.analysis import analyze_model

    return analyze_model(path)


def _loadable(path: Path) -> Any:
    from segzoo.benchmarking.estimate import check_loadable_on_board

    return check_loadable_on_board(path)


_TFLITE_READERS = (_read_flatbuffer, _analyze, _loadable)
"""The config check of a float model, the benchmark analysis and the deployment check read .tflite files too."""


# ==================================================================================================== sidecars
def _sidecar_case() -> st.SearchStrategy:
    return st.tuples(st.sampled_from(["report.json", "best_model.keras", "model.tflite", "training_state.json"]),
                     st.integers(1, 5000), st.integers(0, 10**9), st.sampled_from(["file", "sidecar"]))


def _check_sidecar(case: tuple, workdir: Path) -> tuple[str, str]:
    from segzoo.io import sidecar_path, verified, write_with

    name, size, pick, target = case
    path = workdir / name
    payload = random.Random(pick).randbytes(size)
    write_with(path, lambda tmp: tmp.write_bytes(payload))
    damaged = sidecar_path(path) if target == "sidecar" else path
    data = bytearray(damaged.read_bytes())
    data[pick % len(data)] ^= 1 << (pick >> 4) % 8
    damaged.write_bytes(bytes(data))
    try:
        verified(path)
    except SegzooError as exc:
        return (error_outcome(exc), "") if name in str(exc) else (WRONG, f"file not named: {exc}")
    return WRONG, f"damage at byte {pick % len(data)} of {damaged.name} went unnoticed"


# ======================================================================================================= kinds
KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("config_values", "configuration values (every key of the schema)",
         "error (exit 2) naming the key; an accepted value is finite and in its documented range",
         _config_values, _check_config_value),
    Kind("images", "images: RGB, RGBA, L, LA, palette, 1-bit, 16-bit, CMYK; PNG/JPEG/BMP; wrong extension; EXIF",
         "correct pixels (stored orientation; 16-bit keeps the high byte; alpha dropped); the check accepts them",
         lambda: _image_case(), _check_image),
    Kind("truncated_images", "image files cut at a random offset, or random bytes",
         "error (exit 3) naming the file, and skipped (counted) by the check with on_bad_sample: skip; or, when "
         "the cut leaves every pixel, the same pixels", lambda: _truncated_case(), _check_truncated),
    Kind("masks", "masks: palette, gray RGB, LA, 16-bit, EXIF / wrong size, colour, out-of-range, truncated, junk",
         "valid ones: the exact class values; bad ones: error (exit 3) naming the mask, or skipped and counted",
         lambda: _mask_case(), _check_mask),
    Kind("id_lists", "id list files: ids, paths, comments, blanks, unknown ids, binary garbage",
         "the listed samples in order, or error (exit 3) naming the list file", lambda: _id_list_case(),
         _check_id_list),
    Kind("json_files", "JSON segzoo reads: STM32MP2 rules, training state, bundle manifest; keys deleted, wrong "
         "types, truncated, not an object", "error naming the file (exit 2/4), a manifest that fails verification, "
         "or the same result when only metadata changed", _json_case, _check_json),
    Kind("sam_prompts", "SAM point-prompt JSON: valid, fields missing or extra, wrong types, NaN, empty lists, "
         "truncated, not an object", "the exact points, or error (exit 3) naming the file (and image and point)",
         lambda: _prompts_case(), _check_prompts),
    Kind("yolo_seg_labels", "YOLO-seg polygon label files: valid lines, text, odd counts, out-of-range, NaN",
         "the exact polygons, or error (exit 3) naming the file and line", lambda: _polygons_case(),
         _check_polygons),
    Kind("checkpoints", "official checkpoints (torch zip, torch legacy, Paddle) truncated or with a damaged header; "
         "segzoo-written ones with bits flipped anywhere", "error (exit 4) naming the file, or the very same "
         "weights (a header bit the format ignores); a segzoo-written file: always the error",
         _checkpoint_case, _check_checkpoint),
    Kind("tflite", ".tflite files truncated or with a damaged header; segzoo-written ones with bits flipped "
         "anywhere", "error (exit 4) naming the file, or the very same outputs; a segzoo-written file: always the "
         "error", _tflite_case, _check_tflite),
    Kind("sha256_sidecars", "files segzoo wrote (reports, models, state) with one bit flipped in the file or its "
         ".sha256", "error (exit 4) naming the file: always detected", _sidecar_case, _check_sidecar),
)}
"""Every fuzzed kind, by name."""


def outcome_table_markdown() -> str:
    """The README's table: kind and expected outcome."""
    lines = ["| kind | cases | expected outcome |", "|---|---|---|"]
    lines += [f"| `{k.name}` | {k.title} | {k.expected} |" for k in KINDS.values()]
    return "\n".join(lines)


def tallies_markdown(tallies: list[Tally]) -> str:
    """Counts per kind and outcome, as a Markdown table."""
    outcomes = sorted({o for t in tallies for o in t.counts} | FAILURES,  # the failure columns, even when 0
                      key=lambda o: (o in FAILURES, o))
    lines = ["| kind | cases | " + " | ".join(outcomes) + " |", "|---|---:|" + "---:|" * len(outcomes)]
    for tally in tallies:
        lines.append(f"| {tally.kind} | {tally.total} | " + " | ".join(str(tally.counts.get(o, 0)) for o in outcomes)
                     + " |")
    total = Counter()
    for tally in tallies:
        total.update(tally.counts)
    lines.append(f"| **all** | {sum(total.values())} | " + " | ".join(str(total.get(o, 0)) for o in outcomes) + " |")
    return "\n".join(lines)
