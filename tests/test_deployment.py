"""Deployment: bundles from ST's real DeepLabV3, the board app (no TensorFlow, no segzoo) on real COCO images,
pushes to a real sshd "board" (tests/sshd.py), and ST Edge AI Core's .nb generation with a stand-in tool."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from sshd import sshd_server  # noqa: F401  (fixture)

from segzoo.data.loader import read_image
from segzoo.data.masks import read_mask
from segzoo.deployment.bundle import BOARD_APP_DIR, BundleError, board_app, build_bundle, verify_bundle
from segzoo.deployment.push import deploy, launch_command
from segzoo.deployment.stedgeai import generate_nb
from segzoo.errors import ConfigError, ModelError
from segzoo.prediction import predict_labels
from segzoo.preprocess import Preprocessing, to_model_input
from segzoo.remote import Remote, RemoteError
from segzoo.runners import TensorQuantization, load_runner, quantize

ST_LABELS = ("pretrained", "st_deeplabv3_257_int8_per_tensor", "labels_pascalvoc.txt")
BLOCK_IMPORTS = "import runpy, sys; sys.modules.update(segzoo=None, tensorflow=None, keras=None); "


@pytest.fixture
def voc_names() -> list[str]:
    from conftest import shared_path

    return shared_path(*ST_LABELS).read_text().split()


@pytest.fixture
def coco_images(coco_dir) -> list[Path]:
    return sorted((coco_dir / "images" / "train2017").glob("*.jpg"))[:2]


@pytest.fixture
def bundle(st_model, voc_names, tmp_path) -> Path:
    return build_bundle(st_model, tmp_path / "deployment", class_names=voc_names,
                        preprocessing=Preprocessing().to_dict())


def _run_app(bundle_dir: Path, *args: str, path_first: Path | None = None,
             app: str = "segment.py") -> subprocess.CompletedProcess:
    """The bundle's ``app`` (segment.py by default) in a fresh interpreter where importing segzoo or TensorFlow
    fails (``path_first``: extra modules, e.g. a stand-in stai_mpu)."""
    extra = f"sys.path.insert(0, {str(path_first)!r}); " if path_first else ""
    code = BLOCK_IMPORTS + extra + f"sys.argv = {[str(bundle_dir / app), *args]!r}; " \
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------------------------ bundle

def test_bundle_contents_and_manifest(bundle, st_model, voc_names):
    names = sorted(p.name for p in bundle.iterdir())
    assert names == sorted([st_model.name, "labels.txt", "preprocessing.json", "segment.py", "launch.sh",
                            "manifest.json"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"] == st_model.name and manifest["nb_model"] is None
    assert sorted(manifest["files"]) == sorted(set(names) - {"manifest.json"})
    assert manifest["files"][st_model.name]["size"] == st_model.stat().st_size
    config = json.loads((bundle / "preprocessing.json").read_text())
    assert config["preprocessing"] == Preprocessing().to_dict()
    assert config["input"] == {"height": 257, "width": 257, "channels": 3,
                               "quantization": {"scale": 0.0, "zero_point": 0, "dtype": "float32"}}
    assert config["output_kind"] == "logits" and config["num_classes"] == 21
    assert (bundle / "labels.txt").read_text().split() == voc_names
    assert os.access(bundle / "launch.sh", os.X_OK)
    assert verify_bundle(bundle) == []
    assert [p.name for p in bundle.parent.iterdir()] == ["segzoo_seg"]  # no staging leftovers


def test_verify_bundle_finds_tampering(bundle, st_model):
    with open(bundle / "labels.txt", "a") as handle:
        handle.write("extra\n")
    (bundle / "launch.sh").unlink()
    data = bytearray((bundle / st_model.name).read_bytes())
    data[1000] ^= 0xFF
    (bundle / st_model.name).write_bytes(bytes(data))
    problems = verify_bundle(bundle)
    assert len(problems) == 3
    assert any(p.startswith("labels.txt: size") for p in problems)
    assert "launch.sh: missing" in problems
    assert f"{st_model.name}: sha256 differs from the manifest (file changed or corrupted)" in problems


def test_rebuild_replaces_and_nb_is_included(bundle, st_model, voc_names, tmp_path):
    nb = tmp_path / "deeplab.nb"
    nb.write_bytes(b"NBG stand-in")
    again = build_bundle(st_model, bundle.parent, class_names=voc_names, preprocessing=Preprocessing().to_dict(),
                         nb_model=nb, label_file=str(Path(st_model).parent / "labels_pascalvoc.txt"))
    assert again == bundle and verify_bundle(bundle) == []
    assert json.loads((bundle / "manifest.json").read_text())["nb_model"] == "deeplab.nb"
    assert [p.name for p in bundle.parent.iterdir()] == ["segzoo_seg"]


def test_build_bundle_rejects_mismatches(st_model, voc_names, tmp_path):
    pp = Preprocessing().to_dict()
    with pytest.raises(ModelError, match="outputs 21 classes"):
        build_bundle(st_model, tmp_path, class_names=voc_names[:5], preprocessing=pp)
    with pytest.raises(ModelError, match="3 input channels"):
        build_bundle(st_model, tmp_path, class_names=voc_names, preprocessing={**pp, "color_mode": "grayscale"})
    short = tmp_path / "labels.txt"
    short.write_text("a\nb\n")
    with pytest.raises(ConfigError, match="lists 2 classes but there are 21"):
        build_bundle(st_model, tmp_path, class_names=voc_names, preprocessing=pp, label_file=str(short))
    with pytest.raises(ConfigError, match="app name"):
        build_bundle(st_model, tmp_path, class_names=voc_names, preprocessing=pp, app_name="../escape")
    with pytest.raises(ConfigError, match="aspect_ratio"):
        build_bundle(st_model, tmp_path, class_names=voc_names, preprocessing={**pp, "aspect_ratio": "stretch"})
    assert list(tmp_path.iterdir()) == [short]


# --------------------------------------------------------------------------------------------------- board app

@pytest.mark.parametrize("name", ["segment.py", "common.py", "pose.py", "sam2_point.py"])
def test_board_app_imports_no_tensorflow_or_segzoo(name):
    tree = ast.parse((BOARD_APP_DIR / name).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert not roots & {"tensorflow", "keras", "segzoo", "tf_keras"}, roots
    # pose.py and sam2_point.py take numpy, OpenCV and the runtimes from common.py and segment.py, loaded by path
    assert roots <= {"__future__", "argparse", "glob", "hashlib", "importlib", "json", "math", "os", "sys", "time",
                     "pathlib", "numpy", "cv2", "PIL", "stai_mpu", "tflite_runtime", "ai_edge_litert"}, roots


@pytest.mark.parametrize("aspect_ratio", ["fit", "crop", "padding"])
@pytest.mark.parametrize("color_mode", ["rgb", "bgr", "grayscale"])
def test_board_preprocessing_equals_segzoo(coco_images, aspect_ratio, color_mode):
    app = board_app()
    image = read_image(coco_images[0])
    for interpolation in ("bilinear", "nearest", "area"):
        pp = Preprocessing(scale=1 / 255, offset=-0.5, interpolation=interpolation, aspect_ratio=aspect_ratio,
                           color_mode=color_mode)
        expected, placement = to_model_input(image, (200, 150), pp)
        got, board_placement = app.to_model_input(image, (200, 150), pp.to_dict())
        assert got.dtype == np.float32 and np.array_equal(got, expected)
        assert board_placement["crop"] == placement.crop and board_placement["content"] == placement.content
        for q in (TensorQuantization(0.0039, -128, "int8"), TensorQuantization(0.0078, 128, "uint8")):
            assert np.array_equal(app.quantize(got, q.dtype, (q.scale, q.zero_point)), quantize(expected, q))


def test_board_resize_takes_more_channels_than_one_opencv_call():
    """ADE20K logits (150 channels) restore on the board as in segzoo (OpenCV 5: 128 channels per call)."""
    from segzoo.preprocess import resize_scores

    scores = np.random.default_rng(0).normal(size=(8, 12, 150)).astype(np.float32)
    got = board_app()._resize(scores, (40, 60), cv2.INTER_LINEAR)
    assert got.shape == (40, 60, 150) and np.array_equal(got, resize_scores(scores, (40, 60)))


def test_board_labels_equal_segzoo_predictions(st_model, voc_names, coco_images):
    app = board_app()
    pp = Preprocessing(aspect_ratio="padding")
    runner = load_runner(st_model)
    model = app.open_model(st_model, None, "cpu", runner.num_threads)
    config = {"preprocessing": pp.to_dict(), "input": {"height": 257, "width": 257, "channels": 3}}
    segmenter = app.Segmenter(model, config, voc_names)
    for path in coco_images:
        image = read_image(path)
        labels, times = segmenter.segment(image)
        assert np.array_equal(labels, predict_labels(runner, image, pp, len(voc_names)))
        assert times["inference_ms"] > 0


def test_board_app_runs_without_segzoo_on_real_images(bundle, coco_images, tmp_path):
    out = tmp_path / "results"
    result = _run_app(bundle, "--input", *map(str, coco_images), "--output", str(out), "--runtime", "cpu")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if " ms, total " in line]
    assert [line.split(":")[0] for line in lines] == [p.name for p in coco_images]
    assert all("[ai_edge_litert / cpu]" in line for line in lines)
    for path in coco_images:
        mask = read_mask(out / f"{path.stem}_mask.png")
        overlay = cv2.imread(str(out / f"{path.stem}_overlay.png"))
        assert mask.shape == read_image(path).shape[:2] and mask.max() < 21
        assert overlay.shape[0] >= mask.shape[0] and overlay.shape[1] > mask.shape[1]

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (320, 240))
    for path in coco_images * 2:
        writer.write(cv2.resize(cv2.imread(str(path)), (320, 240)))
    writer.release()
    result = _run_app(bundle, "--video", str(video), "--max-frames", "3", "--output", str(tmp_path / "frames"))
    assert result.returncode == 0, result.stderr
    assert sum(line.startswith("frame ") for line in result.stdout.splitlines()) == 3
    assert len(list((tmp_path / "frames").glob("frame_*_overlay.png"))) == 3


FAKE_STAI_MPU = '''"""Stand-in for X-LINUX-AI's stai_mpu (only on the board): its Python API over ai_edge_litert."""
import enum

