"""Batching two-view samples whose number of instances differs: masks are padded, `instance_valid` says
which are real."""

import torch


def collate_two_views(samples: list[dict]) -> dict:
    k = max(1, max(len(s["masks_1"]) for s in samples))
    size = samples[0]["masks_1"].shape[-2:] if len(samples[0]["masks_1"]) else samples[0]["pixel_values_1"].shape[-2:]
    b = len(samples)
    dtype = samples[0]["masks_1"].dtype  # bool from a compact transform: kept so through the loader
    m1, m2 = torch.zeros(b, k, *size, dtype=dtype), torch.zeros(b, k, *size, dtype=dtype)
    valid = torch.zeros(b, k, dtype=torch.bool)
    for i, s in enumerate(samples):
        n = len(s["masks_1"])
        m1[i, :n], m2[i, :n] = s["masks_1"], s["masks_2"]
        valid[i, :n] = True
    return {
        "pixel_values_1": torch.stack([s["pixel_values_1"] for s in samples]),
        "pixel_values_2": torch.stack([s["pixel_values_2"] for s in samples]),
        "masks_1": m1, "masks_2": m2, "instance_valid": valid,
    }
