"""SAM2 through the pipeline (``segzoo.cli.run``), as a user drives it from the configuration: a tiny SAM2 (64x64)
imported from a synthetic checkpoint in the official key schema, evaluated with 1 and 3 clicks on real COCO
instances, quantized (both networks), compared and benchmarked, predicted from a prompts file, deployed to the
loopback SSH board and launched in point mode; a bad prompts file and a checkpoint with a renamed key fail clearly.

The synthetic weights make the masks poor (IoUs of a few %), but every number below is a real measurement that a
broken stage changes: the same model gives the same 1-click mIoU in every mode, the prediction masks equal the
predictor's, and the board application's masks equal segzoo's on real images.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from sshd import sshd_server  # noqa: F401  (fixture)

from conftest import shared_path
from segzoo.cli import run

SIZE = 64
IMAGES = 2
CALIBRATION_IMAGES = 1  # each post-training step still runs on both networks (the decoder on each instance's click)
APP = "sam2_point.py"  # the bundle's entry (launch.sh runs it)


@pytest.fixture(scope="module")
def coco() -> dict[str, Path]:
    root = shared_path("datasets", "coco128_semseg")
    return {"images": root / "images" / "train2017",
            "labels": root / "instance_segmentation" / "labels" / "train2017"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A torch zip ``{"model": state_dict}`` in the official ``sam2.1_hiera_tiny.pt`` key schema."""
    from reference.sam2_schema import synthetic_state_dict
    from segzoo.checkpoints.writers import write_torch_zip

    path = tmp_path_factory.mktemp("weights") / "sam2_synthetic.pt"
    write_torch_zip(path, {"model": synthetic_state_dict(seed=0)})
    return path


def sam2_config(mode: str, coco: dict, tmp: Path, **sections) -> dict:
    """A SAM2 run on the first COCO instance images (YOLO-seg layout), MLflow off unless asked."""
    cfg = {"operation_mode": mode, "general": {"project_name": "sam2_tests"},
           "dataset": {"layout": "yolo_seg", "test_path": str(coco["images"]), "test_masks_path": str(coco["labels"]),
                       "quantization_path": str(coco["images"]), "quantization_masks_path": str(coco["labels"])},
           "training": {"model": {"name": "sam2", "input_shape": [SIZE, SIZE, 3], "num_points": 3}},
           "evaluation": {"max_images": IMAGES}, "quantization": {"calibration_images": CALIBRATION_IMAGES},
           "benchmarking": {"targets": ["host", "stm32mp2_estimate"], "runs": 3, "warmup": 1},
           "mlflow": {"enabled": False, "uri": str(tmp / "mlruns")}}
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


@pytest.fixture(scope="module")
def imported(coco, checkpoint, tmp_path_factory) -> tuple[Path, dict, dict]:
    """evaluation without general.model_path: the configured SAM2 is built, its weights imported from the
    checkpoint given as pretrained_weights, saved as a Keras pair in the run, and evaluated with one click."""
    tmp = tmp_path_factory.mktemp("imported")
    cfg = sam2_config("evaluation", coco, tmp, mlflow={"enabled": True})
    cfg["training"]["model"]["pretrained_weights"] = str(checkpoint)
    return tmp / "run", run(cfg, run_dir=tmp / "run"), cfg


def expected_instances(coco: dict, min_area: int = 1024) -> int:
    """Instances of at least ``min_area`` pixels in the evaluated images, counted from the label files."""
    from segzoo.tasks.promptable_segmentation.dataset import instance_samples, iter_instances

    samples = instance_samples(coco["images"], coco["labels"])[:IMAGES]
    return sum(int(m.sum()) >= min_area for _, _, masks in iter_instances(samples) for m in masks)


def keras_predictor(folder: Path):
    from segzoo.models.sam2.predictor import Sam2Predictor
    from segzoo.tasks.promptable_segmentation.models import find_pair, load_pair

    encode, decode, params = load_pair(find_pair(folder))
    return Sam2Predictor(encode, decode, params)


