"""Read speed and peak memory of ``segzoo.checkpoints.read_state_dict`` on each checkpoint format.

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_checkpoints.py [--tensors 300] [--rows 256] [--cols 640]

Writes one synthetic state dict (``--tensors`` float32 tensors of ``rows x cols``; the defaults give 49 M values,
about 197 MB, the size of a mid-size SAM 2.1 checkpoint) as a torch zip archive, a legacy torch file and a Paddle
``.pdparams``, then reads each in a fresh process (so the peak resident memory is that read's own) and prints the
time, the peak memory and its ratio to the file size. Target: reading never needs more than about twice the
file in memory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from segzoo.checkpoints.writers import write_pdparams, write_torch_legacy, write_torch_zip

_PEAK = """
def peak_bytes():
    # VmHWM: this process's own peak resident memory (ru_maxrss would include the parent's before exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
"""
_READ = _PEAK + """
import sys, time
from segzoo.checkpoints import read_state_dict
start = time.perf_counter()
state = read_state_dict(sys.argv[1])
seconds = time.perf_counter() - start
values = sum(v.size for v in state.values())
print(len(state), values, seconds, peak_bytes())
"""


def main() -> None:
    """Write the three files, read each in a fresh process, print one row per format."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=300)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--cols", type=int, default=640)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    state = {f"blocks.{i}.weight": rng.standard_normal((args.rows, args.cols), dtype=np.float32)
             for i in range(args.tensors)}
    writers = {"torch zip": lambda p: write_torch_zip(p, {"model": state}),
               "torch legacy": lambda p: write_torch_legacy(p, {"model": state}),
               "paddle pdparams": lambda p: write_pdparams(p, state)}
    baseline = _peak_of("import numpy, segzoo.checkpoints")
    print(f"{'format':16} {'file MB':>8} {'read s':>7} {'peak MB':>8} {'peak/file':>9}   (interpreter + numpy: "
          f"{baseline / 1e6:.0f} MB)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, write in writers.items():
            path = write(Path(tmp) / name.replace(" ", "_"))
            size = path.stat().st_size
            out = subprocess.run([sys.executable, "-c", _READ, str(path)], check=True, capture_output=True,
                                 text=True).stdout.split()
            arrays, values, seconds, peak = int(out[0]), int(out[1]), float(out[2]), int(out[3])
            assert arrays == args.tensors and values == args.tensors * args.rows * args.cols
            print(f"{name:16} {size / 1e6:8.0f} {seconds:7.2f} {peak / 1e6:8.0f} "
                  f"{(peak - baseline) / size:9.2f}")
            path.unlink()


def _peak_of(code: str) -> int:
    """Peak resident bytes of a fresh interpreter running ``code``."""
    probe = f"{_PEAK}\n{code}\nprint(peak_bytes())"
    return int(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout)


if __name__ == "__main__":
    main()
