"""Settings of the demo (:class:`DemoConfig`) and its default rows."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DemoConfig", "DEFAULT_ROWS"]

DEFAULT_ROWS = ("if", "lmht", "qac", "mlif")


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo` (the CLI flags mirror the main ones).

    The ReLU ANN is trained from scratch with ``epochs`` and ``lr`` (Adam, cosine schedule); every other
    network starts from its weights: the QCFS ANN and the QAC network are trained on (quantization-aware
    fine-tuning, ``qcfs_epochs`` / ``qac_epochs``), the converted SNNs are fine-tuned with BPTT/STBP
    (``finetune_epochs``). So all rows share one ANN, and the demo fits in well under a minute.

    Method settings:
        qcfs_levels, qcfs_threshold, qcfs_epochs, qcfs_lr: Q, the initial (learnable) clip ϑ, epochs and lr
            of the QCFS ANN shared by the LM-HT and QAC rows. ϑ starts at 4.0 rather than QCFS-C's 8.0
            because this CNN's 99.9th-percentile pre-activations are 3-5 (measured by the ``if`` row).
        lmht_levels, lmht_timesteps, lmht_lr: L, T and the STBP fine-tuning learning rate (the paper's
            hybrid lr 5e-4, §2.6; Adam here).
        qac_alpha, qac_t, qac_epochs, qac_lr, qac_quantizer_lr: initial clip α and continuous timestep t of
            every QAC quantizer (the §4.2 defaults 8.0 and 4.0), QAT epochs, the weights' lr and the lr of
            (t, α): t is in units of timesteps, so it gets its own rate (30x the weights').
        qac_latency_weight, qac_latency_per_layer: λ and the layer weights of multispike's latency term
            λ·Σ_l w_l·t_l (:class:`~multispike.quant.latency.LatencyRegulariser`; ``macs``: w_l ∝ the synaptic MACs
            feeding the layer). QAC's cross-entropy alone leaves t near its start; the demo trains both.
        calib_epochs, calib_lr, calib_target: QAC calibration of v(0) and θ (§4.5).
        mlif_bits, mlif_lanes, mlif_threshold_init, mlif_lr, mlif_gamma: b of the log-quantized ANN the M-LIF
            rows start from, S of the main M-LIF row (``None``: ``2^b − 1``, the exact pairing), its init rule
            (``"logquant"``, the exact mapping; ``"percentile"`` = the paper text's P90), the fine-tuning lr (Adam;
            MLIF-P's 1e-4) and the triangle surrogate width γ. γ = 1 makes each window integrate to its edge's
            jump, so the surrogate's gain per layer matches the LQ-ANN's straight-through gradient; MLIF-P's 0.3
            shrinks the gradient by 0.3 per spiking layer (measured at the first conv of this CNN: 0.0017 vs 0.065
            for γ = 1 and 0.055 through the LQ-ANN).
        threads: torch intra-op threads while the demo runs.
        quick: the reduced setting used by the tests (few epochs; numbers are not meant for reading).
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    timesteps: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    threshold: str = "99.9%"
    seed: int = 0
    rows: tuple[str, ...] = DEFAULT_ROWS
    finetune_epochs: int = 4
    out: str | None = None
    progress: bool = True
    qcfs_levels: int = 4
    qcfs_threshold: float = 4.0
    qcfs_epochs: int = 6
    qcfs_lr: float = 1e-3
    lmht_levels: int = 2
    lmht_timesteps: int = 2
    lmht_lr: float = 5e-4
    qac_alpha: float = 8.0
    qac_t: float = 4.0
    qac_epochs: int = 8
    qac_lr: float = 1e-3
    qac_quantizer_lr: float = 3e-2
    qac_latency_weight: float = 3e-2
    qac_latency_per_layer: str = "macs"
    calib_epochs: int = 5
    calib_lr: float = 1e-3
    calib_target: str = "float"
    mlif_bits: int = 2
    mlif_lanes: int | None = None
    mlif_threshold_init: str = "logquant"
    mlif_lr: float = 1e-4
    mlif_gamma: float = 1.0
    threads: int = 1
    quick: bool = False
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick_config(cls, **overrides) -> "DemoConfig":
        """The reduced setting (``--quick``): 6 ANN epochs, 2 epochs for everything trained after it, T up to 8."""
        base = dict(epochs=6, finetune_epochs=2, qcfs_epochs=2, qac_epochs=2, calib_epochs=2, timesteps=(1, 2, 4, 8),
                    quick=True)
        base.update(overrides)
        return cls(**base)
