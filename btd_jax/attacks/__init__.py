"""Generative medical deepfakes made offline: diffusion in-painting, SDEdit injection, a CT-GAN-style GAN,
latent diffusion in-painting (the paper's Stable Diffusion attack).

    from btd_jax import attacks
    done = attacks.attack("sdedit", "injection", "slices.npy", "attacker_ddpm", "testsets", n=50)  # btd-jax attack
    out = attacks.repaint.inpaint(params, cfg, patches01, masks, key)           # RePaint (removal)
    out, region = attacks.sdedit.sdedit(params, cfg, patches01, priors01, nodule_masks, key)  # injection
    gan_params, info = attacks.cgan.train(real_patches01, attacks.cgan.GanConfig(), key)
    out, hole = attacks.cgan.generate(gan_params, gan_cfg, patches01, "inject", key)
    ldm_params, ldm_cfg = attacks.ldm.load("attacker_ldm")                      # see attacker.train_ldm
    out, changed = attacks.ldm.remove(ldm_params, ldm_cfg, patches01, masks, key)  # or ldm.inject

Every attack is jitted and sharded over the local devices, deterministic for a key (item i draws
from ``fold_in(key, i)``) and leaves pixels outside its mask bit-identical. :mod:`.pipeline` runs
an attack at sites of whole slices and writes the authors' test-set layout; :func:`attack`
(:mod:`.run`) does all of ``btd-jax attack`` from files, training or loading the attacker first;
:mod:`.attacker` holds the attacker's own data (patients the detector never sees) and the training
of its models. :mod:`.tamper` imitates the generators' traces by hand on real slices (the
demo's simulated attacks); :mod:`.demo_data` holds the real slices that pydicom ships, their
train/test regions, and the demo benchmark built from them.
"""

from btd_jax.attacks import attacker, autoencoder, cgan, ldm, pipeline, repaint, sdedit
from btd_jax.attacks.pipeline import COMBINATIONS, METHODS, Attacker, attack_sources, write_layout
from btd_jax.attacks.run import AttackRun, attack, load_attacker, train_attacker

__all__ = ["attacker", "autoencoder", "cgan", "ldm", "pipeline", "repaint", "sdedit", "METHODS", "COMBINATIONS",
           "Attacker", "attack_sources", "write_layout", "attack", "AttackRun", "train_attacker", "load_attacker"]