from ai_edge_litert.interpreter import Interpreter


class stai_mpu_backend_engine(enum.Enum):
    stai_mpu_tflite = 1


class _Info:
    def __init__(self, detail):
        self._detail = detail

    def get_shape(self):
        return list(self._detail["shape"])

    def get_dtype(self):
        return self._detail["dtype"]

    def get_qtype(self):
        return "staticAffine" if self._detail["quantization"][0] else "none"

    def get_scale(self):
        return self._detail["quantization"][0]

    def get_zero_point(self):
        return self._detail["quantization"][1]


class stai_mpu_network:
    def __init__(self, model_path, use_hw_acceleration=False):
        self._interpreter = Interpreter(model_path=model_path)
        self._interpreter.allocate_tensors()

    def get_input_infos(self):
        return [_Info(d) for d in self._interpreter.get_input_details()]

    def get_output_infos(self):
        return [_Info(d) for d in self._interpreter.get_output_details()]

    def get_backend_engine(self):
        return stai_mpu_backend_engine.stai_mpu_tflite

    def set_input(self, index, data):
        self._interpreter.set_tensor(self._interpreter.get_input_details()[index]["index"], data)

    def run(self):
        self._interpreter.invoke()

    def get_output(self, index):
        return self._interpreter.get_tensor(self._interpreter.get_output_details()[index]["index"])
