"""Dense autograd references for the sparse-delta layer tests (plain PyTorch, no spiel code)."""

import torch
import torch.nn.functional as F


def dense_reference(x, weight, indices, values, bias=None):
    """``F.linear(x, W + scatter(indices, values), bias)`` in fp32 with ordinary autograd.

    Returns (y, leaves) where leaves are fp32 copies of x, the merged weight, values and bias that
    require grad, so a test can read ``.grad`` after ``y.backward``.
    """
    out_features, in_features = weight.shape
    x_ref = x.detach().float().requires_grad_(x.requires_grad)
    values_ref = values.detach().float().requires_grad_(True)
    delta = torch.zeros(out_features * in_features).index_add(0, indices.long(), values_ref)
    merged = weight.detach().float() + delta.view(out_features, in_features)
    merged.retain_grad()
    bias_ref = None if bias is None else bias.detach().float().requires_grad_(True)
    y = F.linear(x_ref, merged, bias_ref)
    return y, {"x": x_ref, "merged": merged, "values": values_ref, "bias": bias_ref}
