"""The layer-wise trace estimator against dense float64 ground truth (torch.func.hessian)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import hessian

from tests.workers.curvature_cases import CASES, SharedLinear, dense_hessian, make
from workers.curvature import (
    block_variance,
    blockwise_trace,
    critical_probe_count,
    layerwise_trace,
    network_trace,
    single_pass_variance,
)

CASE_IDS = [c.id for c in CASES]


def sample_variance_and_se(values):
    """Per column: the sample variance s2 of n i.i.d. values and its standard error
    sqrt((m4 - s2^2 (n - 3) / (n - 1)) / n), m4 the empirical fourth central moment."""
    n = values.shape[0]
    s2 = values.var(0, correction=1)
    m4 = (values - values.mean(0)).pow(4).mean(0)
    return s2, ((m4 - s2.square() * (n - 3) / (n - 1)) / n).sqrt()


def exact_statistics(h, slices):
    trace = torch.stack([h[s, s].trace() for s in slices])
    frob = torch.stack([h[s, s].square().sum() for s in slices])
    row = torch.stack([h[s].square().sum() for s in slices])
    return trace, frob, row


@pytest.fixture(scope="module", params=CASES, ids=CASE_IDS)
def big_run(request):
    """One case, its dense Hessian, and one long seeded run sized from the closed-form
    variance so that the mean of all probes is expected at 1e-2 / sqrt(5) relative error."""
    model, criterion, x, y = make(request.param)
    h, slices = dense_hessian(model, criterion, x, y)
    trace, _, _ = exact_statistics(h, slices)
    var = single_pass_variance(h, slices)
    k = int(5 * var.sum() / (1e-2 * trace.norm()) ** 2)
    g = torch.Generator().manual_seed(1234)
    est = layerwise_trace(model, criterion, x, y, num_probes=k, generator=g, hvp="forward-vmap")
    return dict(model=model, data=(criterion, x, y), h=h, slices=slices, trace=trace, var=var, est=est)


@pytest.mark.slow
def test_block_traces_within_four_standard_errors(big_run):
    # 3000 probes: the mean is Gaussian to a good approximation; its standard error
    # comes from the closed-form variance, not from the same samples.
    values = big_run["est"].probe_values[:3000]
    se = (big_run["var"] / values.shape[0]).sqrt()
    err = (values.mean(0) - big_run["trace"]).abs()
    assert (err <= 4 * se + 1e-12).all(), (err / se).tolist()


@pytest.mark.slow
def test_converges_to_one_percent(big_run):
    values, exact = big_run["est"].probe_values, big_run["trace"]
    k = values.shape[0]
    rel = [((values[:n].mean(0) - exact).norm() / exact.norm()).item() for n in (k // 256, k // 16, k)]
    assert rel[-1] <= 1e-2, rel
    assert rel[0] > rel[-1], rel


@pytest.mark.slow
def test_empirical_variance_matches_closed_form(big_run):
    # 5 standard errors of the sample variance (n = 4000, s2 close to normal): about
    # 6e-7 false-failure chance per comparison, over 11 groups in the four cases.
    s2, se = sample_variance_and_se(big_run["est"].probe_values[:4000])
    assert ((s2 - big_run["var"]).abs() <= 5 * se).all(), ((s2 - big_run["var"]) / se).tolist()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_block_restricted_probes_follow_eq6(case):
    model, criterion, x, y = make(case)
    h, slices = dense_hessian(model, criterion, x, y)
    values = blockwise_trace(model, criterion, x, y, num_probes=2000, generator=torch.Generator().manual_seed(5))
    expected = torch.stack([block_variance(h[s, s]) for s in slices])
    s2, se = sample_variance_and_se(values)
    assert ((s2 - expected).abs() <= 5 * se + 1e-12).all()
    # Whole-vector probes pay for the off-diagonal blocks (section 3.3); here they are not zero.
    assert (single_pass_variance(h, slices) > expected).all()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_sum_over_groups_equals_network_hutchinson_on_same_probes(case):
    model, criterion, x, y = make(case)
    est = layerwise_trace(model, criterion, x, y, num_probes=20, generator=torch.Generator().manual_seed(3))
    whole = network_trace(model, criterion, x, y, num_probes=20, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(est.probe_values.sum(1), whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mechanism", ["forward", "forward-vmap"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_hvp_mechanisms_agree(case, mechanism):
    model, criterion, x, y = make(case)
    ref = layerwise_trace(model, criterion, x, y, num_probes=5, generator=torch.Generator().manual_seed(9),
                          block_frobenius=True)
    other = layerwise_trace(model, criterion, x, y, num_probes=5, generator=torch.Generator().manual_seed(9),
                            block_frobenius=True, hvp=mechanism)
    torch.testing.assert_close(other.probe_values, ref.probe_values, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(other.block_frobenius_values, ref.block_frobenius_values, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_row_energy_and_block_frobenius_are_unbiased(case):
    model, criterion, x, y = make(case)
    h, slices = dense_hessian(model, criterion, x, y)
    _, frob, row = exact_statistics(h, slices)
    est = layerwise_trace(model, criterion, x, y, num_probes=3000, generator=torch.Generator().manual_seed(2),
                          block_frobenius=True, hvp="forward-vmap")
    for values, exact in ((est.row_energy_values, row), (est.block_frobenius_values, frob)):
        se = values.std(0) / math.sqrt(values.shape[0])
        assert ((values.mean(0) - exact).abs() <= 4 * se).all(), ((values.mean(0) - exact) / se).tolist()
    # kappa (eq. 7) is formed from the two unbiased estimates, not from a biased square.
    expected = est.block_frobenius_values.mean(0).clamp(min=0).sqrt() / est.probe_values.mean(0).abs()
    torch.testing.assert_close(est.anisotropy, expected, rtol=0, atol=0)


def test_gaussian_probes_are_unbiased_too():
    model, criterion, x, y = make(CASES[0])
    h, slices = dense_hessian(model, criterion, x, y)
    est = layerwise_trace(model, criterion, x, y, num_probes=3000, distribution="gaussian",
                          generator=torch.Generator().manual_seed(4), hvp="forward-vmap")
    trace = torch.stack([h[s, s].trace() for s in slices])
    assert ((est.trace - trace).abs() <= 4 * est.stderr).all()
    # Gaussian probes carry the extra 2 sum_i H_ii^2 that Rademacher ones avoid.
    assert (est.probe_values.var(0) > single_pass_variance(h, slices)).all()


# --- weight sharing (paper section 3.2, eq. 5) -------------------------------------


def test_unrolling_shared_weights_is_biased_by_the_cross_instance_term():
    torch.manual_seed(0)
    model = SharedLinear().double()
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    w, b = model.shared.weight.detach(), model.shared.bias.detach()
    n = w.numel() + b.numel()

    def unrolled(copies):  # L~(W(1), W(2)): the two uses as independent coordinates
        (w1, b1), (w2, b2) = [(c[: w.numel()].reshape(w.shape), c[w.numel():]) for c in copies.split(n)]
        inner = torch.tanh(nn.functional.linear(x, w1, b1))
        return criterion(model.head(torch.tanh(nn.functional.linear(inner, w2, b2))), y)

    theta = torch.cat([w.reshape(-1), b])
    hu = hessian(unrolled)(torch.cat([theta, theta]))
    diag_terms = hu[:n, :n].trace() + hu[n:, n:].trace()   # what unrolling estimates
    cross_terms = hu[:n, n:].trace() + hu[n:, :n].trace()  # sum_{k != k'} tr(d2L~ / dW(k) dW(k'))

    h, slices = dense_hessian(model, criterion, x, y)
    exact = h[slices[0], slices[0]].trace()  # group "shared" is first
    torch.testing.assert_close(exact, diag_terms + cross_terms, rtol=1e-12, atol=1e-12)  # eq. (5)

    # An unrolled Hutchinson estimate (independent probes per copy) converges to the
    # diagonal terms only: it is off by exactly the cross-instance term.
    g = torch.Generator().manual_seed(7)
    z = (torch.randint(0, 2, (4000, 2 * n), generator=g) * 2 - 1).double()
    unrolled_values = torch.stack([zk[:n] @ (hu[:n, :n] @ zk[:n]) + zk[n:] @ (hu[n:, n:] @ zk[n:]) for zk in z])

    est = layerwise_trace(model, criterion, x, y, num_probes=20000, generator=torch.Generator().manual_seed(8),
                          hvp="forward-vmap")
    se = est.stderr[0]
    se_unrolled = unrolled_values.std() / math.sqrt(len(unrolled_values))
    assert abs(est.trace[0] - exact) <= 4 * se
    assert abs(unrolled_values.mean() - diag_terms) <= 4 * se_unrolled
    assert abs(cross_terms) > 10 * max(se, se_unrolled)  # the bias is real, not noise
    assert abs(est.trace[0] - diag_terms) > 6 * se        # and ours does not have it


def test_tied_parameter_belongs_to_one_group():
    model, criterion, x, y = make(CASES[3])
    est = layerwise_trace(model, criterion, x, y, num_probes=2)
    assert est.layers == ["a", "b", "head"]
    assert est.numel == [16 + 4, 4, 12 + 3]  # b owns only its bias; the tied weight sits in "a"


# --- groups ------------------------------------------------------------------------


def test_parameter_groups_and_mapping_with_aliases():
    model, criterion, x, y = make(CASES[3])
    per_param = layerwise_trace(model, criterion, x, y, num_probes=3, groups="parameter",
                                generator=torch.Generator().manual_seed(1))
    assert per_param.layers == ["a.weight", "a.bias", "b.bias", "head.weight", "head.bias"]
    mapping = {"tied": ["b.weight", "a.bias"], "rest": ["b.bias", "head.weight", "head.bias"]}
    grouped = layerwise_trace(model, criterion, x, y, num_probes=3, groups=mapping,
                              generator=torch.Generator().manual_seed(1))
    # Same probes (drawn in parameter order), regrouped: sums of the per-parameter values.
    pv = per_param.probe_values
    torch.testing.assert_close(grouped.probe_values, torch.stack([pv[:, :2].sum(1), pv[:, 2:].sum(1)], 1))


def test_module_groups_of_a_resnet_are_named_by_module():
    from workers.models import resnet18

    model = resnet18(num_classes=10, width=0.0625)
    from workers.curvature import parameter_groups

    names = parameter_groups(model).names
    assert names[:3] == ["conv1", "bn1", "layer1.0.conv1"]
    assert names[-1] == "linear"
    assert "layer2.0.shortcut.0" in names
    assert len(names) == 41  # 20 convs + 20 BatchNorms + the head


# --- side effects and determinism ---------------------------------------------------


def _bn_dropout_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Dropout(0.5), nn.Tanh(), nn.Flatten(),
                          nn.Linear(27, 3)).double()
    model.train()
    model[-1].eval()  # mixed flags must come back as they were
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    return model


def _snapshot(model):
    return ([m.training for m in model.modules()], [b.clone() for b in model.buffers()],
            [p.grad for p in model.parameters()], [p.grad.clone() for p in model.parameters()])


def _assert_unchanged(model, before):
    flags, buffers, grad_refs, grad_values = before
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), buffers))
    assert all(p.grad is g for p, g in zip(model.parameters(), grad_refs))
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grad_values))


def assert_pure_and_reproducible(estimate, values):
    """``estimate(model, criterion, inputs, targets, generator)`` leaves a BatchNorm/dropout
    model in mixed train/eval mode with set ``.grad`` exactly as it was, and gives the same
    ``values(result)`` (a tuple of tensors) twice from one seed."""
    model = _bn_dropout_model()
    before = _snapshot(model)
    x, y = torch.randn(8, 1, 5, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    a = estimate(model, nn.CrossEntropyLoss(), x, y, torch.Generator().manual_seed(1))
    _assert_unchanged(model, before)
    b = estimate(model, nn.CrossEntropyLoss(), x, y, torch.Generator().manual_seed(1))
    assert all(torch.equal(u, v) for u, v in zip(values(a), values(b)))


@pytest.mark.parametrize("hvp", ["reverse", "forward", "forward-vmap"])
def test_no_side_effects(hvp):
    model = _bn_dropout_model()
    before = _snapshot(model)
    x, y = torch.randn(8, 1, 5, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    layerwise_trace(model, nn.CrossEntropyLoss(), x, y, num_probes=3, hvp=hvp, block_frobenius=True)
    _assert_unchanged(model, before)


def test_no_side_effects_when_the_call_raises():
    model = _bn_dropout_model()
    before = _snapshot(model)
    x = torch.randn(8, 1, 5, 5, dtype=torch.float64)

    def failing_criterion(out, targets):
        raise RuntimeError("criterion failed")

    with pytest.raises(RuntimeError, match="criterion failed"):
        layerwise_trace(model, failing_criterion, x, None, num_probes=3)
    _assert_unchanged(model, before)


def test_evaluated_in_eval_mode_even_from_train_mode():
    model = _bn_dropout_model()
    x, y = torch.randn(8, 1, 5, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    from_train = layerwise_trace(model, nn.CrossEntropyLoss(), x, y, num_probes=4,
                                 generator=torch.Generator().manual_seed(0))
    model.eval()
    from_eval = layerwise_trace(model, nn.CrossEntropyLoss(), x, y, num_probes=4,
                                generator=torch.Generator().manual_seed(0))
    assert torch.equal(from_train.probe_values, from_eval.probe_values)


def test_seeded_calls_are_reproducible_bit_for_bit():
    model, criterion, x, y = make(CASES[1])
    a = layerwise_trace(model, criterion, x, y, num_probes=6, generator=torch.Generator().manual_seed(11))
    b = layerwise_trace(model, criterion, x, y, num_probes=6, generator=torch.Generator().manual_seed(11))
    c = layerwise_trace(model, criterion, x, y, num_probes=6, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a.probe_values, b.probe_values)
    assert not torch.equal(a.probe_values, c.probe_values)


def test_probes_follow_parameter_dtype():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))  # float32
    x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    est = layerwise_trace(model, nn.CrossEntropyLoss(), x, y, num_probes=2)
    assert est.probe_values.dtype == torch.float64  # accumulated in float64
    from workers.curvature.probes import draw_probe

    z = draw_probe(list(model.parameters()), distribution="rademacher", generator=None)
    assert all(t.dtype == torch.float32 and t.device == p.device for t, p in zip(z, model.parameters()))


def test_single_probe_has_no_stderr():
    model, criterion, x, y = make(CASES[0])
    est = layerwise_trace(model, criterion, x, y, num_probes=1)
    assert torch.isnan(est.stderr).all() and torch.isfinite(est.trace).all()


# --- bad input ------------------------------------------------------------------------


class SqrtGate(nn.Module):
    """Finite loss, infinite curvature: d2/ds2 sqrt(s) at s = 0."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.head = nn.Linear(3, 2).double()

    def forward(self, x):
        return self.head(x) + torch.sqrt(self.gate)


