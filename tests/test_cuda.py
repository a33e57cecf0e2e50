"""Training, evaluation and serving on CUDA: `pytest -m cuda` on a machine with a GPU. Skipped
elsewhere (CI has none); the same code paths run on the CPU in the rest of the suite.

Each family trains a few epochs on the GPU from the contract test's settings, is evaluated
there, and must score as its CPU copy does; a saved model serves from the GPU."""

from __future__ import annotations

import pytest
import torch
from test_model_contract import SETTINGS

from recsearch.evaluation import Evaluator
from recsearch.models import MODELS, Recommender
from recsearch.models.factory import create
from recsearch.serving.schemas import UserRecommendationRequest
from recsearch.serving.service import ModelService
from recsearch.training import train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("family", sorted(MODELS))
def test_a_family_trains_evaluates_and_reloads_on_cuda(family, planted_split, tmp_path):
    hparams, epochs = SETTINGS[family]
    model = create(MODELS[family], hparams, seed=0, device="cuda")
    evaluator = Evaluator("ranking", ["ndcg", "recall"], [5, 10])
    result = train(model, planted_split, evaluator, "ndcg@10", max_epochs=min(epochs, 3), patience=3)
    assert model.device.type == "cuda" and result.best_valid["ndcg@10"] > 0
    on_gpu = model.score(torch.arange(10)).cpu()
    model.save(tmp_path / "model")
    on_cpu = Recommender.load(tmp_path / "model", device="cpu").score(torch.arange(10))
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-3, atol=1e-4)
    test = evaluator.evaluate(Recommender.load(tmp_path / "model", device="cuda"), planted_split, "test")
    assert test["ndcg@10"] >= 0


def test_a_model_serves_from_the_gpu(planted_split, tmp_path):
    create(MODELS["mf"], SETTINGS["mf"][0], seed=0, device="cuda").fit(planted_split.train, epochs=2).save(
        tmp_path / "mf")
    service = ModelService.load(tmp_path / "mf", device="cuda")
    assert service.model.device.type == "cuda"
    answer, = service.recommend_users([UserRecommendationRequest(user="u1", k=5)])
    assert answer.fallback is None and len(answer.items) == 5
