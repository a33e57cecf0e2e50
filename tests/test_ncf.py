"""NCF (GMF, MLP, NeuMF): learns planted tastes, uses features for cold users, resumes exactly."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pytest
import torch

from recsearch.data.dataset import Feature
from recsearch.models import Recommender, kernels, ncf
from recsearch.models.ncf import EntityEncoder, NeuralCF
from recsearch.models.torch_base import TorchRecommender, bf16_is_native
from recsearch.training import load_serialized, serialized

FAST = {"dim": 16, "layers": [32, 16], "lr": 0.01, "batch_size": 256}


def in_group_auc(model: Recommender, users: np.ndarray, user_group: np.ndarray, item_group: np.ndarray) -> float:
    """Chance that a user's score for an item of its own group beats one for another group's item,
    averaged over ``users`` (0.5 = no preference)."""
    scores = model.score(users).numpy()
    own = item_group[None, :] == user_group[users][:, None]
    aucs = [(s[o][:, None] > s[~o][None, :]).mean() for s, o in zip(scores, own, strict=True)]
    return float(np.mean(aucs))


@pytest.mark.parametrize(("variant", "epochs"), [("gmf", 10), ("mlp", 20), ("neumf", 10)])  # MLP starts slowly
def test_every_variant_learns_planted_tastes(variant, epochs, planted):
    split, user_group, item_group = planted
    model = NeuralCF(seed=0, device="cpu", variant=variant, **FAST).fit(split.train, epochs)
    assert in_group_auc(model, np.arange(split.n_users), user_group, item_group) > 0.85


def test_features_let_users_without_interactions_be_scored_by_their_group(planted):
    split, user_group, item_group = planted
    cold = np.arange(12)  # three users of each group lose all their training interactions
    inter = split.train.interactions
    train = split.train.with_interactions(inter.take(~np.isin(inter.user, cold)))
    with_features = NeuralCF(seed=0, device="cpu", use_features=True, **FAST).fit(train, 10)
    without = NeuralCF(seed=0, device="cpu", **FAST).fit(train, 10)
    assert in_group_auc(with_features, cold, user_group, item_group) > 0.9
    assert in_group_auc(without, cold, user_group, item_group) < 0.7
    # two cold users of different groups: only their features tell them apart
    a, b = with_features.score([0, 1])
    assert a.argmax() != b.argmax() and item_group[a.argmax()] == 0 and item_group[b.argmax()] == 1


def test_multi_valued_features_are_averaged_per_entity():
    genres = Feature.from_lists([["drama", "comedy"], ["comedy"], []], multi=True)
    encoder = EntityEncoder(3, 4, [genres])
    bag = encoder.bags[0].weight
    code = {str(v): i for i, v in enumerate(genres.vocabulary)}
    expected = encoder.ids.weight + torch.stack([
        (bag[code["drama"]] + bag[code["comedy"]]) / 2, bag[code["comedy"]], bag[code["<unk>"]],
    ])
    ids = torch.tensor([[2, 0], [1, 2]])  # any shape of ids: vectors come back with one more axis
    torch.testing.assert_close(encoder(ids), expected[ids])


@pytest.mark.parametrize("mkl", [True, False], ids=["mkl-sgemm", "numpy-dot"])
@pytest.mark.parametrize("layers", [[16], [32, 16, 8]])
def test_every_scoring_path_equals_pairwise_logits(layers, mkl, planted_split, monkeypatch):
    """The CPU scoring (``kernels.tower_logits_``: its products by MKL's sgemm where torch exports
    it, else numba's np.dot) on one thread and three, in blocks of items, and the chunked torch
    path, against ``pair_logits``."""
    if mkl and kernels.MKL_SGEMM is None:
        pytest.skip("this torch exports no MKL sgemm")
    if not mkl:
        monkeypatch.setattr(kernels, "MKL_SGEMM", None)
    model = NeuralCF(seed=0, device="cpu", use_features=True, **{**FAST, "layers": layers}).fit(planted_split.train, 1)
    users = torch.arange(7)
    items = torch.arange(model.n_items).expand(len(users), -1)
    pairwise, _ = model.net.pair_logits(users, items)
    threads = torch.get_num_threads()
    try:
        by_threads = {}
        for n in (1, 3):  # user by user on one thread, then shared among three
            torch.set_num_threads(n)
            by_threads[n] = model.score(users)
    finally:
        torch.set_num_threads(threads)
    with monkeypatch.context() as patch:
        patch.setattr(kernels, "TOWER_BLOCK_ELEMENTS", 7 * layers[0])  # the items 7 at a time
        in_blocks = model.score(users)
    # the chunked path (GPU, bf16) runs in training mode too: dropout is 0 here, so no draws
    monkeypatch.setattr(model.net, "training", True)
    monkeypatch.setitem(ncf.SCORE_CHUNK_ELEMENTS, "cpu", 1)  # one user per chunk
    chunked = model.score(users)
    torch.testing.assert_close(by_threads[3], by_threads[1], rtol=0, atol=0)
    for scores in (by_threads[1], in_blocks, chunked):
        torch.testing.assert_close(scores, pairwise.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(kernels.MKL_BF16_GEMM is None, reason="this torch exports no MKL bf16 product")
@pytest.mark.parametrize("widths", [[32, 16, 8], [32, 16], [32]])
def test_the_compiled_bf16_tower_is_its_float32_reference_on_bf16_rounded_inputs(widths):
    """``tower_logits_(bf16=True)`` (``amp`` scoring on the CPU): the first layer's sums and each
    hidden layer's input rounded to bf16 once, the weights in bf16, products and the rest in float32;
    0, 1 and 2 hidden layers, the users on three threads, the items in blocks."""
    generator = torch.Generator().manual_seed(0)
    users, items, bf16 = 5, 300, torch.bfloat16
    user_part, item_part = (torch.randn(n, widths[0], generator=generator) for n in (users, items))
    layers = [(torch.randn(b, a, generator=generator) * 0.3, torch.randn(b, generator=generator))
              for a, b in zip(widths[:-1], widths[1:], strict=False)]
    head = torch.randn(widths[-1], generator=generator)
    x = (user_part[:, None, :] + item_part[None]).relu().to(bf16).float()
    for k, (weight, bias) in enumerate(layers):
        x = x @ weight.to(bf16).float().T + bias
        x = x.relu().to(bf16).float() if k < len(layers) - 1 else x.relu()
    expected = x @ head
    logits = torch.zeros(users, items)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(kernels, "TOWER_BLOCK_ELEMENTS", 64 * widths[0])  # the items 64 at a time
            kernels.tower_logits_(logits, user_part, item_part, layers, head, bf16=True)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_scoring_runs_one_blas_thread_under_each_of_its_own_and_gives_the_setting_back(planted_split, monkeypatch):
    """The CPU scoring's products (kernels.tower_logits_) run on one BLAS thread each; the
    process's own BLAS setting is back once it returns. Scorings from two threads (two batches
    of a Serve replica) take turns."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    model = NeuralCF(seed=0, device="cpu", **FAST).fit(planted_split.train, 1)
    model.score(np.arange(3))  # loads the BLAS that numba's products call
    with threadpool_limits(limits=3, user_api="blas"):
        model.score(np.arange(3))
        assert blas_threads() == {3}
    before, running, seen = blas_threads(), [], []
    share_users = kernels.on_threads

    def slowly(work, n):  # long enough for the other thread's scoring to arrive meanwhile
        running.append(n)
        seen.append((len(running), blas_threads()))
        time.sleep(0.05)
        share_users(work, n)
        running.pop()

    monkeypatch.setattr(kernels, "on_threads", slowly)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: model.score(np.arange(3)), range(4)))
    assert seen == [(1, {1})] * 4 and blas_threads() == before


