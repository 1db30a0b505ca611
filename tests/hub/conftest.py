"""The offline hub look-alike (`kit_hub_home`), built once per session, and a process pointed at it."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from collections.abc import Iterator

import pytest

from tests.hub.kit_hub_home import HubHome, build_hub_home


@pytest.fixture(scope="session")
def hub_home(tmp_path_factory: pytest.TempPathFactory) -> HubHome:
    return build_hub_home(tmp_path_factory.mktemp("hub-home"))


@pytest.fixture(scope="module")
def offline_hub(hub_home: HubHome) -> Iterator[HubHome]:
    """This process resolves hub ids from the look-alike's cache, offline.

    huggingface_hub reads HF_HOME once, at import; transformers and sae-lens read the cache path from
    `huggingface_hub.constants` at each call, so that is what is pointed at the look-alike (processes this
    module starts get HF_HOME instead).
    """
    import huggingface_hub.constants as hub_constants

    assert hub_constants.HF_HUB_OFFLINE, "the hub tests must never reach the network"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hub_constants, "HF_HUB_CACHE", str(hub_home.hub_cache))
        for name, value in hub_home.env().items():
            mp.setenv(name, value)
        yield hub_home