# ------------------------------------------------------------------------------------------------- evaluation
@pytest.mark.slow
def test_evaluation_imports_the_checkpoint_and_reports_one_click_miou(imported, coco) -> None:
    from mlflow.tracking import MlflowClient

    from segzoo.tracking import resolve_store

    run_dir, results, cfg = imported
    folder = run_dir / "saved_models" / "imported_model"
    files = ["decoder.keras", "encoder.keras", "sam2.json"]  # each with its sha256 sidecar
    assert sorted(p.name for p in folder.iterdir()) == sorted(files + [f"{name}.sha256" for name in files])
    params = json.loads((folder / "sam2.json").read_text())["params"]
    assert params["input_shape"] == [SIZE, SIZE, 3] and params["num_points"] == 3
    summary = results["evaluation"]
    assert summary["model"] == str(folder) and summary["clicks"] == 1
    assert summary["num_instances"] == expected_instances(coco) > 0
    report = json.loads((run_dir / "promptable_evaluation_report.json").read_text())
    assert report["one_click_miou"] == pytest.approx(summary["miou_1click"])
    ious = [row["ious"][0] for row in report["instances"]]
    assert report["one_click_miou"] == pytest.approx(np.mean(ious)) and 0.0 <= min(ious) <= max(ious) <= 1.0
    assert report["timings"]["encoder_calls"] == IMAGES  # the encoder runs once per image
    assert report["timings"]["decoder_calls"] == summary["num_instances"]
    assert "One-click mIoU" in (run_dir / "promptable_evaluation_report.md").read_text()

    client = MlflowClient(tracking_uri=resolve_store(cfg["mlflow"]["uri"])[0])
    experiment = client.get_experiment_by_name(cfg["general"]["project_name"])
    (mlrun,) = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{run_dir.name}'")
    assert mlrun.data.metrics["eval_miou_1click"] == pytest.approx(summary["miou_1click"])
    assert mlrun.data.metrics["eval_instances"] == summary["num_instances"]


@pytest.mark.slow
def test_evaluation_with_three_clicks_on_the_saved_pair(imported, coco, tmp_path) -> None:
    run_dir, first, _ = imported
    folder = run_dir / "saved_models" / "imported_model"
    cfg = sam2_config("evaluation", coco, tmp_path, general={"model_path": str(folder)}, evaluation={"clicks": 3})
    summary = run(cfg, run_dir=tmp_path / "run")["evaluation"]
    assert summary["clicks"] == 3 and len(summary["miou_at"]) == 3
    # the same model on the same instances: the first click gives the same IoUs as the one-click run
    assert summary["miou_at"][0] == pytest.approx(first["evaluation"]["miou_1click"], abs=1e-9)
    report = json.loads((tmp_path / "run" / "promptable_evaluation_report.json").read_text())
    for row in report["instances"]:
        assert len(row["clicks"]) <= 3 and len(row["ious"]) == 3
        if len(row["clicks"]) > 1:  # a corrective click is a point of the error region, positive or negative
            assert row["clicks"][1][2] in (0, 1)
    assert report["timings"]["encoder_calls"] == IMAGES


def test_clicks_beyond_the_decoder_points_are_refused_before_running(coco, tmp_path) -> None:
    from segzoo.config import load_config
    from segzoo.errors import ConfigError

    cfg = sam2_config("evaluation", coco, tmp_path, evaluation={"clicks": 3})
    cfg["training"]["model"].update(num_points=2, pretrained_weights="sam2.1_hiera_tiny")
    with pytest.raises(ConfigError, match="evaluation.clicks: 3 clicks, but training.model.num_points takes at "
                                          "most 2 points"):
        load_config(cfg)
    cfg["operation_mode"] = "chain_tqeb"
    with pytest.raises(ConfigError, match="chain_tqeb runs train, which the promptable_segmentation task does not "
                                          "support; its modes are evaluation, prediction, quantization"):
        load_config(cfg)


