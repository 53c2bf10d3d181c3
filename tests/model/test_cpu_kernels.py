"""The CPU kernels (src/midus/model/cpu_kernels.py) against their PyTorch references: the selection
against `reference_selection` and the exhaustive top-k, the pooling's backward against autograd
through the plain gather; their build, cache and fallback."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from midus.model import cpu_kernels
from midus.model.hml import ProductKeys
from midus.model.retrieval import normalize_query, product_key_topk, reference_selection, sub_key_scores
from midus.model.values import gather_pool, pool
from test_retrieval import exhaustive_topk


@pytest.fixture(autouse=True)
def kernels_built():
    assert cpu_kernels.library() is not None, "the CPU kernels must build here (a C++ compiler is needed)"


def in_order(scores, slots):
    order = scores.argsort(dim=-1, descending=True)
    return scores.gather(-1, order), slots.gather(-1, order)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, k, head_dim", [(4, 1, 2), (8, 4, 16), (16, 8, 8), (32, 32, 64), (64, 32, 64),
                                            (64, 7, 16), (128, 48, 32)])
def test_selection_equals_the_reference_and_the_exhaustive_topk(dtype, n, k, head_dim):
    torch.manual_seed(n + k)
    query = torch.randn(41, 3, head_dim, dtype=dtype)
    keys = torch.randn(3, 2, n, head_dim // 2, dtype=dtype)
    scores = sub_key_scores(query, keys)  # a strided view [N, H, 2, n], as the model passes it
    best, slots = cpu_kernels.select(scores, k)
    ref_best, ref_slots = reference_selection(scores, k)
    assert best.dtype == dtype and slots.dtype == torch.long
    best, slots = in_order(best, slots)
    assert torch.equal(slots, in_order(ref_best, ref_slots)[1])
    exhaustive_scores, exhaustive_slots = exhaustive_topk(query, keys, k)
    assert torch.equal(slots, exhaustive_slots)
    torch.testing.assert_close(best, exhaustive_scores, rtol=0, atol=0)  # the same sums, bit for bit


def test_selection_with_ties_returns_k_distinct_slots_of_the_top_scores():
    """A zero query scores every slot 0; repeated sub-key scores tie at the k-th place."""
    for scores in (torch.zeros(5, 2, 2, 16), torch.randint(0, 3, (5, 2, 2, 16)).float()):
        best, slots = cpu_kernels.select(scores, 8)
        exhaustive = (scores[:, :, 0, :, None] + scores[:, :, 1, None, :]).flatten(-2)
        kth = exhaustive.topk(8, dim=-1).values[..., -1:]
        assert all(len(set(row.tolist())) == 8 for row in slots.flatten(0, 1))
        assert torch.equal(best, exhaustive.gather(-1, slots)) and bool((best >= kth).all())
        assert torch.equal(best.sort(-1).values, exhaustive.topk(8, dim=-1).values.sort(-1).values)


def test_selection_split_over_threads_equals_one_thread():
    torch.manual_seed(3)
    scores = sub_key_scores(torch.randn(300, 4, 32), torch.randn(4, 2, 32, 16))  # 1200 rows: several chunks
    one = cpu_kernels.select(scores, 16)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        three = cpu_kernels.select(scores, 16)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, three))


def test_selection_refuses_a_topk_above_the_sub_keys():
    with pytest.raises(ValueError, match="top-k 9 must be between 1 and the 8 sub-keys"):
        cpu_kernels.select(torch.randn(2, 1, 2, 8), 9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_slots, dim", [(50, 8), (4096, 64), (300, 37)])
def test_pool_backward_equals_autograd_through_the_gather(dtype, n_slots, dim):
    torch.manual_seed(dim)
    bags, bag_size = 130, 6
    bank = torch.randn(n_slots, dim, dtype=dtype)
    slots = torch.randint(0, n_slots, (bags, bag_size))
    slots[:4] = 3  # one slot many times, also within a bag
    weights = torch.rand(bags, bag_size, dtype=dtype)
    grad = torch.randn(bags, dim, dtype=dtype)
    grad_bank, grad_weights, none = cpu_kernels.pool_backward(bank, slots, weights, grad, True, True)
    assert none is None
    leaves = bank.clone().requires_grad_(), weights.clone().requires_grad_()
    expected = torch.autograd.grad(gather_pool(leaves[0], slots, leaves[1]), leaves, grad)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(grad_bank, expected[0], **tolerance)
    torch.testing.assert_close(grad_weights, expected[1], **tolerance)
    only_bank = cpu_kernels.pool_backward(bank, slots, weights, grad, True, False)
    only_weights = cpu_kernels.pool_backward(bank, slots, weights, grad, False, True)
    assert only_bank[1] is None and torch.equal(only_bank[0], grad_bank)
    assert only_weights[0] is None and torch.equal(only_weights[1], grad_weights)
    # the pooled rows again, read in the same pass: pool's, bit for bit, with or without the other gradients
    for bank_grad, weights_grad in [(True, True), (False, True), (False, False)]:
        again = cpu_kernels.pool_backward(bank, slots, weights, grad, bank_grad, weights_grad, pooled=True)
        assert torch.equal(again[2], cpu_kernels.pool(bank, slots, weights))
        assert torch.equal(again[0], grad_bank) if bank_grad else again[0] is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [37, 24, 64, 128])  # float rows of 8 to 64: summed in registers (AVX2)
def test_pool_equals_the_gather_and_embedding_bag(dtype, dim):
    torch.manual_seed(1)
    bank, slots, weights = torch.randn(300, dim, dtype=dtype), torch.randint(0, 300, (150, 6)), torch.rand(150, 6, dtype=dtype)
    slots[:3] = 7
    out = cpu_kernels.pool(bank, slots, weights)
    torch.testing.assert_close(out, gather_pool(bank, slots, weights))
    torch.testing.assert_close(out, torch.nn.functional.embedding_bag(slots, bank, per_sample_weights=weights, mode="sum"))
    with pytest.raises(IndexError, match="outside the bank's 300 rows"):
        cpu_kernels.pool(bank, torch.tensor([[0, -1]]), weights[:1, :2])


@pytest.mark.parametrize("bank_grad, weights_grad", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("n_slots, bags, bag_size, skewed", [(4096, 2000, 32, False), (4096, 2000, 33, False),
                                                             (4096, 2000, 32, True), (20000, 9000, 33, False)])
def test_pool_backward_over_threads_equals_one_thread(bank_grad, weights_grad, n_slots, bags, bag_size, skewed):
    """One thread: both gradients in one pass over the bags. Three: the bank's gradient (and the weights' with it) by
    ranges of bank rows, each worker scanning the retrievals 4096 at a time (bags of 33 straddle those scans), the
    weights' alone by bags; skewed slots leave most of the work to one range. A bank of 5 MB (over BY_SLOT_BYTES)
    has its retrievals grouped by slot, 2^18 at a time (297,000 of them: two scans), on one thread as on three."""
    torch.manual_seed(5)
    bank, grad = torch.randn(n_slots, 64), torch.randn(bags, 64)
    slots, weights = torch.randint(0, n_slots, (bags, bag_size)), torch.rand(bags, bag_size)
    if skewed:
        slots = slots % 97
    results = {}
    threads = torch.get_num_threads()
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            results[count] = cpu_kernels.pool_backward(bank, slots, weights, grad, bank_grad, weights_grad, pooled=True)
    finally:
        torch.set_num_threads(threads)
    assert [r is None for r in results[3]] == [not bank_grad, not weights_grad, False]
    assert all(a is None and b is None or torch.equal(a, b) for a, b in zip(results[1], results[3]))  # same sums, same order
    assert torch.equal(results[1][2], cpu_kernels.pool(bank, slots, weights))
    reference_bank, reference_weights = bank.clone().requires_grad_(), weights.clone().requires_grad_()
    (reference_bank[slots] * reference_weights[..., None]).sum(1).backward(grad)
    for result, reference, wanted in ((results[3][0], reference_bank.grad, bank_grad),
                                      (results[3][1], reference_weights.grad, weights_grad)):
        if wanted:
            torch.testing.assert_close(result, reference)


def test_grouping_retrievals_by_slot_gives_the_sums_of_their_order():
    """A bank over BY_SLOT_BYTES has its retrievals grouped by slot; within the cache, one thread takes them in
    order. The same retrievals of rows 0..4095, from a 4096-row bank and from the same rows with 16384 more
    after them (5.2 MB), give the same bits."""
    torch.manual_seed(6)
    bank, grad = torch.randn(4096, 64), torch.randn(3000, 64)
    slots, weights = torch.randint(0, 4096, (3000, 32)), torch.rand(3000, 32)
    big = torch.cat([bank, torch.randn(16384, 64)])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        in_order = cpu_kernels.pool_backward(bank, slots, weights, grad, True, True, pooled=True)
        by_slot = cpu_kernels.pool_backward(big, slots, weights, grad, True, True, pooled=True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(by_slot[0][:4096], in_order[0]) and not by_slot[0][4096:].any()
    assert torch.equal(by_slot[1], in_order[1]) and torch.equal(by_slot[2], in_order[2])


def test_pool_backward_refuses_a_slot_outside_the_bank():
    with pytest.raises(IndexError, match="outside the bank's 10 rows"):
        cpu_kernels.pool_backward(torch.randn(10, 4), torch.tensor([[1, 10]]), torch.rand(1, 2), torch.randn(1, 4),
                                  True, True)


def test_pool_takes_the_kernel_backward_on_the_cpu_and_matches_the_reference(monkeypatch):
    import midus.model.values as values_module

    calls = []
    monkeypatch.setattr(values_module, "kernel_pool_backward",
                        lambda *args, **kwargs: calls.append(1) or cpu_kernels.pool_backward(*args, **kwargs))
    bank = torch.randn(64, 8, dtype=torch.float64, requires_grad=True)
    slots, weights = torch.randint(0, 64, (9, 4)), torch.rand(9, 4, dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(pool(bank, slots, weights).square().sum(), (bank, weights))
    expected = torch.autograd.grad(gather_pool(bank, slots, weights).square().sum(), (bank, weights))
    assert calls == [1]
    for mine, reference in zip(grads, expected):
        torch.testing.assert_close(mine, reference)


def off_centre_query_and_keys(tokens, heads, head_dim, n, dtype, seed):
    """Queries [tokens, heads, head_dim] with a mean and a scale for the norms to remove, and sub-keys."""
    torch.manual_seed(seed)
    return 3 * torch.randn(tokens, heads, head_dim, dtype=dtype) + 1, torch.randn(heads, 2, n, head_dim // 2, dtype=dtype)


def winners_gradients(query, keys, slots, grad, norm):
    """The reference: autograd through the winners' sums gathered from the whole score grid."""
    query, keys = query.detach().requires_grad_(), keys.detach().requires_grad_()
    scores = sub_key_scores(normalize_query(query, norm), keys)
    n = keys.shape[2]
    best = scores[:, :, 0].gather(-1, slots.div(n, rounding_mode="floor")) + scores[:, :, 1].gather(-1, slots % n)
    return torch.autograd.grad(best, (query, keys), grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm", ["none", "rms", "layer"])
@pytest.mark.parametrize("n, k, head_dim", [(16, 8, 8), (64, 32, 64), (32, 7, 18)])
def test_scores_backward_equals_autograd_through_the_score_grid(dtype, norm, n, k, head_dim):
    query, keys = off_centre_query_and_keys(30, 3, head_dim, n, dtype, seed=n + k)
    _, slots = cpu_kernels.select(sub_key_scores(normalize_query(query, norm), keys), k)
    slots[0, 0, :4] = torch.tensor([0, 1, n, 2 * n + 1])  # repeated rows and columns
    grad = torch.randn(30, 3, k, dtype=dtype)
    grad_query, grad_keys = cpu_kernels.scores_backward(query, keys, slots, grad, norm)
    expected_query, expected_keys = winners_gradients(query, keys, slots, grad, norm)
    torch.testing.assert_close(grad_query, expected_query)
    torch.testing.assert_close(grad_keys, expected_keys)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kernels", [True, False])
def test_retrieval_backward_in_half_precision_normalises_with_the_forwards_eps(dtype, kernels, monkeypatch):
    """The kernel (in float32) and the PyTorch path (matmuls in the half dtype) both normalise the query again with
    the eps the forward took (float32's in every dtype); a backward with another eps than the forward's (bf16's
    2^-7 against float32's) gave a gradient 100% off here."""
    import midus.model.retrieval as retrieval_module

    if not kernels:
        monkeypatch.setattr(retrieval_module, "kernels_support", lambda tensor, half_precision=False: False)
    torch.manual_seed(5)  # queries small enough that the half dtype's eps (2^-7 in bf16) would weigh in the norm
    query = (0.05 * torch.randn(30, 3, 64)).to(dtype).requires_grad_()
    keys = torch.randn(3, 2, 64, 32).to(dtype).requires_grad_()
    calls = []
    monkeypatch.setattr(retrieval_module, "kernel_scores_backward",
                        lambda *args: calls.append(1) or cpu_kernels.scores_backward(*args))
    best, slots = product_key_topk(query, keys, 32, "rms")
    grad = torch.randn(best.shape).to(dtype)
    grad_query, grad_keys = torch.autograd.grad(best, (query, keys), grad)
    assert calls == ([1] if kernels else []) and grad_query.dtype == grad_keys.dtype == dtype
    # the reference in float64, normalised with float32's eps as the forward was
    query64, keys64 = query.detach().double().requires_grad_(), keys.detach().double().requires_grad_()
    normalized = torch.nn.functional.rms_norm(query64, (64,), eps=torch.finfo(torch.float32).eps)
    scores = sub_key_scores(normalized, keys64)
    rows, columns = slots.div(64, rounding_mode="floor"), slots % 64
    winners = scores[:, :, 0].gather(-1, rows) + scores[:, :, 1].gather(-1, columns)
    expected = torch.autograd.grad(winners, (query64, keys64), grad.double())
    for got, reference in zip((grad_query, grad_keys), expected):  # the half dtype's rounding: within 2% of the norm
        assert (got.double() - reference).norm() <= 2e-2 * reference.norm()


def test_scores_backward_over_threads_equals_one_thread():
    torch.manual_seed(3)
    query, keys = torch.randn(200, 5, 32), torch.randn(5, 2, 64, 16)
    _, slots = cpu_kernels.select(sub_key_scores(normalize_query(query, "rms"), keys), 32)
    grad = torch.randn(200, 5, 32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_kernels.scores_backward(query, keys, slots, grad, "rms")
        torch.set_num_threads(3)
        three = cpu_kernels.scores_backward(query, keys, slots, grad, "rms")
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, three))


