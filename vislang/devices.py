"""Which torch device a run or a loaded model uses, and the error for one this machine lacks."""
from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device was asked for that torch does not know or this machine does not have."""


def pick_device(name: str | torch.device | None = None) -> torch.device:
    """`name` ("cpu", "cuda", "cuda:1"), checked to exist here; None: cuda when available, else cpu."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise DeviceError(f"unknown device {str(name)!r}: use cpu, cuda or cuda:N") from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"device {str(name)!r} was asked for, but torch sees no GPU here: use cpu")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {str(name)!r} was asked for, but torch sees {count} GPU(s): cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise DeviceError(f"device {str(name)!r} is not supported: use cpu, cuda or cuda:N")
    return device
