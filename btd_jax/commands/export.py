"""``btd-jax export``: the d = 1 BTD scorer as a serialized StableHLO artifact (``jax.export``).

    btd-jax export --workdir DIR --out scorer/
    btd-jax export --workdir DIR --out scorer/ --center 32 --platforms cpu,cuda,tpu

Writes ``scorer/scorer.jaxexport`` (symbolic batch dimension, parameters inside), ``scorer.json``
(input/output shapes, settings, config) and copies the workdir's calibration files. Serve it with
``jax.export.deserialize(open(path, 'rb').read()).call(images)`` -> (scores, maps). An existing
export is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os

from btd_jax import export
from btd_jax.commands._safety import add_overwrite_flag, check_outputs
from btd_jax.score import Scorer


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="export the d = 1 scorer with jax.export (StableHLO)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="trained model directory")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--center", type=int, default=None, help="central window k (0: whole patch; default: config)")
    p.add_argument("--reduction", default=None, help="'mean', 'max' or 'percentile:Q' (default: config)")
    p.add_argument("--platforms", default=",".join(export.DEFAULT_PLATFORMS),
                   help="comma-separated lowering platforms (cpu, cuda, rocm, tpu)")
    add_overwrite_flag(p)
    return p


def run(args) -> int:
    check_outputs(args, files=[os.path.join(args.out, n) for n in (export.ARTIFACT, export.MANIFEST)],
                  workdirs=[args.workdir])
    scorer = Scorer.load(args.workdir)
    plats = [p.strip() for p in args.platforms.split(",") if p.strip()]
    m = export.export_scorer(scorer, args.out, center=args.center, reduction=args.reduction, platforms=plats)
    print(f"exported {m['config']['name']} scorer (center {m['center']}, {m['reduction']}, platforms "
          f"{','.join(m['platforms'])}, calibrations: {', '.join(m['calibrations']) or 'none'}) -> {args.out}")
    return 0