def test_scores_backward_refuses_a_slot_outside_the_grid():
    with pytest.raises(IndexError, match="outside the 16 x 16 grid"):
        cpu_kernels.scores_backward(torch.randn(1, 1, 8), torch.randn(1, 2, 16, 4), torch.full((1, 1, 8), 256),
                                    torch.randn(1, 1, 8), "rms")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm", ["none", "rms", "layer"])
@pytest.mark.parametrize("n, k, head_dim", [(8, 8, 4), (64, 32, 64), (32, 7, 18)])
def test_one_call_retrieval_equals_norm_scores_selection_and_softmax(dtype, norm, n, k, head_dim):
    query, keys = off_centre_query_and_keys(5, 4, head_dim, n, dtype, seed=n + k)
    slots, weights = cpu_kernels.retrieve(query, keys, k, norm)
    normalized = normalize_query(query, norm)
    best, expected_slots = reference_selection(sub_key_scores(normalized, keys), k)
    assert slots.dtype == torch.long and weights.dtype == dtype
    order, expected_order = slots.argsort(-1), expected_slots.argsort(-1)
    assert torch.equal(slots.gather(-1, order), expected_slots.gather(-1, expected_order))
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(weights.gather(-1, order), best.softmax(-1).gather(-1, expected_order), **tolerance)
    with pytest.raises(ValueError, match=f"top-k {n + 1} must be between 1 and the {n} sub-keys"):
        cpu_kernels.retrieve(query, keys, n + 1, norm)


