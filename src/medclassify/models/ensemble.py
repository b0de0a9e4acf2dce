"""Seed ensembles: several trained models of one task as one model whose probabilities are the mean
of theirs. Its output is the logarithm of that mean (multi-label: its logit), so that the usual
softmax (sigmoid) of the output gives the mean exactly and everything that applies a model (predict,
serve, export as one ONNX graph, Grad-CAM over every member) applies an ensemble unchanged."""

from __future__ import annotations

import math

import torch
from torch import nn

from .registry import ModelSpec, create_model, get_model_entry

ENSEMBLE_NAME = "ensemble"


class SeedEnsemble(nn.Module):
    """``members`` averaged in probability; each member's logits are first divided by its temperature
    (1 when it was not calibrated)."""

    temperatures: torch.Tensor  # a buffer: saved with the weights, moved with the model

    def __init__(self, members: list[nn.Module], temperatures: list[float], multi_label: bool):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("temperatures", torch.tensor(temperatures, dtype=torch.float32))
        self.multi_label = multi_label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([member(x).float() for member in self.members]) / self.temperatures.view(-1, 1, 1)
        if self.multi_label:
            mean = torch.sigmoid(logits).mean(0).clamp(1e-7, 1 - 1e-7)
            return torch.log(mean) - torch.log1p(-mean)
        # log of the mean probability, computed stably: logsumexp of the members' log-probabilities
        return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - math.log(len(self.members))


def model_from_spec(spec: ModelSpec) -> nn.Module:
    """The model a bundle's ``model`` entry describes: a registered model, or a :class:`SeedEnsemble`
    of registered models (``members``, ``temperatures``, ``multi_label``)."""
    if spec["name"] != ENSEMBLE_NAME:
        return create_model(spec["name"], spec["in_channels"], spec["num_classes"], spec["image_size"])
    members = [model_from_spec(member) for member in spec["members"]]
    return SeedEnsemble(members, list(spec["temperatures"]), bool(spec["multi_label"]))


def cam_layer_names(spec: ModelSpec) -> list[str]:
    """Where Grad-CAM looks in the model of ``spec``: the registered last block, or every member's."""
    if spec["name"] != ENSEMBLE_NAME:
        return [get_model_entry(spec["name"]).cam_layer]
    return [f"members.{i}.{name}" for i, member in enumerate(spec["members"]) for name in cam_layer_names(member)]
