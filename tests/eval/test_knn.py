import torch
import torch.nn.functional as F

from freeatm_hf.eval.knn import accuracy, knn_classify, linear_probe


def test_knn_weighted_vote_against_a_hand_computed_case():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    test = torch.tensor([[1.0, 0.2]])
    scores = knn_classify(train, labels, test, k=3, temperature=0.5, num_classes=3)
    t, tr = F.normalize(test, dim=1), F.normalize(train, dim=1)
    sims = (t @ tr.T)[0]
    top = sims.topk(3)
    expected = torch.zeros(3)
    for s, i in zip(top.values, top.indices):
        expected[labels[i]] += torch.exp(s / 0.5)
    torch.testing.assert_close(scores[0], expected)
    assert scores.argmax(1).item() == 0
    assert accuracy(scores, torch.tensor([0])) == 1.0


def test_knn_chunks_give_the_same_scores():
    torch.manual_seed(0)
    tr, te, y = torch.randn(50, 8), torch.randn(30, 8), torch.randint(0, 4, (50,))
    torch.testing.assert_close(knn_classify(tr, y, te, k=5, chunk=7), knn_classify(tr, y, te, k=5, chunk=1000))


def test_linear_probe_separates_linearly_separable_features():
    torch.manual_seed(0)
    centers = 4 * F.normalize(torch.randn(5, 32), dim=1)
    y = torch.randint(0, 5, (600,))
    x = centers[y] + 0.3 * torch.randn(600, 32)  # separated blobs: a linear boundary exists with a margin
    scores = linear_probe(x[:400], y[:400], x[400:], num_classes=5)
    assert accuracy(scores, y[400:]) >= 0.99