def test_decode_takes_the_one_call_retrieval_and_training_the_general_path(monkeypatch):
    import midus.model.hml as hml_module

    calls = []
    monkeypatch.setattr(hml_module, "kernel_retrieve", lambda *args: calls.append(1) or cpu_kernels.retrieve(*args))
    retrieval = ProductKeys(4, 16, 16, 8).double()
    torch.nn.init.normal_(retrieval.keys)
    query = torch.randn(3, 4, 16, dtype=torch.float64)
    with torch.no_grad():
        slots, weights = retrieval(query, "rms")
    assert calls == [1]
    general = retrieval(query, "rms")  # the keys want a gradient: the general path
    assert calls == [1] and general[1].requires_grad
    order, general_order = slots.argsort(-1), general[0].argsort(-1)
    assert torch.equal(slots.gather(-1, order), general[0].gather(-1, general_order))
    torch.testing.assert_close(weights.gather(-1, order), general[1].detach().gather(-1, general_order))


def test_switched_off_the_memory_layer_runs_the_pytorch_path(monkeypatch):
    monkeypatch.setenv("MIDUS_CPU_KERNELS", "0")
    import midus.model.retrieval as retrieval_module

    monkeypatch.setattr(retrieval_module, "kernel_selection", lambda *args: pytest.fail("the kernel ran"))
    assert not cpu_kernels.supports(torch.zeros(1))
    query, keys = torch.randn(20, 2, 16, requires_grad=True), torch.randn(2, 2, 8, 8)
    scores, slots = product_key_topk(query, keys, 4)
    assert slots.shape == (20, 2, 4) and scores.requires_grad


