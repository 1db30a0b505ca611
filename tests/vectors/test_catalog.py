"""The catalog: good files load, every bad file is skipped with a reason, refresh reloads only what changed."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

import vectors.catalog as catalog_mod
from tests.vectors.kit_vectors import dense_meta, random_code, sae_meta
from vectors.catalog import Catalog, ModelInfo, check_compatible, model_info_from_config
from vectors.errors import InvalidVectorName, UnknownVector, VectorCompatibilityError
from vectors.io import save_vector
from vectors.names import vector_path
from vectors.sae import SparseCoder
from vectors.vector import SteeringVector

INFO = ModelInfo(name="tiny", hidden_size=16, num_layers=4)


def _sae_vec(name: str, seed: int = 0, **meta: object) -> SteeringVector:
    d_sae = int(meta.get("d_sae", 64))  # type: ignore[call-overload]
    code = random_code(d_sae, 6, seed=seed, dtype=torch.float32)
    return SteeringVector.from_code(sae_meta(name, **meta), code)  # type: ignore[arg-type]


def _dense_vec(name: str, **meta: object) -> SteeringVector:
    return SteeringVector.dense_vector(dense_meta(name, **meta), torch.ones(16))


@pytest.fixture
def coders(coders64: dict[str, SparseCoder]) -> dict[int, SparseCoder]:
    return {1: coders64["standard"]}


def _populate(root: Path) -> None:
    save_vector(_sae_vec("culture/morocco"), vector_path(root, "culture/morocco"))
    save_vector(_dense_vec("style/formal"), vector_path(root, "style/formal"))
    save_vector(_sae_vec("deep/ns/leaf", seed=1), vector_path(root, "deep/ns/leaf"))
    # bad files, one per reason
    (root / "bad").mkdir()
    (root / "bad" / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    good = vector_path(root, "culture/morocco").read_bytes()
    (root / "bad" / "truncated.safetensors").write_bytes(good[: len(good) - 7])
    save_vector(_sae_vec("bad/wrong-model", d_model=32), root / "bad" / "wrong-model.safetensors")
    save_vector(_sae_vec("bad/wrong-sae", d_sae=128), root / "bad" / "wrong-sae.safetensors")
    save_vector(_sae_vec("bad/arch", architecture="topk"), root / "bad" / "arch.safetensors")
    save_vector(
        _sae_vec("bad/no-sae", layer=2, hook_name="model.layers.2"), root / "bad" / "no-sae.safetensors"
    )
    save_vector(_sae_vec("bad/other-name"), root / "bad" / "renamed.safetensors")
    save_vector(_sae_vec("bad/x"), root / "bad" / "Bad Name.safetensors")
    from safetensors.torch import save_file

    nan_meta = sae_meta("bad/nan").to_json()
    save_file(
        {"indices": torch.tensor([1, 2]), "values": torch.tensor([float("nan"), 1.0])},
        str(root / "bad" / "nan.safetensors"),
        metadata={"steer": nan_meta},
    )
    # ignored: other suffixes, hidden files/dirs, in-progress atomic writes
    (root / "README.md").write_text("not a vector")
    (root / "culture" / ".morocco.safetensors.abc.tmp").write_bytes(b"partial")
    (root / ".hidden").mkdir()
    save_vector(_sae_vec("hidden/x"), root / ".hidden" / "x.safetensors")


EXPECTED_SKIPS = {
    "bad/corrupt.safetensors": "not a readable safetensors",
    "bad/truncated.safetensors": "not a readable safetensors",
    "bad/wrong-model.safetensors": "wrong model",
    "bad/wrong-sae.safetensors": "d_sae=128",
    "bad/arch.safetensors": "topk",
    "bad/no-sae.safetensors": "no SAE is loaded",
    "bad/renamed.safetensors": "name mismatch",
    "bad/Bad Name.safetensors": "bad name",
    "bad/nan.safetensors": "NaN",
}


def test_catalog_loads_good_and_skips_bad(tmp_path: Path, coders: dict[int, SparseCoder]) -> None:
    _populate(tmp_path)
    cat = Catalog(tmp_path, INFO, coders)
    assert cat.refresh() is True
    assert [v.name for v in cat.vectors()] == ["culture/morocco", "deep/ns/leaf", "style/formal"]
    assert cat.get("culture/morocco").space == "sae" and "style/formal" in cat and len(cat) == 3
    assert set(cat.skipped) == set(EXPECTED_SKIPS)
    for rel, reason in EXPECTED_SKIPS.items():
        assert reason in cat.skipped[rel], (rel, cat.skipped[rel])
    with pytest.raises(UnknownVector):
        cat.get("culture/egypt")
    with pytest.raises(KeyError):  # UnknownVector is a KeyError too
        cat.get("culture/egypt")
    with pytest.raises(InvalidVectorName):
        cat.get("../etc/passwd")


def test_refresh_reloads_only_changed_files(
    tmp_path: Path, coders: dict[int, SparseCoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    save_vector(_sae_vec("a/one"), vector_path(tmp_path, "a/one"))
    save_vector(_sae_vec("a/two", seed=2), vector_path(tmp_path, "a/two"))
    loads: list[str] = []
    real = catalog_mod.load_vector
    monkeypatch.setattr(catalog_mod, "load_vector", lambda p: loads.append(Path(p).name) or real(p))
    cat = Catalog(tmp_path, INFO, coders)
    assert cat.refresh() and sorted(loads) == ["one.safetensors", "two.safetensors"]
    first = cat.get("a/one")
    loads.clear()
    assert cat.refresh() is False and loads == []  # nothing changed: nothing reloaded
    save_vector(_sae_vec("a/two", seed=3), vector_path(tmp_path, "a/two"))  # atomic replace: new inode
    save_vector(_sae_vec("a/three"), vector_path(tmp_path, "a/three"))
    assert cat.refresh() is True and sorted(loads) == ["three.safetensors", "two.safetensors"]
    assert cat.get("a/one") is first
    vector_path(tmp_path, "a/one").unlink()
    assert cat.refresh() is True and "a/one" not in cat
    # a broken file becomes a skip, a fixed one comes back
    vector_path(tmp_path, "a/three").write_bytes(b"junk")
    assert cat.refresh() is True and "a/three.safetensors" in cat.skipped and "a/three" not in cat
    save_vector(_sae_vec("a/three"), vector_path(tmp_path, "a/three"))
    assert cat.refresh() is True and not cat.skipped and "a/three" in cat


def test_snapshots_are_safe_across_threads(tmp_path: Path, coders: dict[int, SparseCoder]) -> None:
    cat = Catalog(tmp_path, INFO, coders)
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                names = {v.name for v in cat.vectors()}
                for n in names:
                    cat.get(n)  # may have been removed since, but then UnknownVector, never a crash
            except UnknownVector:
                pass
            except BaseException as e:  # pragma: no cover - the failure being tested for
                errors.append(e)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(15):
            save_vector(_sae_vec(f"t/v{i % 4}", seed=i), vector_path(tmp_path, f"t/v{i % 4}"))
            cat.refresh()
            if i % 5 == 4:
                os.unlink(vector_path(tmp_path, "t/v0"))
                cat.refresh()
    finally:
        stop.set()
        thread.join()
    assert errors == [] and len(cat) == len(list(tmp_path.rglob("*.safetensors"))) == 3


def test_check_compatible_and_model_info(coders: dict[int, SparseCoder]) -> None:
    from transformers import GPT2Config, LlamaConfig

    assert model_info_from_config(
        LlamaConfig(hidden_size=16, num_hidden_layers=4, intermediate_size=32, num_attention_heads=4)
    ) == ModelInfo("", 16, 4)
    gpt2 = model_info_from_config(GPT2Config(n_embd=24, n_layer=2, n_head=2))
    assert (gpt2.hidden_size, gpt2.num_layers) == (24, 2)
    check_compatible(_sae_vec("ok/v"), INFO, coders)
    check_compatible(_dense_vec("ok/d", layer=3), INFO, {})
    with pytest.raises(VectorCompatibilityError, match="wrong model") as info:
        check_compatible(_dense_vec("x/d"), ModelInfo("other", 32, 4), {}, path="x/d.safetensors")
    assert info.value.path == "x/d.safetensors"
    with pytest.raises(VectorCompatibilityError, match="no SAE"):
        check_compatible(_sae_vec("x/s"), INFO, {})


def test_missing_root_is_an_empty_catalog(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "absent", INFO)
    assert cat.refresh() is False and cat.vectors() == [] and cat.skipped == {}


def test_symlinks_leaving_the_root_are_skipped(
    tmp_path: Path, coders: dict[int, SparseCoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_root, outside = tmp_path / "catalog", tmp_path / "outside"
    for name in ("ns/out", "ns/relative", "ns/hop", "ext/leak"):  # valid vectors, were the links followed
        save_vector(_sae_vec(name), vector_path(outside, name))
    save_vector(_sae_vec("ns/inside", seed=1), real_root / ".store" / "inside-v1.safetensors")
    save_vector(_sae_vec("ns/inside", seed=2), real_root / ".store" / "inside-v2.safetensors")
    ns = real_root / "ns"
    ns.mkdir()
    (ns / "out.safetensors").symlink_to(vector_path(outside, "ns/out"))
    (ns / "relative.safetensors").symlink_to(Path("../../outside/ns/relative.safetensors"))
    (real_root / ".store" / "hop.safetensors").symlink_to(vector_path(outside, "ns/hop"))
    (ns / "hop.safetensors").symlink_to(real_root / ".store" / "hop.safetensors")  # inside, then out
    (ns / "loop.safetensors").symlink_to(ns / "loop.safetensors")
    (ns / "inside.safetensors").symlink_to(Path("../.store/inside-v1.safetensors"))  # stays inside: served
    (real_root / "ext").symlink_to(outside / "ext", target_is_directory=True)
    root = tmp_path / "served"  # the root itself may be a link: targets are compared with its real path
    root.symlink_to(real_root, target_is_directory=True)
    reads: list[Path] = []
    real_load = catalog_mod.load_vector
    monkeypatch.setattr(catalog_mod, "load_vector", lambda p: reads.append(Path(p)) or real_load(p))

    cat = Catalog(root, INFO, coders)
    assert cat.refresh() is True
    assert [v.name for v in cat.vectors()] == ["ns/inside"]
    assert cat.skipped == {
        "ext": catalog_mod.LINK_OUTSIDE,
        "ns/hop.safetensors": catalog_mod.LINK_OUTSIDE,
        "ns/loop.safetensors": catalog_mod.LINK_LOOP,
        "ns/out.safetensors": catalog_mod.LINK_OUTSIDE,
        "ns/relative.safetensors": catalog_mod.LINK_OUTSIDE,
    }
    assert reads and all(p.is_relative_to(real_root) and not p.is_symlink() for p in reads)
    first = cat.get("ns/inside")
    # an in-root link flipped to a new version is reloaded; flipped to a file outside, it is dropped
    (ns / "next.safetensors").symlink_to(real_root / ".store" / "inside-v2.safetensors")
    (ns / "next.safetensors").replace(ns / "inside.safetensors")
    assert cat.refresh() is True and not cat.get("ns/inside").values.equal(first.values)
    (ns / "next.safetensors").symlink_to(vector_path(outside, "ns/out"))
    (ns / "next.safetensors").replace(ns / "inside.safetensors")
    assert cat.refresh() is True and "ns/inside" not in cat
    assert cat.skipped["ns/inside.safetensors"] == catalog_mod.LINK_OUTSIDE
