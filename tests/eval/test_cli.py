"""`freeatm eval`: flags the evaluation would not read are refused before any model or data is loaded."""

import pytest

from freeatm_hf.eval.cli import main


@pytest.mark.parametrize("flags", [["--finetune_lr", "1e-4"], ["--finetune_dir", "out", "--finetune_epochs", "2"]])
def test_retrieval_refuses_fine_tuning_settings_without_a_split_to_fine_tune_on(flags):
    # Without --finetune_split the model is scored as it is: the settings would be dropped without a word.
    with pytest.raises(ValueError, match=r"--finetune_.* set how to fine-tune, which only --finetune_split asks for"):
        main(["retrieval", "--model", "missing-model", "--dataset", "missing-data", *flags])


@pytest.mark.parametrize("what", ["finetune", "segment", "detect"])
def test_trainer_evaluations_refuse_a_device_index_they_cannot_honour(what):
    # Trainer puts the model on every visible GPU: cuda:1 would be dropped (DataParallel over all of them).
    with pytest.raises(ValueError, match=rf"--device cuda:1: eval {what} trains with Trainer.*CUDA_VISIBLE_DEVICES"):
        main([what, "--model", "missing-model", "--dataset", "missing-data", "--output_dir", "o", "--device", "cuda:1"])
    with pytest.raises(ValueError, match=r"--device cuda:1: eval retrieval --finetune_split trains with Trainer"):
        main(["retrieval", "--model", "m", "--dataset", "d", "--finetune_split", "train", "--finetune_dir", "o",
              "--device", "cuda:1"])