def test_kernels_take_cpu_float32_and_float64_and_the_selection_half_precision_too():
    assert cpu_kernels.supports(torch.zeros(1)) and cpu_kernels.supports(torch.zeros(1, dtype=torch.float64))
    assert not cpu_kernels.supports(torch.zeros(1, dtype=torch.bfloat16))
    assert cpu_kernels.supports(torch.zeros(1, dtype=torch.bfloat16), half_precision=True)
    assert not cpu_kernels.supports(torch.zeros(1, dtype=torch.int64), half_precision=True)
    assert not cpu_kernels.supports(torch.zeros(1, device="meta"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_scores_are_selected_on_their_exact_sums(dtype):
    torch.manual_seed(7)
    scores = sub_key_scores(torch.randn(30, 2, 32, dtype=dtype), torch.randn(2, 2, 16, 16, dtype=dtype))
    best, slots = cpu_kernels.select(scores, 8)
    exact = scores.float()
    expected_best, expected_slots = cpu_kernels.select(exact, 8)
    assert best.dtype == dtype and torch.equal(slots, expected_slots)
    assert torch.equal(best, expected_best.to(dtype))  # the float32 sums, rounded once
    rows, columns = torch.div(slots, 16, rounding_mode="floor"), slots % 16
    assert torch.equal(best, scores[:, :, 0].gather(-1, rows) + scores[:, :, 1].gather(-1, columns))


def test_a_build_is_cached_by_source_compiler_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("MIDUS_CACHE", str(tmp_path))
    first = cpu_kernels.build()
    assert first.parent == tmp_path / "kernels" and first.exists()
    stamp = first.stat().st_mtime_ns
    assert cpu_kernels.build() == first and first.stat().st_mtime_ns == stamp  # not built again
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [first.name]  # no temporary left behind
    monkeypatch.setattr(cpu_kernels, "SOURCE", cpu_kernels.SOURCE + "\n// another version\n")
    assert cpu_kernels.build() != first


def test_the_kernels_share_pytorchs_openmp_runtime():
    """Built with OpenMP, the library needs libgomp.so.1, which resolves to the one PyTorch loaded: the
    system's copy, which it would load on its own, is never mapped (a second pool). Other wheels' own
    renamed copies (scikit-learn's libgomp-<hash>) may be mapped; they are theirs."""
    torch_gomp = sorted(Path(torch.__file__).parent.joinpath("lib").glob("libgomp*"))
    if sys.platform != "linux" or not torch_gomp:
        pytest.skip("a PyTorch built with GNU OpenMP on Linux (the CPU wheels) is what this checks")
    needed = subprocess.run(["ldd", str(cpu_kernels.build())], capture_output=True, text=True).stdout
    alone = re.search(r"libgomp\.so\.1 => (\S+)", needed)
    assert alone, f"the kernels were built without OpenMP here:\n{needed}"
    mapped = {os.path.realpath(path) for path in re.findall(r"(/\S*libgomp\S*)$", Path("/proc/self/maps").read_text(),
                                                             flags=re.M)}
    assert os.path.realpath(torch_gomp[0]) in mapped and os.path.realpath(alone.group(1)) not in mapped


def test_a_compiler_without_openmp_builds_kernels_that_run_in_one_thread(tmp_path, monkeypatch):
    monkeypatch.setenv("MIDUS_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "OPENMP", ["-fno-such-flag-for-openmp"])  # refused: the serial build
    serial = cpu_kernels.load(cpu_kernels.build())
    monkeypatch.setattr(cpu_kernels, "_loaded", {"library": serial})
    torch.manual_seed(5)
    scores = sub_key_scores(torch.randn(600, 4, 32), torch.randn(4, 2, 32, 16))
    best, slots = cpu_kernels.select(scores, 16)
    assert torch.equal(in_order(best, slots)[1], in_order(*reference_selection(scores, 16))[1])


def test_a_build_without_native_instructions_gives_the_same_results(tmp_path, monkeypatch):
    """Without -march=native (refused, or a CPU without AVX2) the plain loops run where the AVX2 ones would: the
    same selection bit for bit (it only compares and adds), the same pooled sums and retrieval up to rounding
    (a native build fuses multiply-adds)."""
    torch.manual_seed(6)
    scores = sub_key_scores(torch.randn(300, 4, 64), torch.randn(4, 2, 64, 32))
    bank, slots, weights = torch.randn(4096, 64), torch.randint(0, 4096, (500, 32)), torch.rand(500, 32)
    query, keys = torch.randn(5, 4, 64), torch.randn(4, 2, 64, 32)
    native = cpu_kernels.select(scores, 32), cpu_kernels.pool(bank, slots, weights), cpu_kernels.retrieve(query, keys, 32, "rms")
    monkeypatch.setenv("MIDUS_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "NATIVE", ["-fno-such-flag-for-native"])  # refused: the portable build
    monkeypatch.setattr(cpu_kernels, "_loaded", {"library": cpu_kernels.load(cpu_kernels.build())})
    assert all(torch.equal(a, b) for a, b in zip(cpu_kernels.select(scores, 32), native[0]))
    torch.testing.assert_close(cpu_kernels.pool(bank, slots, weights), native[1])
    retrieved_slots, retrieved_weights = cpu_kernels.retrieve(query, keys, 32, "rms")
    order, native_order = retrieved_slots.argsort(-1), native[2][0].argsort(-1)
    assert torch.equal(retrieved_slots.gather(-1, order), native[2][0].gather(-1, native_order))
    torch.testing.assert_close(retrieved_weights.gather(-1, order), native[2][1].gather(-1, native_order))


def test_without_a_compiler_a_warning_and_the_pytorch_path(tmp_path, monkeypatch):
    monkeypatch.setenv("MIDUS_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a compiler that fails
    monkeypatch.setattr(cpu_kernels.shutil, "which", lambda name: "/bin/false" if name == "false" else None)
    monkeypatch.setattr(cpu_kernels, "_loaded", {})
    warnings = []
    monkeypatch.setattr(cpu_kernels.logger, "warning", warnings.append)
    assert cpu_kernels.library() is None and cpu_kernels.library() is None
    assert len(warnings) == 1 and warnings[0].startswith("MIDUS CPU kernels unavailable (false failed")
    assert not cpu_kernels.supports(torch.zeros(1))
    scores, slots = product_key_topk(torch.randn(30, 2, 16), torch.randn(2, 2, 8, 8), 4)
    assert slots.shape == (30, 2, 4)


def test_the_selection_compiles_as_one_custom_op():
    torch._dynamo.reset()
    query, keys = torch.randn(5, 3, 16), torch.randn(3, 2, 8, 8)
    compiled = torch.compile(lambda q: product_key_topk(q, keys, 4), fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        mine, expected = compiled(query), product_key_topk(query, keys, 4)
    torch._dynamo.reset()
    assert all(torch.equal(a, b) for a, b in zip(mine, expected))


def test_decode_retrieval_and_pooling_compile_as_custom_ops():
    torch._dynamo.reset()
    retrieval = ProductKeys(3, 16, 8, 4)
    torch.nn.init.normal_(retrieval.keys)
    bank = torch.randn(64, 5)

    def decode(query):
        slots, weights = retrieval(query, "rms")
        return slots, weights, pool(bank, slots.flatten(0, 1), weights.flatten(0, 1))

    compiled = torch.compile(decode, fullgraph=True, backend="aot_eager")
    query = torch.randn(2, 3, 16)
    with torch.no_grad():
        mine, expected = compiled(query), decode(query)
        graph = torch._dynamo.explain(decode)(query)
    torch._dynamo.reset()
    assert all(torch.equal(a, b) for a, b in zip(mine, expected))
    ops = str(graph.graphs[0].graph)
    assert "midus.retrieve_" in ops and "midus.pool_" in ops and "embedding_bag" not in ops
