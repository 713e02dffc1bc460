from .augment import OpenAIAugmenter, PromptAugmenter, TransformersAugmenter, load_augmenter
from .label_space import LabelClass, LabelSpace
from .prompt import Prompt, PromptObject, as_prompt, free_spans, word_spans
from .scenes import ScenePrompts

__all__ = [
    "LabelClass", "LabelSpace", "OpenAIAugmenter", "Prompt", "PromptAugmenter", "PromptObject", "ScenePrompts",
    "TransformersAugmenter", "as_prompt", "free_spans", "load_augmenter", "word_spans",
]
