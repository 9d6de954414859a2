"""Where the network runs."""

import torch


def resolve_device(device):
    """Map the estimator's ``device`` parameter to a ``torch.device``.

    Parameters
    ----------
    device : {"cpu", "cuda", "auto"}
        "auto" picks CUDA when torch can see a GPU, the CPU otherwise.

    Returns
    -------
    torch.device
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' was requested but torch cannot see a CUDA GPU "
            "(torch.cuda.is_available() is False). Use device='cpu' or 'auto'."
        )
    return torch.device(device)
