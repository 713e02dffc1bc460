"""`resolve_device`: `--device` read once, a device the machine lacks refused by name before anything loads."""

import pytest
import torch

from freeatm_hf.devices import resolve_device


def test_unset_is_the_gpu_when_there_is_one_else_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("cuda")


def test_a_device_there_is_comes_back_as_a_torch_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda")) == torch.device("cuda")


@pytest.mark.parametrize("name, gpus, message", [
    ("foo", 2, r"--device 'foo' is not a device: give cpu, cuda, cuda:N or mps"),
    ("cuda", 0, r"--device cuda: this machine has no CUDA GPU that torch can use; give cpu"),
    ("cuda:2", 2, r"--device cuda:2: this machine's GPUs are cuda:0 to cuda:1"),
])
def test_a_device_the_machine_lacks_is_refused_by_name(monkeypatch, name, gpus, message):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(ValueError, match=message):
        resolve_device(name)


def test_mps_without_one_is_refused(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"--gpu mps: this machine has no MPS device"):
        resolve_device("mps", "--gpu")
