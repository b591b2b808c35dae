"""Sub-commands of the ``multispike`` CLI (one module each, discovered automatically)."""
