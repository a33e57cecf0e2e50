"""The self-attentive sequential model: causal attention over right-padded windows, the
training it shares with the LSTM, and its argument checks (the rest: the model contract)."""

from __future__ import annotations

import pytest
import torch

from recsearch.errors import ConfigError
from recsearch.models.factory import build_model
from recsearch.models.sasrec import SASRec, SelfAttentionNet

SASREC = {"_target_": "recsearch.models.sasrec.SASRec"}


def test_a_position_sees_only_the_tokens_before_it():
    torch.manual_seed(0)
    net = SelfAttentionNet(n_items=20, dim=16, heads=2, layers=2, dropout=0.0, max_len=8).eval()
    tokens = torch.tensor([[21, 3, 5, 7, 0, 0, 0, 0]])  # BOS, three items, padding
    changed = tokens.clone()
    changed[0, 3:] = torch.tensor([9, 11, 2, 4, 6])  # a different future
    with torch.no_grad():
        states, other = net(tokens), net(changed)
    torch.testing.assert_close(states[:, :3], other[:, :3])
    assert not torch.allclose(states[:, 3], other[:, 3])
    assert net.output(states).shape == (1, 8, 20), "one logit per item, tied to the item embeddings"


def test_it_learns_next_items_with_the_shared_all_positions_loss(planted_split):
    model = SASRec(dim=32, heads=2, layers=1, max_len=12, dropout=0.1, lr=5e-3, batch_size=32, seed=0, device="cpu")
    model.prepare(planted_split.train)
    first = model.train_epoch()
    for _ in range(9):
        last = model.train_epoch()
    assert last < 0.7 * first, f"the full-softmax loss must fall: {first:.3f} -> {last:.3f}"
    assert model.n_examples() == len(model.windows) and model.windows.shape[1] == 13  # max_len + 1 tokens


@pytest.mark.parametrize("bad, message", [
    ({"dim": 30, "heads": 4}, "heads must divide dim"),
    ({"layers": 0}, "layers must be an integer >= 1"),
    ({"max_len": 0}, "max_len must be an integer >= 1"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
])
def test_bad_arguments_are_config_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        build_model(SASREC, device="cpu", **bad)
