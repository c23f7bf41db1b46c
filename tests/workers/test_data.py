import pytest
import torch
from scipy import stats

from workers.data import symmetric_label_noise


def _labels(n=10_000, classes=10, seed=0):
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.40, 0.60])
def test_exactly_round_rate_n_labels_change(rate):
    labels = _labels(n=1001)
    noisy, mask = symmetric_label_noise(labels, rate, 10, torch.Generator().manual_seed(1))
    assert int(mask.sum()) == int(rate * 1001 + 0.5)
    assert torch.equal(mask, noisy != labels)  # every chosen label changes, nothing else does


def test_replacement_is_uniform_over_the_other_classes():
    # For a true class c, each of the 9 other classes is equally likely. A chi-square
    # test on the (true, noisy) table of changed labels; 9 x 9 cells with ~60 counts.
    labels = _labels(n=20_000)
    noisy, mask = symmetric_label_noise(labels, 0.25, 10, torch.Generator().manual_seed(2))
    table = torch.zeros(10, 10, dtype=torch.long)
    table.index_put_((labels[mask], noisy[mask]), torch.ones(int(mask.sum()), dtype=torch.long), accumulate=True)
    for c in range(10):
        others = torch.cat([table[c, :c], table[c, c + 1:]]).numpy()
        assert stats.chisquare(others).pvalue > 1e-4
    # and which labels are chosen does not depend on the class: binomial per class
    for c in range(10):
        k, n = int(mask[labels == c].sum()), int((labels == c).sum())
        assert stats.binomtest(k, n, 0.25).pvalue > 1e-4


def test_deterministic_in_the_generator_and_pure():
    labels = _labels()
    before = labels.clone()
    a = symmetric_label_noise(labels, 0.4, 10, torch.Generator().manual_seed(3))
    b = symmetric_label_noise(labels, 0.4, 10, torch.Generator().manual_seed(3))
    c = symmetric_label_noise(labels, 0.4, 10, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(labels, before)


@pytest.mark.parametrize("labels,rate,classes,message", [
    (torch.zeros(5, dtype=torch.long), 1.0, 10, r"eta=1.0 is outside \[0, 1\)"),
    (torch.zeros(5, dtype=torch.long), -0.1, 10, r"eta=-0.1 is outside \[0, 1\)"),
    (torch.zeros(5, dtype=torch.long), 0.2, 1, "at least 2 classes"),
    (torch.full((5,), 10), 0.2, 10, r"labels must lie in \[0, 10\)"),
    (torch.zeros(5), 0.2, 10, "1-D integer tensor"),
], ids=["eta_one", "eta_negative", "one_class", "label_out_of_range", "float_labels"])
def test_bad_input(labels, rate, classes, message):
    with pytest.raises(ValueError, match=message):
        symmetric_label_noise(labels, rate, classes, torch.Generator().manual_seed(0))
