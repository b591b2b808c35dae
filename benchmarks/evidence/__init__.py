"""Evidence suite: small-scale reproductions of the LM-HT, QAC and one-hot M-LIF papers' central claims.

One command per table (``lmht_table.py``, ``qac_table.py``, ``mlif_table.py``) and ``run_all.py`` for all of
them; ``make_bundle.py`` packs the data subset they read into a compact folder. Shared machinery (profiles,
data, the time-budgeted training loop, evaluation, verdict rules, JSON/Markdown output) is in ``common.py``.
"""
