"""Objectives against hand-computed values: QPM (+logQ, alpha/beta, masking), MPM, MLM, QPC."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlsearch.negatives import NegativeSet
from vlsearch.objectives import (
    IGNORE_INDEX,
    AMSoftmaxClassifier,
    ContrastiveMaskedPatch,
    MaskedLanguageModeling,
    QueryProductMatching,
    RegressionMaskedPatch,
    mask_tokens,
    masked_patch_objective,
)

TAU = 0.5
Q = [[1.0, 0.0], [0.0, 1.0]]
P = [[0.6, 0.8], [0.8, 0.6]]  # unit vectors; q_i . p_j is P[j][i]
LOGQ = [math.log(0.2), math.log(0.05)]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def hand_loss(rows):
    """Mean over queries of -log(exp(pos) / sum(weight * exp(logit))); rows: (pos, [(w, logit)])."""
    total = 0.0
    for pos, terms in rows:
        total += -pos + math.log(sum(w * math.exp(s) for w, s in terms))
    return total / len(rows)


def qpm(**kwargs):
    kwargs.setdefault("init_temperature", TAU)
    kwargs.setdefault("logq_correction", False)
    return QueryProductMatching(**kwargs)


def tensors(ids=(0, 1)):
    return torch.tensor(Q), torch.tensor(P), torch.tensor(ids)


def negset(vectors, ids, log_q=None):
    log_q = [0.0] * len(ids) if log_q is None else log_q
    return NegativeSet(torch.tensor(vectors), torch.tensor(ids), torch.tensor(log_q))


def test_qpm_in_batch_loss_matches_hand_computation():
    q, p, ids = tensors()
    s = [[dot(Q[i], P[j]) / TAU for j in range(2)] for i in range(2)]
    expected = hand_loss([(s[i][i], [(1.0, s[i][0]), (1.0, s[i][1])]) for i in range(2)])
    out = qpm()(q, p, ids)
    assert out.loss.item() == pytest.approx(expected, abs=1e-5)
    assert out.logits.shape == (2, 2)
    assert out.neg_in_batch == 1.0 and out.neg_memory == 0.0 and out.neg_cross_device == 0.0


def test_logq_shifts_each_logit_by_minus_log_q():
    q, p, ids = tensors()
    log_q = torch.tensor(LOGQ)
    plain = qpm(logq_correction=False)(q, p, ids, log_q)
    corrected = qpm(logq_correction=True)(q, p, ids, log_q)
    assert torch.allclose(corrected.logits - plain.logits, -log_q.expand(2, 2), atol=1e-6)
    s = [[dot(Q[i], P[j]) / TAU - LOGQ[j] for j in range(2)] for i in range(2)]
    expected = hand_loss([(s[i][i], [(1.0, s[i][0]), (1.0, s[i][1])]) for i in range(2)])
    assert corrected.loss.item() == pytest.approx(expected, abs=1e-5)


def test_memory_and_cross_device_weights_enter_the_denominator():
    q, p, ids = tensors()
    alpha, beta = 0.5, 2.0
    m_vec, m_logq = [0.0, -1.0], math.log(0.1)
    c_vec, c_logq = [-0.6, 0.8], math.log(0.3)
    memory = negset([m_vec], [7], [m_logq])
    cross = negset([c_vec], [8], [c_logq])
    out = qpm(logq_correction=True, memory_weight=alpha, cross_device_weight=beta)(
        q, p, ids, torch.tensor(LOGQ), memory=memory, cross_device=cross
    )
    rows = []
    for i in range(2):
        s = [dot(Q[i], P[j]) / TAU - LOGQ[j] for j in range(2)]
        s_m = dot(Q[i], m_vec) / TAU - m_logq
        s_c = dot(Q[i], c_vec) / TAU - c_logq
        rows.append((s[i], [(1.0, s[0]), (1.0, s[1]), (alpha, s_m), (beta, s_c)]))
    assert out.loss.item() == pytest.approx(hand_loss(rows), abs=1e-5)
    assert out.logits.shape == (2, 4)
    assert out.neg_memory == 1.0 and out.neg_cross_device == 1.0
    # one memory negative alone: exactly the alpha * exp(s') term added to the denominator
    only_memory = qpm(memory_weight=alpha)(q, p, ids, memory=memory)
    rows = [
        (
            dot(Q[i], P[i]) / TAU,
            [(1.0, dot(Q[i], P[j]) / TAU) for j in range(2)] + [(alpha, dot(Q[i], m_vec) / TAU)],
        )
        for i in range(2)
    ]
    assert only_memory.loss.item() == pytest.approx(hand_loss(rows), abs=1e-5)


def test_negatives_with_the_positive_id_are_masked():
    q, p, _ = tensors()
    # both queries clicked product 5: each one's in-batch "negative" is its own positive product
    dup = qpm()(q, p, torch.tensor([5, 5]))
    alone = [-math.log(1.0)] * 2  # only the positive is left in each denominator
    assert dup.loss.item() == pytest.approx(sum(alone) / 2, abs=1e-6)
    assert dup.neg_in_batch == 0.0
    assert torch.isinf(dup.logits[0, 1]) and torch.isfinite(dup.logits[0, 0])
    # memory / cross-device copies of query 0's positive (id 0) are not negatives for query 0
    q, p, ids = tensors()
    base = qpm()(q, p, ids)
    copy = negset([P[0]], [0])
    for kwargs in ({"memory": copy}, {"cross_device": copy}):
        out = qpm()(q, p, ids, **kwargs)
        row0 = F.cross_entropy(out.logits[:1], torch.tensor([0]))
        base0 = F.cross_entropy(base.logits[:1], torch.tensor([0]))
        assert row0.item() == pytest.approx(base0.item(), abs=1e-6)
        assert out.loss.item() > base.loss.item()  # query 1 still sees it as a negative
        assert max(out.neg_memory, out.neg_cross_device) == 0.5


def test_temperature_is_learnable_and_reported():
    q, p, ids = tensors()
    module = qpm()
    out = module(q, p, ids)
    assert out.temperature == pytest.approx(TAU)
    out.loss.backward()
    assert module.tau.log_tau.grad is not None and module.tau.log_tau.grad.item() != 0.0
    fixed = qpm(learn_temperature=False)
    assert list(fixed.parameters()) == [] and "tau.log_tau" in fixed.state_dict()


def test_gradient_reaches_q_and_p_but_not_extra_negatives():
    q, p, ids = tensors()
    q.requires_grad_(True)
    p.requires_grad_(True)
    memory_vectors = torch.tensor([[0.0, -1.0]], requires_grad=True)
    cross_vectors = torch.tensor([[-1.0, 0.0]], requires_grad=True)
    memory = NegativeSet(memory_vectors, torch.tensor([7]), torch.zeros(1))
    cross = NegativeSet(cross_vectors, torch.tensor([8]), torch.zeros(1))
    qpm()(q, p, ids, memory=memory, cross_device=cross).loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert memory_vectors.grad is None and cross_vectors.grad is None


def test_zero_weight_drops_a_source():
    q, p, ids = tensors()
    out = qpm(memory_weight=0.0)(q, p, ids, memory=negset([[0.0, 1.0]], [9]))
    assert out.logits.shape == (2, 2) and out.neg_memory == 0.0


def test_contrastive_mpm_hand_value_and_perfect_beats_shuffled():
    targets = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # cosine ignores the norm
    loss = ContrastiveMaskedPatch(init_temperature=TAU)(targets[:1], targets, torch.tensor([0]))
    # cos(h, v0) = 1, cos(h, v1) = 0: -log(e^(1/tau) / (e^(1/tau) + e^0))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1 / TAU)), abs=1e-6)

    gen = torch.Generator().manual_seed(0)
    targets = torch.randn(12, 8, generator=gen)
    index = torch.tensor([0, 3, 5, 7, 11])
    mpm = ContrastiveMaskedPatch()
    perfect = mpm(targets[index], targets, index)
    shuffled = mpm(targets[index.roll(1)], targets, index)
    assert perfect.item() < shuffled.item()


def test_regression_mpm_is_mse_and_both_share_the_signature():
    targets = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    predicted = torch.tensor([[1.0, 1.0], [0.0, 4.0]])
    index = torch.tensor([0, 2])
    expected = ((0**2 + 1**2) + (5**2 + 2**2)) / 4
    assert RegressionMaskedPatch()(predicted, targets, index).item() == pytest.approx(expected)
    for kind in ("contrastive", "regression"):
        module = masked_patch_objective(kind)
        empty = module(
            torch.zeros(0, 2, requires_grad=True), targets, torch.zeros(0, dtype=torch.long)
        )
        assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="mpm_kind"):
        masked_patch_objective("reconstruct")


VOCAB, MASK_ID = 1000, 3


def batch_with_specials(rows=400, cols=100):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(10, VOCAB, (rows, cols), generator=gen)
    special = torch.zeros(rows, cols, dtype=torch.bool)
    special[:, 0] = special[:, -20:] = True  # [CLS] and padding
    return ids, special


def test_mask_tokens_proportions_specials_and_determinism():
    ids, special = batch_with_specials()
    masked, labels = mask_tokens(
        ids, special, vocab_size=VOCAB, mask_id=MASK_ID, generator=torch.Generator().manual_seed(7)
    )
    selected = labels != IGNORE_INDEX
    assert not selected[special].any() and torch.equal(masked[special], ids[special])
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])
    n = int(selected.sum())
    assert n / int((~special).sum()) == pytest.approx(0.15, abs=0.01)
    to_mask = (masked[selected] == MASK_ID).sum().item() / n
    kept = (masked[selected] == ids[selected]).sum().item() / n
    assert to_mask == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1, abs=0.02)
    assert 1 - to_mask - kept == pytest.approx(0.1, abs=0.02)  # random replacement
    again = mask_tokens(
        ids, special, vocab_size=VOCAB, mask_id=MASK_ID, generator=torch.Generator().manual_seed(7)
    )
    other = mask_tokens(
        ids, special, vocab_size=VOCAB, mask_id=MASK_ID, generator=torch.Generator().manual_seed(8)
    )
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)
    assert not torch.equal(other[1], labels)


def test_mlm_loss_ignores_unlabelled_positions_and_ties_embeddings():
    torch.manual_seed(0)
    hidden, vocab = 8, 20
    embedding = torch.nn.Embedding(vocab, hidden)
    head = MaskedLanguageModeling(hidden, vocab, tied_embedding=embedding)
    assert "decoder_weight" not in head.state_dict() and head.decoder is embedding.weight
    states = torch.randn(2, 4, hidden)
    labels = torch.tensor([[IGNORE_INDEX, 5, IGNORE_INDEX, 7], [1, IGNORE_INDEX, IGNORE_INDEX, 2]])
    loss = head(states, labels)
    chosen = labels != IGNORE_INDEX
    expected = F.cross_entropy(head.logits(states[chosen]), labels[chosen])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    noisy = states.clone()
    noisy[~chosen] = 100.0  # unlabelled positions do not matter
    assert head(noisy, labels).item() == pytest.approx(loss.item(), abs=1e-6)
    loss.backward()
    assert embedding.weight.grad is not None and embedding.weight.grad.abs().sum() > 0
    none = head(states.requires_grad_(True), torch.full((2, 4), IGNORE_INDEX))
    assert none.item() == 0.0
    none.backward()  # zero, but attached to the graph
    with pytest.raises(ValueError, match="tied embedding"):
        MaskedLanguageModeling(hidden + 1, vocab, tied_embedding=embedding)


def am_softmax(margin, scale=30.0):
    classifier = AMSoftmaxClassifier(2, 2, margin=margin, scale=scale)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))  # normalised inside
    return classifier


def test_am_softmax_hand_value_margin_and_unknown_labels():
    vectors = torch.tensor([[0.6, 0.8]])
    labels = torch.tensor([0])
    m, s = 0.35, 30.0
    target, other = s * (0.6 - m), s * 0.8
    expected = -target + math.log(math.exp(target) + math.exp(other))
    assert am_softmax(m)(vectors, labels).item() == pytest.approx(expected, rel=1e-5)
    assert am_softmax(m)(vectors, labels).item() > am_softmax(0.0)(vectors, labels).item()
    with_unknown = am_softmax(m)(torch.tensor([[0.6, 0.8], [1.0, 0.0]]), torch.tensor([0, -1]))
    assert with_unknown.item() == pytest.approx(expected, rel=1e-5)
    unknown = am_softmax(m)(vectors.requires_grad_(True), torch.tensor([-1]))
    assert unknown.item() == 0.0 and unknown.requires_grad
    with pytest.raises(ValueError, match="labels"):
        am_softmax(m)(vectors, torch.tensor([2]))


def test_title_image_alignment_is_qpm_both_ways_over_products_with_an_image():
    from vlsearch.objectives import TitleImageAlignment

    title = F.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0], [0.7, 0.7]]), dim=-1)
    image = F.normalize(torch.tensor([[0.9, 0.1], [0.3, 1.0], [-1.0, 0.5]]), dim=-1)
    ids = torch.tensor([5, 6, 7])
    tia = TitleImageAlignment(TAU)
    has = torch.tensor([True, True, False])  # the third row has no image: not in the loss
    expected = 0.5 * (qpm()(image[:2], title[:2], ids[:2]).loss + qpm()(title[:2], image[:2], ids[:2]).loss)
    assert tia(title, image, ids, has).item() == pytest.approx(expected.item(), abs=1e-6)
    swapped = tia(title, image[[1, 0, 2]], ids, has)  # mismatched pairs cost more
    assert swapped.item() > expected.item()
    # another row of the same product is not a negative: two rows of one product, nothing to tell apart
    same = tia(title[:2], image[:2], torch.tensor([5, 5]), has[:2])
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    assert tia(title, image, ids, torch.tensor([True, False, False])).item() == 0.0  # one image: no loss