def test_bundle_scores_identically_and_training_resumes_from_the_checkpoint_state(planted_split, tmp_path):
    params = {**FAST, "dropout": 0.3, "use_features": True}  # dropout masks come from the saved generator
    model = NeuralCF(seed=2, device="cpu", **params).fit(planted_split.train, 2)
    checkpoint = serialized(model.state())  # what a sweep's checkpoint holds
    loaded = Recommender.load(model.save(tmp_path / "ncf"), device="cpu")
    assert loaded.hparams == model.hparams and loaded.hparams["layers"] == [32, 16]
    users = np.arange(model.n_users)
    torch.testing.assert_close(loaded.score(users), model.score(users), rtol=0, atol=0)
    resumed = NeuralCF(seed=2, device="cpu", **params)
    resumed.prepare(planted_split.train)
    load_serialized(resumed, checkpoint)
    assert [resumed.train_epoch() for _ in range(2)] == [model.train_epoch() for _ in range(2)]
    torch.testing.assert_close(resumed.score(users), model.score(users), rtol=0, atol=0)


@pytest.mark.parametrize(("params", "message"), [
    ({"variant": "deepfm"}, "variant must be one of"),
    ({"dim": -1}, "dim must be >= 1"),
    ({"layers": []}, "layers must be a non-empty list of positive integers"),
    ({"layers": [64, 0]}, "layers must be a non-empty list of positive integers"),
    ({"layers": "64,32"}, "layers must be a non-empty list of positive integers"),
    ({"layers": [64.5]}, "layers must be a non-empty list of positive integers"),
    ({"dropout": 1.0}, "dropout must be in"),
    ({"negatives": 0}, "negatives must be >= 1"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of"),
])
def test_bad_hyperparameters_raise_at_construction(params, message):
    with pytest.raises(ValueError, match=message):
        NeuralCF(device="cpu", **params)


def test_features_asked_of_a_dataset_without_them(planted_split):
    bare = planted_split.train.with_interactions(planted_split.train.interactions)
    bare.user_features, bare.item_features = {}, {}
    with pytest.raises(ValueError, match="has no user or item features"):
        NeuralCF(device="cpu", use_features=True).prepare(bare)


@pytest.mark.parametrize("variant", ["gmf", "mlp", "neumf"])
@pytest.mark.parametrize(("negatives", "dropout"), [(1, 0.0), (3, 0.3)])
def test_the_hand_written_step_is_autograds(variant, negatives, dropout, planted_split):
    """``backward`` (the hand-written step on the CPU) against autograd of ``batch_loss`` on the
    same batch, negatives and dropout draws, in float64: the same loss and gradients for every
    parameter, two hidden layers deep, with ``l2``."""
    model = NeuralCF(seed=0, device="cpu", variant=variant, dim=5, layers=[8, 6, 4], negatives=negatives,
                     dropout=dropout, l2=0.3)
    model.prepare(planted_split.train)
    model.net.double().train()
    parameters = dict(model.net.named_parameters())
    index, draws = torch.randperm(len(model.users))[:64], model.generator.get_state()
    expected_loss = model.batch_loss(index)
    expected_loss.backward()
    expected = {name: parameter.grad.to_dense() for name, parameter in parameters.items()}
    model.generator.set_state(draws)  # the same negatives and dropout masks
    model.net.zero_grad(set_to_none=True)
    torch.testing.assert_close(model.backward(index), expected_loss.detach(), rtol=1e-12, atol=0)
    for name, parameter in parameters.items():
        assert parameter.grad.is_sparse == name.endswith("ids.weight"), name
        torch.testing.assert_close(parameter.grad.to_dense(), expected[name], rtol=1e-10, atol=1e-15, msg=name)


def test_the_hand_written_step_trains_as_autograd_does_in_float32(planted_split, monkeypatch):
    """What runs on the CPU: float32 through the compiled kernels, against autograd's epochs."""
    def losses(hand: bool) -> list[float]:
        model = NeuralCF(seed=0, device="cpu", dropout=0.2, l2=0.01, **FAST)
        if not hand:
            monkeypatch.setattr(model, "backward", partial(TorchRecommender.backward, model))
        model.prepare(planted_split.train)
        return [model.train_epoch() for _ in range(3)]

    assert losses(hand=True) == pytest.approx(losses(hand=False), rel=1e-5)


def test_autograd_steps_where_the_hand_written_step_does_not_apply(planted_split, monkeypatch):
    model = NeuralCF(seed=0, device="cpu", use_features=True, **FAST)
    model.prepare(planted_split.train)
    monkeypatch.setattr(model.net, "pair_gradient", None)  # would fail if called
    assert math.isfinite(model.train_epoch())


@pytest.mark.parametrize(("variant", "layers"), [("mlp", [32, 16, 8]), ("neumf", [32, 16, 8]), ("neumf", [16])])
def test_under_amp_the_hand_written_step_is_as_close_to_the_exact_gradient_as_autocast(variant, layers, planted_split,
                                                                                      monkeypatch):
    """With ``amp`` the CPU step keeps the tower's activations and the products over the pairs
    in bf16 (``pair_gradient(bf16=True)``), as autograd under bf16 autocast does: against the
    exact (float64) gradient its error is bf16's, of the size of autocast's own, and more than
    the float32 step's (bf16 was used). Runs on any CPU: where bf16 is not native, torch emulates it."""
    model = NeuralCF(seed=0, device="cpu", variant=variant, dim=16, layers=layers, dropout=0.2, l2=0.01)
    model.prepare(planted_split.train)
    model.net.train()
    calls = []
    pair_gradient = model.net.pair_gradient
    monkeypatch.setattr(model.net, "pair_gradient", lambda *args, **kwargs: calls.append(kwargs) or
                        pair_gradient(*args, **kwargs))
    index, draws = torch.randperm(len(model.users))[:256], model.generator.get_state()

    def gradient(amp: bool, backward=model.backward) -> torch.Tensor:
        model.amp = amp  # whatever this CPU's bf16
        model.generator.set_state(draws)  # the same negatives and dropout masks
        model.net.zero_grad(set_to_none=True)
        loss = backward(index)
        return torch.cat([loss.double().reshape(1)] + [p.grad.to_dense().double().flatten()
                                                       for p in model.net.parameters()])

    ours, autocast = gradient(True), gradient(True, partial(TorchRecommender.backward, model))
    float32 = gradient(False)
    model.net.double()
    exact = gradient(False)
    assert [call["bf16"] for call in calls] == [True, False, False]

    def error(g: torch.Tensor) -> float:
        return float((g - exact).norm() / exact.norm())

    assert error(ours) < 2 * error(autocast) + 1e-4, (error(ours), error(autocast))
    assert error(ours) > 10 * error(float32), (error(ours), error(float32))


def test_divergence_shows_as_a_non_finite_loss(planted_split):
    model = NeuralCF(seed=0, device="cpu", dim=8, layers=[8], lr=1e30, optimizer="sgd", batch_size=64)
    model.prepare(planted_split.train)
    assert not math.isfinite(model.train_epoch())


@pytest.mark.skipif(not bf16_is_native(torch.device("cpu")), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
def test_bf16_autocast_on_the_cpu_learns_and_scores_in_fp32(planted):
    split, user_group, item_group = planted
    model = NeuralCF(seed=0, device="cpu", amp=True, **FAST).fit(split.train, 10)
    assert model.amp
    scores = model.score(np.arange(split.n_users))
    assert scores.dtype == torch.float32
    assert in_group_auc(model, np.arange(split.n_users), user_group, item_group) > 0.85
    model.amp = False  # the same weights scored in fp32: bf16's rounding only (8 bits of mantissa)
    exact = model.score(np.arange(split.n_users))
    assert (scores - exact).abs().max() < 0.02 * exact.abs().max()


def test_amp_is_ignored_where_bf16_is_not_native(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert not NeuralCF(seed=0, device="cpu", amp=True).amp
