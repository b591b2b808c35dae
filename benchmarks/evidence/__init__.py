"""Evidence suite: small-scale reproductions of the LM-HT, QAC and one-hot M-LIF papers' central claims.

One command per table (``lmht_table.py``, ``qac_table.py``, ``mlif_table.py``) and ``run_all.py`` for all of
them; ``make_bundle.py`` packs the data subset they read into a compact folder. Shared machinery (profiles,
data, run context, training phases through ``multispike.train``, verdict rules, JSON/Markdown output) is in the
modules listed in ``common.py``, which re-exports it for the table scripts.
"""
