"""The training loop: files it writes, resume, reference mode, and the CAA/SAS estimators."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.trainer.kit_tiny import train_config
from trainer.objectives import capture_last_token
from trainer.tokens import encode_pairs
from trainer.train import batch_indices, direction_for, loss_curve, lr_factor, train_vector
from vectors.io import load_vector, read_metadata
from vectors.names import vector_path


def _cfg(tmp_path, method="yapo", **kw):
    return train_config(tmp_path, method, **kw)


def test_yapo_vector_file_round_trips(tiny_res, morocco_pairs, tmp_path):
    result = train_vector(_cfg(tmp_path, target="morocco"), resources=tiny_res, pairs=morocco_pairs)
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-6)
    path = vector_path(tmp_path / "cat", "culture/morocco")
    assert result.path == path and path.is_file()
    loaded = load_vector(path)
    assert loaded == result.vector
    torch.testing.assert_close(loaded.values, result.vector.values)
    assert bool((loaded.values != 0).all()) and loaded.nnz > 0
    meta = read_metadata(path)
    assert (meta.method, meta.space, meta.layer, meta.hook_name) == (
        "yapo",
        "sae",
        1,
        "blocks.1.hook_resid_post",
    )
    assert meta.sae.d_sae == tiny_res.coder.d_sae and meta.model.hidden_size == 32
    assert meta.training.target == "morocco" and meta.training.data_hash.startswith("sha256:")
    assert meta.training.final_loss == pytest.approx(result.final_loss)
    curve = meta.training.loss_curve  # what the playground plots
    assert curve.step == (4, 8, 12)
    assert curve.loss == pytest.approx([h["loss"] for h in result.history], abs=1e-5)
    logs = tmp_path / "train-logs" / "culture"
    log = json.loads((logs / "morocco.log.json").read_text())
    assert [h["step"] for h in log["history"]] == [4, 8, 12] and len(log["losses"]) == 12
    assert (logs / "morocco.log.png").stat().st_size > 0
    assert not list((tmp_path / "cat").rglob("*.ckpt*"))  # checkpoints live outside the catalog


def test_resume_continues_bit_for_bit(tiny_res, morocco_pairs, tmp_path):
    full = train_vector(_cfg(tmp_path / "a"), resources=tiny_res, pairs=morocco_pairs)
    part = train_vector(_cfg(tmp_path / "b", stop_after=5), resources=tiny_res, pairs=morocco_pairs)
    assert not part.completed and part.path is None
    assert not vector_path(tmp_path / "b" / "cat", "culture/morocco").exists()
    resumed = train_vector(_cfg(tmp_path / "b", resume=True), resources=tiny_res, pairs=morocco_pairs)
    assert resumed.losses == full.losses
    torch.testing.assert_close(resumed.vector.values, full.vector.values, rtol=0, atol=0)
    with pytest.raises(ValueError, match="different run"):
        train_vector(_cfg(tmp_path / "b", resume=True, lr=0.01), resources=tiny_res, pairs=morocco_pairs)


def test_reference_mode_matches_fast_mode(tiny_res, morocco_pairs, tmp_path):
    fast = train_vector(_cfg(tmp_path, out=None, max_steps=6), resources=tiny_res, pairs=morocco_pairs)
    ref = train_vector(
        _cfg(tmp_path, out=None, max_steps=6, reference_mode=True), resources=tiny_res, pairs=morocco_pairs
    )
    assert ref.losses == pytest.approx(fast.losses, abs=1e-5)


def test_bipo_dense_and_sparsifiers(tiny_res, morocco_pairs, tmp_path):
    bipo = train_vector(_cfg(tmp_path, "bipo", out=None), resources=tiny_res, pairs=morocco_pairs)
    assert bipo.vector.space == "dense" and bipo.vector.dense.shape == (32,)
    assert bipo.losses[-1] < bipo.losses[0]
    top = train_vector(_cfg(tmp_path, out=None, top_k=3), resources=tiny_res, pairs=morocco_pairs)
    assert top.vector.nnz <= 3
    dense_l1 = train_vector(_cfg(tmp_path, out=None), resources=tiny_res, pairs=morocco_pairs)
    l1 = train_vector(_cfg(tmp_path, out=None, l1=2.0), resources=tiny_res, pairs=morocco_pairs)
    assert l1.vector.nnz < dense_l1.vector.nnz


def test_caa_and_sas_match_direct_computation(tiny_res, morocco_pairs, tmp_path):
    encoded, _ = encode_pairs(tiny_res.tokenizer, morocco_pairs)
    h = {}
    for kind in ("chosen", "rejected"):
        acts = []
        for e in encoded:
            store: list[torch.Tensor] = []
            ids = torch.tensor([list(e.prompt) + list(getattr(e, kind))])
            with capture_last_token(tiny_res.model, 1, store), torch.no_grad():
                tiny_res.model(input_ids=ids)
            acts.append(store[0][0])
        h[kind] = torch.stack(acts)
    caa = train_vector(
        _cfg(tmp_path, "caa", name="culture/caa", layer=1), resources=tiny_res, pairs=morocco_pairs
    )
    torch.testing.assert_close(caa.vector.dense, (h["chosen"] - h["rejected"]).mean(0), atol=1e-5, rtol=1e-4)
    coder = tiny_res.coder
    expect = (coder.encode(h["chosen"]) - coder.encode(h["rejected"])).mean(0)
    sas = train_vector(
        _cfg(tmp_path, "sas", name="culture/sas", tau=0.0), resources=tiny_res, pairs=morocco_pairs
    )
    torch.testing.assert_close(sas.vector.code_vector(), expect, atol=1e-5, rtol=1e-4)
    sparse = train_vector(
        _cfg(tmp_path, "sas", name="culture/sas2", tau=0.5), resources=tiny_res, pairs=morocco_pairs
    )
    assert sparse.vector.nnz <= sas.vector.nnz
    assert load_vector(sparse.path).meta.method == "sas"


def test_schedule_and_determinism():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0)
    assert {direction_for(11, s) for s in range(50)} == {1.0, -1.0}
    epoch = [i for s in range(3) for i in batch_indices(5, s, 10, 4)]
    assert sorted(epoch) == list(range(10))
    assert batch_indices(5, 7, 10, 4) == batch_indices(5, 7, 10, 4)


@pytest.mark.parametrize("method", ["yapo", "bipo"])
def test_activation_cache_matches_full_forward(tiny_res, morocco_pairs, tmp_path, method):
    """Skipping blocks 0..L with cached activations (and codes) trains the same vector."""
    kw = dict(out=None, max_steps=5)
    cached = train_vector(_cfg(tmp_path, method, **kw), resources=tiny_res, pairs=morocco_pairs)
    full = train_vector(
        _cfg(tmp_path, method, cache_activations=False, **kw), resources=tiny_res, pairs=morocco_pairs
    )
    assert cached.losses == pytest.approx(full.losses, abs=1e-5)
    torch.testing.assert_close(
        cached.vector.code_vector() if method == "yapo" else cached.vector.dense,
        full.vector.code_vector() if method == "yapo" else full.vector.dense,
        atol=1e-5,
        rtol=1e-4,
    )


def test_bf16_model_keeps_float32_vector_and_optimizer(morocco_pairs, tmp_path):
    from tests.trainer.kit_tiny import build_coder, build_model, build_tokenizer
    from trainer.checkpoint import load_checkpoint
    from trainer.resources import Resources

    tok = build_tokenizer()
    res = Resources(
        model=build_model(len(tok), dtype=torch.bfloat16),
        tokenizer=tok,
        model_name="tiny-bf16",
        coder=build_coder(32, layer=1),
        sae_source="tiny-sae",
    )
    result = train_vector(
        _cfg(tmp_path, max_steps=4, log_dir=str(tmp_path / "logs")), resources=res, pairs=morocco_pairs
    )
    assert result.vector.values.dtype == torch.float32 and math.isfinite(result.final_loss)
    ckpt = load_checkpoint(tmp_path / "logs" / "culture" / "morocco")
    assert {t.dtype for t in ckpt.tensors.values()} == {torch.float32} and ckpt.state["adam_step"] == 4


def test_loss_curve_is_thinned_but_keeps_the_last_point():
    history = [{"step": 10 * (i + 1), "loss": 1.0 / (i + 1)} for i in range(1000)]
    curve = loss_curve(history, max_points=200)
    assert len(curve.step) == 200 and curve.step[0] == 10 and curve.step[-1] == 10_000
    assert list(curve.step) == sorted(curve.step) and curve.loss[-1] == pytest.approx(0.001)
    assert loss_curve(history[:3]).to_dict() == {"step": [10, 20, 30], "loss": [1.0, 0.5, 0.33333]}


def test_one_preference_step_alone(tiny_res, morocco_pairs, tmp_path):
    """`PreferenceRun.step` on its own: at v = 0 the loss is log 2, the gradient moves v, the lr follows the
    warmup, and its stats are what `record` logs; a second setup of the same run takes the same step."""
    from trainer.preference import PreferenceRun, direction_for

    cfg = _cfg(tmp_path, log_every=1)
    encoded, stats = encode_pairs(tiny_res.tokenizer, morocco_pairs)
    taken = []
    for _ in range(2):
        run = PreferenceRun.setup(cfg, tiny_res, 1, morocco_pairs, encoded, stats)
        assert run.start == 0 and run.n == len(encoded) and run.m == 0
        with run.hooks():
            step = run.step(0)
        assert step.loss == pytest.approx(math.log(2), abs=1e-6) and step.penalty == 0.0
        assert step.lr == pytest.approx(cfg.lr * lr_factor(0, run.total, run.warmup))
        assert float(run.steer.v.norm()) > 0
        run.record(step, end=run.total, elapsed=0.5)
        assert run.losses == [step.loss] and run.history[-1]["step"] == 1
        assert run.history[-1]["norm"] == pytest.approx(float(run.steer.v.norm()))
        taken.append(run.steer.v.detach().clone())
    torch.testing.assert_close(taken[0], taken[1], rtol=0, atol=0)
    assert direction_for(cfg.seed, 0) in (1.0, -1.0)
