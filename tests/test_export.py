"""Compressed serving bundles: the codecs, and `recsearch export` of every family in every
precision (and pruned where a family has an item-item matrix) loading and serving."""

import json

import numpy as np
import pytest
import torch

from recsearch.cli import main
from recsearch.errors import ConfigError
from recsearch.models.base import MODELS, Recommender, model_class
from recsearch.models.compression import decode, encode, topk_columns
from recsearch.serving.export import export_model
from recsearch.serving.schemas import HistoryRecommendationRequest, UserRecommendationRequest
from recsearch.serving.service import ModelService

PRUNABLE = ("ease", "itemknn", "userknn")


def test_fp16_and_int8_round_trips():
    rng = torch.Generator().manual_seed(0)
    matrix = torch.randn(50, 8, generator=rng) * torch.logspace(-3, 2, 50)[:, None]  # rows of very different scale
    matrix[7] = 0.0
    state = {"net": {"weight": matrix, "bias": torch.randn(8, generator=rng)}, "indices": torch.arange(5), "epoch": 3}
    for precision in ("fp16", "int8"):
        stored = encode(state, precision)
        restored = decode(stored)
        assert restored["epoch"] == 3 and restored["indices"].dtype == torch.int64
        assert torch.equal(restored["indices"], state["indices"]) and stored["indices"]["data"].dtype == torch.int32
        assert restored["net"]["weight"].dtype == torch.float32
        assert not restored["net"]["weight"][7].any()
        if precision == "fp16":
            torch.testing.assert_close(restored["net"]["weight"], matrix, rtol=1e-3, atol=1e-6)
        else:  # each row within half its own quantisation step; vectors are left in float32
            step = matrix.abs().amax(dim=1, keepdim=True) / 127
            assert ((restored["net"]["weight"] - matrix).abs() <= step / 2 + 1e-7).all()
            assert torch.equal(restored["net"]["bias"], state["net"]["bias"])
    lossless = encode(state, "fp32")
    assert lossless["net"]["weight"] is matrix and lossless["indices"]["data"].dtype == torch.int32
    assert torch.equal(decode(lossless)["indices"], state["indices"])
    with pytest.raises(ValueError, match="precision"):
        encode(state, "fp8")


def test_topk_columns_keeps_each_columns_largest_magnitudes():
    matrix = torch.tensor([[0.1, -5.0, 0.0], [3.0, 0.2, 0.0], [-2.0, 1.0, 0.0], [0.5, 0.0, 0.0]])
    pruned = decode(topk_columns(matrix, 2))
    assert torch.equal(pruned, torch.tensor([[0.0, -5.0, 0.0], [3.0, 0.0, 0.0], [-2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(decode(topk_columns(matrix, 10)), matrix)
    assert torch.equal(decode(encode(topk_columns(matrix, 2), "fp16")), pruned)


@pytest.fixture(scope="module")
def fitted(planted_split, tmp_path_factory):
    """Every family fitted for one epoch on the planted data and saved: (model, directory)."""
    root = tmp_path_factory.mktemp("fitted")
    return {family: (model := model_class(family)(seed=0, device="cpu").fit(planted_split.train, epochs=1),
                     model.save(root / family, metadata={"valid": {"ndcg@10": 0.5}}))
            for family in sorted(MODELS)}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_every_family_exports_loads_and_serves_in_every_precision(family, fitted, tmp_path):
    model, directory = fitted[family]
    users = np.arange(model.n_users)
    reference = model.score(users)
    variants = [("fp16", None), ("int8", None)] + ([("fp16", 5), ("fp32", 5)] if family in PRUNABLE else [])
    for precision, top_k in variants:
        target = export_model(directory, tmp_path / f"{precision}-{top_k}", precision, top_k)
        description = json.loads((target / "model.json").read_text())
        assert description["metadata"]["compression"] == {"precision": precision, "top_k": top_k, "source": str(directory)}
        assert description["metadata"]["valid"] == {"ndcg@10": 0.5}  # the source model's metrics travel along
        service = ModelService.load(target, device="cpu")
        scores = service.model.score(users)
        assert scores.dtype == torch.float32 and scores.shape == reference.shape
        if top_k is None and precision == "fp16":
            torch.testing.assert_close(scores, reference, rtol=2e-2, atol=2e-3)
        assert len(service.recommend_users([UserRecommendationRequest(user="u1", k=5)])[0].items) == 5
        assert service.recommend_histories([HistoryRecommendationRequest(items=["i0"], k=3)])[0].items


def test_pruning_keeps_each_items_strongest_neighbours(fitted, tmp_path):
    model, directory = fitted["itemknn"]
    pruned = Recommender.load(export_model(directory, tmp_path / "top3", top_k=3), device="cpu")
    for row in range(model.n_items):
        before = dict(zip(model.indices[model.indptr[row] : model.indptr[row + 1]].tolist(),
                          model.neighbour_sim[model.indptr[row] : model.indptr[row + 1]].tolist(), strict=True))
        kept = dict(zip(pruned.indices[pruned.indptr[row] : pruned.indptr[row + 1]].tolist(),
                        pruned.neighbour_sim[pruned.indptr[row] : pruned.indptr[row + 1]].tolist(), strict=True))
        assert kept.items() <= before.items() and len(kept) == min(3, len(before))
        assert min(kept.values(), default=1.0) >= sorted(before.values(), reverse=True)[len(kept) - 1]
    ease, ease_dir = fitted["ease"]
    weights = Recommender.load(export_model(ease_dir, tmp_path / "ease-top4", top_k=4), device="cpu").weights
    assert ((weights != 0).sum(dim=0) <= 4).all()
    assert torch.equal(weights.abs().amax(dim=0), ease.weights.abs().amax(dim=0))


def test_export_refuses_what_it_cannot_do(fitted, tmp_path, capsys):
    _, directory = fitted["pop"]
    with pytest.raises(ConfigError, match="no item-item matrix"):
        export_model(directory, tmp_path / "pruned-pop", top_k=3)
    assert not (tmp_path / "pruned-pop").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="exists"):
        export_model(directory, tmp_path / "taken")
    with pytest.raises(ConfigError, match="not a model directory"):
        export_model(tmp_path / "nowhere", tmp_path / "out")
    assert main(["export", str(directory), str(tmp_path / "half"), "--precision", "fp16"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["export", str(directory), str(tmp_path / "bad"), "--top-k", "0"]) == 2
    assert "--top-k" in capsys.readouterr().err
