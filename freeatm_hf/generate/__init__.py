from .config import GenerateConfig
from .generator import FreeATMGenerator, GeneratedObject, GenerationOutput
from .schema import dataset_features
from .writer import DatasetWriter, SettingsMismatchError

__all__ = [
    "DatasetWriter", "FreeATMGenerator", "GenerateConfig", "GeneratedObject", "GenerationOutput",
    "SettingsMismatchError", "dataset_features",
]