# ------------------------------------------------------------------------------------------------- prediction
@pytest.mark.slow
def test_prediction_from_a_prompts_file(imported, coco, tmp_path) -> None:
    import cv2

    from segzoo.data.loader import read_image
    from segzoo.tasks.promptable_segmentation.dataset import instance_samples

    folder = imported[0] / "saved_models" / "imported_model"
    samples = instance_samples(coco["images"], coco["labels"])[:2]
    images = tmp_path / "images"
    images.mkdir()
    prompts = {}
    for sample in samples:
        (images / sample.image_path.name).write_bytes(sample.image_path.read_bytes())
        from segzoo.tasks.promptable_segmentation.clicks import first_click

        click = first_click(max(sample.masks(), key=lambda m: int(m.sum())))
        prompts[sample.image_path.name] = [{"x": click.x, "y": click.y, "label": 1}, {"x": 1, "y": 1, "label": 0}]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    cfg = sam2_config("prediction", coco, tmp_path, general={"model_path": str(folder)},
                      prediction={"test_files_path": str(images), "prompts_path": str(tmp_path / "prompts.json")})
    results = run(cfg, run_dir=tmp_path / "run")
    out = tmp_path / "run" / "predictions"
    assert results["prediction"]["images"] == 2
    rows = json.loads((out / "predictions.json").read_text())["images"]
    predictor = keras_predictor(folder)
    for sample, row in zip(samples, rows):
        image = read_image(sample.image_path)
        points = prompts[sample.image_path.name]
        coords = np.array([[p["x"], p["y"]] for p in points], np.float32)
        expected = predictor(image, coords, np.array([p["label"] for p in points], np.int32)) > 0
        mask = cv2.imread(str(out / f"{sample.image_path.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(mask == 255, expected) and set(np.unique(mask)) <= {0, 255}
        assert row["mask_pixels"] == int(expected.sum()) and row["points"][1] == [1.0, 1.0, 0]
        assert row["encoder_ms"] > 0 and row["decoder_ms"] > 0 and 0.0 <= row["predicted_iou"] <= 1.0
        overlay = cv2.imread(str(out / f"{sample.image_path.stem}_overlay.png"))
        x, y = (int(round(v)) for v in coords[0])
        assert tuple(overlay[y, x]) == (0, 220, 0)  # the positive click drawn green (BGR)


def test_bad_prompts_file_names_the_file_and_the_entry(coco, tmp_path, caplog) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("encoder.keras", "decoder.keras"):
        (folder / name).write_bytes(b"")  # the prompts are read before the model is loaded
    image = next(coco["images"].glob("*.jpg"))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({image.name: [{"x": 10, "y": 20, "label": 1}, {"x": 5, "label": 1}]}))
    cfg = sam2_config("prediction", coco, tmp_path, general={"model_path": str(folder)},
                      prediction={"test_files_path": str(coco["images"]), "prompts_path": str(prompts)})
    with caplog.at_level(logging.ERROR, logger="segzoo"), pytest.raises(SystemExit) as info:
        run(cfg, run_dir=tmp_path / "run")
    assert info.value.code == 3  # DataError
    assert f"{prompts}: image '{image.name}', point 1: missing y" in caplog.text
    prompts.write_text(json.dumps({"no_such_image.jpg": [{"x": 10, "y": 20, "label": 1}]}))
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="segzoo"), pytest.raises(SystemExit) as info:
        run(cfg, run_dir=tmp_path / "run2")
    assert info.value.code == 3 and "image 'no_such_image.jpg' (entry 0) is not an image" in caplog.text


@pytest.mark.slow
def test_checkpoint_with_a_renamed_key_names_it(coco, tmp_path, caplog) -> None:
    from reference.sam2_schema import synthetic_state_dict
    from segzoo.checkpoints.writers import write_torch_zip

    state = synthetic_state_dict(seed=1)
    key = "image_encoder.trunk.blocks.3.attn.qkv.weight"
    state[key.replace("qkv", "qkv_renamed")] = state.pop(key)
    path = tmp_path / "renamed.pt"
    write_torch_zip(path, {"model": state})
    cfg = sam2_config("evaluation", coco, tmp_path)
    cfg["training"]["model"]["pretrained_weights"] = str(path)
    with caplog.at_level(logging.ERROR, logger="segzoo"), pytest.raises(SystemExit) as info:
        run(cfg, run_dir=tmp_path / "run")
    assert info.value.code == 4  # ModelError
    assert key in caplog.text and key.replace("qkv", "qkv_renamed") in caplog.text and str(path) in caplog.text
    assert not (tmp_path / "run" / "saved_models" / "imported_model").exists()


# ------------------------------------------------------------------------------ quantization, benchmark, board
@pytest.fixture(scope="module")
def chain(imported, coco, tmp_path_factory) -> tuple[Path, dict]:
    """chain_eqeb on the imported pair: evaluate, quantize both networks, evaluate, compare, benchmark all four."""
    tmp = tmp_path_factory.mktemp("chain")
    folder = imported[0] / "saved_models" / "imported_model"
    cfg = sam2_config("chain_eqeb", coco, tmp, general={"model_path": str(folder)})
    return tmp / "run", run(cfg, run_dir=tmp / "run")