'''


def test_board_app_with_stai_mpu_and_a_quantized_label_model(coral_model, voc_names, coco_images, tmp_path):
    """stai_mpu exists only on X-LINUX-AI: a stand-in with its documented Python API runs Coral's uint8-input,
    ArgMax-output DeepLabV3; the masks equal segzoo's own predictions."""
    pp = Preprocessing(scale=1 / 128, offset=-1.0)
    bundle = build_bundle(coral_model, tmp_path / "deployment", class_names=voc_names, preprocessing=pp.to_dict())
    (tmp_path / "fake" / "stai_mpu").mkdir(parents=True)
    (tmp_path / "fake" / "stai_mpu" / "__init__.py").write_text(FAKE_STAI_MPU)
    result = _run_app(bundle, "--input", *map(str, coco_images), "--output", str(tmp_path / "o"),
                      path_first=tmp_path / "fake")
    assert result.returncode == 0, result.stderr
    assert "runtime stai_mpu (stai_mpu_tflite), delegate vx_delegate (stai_mpu)" in result.stdout, result.stdout
    runner = load_runner(coral_model)
    for path in coco_images:
        expected = predict_labels(runner, read_image(path), pp, len(voc_names))
        assert np.array_equal(read_mask(tmp_path / "o" / f"{path.stem}_mask.png"), expected)


def test_board_app_verify_and_errors(bundle, st_model, tmp_path):
    ok = _run_app(bundle, "--verify")
    assert ok.returncode == 0 and "verify: OK, 5 files" in ok.stdout
    assert _run_app(bundle, "--benchmark", "0").returncode == 2
    missing = _run_app(bundle, "--input", str(tmp_path / "nope.jpg"))
    assert missing.returncode == 5 and "no such file" in missing.stderr
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(os.urandom(2048))
    bad = _run_app(bundle, "--benchmark", "1", "--model", str(garbage))
    assert bad.returncode == 4 and "cannot load model garbage.tflite" in bad.stderr
    data = bytearray((bundle / st_model.name).read_bytes())
    data[-10] ^= 0x01
    (bundle / st_model.name).write_bytes(bytes(data))
    tampered = _run_app(bundle, "--verify")
    assert tampered.returncode == 1 and st_model.name in tampered.stderr and "FAILED" in tampered.stderr


# ------------------------------------------------------------------------------------------------------- push

def test_deploy_verify_and_launch_on_board(sshd_server, bundle, coco_images, tmp_path):
    board = sshd_server.board_root
    path = board / "my deploy; $(touch pwned) 'q'" / "segzoo seg"
    results = board / "results & more"
    summary = deploy(bundle, sshd_server.target(), str(path), launch=True, python=sshd_server.python,
                     launch_args=["--input", *map(str, coco_images), "--output", str(results), "--runtime", "cpu"])
    assert summary["verified"] and summary["launched"] and summary["remote_path"] == str(path)
    assert "manifest.json" in summary["files"] and "segment.py" in summary["files"]
    assert verify_bundle(path) == []
    frame_lines = [line for line in summary["launch_output"] if " ms, total " in line]
    assert len(frame_lines) == 2 and all("inference" in line for line in frame_lines)
    assert summary["launch_output"][0].startswith("verify: OK")
    for image in coco_images:
        assert (results / f"{image.stem}_mask.png").is_file() and (results / f"{image.stem}_overlay.png").is_file()
    assert not (board / "pwned").exists() and not (Path.home() / "pwned").exists()
    assert "identity" not in json.dumps(summary) and str(sshd_server.identity_file) not in json.dumps(summary)
    assert launch_command(str(path), ["--camera", "/dev/video0"]).startswith("env PYTHON=python3 sh '")

    # redeploy over it: replaced in one piece, nothing left beside it
    deploy(bundle, sshd_server.target(), str(path), python=sshd_server.python)
    assert sorted(p.name for p in path.parent.iterdir()) == ["segzoo seg"]

    # a file changed on the board: the board's own check and launch.sh refuse to run
    with open(path / "labels.txt", "a") as handle:
        handle.write("tampered\n")
    with Remote(sshd_server.target()) as remote:
        verify = remote.run([sshd_server.python, str(path / "segment.py"), "--verify"], timeout=60, check=False)
        launch = remote.run(["env", f"PYTHON={sshd_server.python}", "sh", str(path / "launch.sh"), "--input",
                             str(coco_images[0])], timeout=60, check=False)
    assert verify.exit_code == 1 and "labels.txt: size" in verify.stderr
    assert launch.exit_code == 1 and " ms, total " not in launch.stdout


def test_deploy_to_an_unwritable_path_leaves_nothing(sshd_server, bundle):
    board = sshd_server.board_root
    blocker = board / "plain_file"
    blocker.write_text("x")
    before = sorted(p.name for p in board.iterdir())
    for bad in (str(blocker / "deploy"), "/proc/segzoo-deploy/app"):
        with pytest.raises(RemoteError, match="is a file, not a directory|cannot create directory") as info:
            deploy(bundle, sshd_server.target(), bad, python=sshd_server.python)
        assert sshd_server.host in str(info.value)
    assert sorted(p.name for p in board.iterdir()) == before
    assert not Path("/proc/segzoo-deploy").exists()


def test_deploy_refuses_damaged_bundle_and_missing_python(sshd_server, bundle, st_model):
    target_dir = sshd_server.board_root / "never"
    with pytest.raises(RemoteError, match="no-python3-here not found on the board"):
        deploy(bundle, sshd_server.target(), str(target_dir), python="no-python3-here")
    assert not target_dir.exists() and not list(sshd_server.board_root.glob("never.*"))
    (bundle / "segment.py").write_text("# changed\n")
    with pytest.raises(BundleError, match="segment.py"):
        deploy(bundle, sshd_server.target(), str(target_dir), python=sshd_server.python)
    assert not target_dir.exists()


# -------------------------------------------------------------------------------------------- ST Edge AI Core

FAKE_STEDGEAI = """#!/bin/sh
# Stand-in for ST Edge AI Core's stedgeai (the real tool cannot be installed here): parses the generate options
# the real CLI takes and writes <model stem>.nb into --output.
echo "ST Edge AI Core stand-in: $*"
[ "$1" = generate ] || { echo "E100: unknown command $1"; exit 2; }
shift
while [ $# -gt 0 ]; do
  case "$1" in
    --model|-m) model=$2; shift 2 ;;
    --target) target=$2; shift 2 ;;
    --output|-o) output=$2; shift 2 ;;
    --workspace|-w) workspace=$2; shift 2 ;;
    *) echo "E101: unknown option $1"; exit 2 ;;
  esac
done
[ "$target" = stm32mp25 ] || { echo "E102: bad target $target"; exit 2; }
case "$MODE" in fail) echo "E010(InvalidModelError): unsupported operator"; exit 1 ;; silent) exit 0 ;; esac
mkdir -p "$output" "$workspace"
name=$(basename "$model" .tflite)
printf 'NBG' > "$output/$name.nb"
echo "Generated files: $output/$name.nb"
"""


def test_generate_nb_with_a_stand_in_stedgeai(st_model, tmp_path, monkeypatch):
    """ST Edge AI Core is not available here: a script with the same command line writes the .nb."""
    tool = tmp_path / "bin" / "stedgeai"
    tool.parent.mkdir()
    tool.write_text(FAKE_STEDGEAI)
    tool.chmod(0o755)
    out = tmp_path / "npu out"
    nb = generate_nb(st_model, tool, out)
    assert nb == out / f"{st_model.stem}.nb" and nb.read_bytes() == b"NBG"
    report = (out / f"{st_model.stem}_stedgeai_generate.txt").read_text()
    assert "generate --model" in report and "--target stm32mp25" in report and "Generated files" in report
    written = [nb.name, f"{st_model.stem}_stedgeai_generate.txt"]
    assert sorted(p.name for p in out.iterdir()) == sorted(written + [name + ".sha256" for name in written])

    monkeypatch.setenv("MODE", "fail")
    with pytest.raises(ModelError, match=r"(?s)failed .*exit code 1.*E010"):
        generate_nb(st_model, tool, tmp_path / "o2")
    monkeypatch.setenv("MODE", "silent")
    with pytest.raises(ModelError, match="wrote no .nb"):
        generate_nb(st_model, tool, tmp_path / "o3")
    with pytest.raises(ConfigError, match="ST Edge AI Core executable not found"):
        generate_nb(st_model, tmp_path / "missing" / "stedgeai", tmp_path / "o4")
    with pytest.raises(ModelError, match="not an existing .tflite"):
        generate_nb(tmp_path / "model.onnx", tool, tmp_path / "o5")
