"""``btd-jax convert``: a lucidrains PyTorch checkpoint -> an orbax checkpoint that ``Scorer.load`` reads.

    btd-jax convert --torch CT_model.pt --config ct --workdir DIR [--which ema]

The architecture (generation, dim, dim_mults, channels, attention) is read from the weights and the
schedule from the stored buffers; ``--config`` supplies the rest (patch size, training and scoring settings).
``--torch`` also takes a torch-free ``.npz`` of the state dict (a ``.pt`` needs the ``torch`` extra).
``--workdir`` must be new or empty (never the checkpoint's folder's files), checked before any work.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from btd_jax import checkpoints, configs, convert
from btd_jax.commands._flags import existing_file, positive_int
from btd_jax.commands._safety import output_plan
from btd_jax.runtime import lock_workdir


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("convert", help="PyTorch (lucidrains) checkpoint -> btd_jax workdir",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torch", required=True, type=existing_file, help="checkpoint: Trainer .pt ({'model', 'ema'}), a state-dict .pt, or .npz")
    p.add_argument("--config", default="ct",
                   help="preset or JSON config file for the settings the weights don't fix (default: ct)")
    p.add_argument("--workdir", required=True, help="output directory (must not hold checkpoints yet)")
    p.add_argument("--which", default="model", choices=("model", "ema"),
                   help="which weights of a Trainer checkpoint (default: model, what the authors' README loads)")
    p.add_argument("--image_size", "--image-size", type=positive_int, default=None,
                   help="patch size (default: the preset's)")
    return p


def plan_outputs(args):
    """The workdir: new, empty or one convert wrote; never the checkpoint file or its folder's files."""
    plan = output_plan(args, inputs=[args.torch])
    plan.folder(args.workdir)
    return plan.check()


def run(args: argparse.Namespace) -> int:
    base = configs.load(args.config)
    plan_outputs(args)
    if args.image_size is not None:
        base = dataclasses.replace(base, diffusion=dataclasses.replace(base.diffusion, image_size=args.image_size))
    if args.torch.endswith(".npz"):
        if args.which != "model":
            raise ValueError("--which ema needs a PyTorch Trainer checkpoint, not an .npz state dict")
        params, cfg = convert.from_torch_state_dict(convert.load_npz_state_dict(args.torch), base)
    else:
        params, cfg = convert.load_torch_checkpoint(args.torch, which=args.which, base=base)
    m, d = cfg.model, cfg.diffusion
    changed = [f"{f.name}={getattr(m, f.name)!r} (preset {getattr(base.model, f.name)!r})"
               for f in dataclasses.fields(m) if getattr(m, f.name) != getattr(base.model, f.name)]
    if changed:
        print(f"note: the checkpoint's architecture differs from preset {args.config!r}: " + ", ".join(changed),
              file=sys.stderr)
    with lock_workdir(args.workdir):  # no training may write there meanwhile
        checkpoints.save_params_checkpoint(args.workdir, params, cfg)
    print(f"converted {args.torch} ({args.which}): lucidrains {m.version} Unet dim={m.dim} dim_mults={m.dim_mults} "
          f"channels={m.channels}; schedule {d.beta_schedule} x {d.timesteps}, objective {d.objective}"
          f"{', min-SNR' if d.min_snr_loss_weight else ''} -> {args.workdir}")
    return 0
