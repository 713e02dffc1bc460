"""freeatm_hf: pretraining on diffusion-generated images with the attention maps the generator gives for free."""

__version__ = "0.1.0"
