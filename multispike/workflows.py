"""Deprecated location of the command-line workflows; they live in :mod:`multispike.cli.workflows`.

``convert_checkpoint``, ``calibrate_checkpoint``, ``reparameterize_checkpoint``, ``qat_epoch_table`` and their
helpers are the services behind ``multispike convert|calibrate|reparam|qat``, so they moved into the CLI package.
Importing this module still works and gives the same objects, with a :class:`DeprecationWarning`.
"""
from __future__ import annotations

import warnings

from .cli.workflows import *  # noqa: F401,F403 - the public names, re-exported unchanged
from .cli.workflows import __all__  # noqa: F401

warnings.warn("multispike.workflows moved to multispike.cli.workflows; import from there", DeprecationWarning,
              stacklevel=2)
