"""The tests' loopback Hub is the package's own (`freeatm_hf.hub.local_hub`), used in memory."""

from freeatm_hf.hub.local_hub import LocalHub as FakeHub

__all__ = ["FakeHub"]
