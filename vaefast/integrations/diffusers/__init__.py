"""diffusers' KL autoencoders with vaefast's fused reparameterization and KL (``pip install 'vaefast[diffusers]'``).

- ``from_diffusers(vae)`` adapts any diffusers autoencoder with a Gaussian posterior to vaefast's encode/decode
  protocol (adapter.py), so ``Trainer(cfg, model=from_diffusers(vae))`` trains it, and
  ``vaefast train --model diffusers:SPEC`` does the same from a preset, a ``config.json``, a model folder or a
  released single file (loading.py, single_file.py);
- ``vaefast export`` writes it back as a diffusers folder or an original-layout single file, with the latents'
  statistics (export.py);
- ``patch()`` makes diffusers' own ``DiagonalGaussianDistribution.sample()`` and ``.kl()`` run the fused op, for
  people who keep their own diffusers training loop; ``unpatch()`` restores them (patch.py).

Nothing is downloaded: a preset or ``config.json`` gives a randomly initialized model; folders and files are read
locally.
"""

from ...config.sections import DIFFUSERS_CLAMP
from .adapter import DiffusersAutoencoder, check_gaussian_posterior, from_diffusers
from .export import FORMATS, export, statistics_config
from .loading import PRESETS, load_autoencoder, read_config
from .patch import patch, unpatch

__all__ = ["DIFFUSERS_CLAMP", "DiffusersAutoencoder", "FORMATS", "PRESETS", "check_gaussian_posterior", "export",
           "from_diffusers", "load_autoencoder", "patch", "read_config", "statistics_config", "unpatch"]
