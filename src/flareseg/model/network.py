"""The network: nnU-Net's 3-D U-Net built as a MONAI DynUNet from a :class:`~flareseg.config.NetworkConfig`."""

from __future__ import annotations

import torch

from flareseg.config import NetworkConfig


def build_network(cfg: NetworkConfig) -> torch.nn.Module:
    """Build nnU-Net's 3-D U-Net as a MONAI DynUNet (instance norm, LeakyReLU 0.01, He-normal init).

    The network maps (B, in_channels, X, Y, Z) to (B, out_channels, X, Y, Z) logits; X, Y, Z must be
    multiples of ``cfg.divisor``. MONAI is imported here, not with the module: it loads all of itself
    (4 s), which a prediction on an ONNX engine with its graph cached never needs.
    """
    from monai.networks.nets import DynUNet

    stages = len(cfg.filters)
    return DynUNet(
        spatial_dims=3,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        kernel_size=[cfg.kernel_size] * stages,
        strides=list(cfg.strides),
        upsample_kernel_size=list(cfg.strides[1:]),
        filters=list(cfg.filters),
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        deep_supervision=cfg.deep_supervision,
        deep_supr_num=max(1, min(2, stages - 2)),
        res_block=cfg.res_block,
    )


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
