"""The one device resolver: 'auto', 'cpu', 'cuda', 'cuda:N' -> a torch.device that exists here."""

from __future__ import annotations

import torch

from flareseg.errors import ConfigError


def resolve_device(device: str | torch.device) -> torch.device:
    """``'auto'`` -> CUDA when available, else CPU; anything else as given.

    Raises:
        ConfigError: an unknown device name, or CUDA requested where it is not available.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine (use 'cpu' or 'auto')")
    return resolved