@pytest.mark.heavy
def test_chain_eqeb_quantizes_both_networks_compares_and_benchmarks(chain, imported) -> None:
    run_dir, results = chain
    quantized = Path(results["quantization"]["model"])
    files = ["decoder_int8.tflite", "encoder_int8.tflite", "sam2.json"]  # each with its sha256 sidecar
    assert sorted(p.name for p in quantized.iterdir()) == sorted(files + [f"{name}.sha256" for name in files])
    assert results["evaluation"]["miou_1click"] == pytest.approx(imported[1]["evaluation"]["miou_1click"], abs=1e-9)
    report = json.loads((run_dir / "quantization_report.json").read_text())
    float_q, int8_q = results["evaluation"]["miou_1click"], results["quantized_evaluation"]["miou_1click"]
    assert report["float"]["miou_1click"] == pytest.approx(float_q)
    assert report["quantized"]["miou_1click"] == pytest.approx(int8_q)
    assert report["metric_drop_points"] == pytest.approx(100 * (float_q - int8_q))
    networks = {n["name"]: n for n in report["networks"]}
    assert set(networks) == {"encoder", "decoder"}
    for name, network in networks.items():
        assert not network["has_per_channel"] and network["per_channel_tensors"] == []
        assert 0.0 < network["stm32mp2_estimate"]["npu_pct"] < 100.0  # BATCH_MATMUL and GELU leave the NPU
        off = {row["op"] for row in network["stm32mp2_estimate"]["off_npu"]}
        assert "BATCH_MATMUL" in off
        assert network["worst_layers"] and all(r["network"] == name for r in network["worst_layers"])
    assert networks["encoder"]["float_op_types"] == [] and networks["encoder"]["float_ops"] == []
    assert set(networks["decoder"]["float_op_types"]) == {"SIN", "COS", "CONCATENATION"}
    assert networks["encoder"]["formatting"]["cle_pairs"] == 2  # FPN laterals -> conv_s0 / conv_s1
    # the default post-training steps run on both networks (the decoder fed with named inputs)
    for network in networks.values():
        steps = network["refinements"]
        assert {"activation_ranges", "bias_correction"} <= set(steps)
        assert steps["activation_ranges"]["tensors"] > 0 and steps["bias_correction"]["images"] > 0
    assert report["npu_ready"] is False  # the decoder's point encoding stays float
    markdown = (run_dir / "quantization_report.md").read_text()
    assert "## encoder: `encoder_int8.tflite`" in markdown and "## decoder: `decoder_int8.tflite`" in markdown
    assert "1-click mIoU drop" in markdown

    rows = json.loads((run_dir / "benchmark_report.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    models = {(r["model"], r["target"]) for r in rows if not r["error"]}
    names = ["imported_model/encoder (float32)", "imported_model/decoder (float32)",
             f"{quantized.name}/encoder", f"{quantized.name}/decoder",  # and one row per frame summing both
             "imported_model per frame (encoder (float32) + decoder (float32))",
             f"{quantized.name} per frame (encoder + decoder)"]
    assert models == {(n, t) for n in names for t in ("host", "stm32mp2_estimate")}
    by_name = {(r["model"], r["target"]): r for r in rows}
    frame = by_name[(f"{quantized.name} per frame (encoder + decoder)", "stm32mp2_estimate")]
    assert frame["latency_ms"] == pytest.approx(sum(by_name[(f"{quantized.name}/{n}", "stm32mp2_estimate")]["latency_ms"]
                                                    for n in ("encoder", "decoder")))


def point_predictor(folder: Path):
    from segzoo.models.sam2.predictor import Sam2Predictor
    from segzoo.tasks.promptable_segmentation.models import find_pair, load_pair

    encode, decode, params = load_pair(find_pair(folder), num_threads=1)
    return Sam2Predictor(encode, decode, params)


@pytest.mark.heavy
def test_board_app_masks_equal_segzoo_on_real_images(chain, coco, tmp_path) -> None:
    """The point app of the bundle (no TensorFlow, no segzoo) gives segzoo's masks; it also runs through a
    stand-in stai_mpu, which binds tensors by position (the order sam2_config.json records)."""
    import cv2
    from test_deployment import FAKE_STAI_MPU, _run_app

    from segzoo.data.loader import read_image
    from segzoo.deployment.bundle import verify_bundle
    from segzoo.deployment.point_bundle import build_point_bundle

    quantized = Path(chain[1]["quantization"]["model"])
    bundle = build_point_bundle(quantized / "encoder_int8.tflite", quantized / "decoder_int8.tflite",
                                tmp_path / "deployment", resize_mode="longest_side", threshold=0.0)
    assert verify_bundle(bundle) == []
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["entry"] == APP
    assert manifest["models"] == {"encoder": "encoder_int8.tflite", "decoder": "decoder_int8.tflite"}
    images = sorted(coco["images"].glob("*.jpg"))[:2]
    points = [(150.0, 120.0, 1), (20.0, 30.0, 0)]
    args = ["--input", *map(str, images), *[a for x, y, lab in points for a in ("--point", f"{x:g},{y:g},{lab}")]]
    (tmp_path / "fake" / "stai_mpu").mkdir(parents=True)
    (tmp_path / "fake" / "stai_mpu" / "__init__.py").write_text(FAKE_STAI_MPU)
    predictor = point_predictor(quantized)
    coords = np.array([p[:2] for p in points], np.float32)
    labels = np.array([p[2] for p in points], np.int32)
    for runtime, extra in (("cpu", {}), ("auto", {"path_first": tmp_path / "fake"})):
        out = tmp_path / f"out_{runtime}"
        result = _run_app(bundle, *args, "--output", str(out), "--runtime", runtime, app=APP, **extra)
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if " ms, decoder " in line]
        assert [line.split(":")[0] for line in lines] == [p.name for p in images]
        assert all("2 point(s), encoder " in line for line in lines)
        assert ("[stai_mpu / vx_delegate (stai_mpu)]" if runtime == "auto" else "[ai_edge_litert / cpu]") in lines[0]
        for path in images:
            expected = predictor(read_image(path), coords, labels) > 0
            mask = cv2.imread(str(out / f"{path.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
            assert np.array_equal(mask == 255, expected), (runtime, path.name)
            assert (out / f"{path.stem}_overlay.png").is_file()
    bench = _run_app(bundle, "--benchmark", "2", "--warmup", "0", "--runtime", "cpu", app=APP)
    assert bench.returncode == 0, bench.stderr
    timings = [json.loads(line) for line in bench.stdout.splitlines()]
    assert [t["model"] for t in timings] == ["encoder_int8.tflite", "decoder_int8.tflite"]
    assert all(t["median_ms"] > 0 for t in timings)
    bad = _run_app(bundle, "--input", str(images[0]), "--point", "1e9,5", app=APP)
    assert bad.returncode == 5 and "outside" in bad.stderr
    assert _run_app(bundle, "--input", str(images[0]), "--point", "1,2,7", app=APP).returncode == 2


@pytest.mark.heavy
def test_deployment_to_the_loopback_board_and_point_launch(chain, coco, sshd_server, tmp_path) -> None:
    """deployment of the quantized pair: bundle, push, verify on the board, launch in point mode on an image."""
    quantized = Path(chain[1]["quantization"]["model"])
    image = sorted(coco["images"].glob("*.jpg"))[0]
    board_images = tmp_path / "board images"
    board_images.mkdir()
    (board_images / image.name).write_bytes(image.read_bytes())
    deploy_path = sshd_server.board_root / "sam2 app"
    cfg = sam2_config("deployment", coco, tmp_path, general={"model_path": str(quantized)},
                      prediction={"points": [{"x": 150, "y": 120, "label": 1}]},
                      deployment=sshd_server.deployment(str(deploy_path), str(board_images)))
    summary = run(cfg, run_dir=tmp_path / "run")["deployment"]
    assert summary["verified"] is True and summary["launched"] is True
    assert {"encoder_int8.tflite", "decoder_int8.tflite", "sam2_point.py", "sam2_config.json"} <= set(summary["files"])
    assert summary["launch_output"][0].startswith("verify: OK")
    line = next(line for line in summary["launch_output"] if line.startswith(image.name))
    assert "1 point(s), encoder " in line and " ms, decoder " in line
    mask = Path(str(deploy_path) + "_results") / f"{image.stem}_mask.png"
    from segzoo.data.loader import read_image
    import cv2

    expected = point_predictor(quantized)(read_image(image), np.array([[150.0, 120.0]], np.float32),
                                          np.array([1], np.int32)) > 0
    assert np.array_equal(cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE) == 255, expected)
