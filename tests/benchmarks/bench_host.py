"""Host latency: float32 TFLite against int8 per-tensor TFLite of the same DeepLabV3, measured interleaved.

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_host.py [--size 256] [--alpha 0.5] [--aspp v2] [--rounds 20] [--block 10]
                                         [--repeats 3] [--threads N]

The model is DeepLabV3 (MobileNetV2) from ``segzoo.models.registry`` with random weights and randomized BatchNorm
statistics (latency does not depend on the weights), converted by ``segzoo.quantization.converter.convert`` to a
float32 TFLite and to an int8 per-tensor TFLite (uint8 input, float output) calibrated on real CamVid images
(synthetic images without ../shared). Both models are loaded in this process (``segzoo.benchmarking.host``) and
timed in alternating blocks of ``--block`` invocations for ``--rounds`` rounds, so both see the same machine load;
the float/int8 ratio is taken per round (adjacent blocks) and its median is the headline, which other jobs on the
machine change much less than the absolute medians. The whole interleaved measurement is repeated ``--repeats``
times: the printed medians and ratios of the repeats show how far two runs agree (with the IQR of the round
medians and p10-p90 of the paired ratios as the spread within one run). Then ``benchmark_host`` measures each model in a fresh process (the
target's numbers, with peak memory). Target: int8 faster than float on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quantization import build_random, load_images, representative  # noqa: E402

from segzoo.benchmarking.host import HostModel, benchmark_host, latency_stats, time_invocations  # noqa: E402


def convert_pair(model, size: int, out: Path, images: int = 16) -> tuple[Path, Path]:
    """``(float32 .tflite, int8 per-tensor .tflite)`` of ``model`` in ``out``."""
    from segzoo.quantization.converter import convert

    pixels, source = load_images(images, size)
    print(f"calibration: {len(pixels)} images ({source})")
    float_path = convert(model, None, out / "float32.tflite", quantize=False, input_type="float", output_type="float")
    int8_path = convert(model, representative(pixels), out / "int8_per_tensor.tflite", granularity="per_tensor")
    return float_path, int8_path


def interleaved(models: dict[str, HostModel], rounds: int, block: int, warmup: int = 3) -> dict[str, dict]:
    """Latency statistics per model, timed in alternating blocks (the order flips every round).

    Each model's stats get ``round_medians_ms`` (median of each round's block), paired in time across models.
    """
    times: dict[str, list[list[float]]] = {name: [] for name in models}
    for model in models.values():
        time_invocations(model, 0, warmup)
    names = list(models)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(time_invocations(models[name], block))
    return {name: {**latency_stats([t for b in blocks for t in b], blocks=rounds),
                   "round_medians_ms": [float(np.median(b)) for b in blocks]} for name, blocks in times.items()}


def paired_ratio(a: dict, b: dict) -> tuple[float, float, float]:
    """Median, p10 and p90 over rounds of ``a``'s round median / ``b``'s round median (same round, same load)."""
    ratios = np.asarray(a["round_medians_ms"]) / np.asarray(b["round_medians_ms"])
    return float(np.median(ratios)), float(np.percentile(ratios, 10)), float(np.percentile(ratios, 90))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--aspp", default="v2")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="segzoo_bench_host_"))
    float_path, int8_path = convert_pair(build_random(args.size, args.alpha, args.aspp), args.size, out)
    threads = args.threads or os.cpu_count()
    print(f"DeepLabV3 a{args.alpha} {args.aspp} {args.size}x{args.size}, {threads} threads, "
          f"{args.rounds} rounds x {args.block} runs per model, interleaved, {args.repeats} repeats")
    models = {"float32": HostModel(float_path, threads), "int8 per-tensor": HostModel(int8_path, threads)}
    medians: dict[str, list[float]] = {name: [] for name in models}
    ratios: list[float] = []
    for repeat in range(args.repeats):
        stats = interleaved(models, args.rounds, args.block)
        for name, s in stats.items():
            medians[name].append(s["median_ms"])
            low, high = np.percentile(s["round_medians_ms"], [25, 75])
            print(f"  repeat {repeat + 1} {name:16s} median {s['median_ms']:8.2f} ms  p90 {s['p90_ms']:8.2f}  "
                  f"min {s['min_ms']:8.2f}  p90/median {s['p90_over_median']:.2f}  "
                  f"round medians IQR {100 * (high - low) / s['median_ms']:.1f}%")
        ratio, p10, p90 = paired_ratio(stats["float32"], stats["int8 per-tensor"])
        ratios.append(ratio)
        print(f"  repeat {repeat + 1} float32 / int8, paired per round: median x{ratio:.2f} (p10 x{p10:.2f}, "
              f"p90 x{p90:.2f})")
    for name, values in medians.items():
        agreement = 100 * (max(values) - min(values)) / float(np.median(values))
        print(f"{name:16s} medians over repeats: {', '.join(f'{v:.2f}' for v in values)} ms "
              f"(differ by {agreement:.1f}%)")
    ratio = float(np.median(ratios))
    print(f"float32 / int8 per-tensor (median of the paired ratios): x{ratio:.2f}, repeats "
          f"{', '.join(f'x{r:.2f}' for r in ratios)} -> int8 {'faster' if ratio > 1 else 'NOT faster'} than float")
    print("fresh process per model (benchmark_host, 50 runs):")
    for name, path in (("float32", float_path), ("int8 per-tensor", int8_path)):
        r = benchmark_host(path, runs=50, warmup=5, threads=threads)
        print(f"  {name:16s} median {r['median_ms']:8.2f} ms  p90 {r['p90_ms']:8.2f}  "
              f"spread {r['repeat_spread_pct']:5.1f}%  peak RSS {r['peak_rss_bytes'] / 1e6:6.1f} MB "
              f"(baseline {r['baseline_rss_bytes'] / 1e6:.1f}, model {r['model_rss_bytes'] / 1e6:.1f})  "
              f"size {r['size_bytes'] / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
