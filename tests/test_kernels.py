"""The compiled SparseAdam and the lean fused Adam against torch's: the same update, the same
state, interchangeable; the distinct entities of a batch as torch.unique gives them; dropout's
hashed draws, compiled and in torch ops, the same and uniform; the passes in bf16 and in a forked
child.
(The BPR kernels are checked against the torch path in test_mf.py and test_sampling.py.)"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from recsearch.models import kernels
from recsearch.models.ncf import NeuralCF
from recsearch.models.torch_base import FusedAdam


def steps(optimizer_class, n_steps: int = 5, unique: bool = False, **options
          ) -> tuple[nn.Embedding, torch.optim.Optimizer]:
    """An embedding of 30 rows stepped on batches that repeat rows (duplicates in the sparse
    gradient; ``unique``: each row once) and leave others untouched."""
    torch.manual_seed(0)
    table = nn.Embedding(30, 7, sparse=True)
    optimizer = optimizer_class(table.parameters(), lr=0.05, **options)
    batches = torch.Generator().manual_seed(1)
    for _ in range(n_steps):
        rows = torch.randint(0, 20, (25,), generator=batches)  # rows 20-29 never touched
        if unique:
            rows = torch.randperm(20, generator=batches)[:15]
        optimizer.zero_grad()
        (table(rows) ** 2).sum().backward()
        optimizer.step()
    return table, optimizer


@pytest.mark.parametrize("maximize, unique", [(False, False), (True, False), (False, True)])
def test_the_compiled_update_is_torchs(maximize, unique):
    expected, reference = steps(torch.optim.SparseAdam, maximize=maximize, unique=unique)
    actual, optimizer = steps(kernels.SparseAdam, maximize=maximize, unique=unique)
    torch.testing.assert_close(actual.weight, expected.weight, rtol=1e-5, atol=1e-6)
    ours, theirs = optimizer.state_dict()["state"][0], reference.state_dict()["state"][0]
    assert ours["step"] == theirs["step"] == 5
    for moment in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(ours[moment], theirs[moment], rtol=1e-5, atol=1e-7)
    untouched = torch.equal(actual.weight[20:], steps(kernels.SparseAdam, n_steps=0)[0].weight[20:])
    assert untouched, "rows absent from every gradient keep their values"


def test_tables_stepped_at_once_each_follow_their_own_group():
    """NCF's user and item tables step in one compiled call (on two threads): each as torch's
    SparseAdam steps it, with its own group's settings."""
    def two_tables(optimizer_class) -> list[nn.Embedding]:
        torch.manual_seed(0)
        tables = [nn.Embedding(30, 7, sparse=True), nn.Embedding(12, 7, sparse=True)]
        optimizer = optimizer_class([{"params": tables[0].parameters(), "lr": 0.05},
                                     {"params": tables[1].parameters(), "lr": 0.2, "betas": (0.5, 0.9)}])
        batches = torch.Generator().manual_seed(1)
        for _ in range(4):
            optimizer.zero_grad()
            sum((table(torch.randint(0, len(table.weight), (20,), generator=batches)) ** 2).sum()
                for table in tables).backward()
            optimizer.step()
        return tables

    for actual, expected in zip(two_tables(kernels.SparseAdam), two_tables(torch.optim.SparseAdam), strict=True):
        torch.testing.assert_close(actual.weight, expected.weight, rtol=1e-5, atol=1e-6)


def test_checkpoints_move_between_torchs_and_the_compiled_one():
    table, reference = steps(torch.optim.SparseAdam, n_steps=3)
    resumed = kernels.SparseAdam(table.parameters(), lr=0.05)
    resumed.load_state_dict(copy.deepcopy(reference.state_dict()))  # loading shares the moments' tensors
    twin = nn.Embedding(30, 7, sparse=True)
    twin.load_state_dict(table.state_dict())
    continued = torch.optim.SparseAdam(twin.parameters(), lr=0.05)
    continued.load_state_dict(copy.deepcopy(reference.state_dict()))
    rows, table.weight.grad = torch.tensor([3, 3, 5]), None
    for embedding, optimizer in ((table, resumed), (twin, continued)):
        (embedding(rows) ** 2).sum().backward()
        optimizer.step()
    torch.testing.assert_close(table.weight, twin.weight, rtol=1e-5, atol=1e-6)


def test_a_dense_gradient_is_refused_as_torch_does():
    weight = nn.Parameter(torch.ones(4, 2))
    weight.grad = torch.ones(4, 2)
    with pytest.raises(RuntimeError, match="dense gradients"):
        kernels.SparseAdam([weight]).step()


def test_gradient_models_pick_the_compiled_one_on_the_cpu_in_float32(planted_split):
    model = NeuralCF(seed=0, device="cpu", dim=8)
    model.prepare(planted_split.train)
    assert type(model.optimizers["sparse"]) is kernels.SparseAdam