def test_nonfinite_hvp_is_reported_for_the_layers_it_hits():
    model = SqrtGate()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1])
    with pytest.warns(RuntimeWarning, match=r"non-finite Hessian-vector product in groups \['\(root\)'"):
        est = layerwise_trace(model, nn.CrossEntropyLoss(), x, y, num_probes=3)
    assert "(root)" in est.nonfinite
    for name, t in zip(est.layers, est.trace.tolist()):
        assert math.isnan(t) == (name in est.nonfinite)


BAD_INPUTS = [
    ("zero_probes", dict(num_probes=0), ValueError, "num_probes=0; it must be at least 1"),
    ("float_probes", dict(num_probes=2.5), TypeError, "num_probes must be an int"),
    ("distribution", dict(distribution="uniform"), ValueError, "distribution='uniform' is not one of"),
    ("hvp", dict(hvp="finite-difference"), ValueError, "hvp='finite-difference' is not one of"),
    ("groups_word", dict(groups="layer"), ValueError, "groups='layer' is not understood"),
    ("groups_unknown", dict(groups={"x": ["nope.weight"]}), ValueError,
     r"groups names unknown parameters \['nope.weight'\]"),
    ("groups_missing", dict(groups={"x": ["0.weight"]}), ValueError,
     r"groups leaves out trainable parameters \['0.bias'"),
    ("groups_twice", dict(groups={"x": ["0.weight", "0.bias"], "y": ["0.bias", "2.weight", "2.bias"]}),
     ValueError, "is in groups 'x' and 'y'"),
    ("groups_string_list", dict(groups={"x": "0.weight"}), TypeError, "must be a list of parameter names"),
    ("generator_type", dict(generator=42), TypeError, "generator must be a torch.Generator"),
]


