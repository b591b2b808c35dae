"""train.precision: exact_fp32 restores each TF32 flag as it was (PyTorch's defaults differ per flag)."""
import torch

from multispike.train.precision import exact_fp32


def test_exact_fp32_restores_both_flags_separately():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True   # PyTorch's defaults
        with exact_fp32("cuda"):       # only flags are touched: no GPU needed
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is True
        with exact_fp32("cpu"):        # a no-op elsewhere
            assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