def test_the_lean_fused_adam_steps_as_torchs_and_hands_over_its_state():
    """Bit for bit torch's fused Adam: over steps where every parameter has a gradient (its own
    path), a step where one has none (torch's), and across a checkpoint either way."""
    def run(optimizer_class, steps: int, state: dict | None = None) -> tuple[list[torch.Tensor], dict]:
        torch.manual_seed(0)
        params = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2, 2))]
        options = {} if optimizer_class is FusedAdam else {"fused": True}
        optimizer = optimizer_class(params, lr=0.01, **options)
        if state is not None:
            for param, saved in zip(params, state["params"], strict=True):
                param.data.copy_(saved)
            optimizer.load_state_dict(state["optimizer"])
        grads = torch.Generator().manual_seed(len(state or ()))
        for step in range(steps):
            for i, param in enumerate(params):
                skipped = step == 2 and i == 1  # torch leaves it and its moments untouched
                param.grad = None if skipped else torch.randn(param.shape, generator=grads)
            optimizer.step()
        return params, {"params": [p.detach().clone() for p in params], "optimizer": optimizer.state_dict()}

    expected, torch_state = run(torch.optim.Adam, 5)
    actual, lean_state = run(FusedAdam, 5)
    for got, want in zip(actual, expected, strict=True):
        assert torch.equal(got, want)
    continued = run(torch.optim.Adam, 3, lean_state)[0], run(FusedAdam, 3, torch_state)[0]
    for got, want in zip(*continued, strict=True):
        assert torch.equal(got, want)


def test_distinct_answers_what_torch_unique_does():
    ids = torch.tensor([5, 2, 5, 9, 2, 2, 0])
    rows, inverse, counts = kernels.distinct(ids, 10)
    assert rows.tolist() == [5, 2, 9, 0]  # first appearance, not sorted
    assert torch.equal(rows[inverse], ids)
    assert counts.tolist() == [2, 3, 1, 1]
    again = kernels.distinct(torch.tensor([9, 9]), 10)  # nothing left over from the last call
    assert again[0].tolist() == [9] and again[2].tolist() == [2]


def test_hashed_draws_are_the_same_compiled_and_in_torch_ops_and_uniform():
    """NCF's dropout draws: the compiled fill (the CPU), torch ops (other devices) and the
    compiled passes of the hand-written step (test_ncf's autograd test) agree value for value;
    over a million draws each rate drops its share, in every column of a layer's rows and for
    each key, and neighbours and keys are uncorrelated."""
    generator = torch.Generator().manual_seed(0)
    keys, other_keys = kernels.dropout_keys(generator), kernels.dropout_keys(generator)
    shape = (8192, 128)  # a layer's activations: rows of pairs, a column per unit
    draws = kernels.hashed_uniform(shape, keys)
    assert draws.dtype == torch.float32 and draws.shape == shape
    assert torch.equal(draws, kernels.hashed_uniform_ops(shape, keys))
    assert torch.equal(draws, kernels.hashed_uniform(shape, keys)), "a function of the keys alone"
    assert 0 <= draws.min() and draws.max() < 1
    n = draws.numel()
    for rate in (0.01, 0.1, 0.3, 0.5, 0.9):
        sigma = (rate * (1 - rate) / n) ** 0.5
        assert abs((draws < rate).double().mean() - rate) < 5 * sigma, rate
        column_sigma = (rate * (1 - rate) / shape[0]) ** 0.5
        assert ((draws < rate).double().mean(0) - rate).abs().max() < 5 * column_sigma, rate
    other = kernels.hashed_uniform(shape, other_keys)
    assert abs((other < 0.3).double().mean() - 0.3) < 5 * (0.21 / n) ** 0.5
    flat = draws.double().flatten() - 0.5
    for a, b in ((flat[:-1], flat[1:]), (flat[:-128], flat[128:]), (flat, other.double().flatten() - 0.5)):
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 5 / n**0.5


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)  # bf16 compared bit for bit: NaN included