@pytest.mark.parametrize("kwargs,error,message", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_arguments(kwargs, error, message):
    model, criterion, x, y = make(CASES[0])
    with pytest.raises(error, match=message):
        layerwise_trace(model, criterion, x, y, **kwargs)


def test_bad_models_and_losses():
    model, criterion, x, y = make(CASES[0])
    with pytest.raises(ValueError, match=r"loss of shape \(16,\); it must be a scalar"):
        layerwise_trace(model, nn.CrossEntropyLoss(reduction="none"), x, y)
    with pytest.raises(ValueError, match="the loss is nan"):
        layerwise_trace(model, criterion, torch.full_like(x, math.nan), y)
    with pytest.raises(TypeError, match="criterion must return a tensor"):
        layerwise_trace(model, lambda out, t: 1.0, x, y)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        layerwise_trace(lambda v: v, criterion, x, y)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter that requires grad"):
        layerwise_trace(model, criterion, x, y)


# --- critical probe count (eq. 9) -----------------------------------------------------


def test_critical_probe_count_against_dense_hessians():
    # M mini-batches at the same parameters: V_H(1) and V_B have closed forms from
    # the dense per-batch Hessians; the estimate from probe values must match them.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    criterion = nn.CrossEntropyLoss()
    xs, ys = torch.randn(60, 8, 4, dtype=torch.float64), torch.randint(0, 3, (60, 8))
    exact_t, exact_v, values = [], [], []
    g = torch.Generator().manual_seed(0)
    for x, y in zip(xs, ys):
        h, slices = dense_hessian(model, criterion, x, y)
        exact_t.append(torch.stack([h[s, s].trace() for s in slices]))
        exact_v.append(single_pass_variance(h, slices))
        values.append(layerwise_trace(model, criterion, x, y, num_probes=200, generator=g,
                                      hvp="forward-vmap").probe_values)
    r = critical_probe_count(torch.stack(values))
    v_h1, v_b = torch.stack(exact_v).mean(0), torch.stack(exact_t).var(0, correction=1)
    torch.testing.assert_close(r.v_h1, v_h1, rtol=0.1, atol=0)
    torch.testing.assert_close(r.v_b, v_b, rtol=0.35, atol=0)
    torch.testing.assert_close(r.k_star, v_h1 / v_b, rtol=0.4, atol=0)


def test_critical_probe_count_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[M batches, K probes, L groups\]"):
        critical_probe_count(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="at least 2 batches and 2 probes"):
        critical_probe_count(torch.zeros(1, 4, 2))
