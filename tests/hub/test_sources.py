"""`check_model_source`: a checkpoint named on the command line that `from_pretrained` could not read is refused
by the flag's name, before the data loads."""

import pytest

from freeatm_hf.hub.sources import check_model_source


def test_a_checkpoint_folder_passes_and_a_folder_or_file_that_is_none_is_named(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    check_model_source(str(tmp_path / "ckpt"))
    with pytest.raises(ValueError, match=rf"--model {tmp_path} is a folder without config.json, not a checkpoint"):
        check_model_source(str(tmp_path))
    with pytest.raises(ValueError, match=r"--init_from .*config.json is a file, not a checkpoint folder"):
        check_model_source(str(tmp_path / "ckpt" / "config.json"), "--init_from")


@pytest.mark.parametrize("spec", ["/no/such/ckpt", "./ckpt", "../ckpt", "~/no-such-ckpt", "runs/simclr/final"])
def test_a_path_that_is_not_there_is_no_such_folder_not_a_malformed_repo_id(spec):
    # transformers' word for a missing absolute path: "Repo id must use alphanumeric chars".
    with pytest.raises(FileNotFoundError, match=rf"^--model {spec}: no such folder$"):
        check_model_source(spec)


def test_a_hub_id_is_read_from_the_hub_and_one_that_is_not_there_is_named(in_process_hub):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=in_process_hub.url, token="hf_test")
    api.create_repo("me/enc")
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="me/enc")
    check_model_source("me/enc")
    with pytest.raises(FileNotFoundError, match=r"--model 'me/absent' is no folder here, and no Hub model that could "
                                                r"be read \(.+\): check the path, or the id and the network"):
        check_model_source("me/absent")


def test_offline_a_hub_id_not_in_the_cache_is_named():
    with pytest.raises(FileNotFoundError, match=r"--model 'me/never-downloaded' is no folder here, and no Hub model"):
        check_model_source("me/never-downloaded")
