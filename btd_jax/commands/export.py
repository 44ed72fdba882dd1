"""``btd-jax export``: the d = 1 BTD scorer as a serialized StableHLO artifact (``jax.export``).

    btd-jax export --workdir DIR --out scorer/
    btd-jax export --workdir DIR --out scorer/ --center 32 --platforms cpu,cuda,tpu

Writes ``scorer/scorer.jaxexport`` (symbolic batch dimension, parameters inside), ``scorer.json``
(input/output shapes, settings, config) and copies the workdir's calibration files. Serve it with
``jax.export.deserialize(open(path, 'rb').read()).call(images)`` -> (scores, maps). Needs the
``export`` extra (``pip install 'btd_jax[export]'``: flatbuffers). The outputs are checked before
any work: an existing export is replaced only with ``--overwrite``, and a failed export leaves no
file behind. The work is :func:`btd_jax.export.export_scorer`.
"""

from __future__ import annotations

import argparse
import os

from btd_jax import export
from btd_jax.commands._flags import add_reduction_flag, choice_list, existing_folder, non_negative_int
from btd_jax.commands._safety import add_overwrite_flag, output_plan
from btd_jax.runtime.errors import require


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="export the d = 1 scorer with jax.export (StableHLO)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, type=existing_folder, help="trained model directory")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--center", type=non_negative_int, default=None,
                   help="central window k (0: whole patch; default: config)")
    add_reduction_flag(p)
    p.add_argument("--platforms", type=choice_list(export.PLATFORMS, "platforms"),
                   default=list(export.DEFAULT_PLATFORMS),
                   help=f"comma-separated lowering platforms from {', '.join(export.PLATFORMS)} "
                        f"(default {','.join(export.DEFAULT_PLATFORMS)})")
    add_overwrite_flag(p)
    return p


def plan_outputs(args):
    """The artifact, its manifest and the copied calibration files, checked before any work."""
    plan = output_plan(args, workdirs=[args.workdir])
    plan.folder(args.out)
    for name in (export.ARTIFACT, export.MANIFEST, *export.calibration_files(args.workdir)):
        plan.file(os.path.join(args.out, name))
    return plan.check()


def run(args) -> int:
    require("flatbuffers", "btd-jax export")
    plan_outputs(args)
    m = export.export_scorer(args.workdir, args.out, center=args.center, reduction=args.reduction,
                             platforms=args.platforms)
    print(f"exported {m['config']['name']} scorer (center {m['center']}, {m['reduction']}, platforms "
          f"{','.join(m['platforms'])}, calibrations: {', '.join(m['calibrations']) or 'none'}) -> {args.out}")
    return 0
