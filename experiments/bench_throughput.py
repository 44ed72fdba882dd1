"""BTD d = 1 throughput of the JAX scorer vs the PyTorch reference (issue 3, item 6); writes JSON.

    /work/venv/bin/python experiments/bench_throughput.py --config ct --batches 1,64,256 \
        --dtypes float32,bfloat16 --out experiments/results/bench_throughput_cpu.json

Same as ``btd-jax bench``; see ``btd_jax/commands/bench.py`` for what is timed and how. The JAX side
runs in this process (/work/venv); the reference runs in ``--torch`` (default /work/torchenv) with
denoising-diffusion-pytorch 1.8.3 from ``--ddpm_path``, on the same weights, inputs and batch sizes.
"""

import argparse
import sys

from btd_jax.commands import bench


def main(argv=None) -> int:
    parser = bench.add_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    return bench.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
