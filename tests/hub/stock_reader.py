"""Read an export back with the stock library alone, in a process that never imports freeatm_hf."""

import subprocess
import sys

import torch

# Each reader loads the export with the stock library alone and saves the encoder's features of x.
READERS = {
    "timm": """
import timm
m = timm.create_model("local-dir:" + path, pretrained=True, num_classes=0, global_pool="").eval()
print(m.pretrained_cfg["mean"], m.pretrained_cfg["input_size"])
y = m.forward_features(x)
""",
    # The timm export as a user of either library sees it: timm's defaults (pooled) and transformers' timm wrapper.
    "timm-pooled": """
import timm
y = timm.create_model("local-dir:" + path, pretrained=True).eval()(x)
""",
    "transformers-timm": """
from transformers import AutoImageProcessor, AutoModel
proc = AutoImageProcessor.from_pretrained(path)
assert [round(v, 3) for v in proc.data_config["mean"]] == [0.485, 0.456, 0.406], proc.data_config
out = AutoModel.from_pretrained(path).eval()(pixel_values=x)
y = torch.cat([out.last_hidden_state.flatten(1), out.pooler_output], 1)
""",
    "torchvision": """
import torchvision
m = torchvision.models.resnet18()
missing, unexpected = m.load_state_dict(torch.load(path), strict=False)
assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected, (missing, unexpected)
m.fc = torch.nn.Identity()
y = m.eval()(x)
""",
    "vit": """
from transformers import AutoImageProcessor, ViTModel
proc = AutoImageProcessor.from_pretrained(path, subfolder=sub)  # the training input pipeline, not the defaults
assert [round(v, 3) for v in proc.image_mean] == [0.485, 0.456, 0.406] and proc.resample == 3  # bicubic
assert proc.size == {"height": 32, "width": 32}
m, info = ViTModel.from_pretrained(path, subfolder=sub, add_pooling_layer=False, output_loading_info=True)
assert not info["missing_keys"] and not info["unexpected_keys"], info  # as the card loads it: every weight is MAE's
y = m.eval()(pixel_values=x).last_hidden_state
""",
    "blip-retrieval": """
from transformers import AutoTokenizer, BlipForImageTextRetrieval, BlipImageProcessor
m = BlipForImageTextRetrieval.from_pretrained(path, subfolder=sub).eval()
proc = BlipImageProcessor.from_pretrained(path, subfolder=sub)
assert proc.size == {"height": 32, "width": 32} and [round(v, 3) for v in proc.image_mean] == [0.485, 0.456, 0.406]
assert [round(v, 3) for v in proc.image_std] == [0.229, 0.224, 0.225]  # ImageNet's, as training normalized
AutoTokenizer.from_pretrained(path, subfolder=sub)
y = m.vision_model(pixel_values=x).last_hidden_state
""",
    "blip-captioning": """
from transformers import BlipForConditionalGeneration
y = BlipForConditionalGeneration.from_pretrained(path, subfolder=sub).eval().vision_model(pixel_values=x).last_hidden_state
""",
}


def read_stock(kind, path, x, tmp_path, subfolder="") -> tuple[torch.Tensor, str]:
    """The features of x from the export at path, read by a process with the stock library alone; and its stdout."""
    code = ("import sys, torch\npath, sub = sys.argv[1], sys.argv[2]\nx = torch.load(sys.argv[3])\n"
            "with torch.no_grad():\n" + "".join(f"    {line}\n" for line in READERS[kind].strip().splitlines())
            + "    torch.save(y, sys.argv[4])\nassert 'freeatm_hf' not in sys.modules\n")
    torch.save(x, tmp_path / "x.pt")
    res = subprocess.run([sys.executable, "-c", code, str(path), subfolder, str(tmp_path / "x.pt"),
                          str(tmp_path / "y.pt")], capture_output=True, text=True, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    return torch.load(tmp_path / "y.pt"), res.stdout
