import pytest

from .fake_hub import FakeHub


@pytest.fixture
def in_process_hub(tmp_path, monkeypatch):
    """A loopback Hub that this process's huggingface_hub talks to (uploads and downloads, its own cache): what
    `HF_ENDPOINT` does for a subprocess, for code called in the test itself."""
    import huggingface_hub.constants as c

    with FakeHub() as hub:
        monkeypatch.setenv("HF_TOKEN", "hf_test")
        monkeypatch.setattr(c, "ENDPOINT", hub.url)
        # Download URLs are built from a template fixed at import, not from ENDPOINT.
        monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(c, "HF_HUB_DISABLE_XET", True)  # contents inline, as the loopback Hub takes them
        monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
        yield hub
