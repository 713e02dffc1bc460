import torch

from freeatm_hf.generate.run import run_device


def test_a_bare_device_type_means_each_processs_own_device_and_an_explicit_index_is_kept():
    rank_1 = torch.device("cuda", 1)
    # A bare "cuda" is GPU 0 to enable_model_cpu_offload: on rank 1 it must be rank 1's GPU.
    assert run_device("cuda", rank_1) == rank_1
    assert run_device(None, rank_1) == rank_1
    assert run_device("", rank_1) == rank_1
    assert run_device("cuda:0", rank_1) == torch.device("cuda", 0)
    assert run_device("cpu", rank_1) == torch.device("cpu")
    assert run_device("cpu", torch.device("cpu")) == torch.device("cpu")