def test_bf16_passes_store_what_float32_computes_rounded_as_torch_casts():
    """NCF's step under ``amp`` keeps its activations and their gradients in bf16: each pass reads
    them as float32, computes as the float32 pass does and stores the result rounded to nearest
    even, NaN kept. From bf16 inputs, every bf16 output equals the float32 pass's output cast by
    torch, bit for bit, and every float32 output (the loss, per-entity sums) equals it."""
    generator = torch.Generator().manual_seed(0)
    pairs, width, n_items, n_users = 96, 24, 10, 48

    def bf16_values(*shape: int) -> torch.Tensor:
        values = torch.randn(*shape, generator=generator) * 3
        values.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -1e-3])
        return values.to(torch.bfloat16)

    item_of = torch.randint(0, n_items, (pairs,), generator=generator)
    user_of = torch.randint(0, n_users, (pairs // 2,), generator=generator)
    keys = kernels.dropout_keys(generator)
    item_part, user_part = (torch.randn(n, width, generator=generator) for n in (n_items, n_users))
    low, full = torch.empty(pairs, width, dtype=torch.bfloat16), torch.empty(pairs, width)
    kernels.first_layer_(low, item_part, item_of, user_part, user_of, keys, 0.25)
    kernels.first_layer_(full, item_part, item_of, user_part, user_of, keys, 0.25)
    assert torch.equal(_bits(low), _bits(full.to(torch.bfloat16)))

    x = bf16_values(pairs, width)
    low, full = x.clone(), x.float()
    kernels.relu_dropout_(low, keys, 0.25)
    kernels.relu_dropout_(full, keys, 0.25)
    assert torch.equal(_bits(low), _bits(full.to(torch.bfloat16)))

    grad, out = bf16_values(pairs, width), low
    low, full = grad.clone(), grad.float()
    kernels.relu_backward_(low, out, 0.25)
    kernels.relu_backward_(full, out.float(), 0.25)
    assert torch.equal(_bits(low), _bits(full.to(torch.bfloat16)))

    sums = kernels.sum_by_entity(grad, item_of, user_of, n_items, n_users)
    for got, expected in zip(sums, kernels.sum_by_entity(grad.float(), item_of, user_of, n_items, n_users), strict=True):
        assert got.dtype == torch.float32 and torch.equal(got.isnan(), expected.isnan())
        assert torch.equal(got.nan_to_num(), expected.nan_to_num())

    last = bf16_values(pairs, width).relu()
    last.view(-1)[:2] = 0.5  # a finite loss
    gmf = (torch.randn(n_users, 8, generator=generator), torch.randn(n_items, 8, generator=generator))
    weight, bias = torch.randn(1, 8 + width, generator=generator), torch.randn(1, generator=generator)
    low = kernels.bce_head(last, gmf, user_of, item_of, weight, bias, 0.25)
    full = kernels.bce_head(last.float(), gmf, user_of, item_of, weight, bias, 0.25)
    assert torch.equal(_bits(low[3]), _bits(full[3].to(torch.bfloat16)))  # the tower's gradient
    torch.testing.assert_close(low[4], low[3].float().sum(0))  # its sum over pairs: of what was stored
    for got, expected in zip(low[:3] + low[5:], full[:3] + full[5:], strict=True):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("mkl", [True, False], ids=["mkl", "torch"])
def test_bf16_weight_gradient_is_the_float32_product_of_its_operands(mkl, monkeypatch):
    """``weight_gradient`` reads the gradient transposed (rows x out as out x rows): an odd
    shape, so that a swapped dimension or leading stride cannot pass; float32 out, either path."""
    if mkl and kernels.MKL_BF16_GEMM is None:
        pytest.skip("this torch does not export MKL's bf16 product")
    if not mkl:
        monkeypatch.setattr(kernels, "MKL_BF16_GEMM", None)
    generator = torch.Generator().manual_seed(0)
    grad, inputs = (torch.randn(37, n, generator=generator).to(torch.bfloat16) for n in (5, 11))
    got = kernels.weight_gradient(grad, inputs)
    assert got.dtype == torch.float32 and got.shape == (5, 11)
    rtol, atol = (1e-5, 1e-5) if mkl else (0.01, 0.05)  # torch's path rounds its product to bf16
    torch.testing.assert_close(got, grad.double().T.mm(inputs.double()).float(), rtol=rtol, atol=atol)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_after_the_parallel_kernels_ran_computes_what_its_parent_does():
    """GNU OpenMP's threads do not survive a fork, and numba ends a child that starts them after
    its parent did: a forked child runs the kernels' serial twins, to the same result."""
    generator = torch.Generator().manual_seed(0)
    grad, out = torch.randn(64, 16, generator=generator), torch.randn(64, 16, generator=generator)
    expected = grad.clone()
    kernels.relu_backward_(expected, out, 0.25)  # the parent starts the parallel kernels' threads
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its answer down the pipe, then out without running pytest's teardown
        try:
            kernels.relu_backward_(grad, out, 0.25)
            os.write(write, b"same" if torch.equal(grad, expected) else b"different")
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        said = answer.read()
    _, status = os.waitpid(child, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"the child ended with status {status}"
    assert said == b"same"


def test_configure_threads_sizes_the_kernels_threads_and_they_run_on_torchs_openmp():
    """A trial given one CPU runs its parallel kernels on one thread; where numba's OpenMP layer
    loads (and the user chose no other), the kernels run on it: bound to torch's libgomp, its
    threads are torch's own."""
    import numba

    from recsearch.runtime import configure_threads

    before = torch.get_num_threads()
    try:
        configure_threads(1)
        assert numba.get_num_threads() == torch.get_num_threads() == 1
        configure_threads(numba.config.NUMBA_NUM_THREADS + 3)  # more than numba's pool: capped
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
        if kernels.OPENMP and "NUMBA_THREADING_LAYER" not in os.environ:
            assert numba.threading_layer() == "omp"
    finally:
        configure_threads(before)
