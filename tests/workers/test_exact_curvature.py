"""The closed-form head block (F2) and the output-space Gauss-Newton estimator, against
dense float64 Hessians and Gauss-Newton matrices; and F1 (H_ll = G_ll) on every built-in
architecture."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

from workers.curvature import ggn_trace, head_curvature, layerwise_trace
from workers.curvature.groups import parameter_groups
from workers.models import ARCHITECTURES, build_model


def dense_blocks(model, x, y):
    """Per group: (H_ll, G_ll) of the mean cross-entropy, dense, float64."""
    groups = parameter_groups(model, "module")
    params = dict(model.named_parameters())
    blocks = {}
    for g, name in enumerate(groups.names):
        members = [pn for pn, gi in zip(groups.param_names, groups.group_of) if gi == g]
        shapes = [params[m].shape for m in members]
        flat = torch.cat([params[m].detach().reshape(-1) for m in members])

        def logits(v, members=members, shapes=shapes):
            new, i = dict(params), 0
            for m, s in zip(members, shapes):
                new[m] = v[i:i + s.numel()].reshape(s)
                i += s.numel()
            return functional_call(model, new, (x,))

        h = hessian(lambda v: F.cross_entropy(logits(v), y))(flat)
        jac = jacrev(logits)(flat)
        p = torch.softmax(logits(flat), 1).detach()
        hn = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        blocks[name] = (h, torch.einsum("ncp,ncd,ndq->pq", jac, hn, jac) / len(y))
    return blocks


def realistic_batchnorm(model):
    """Running statistics and affine parameters away from their initial values."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_builtin_diagonal_block_is_its_gauss_newton_block(arch):
    """F1: piecewise linear in each group's own parameters, so d2f/dtheta_l2 = 0 and H_ll = G_ll."""
    torch.manual_seed(0)
    model, _ = build_model({"name": arch, "width": 1 / 64}, num_classes=3, in_channels=1)
    model = realistic_batchnorm(model.double()).eval()
    x, y = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2])
    for name, (h, g) in dense_blocks(model, x, y).items():
        assert (h - g).abs().max() <= 1e-10 * h.abs().max(), name


def test_a_smooth_network_has_blocks_where_hessian_and_gauss_newton_differ():
    """The check above can fail: with tanh, d2f/dtheta_l2 != 0 in the first layer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 2] * 2)
    blocks = dense_blocks(model, x, y)
    h, g = blocks["0"]
    assert (h - g).abs().max() > 1e-3 * h.abs().max()
    h, g = blocks["2"]  # the head: f is linear in its parameters
    assert (h - g).abs().max() <= 1e-12 * h.abs().max()


@pytest.mark.parametrize("bias,n,d,c", [(True, 8, 4, 3), (True, 3, 6, 4), (False, 8, 4, 3), (False, 3, 6, 4)])
def test_the_head_in_closed_form_equals_its_dense_block(bias, n, d, c):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, d), nn.ReLU(), nn.Linear(d, c, bias=bias)).double()
    x, y = torch.randn(n, 5, dtype=torch.float64), torch.randint(0, c, (n,))
    _, g = dense_blocks(model, x, y)["2"]  # = H_hh (checked above); label-free
    exact = head_curvature(model, x, head="2")
    assert exact.trace == pytest.approx(g.trace().item(), rel=1e-10)
    assert exact.frobenius_sq == pytest.approx((g**2).sum().item(), rel=1e-10)
    dense = torch.linalg.eigvalsh(g)
    assert len(exact.eigenvalues) == min(g.shape[0], n * c)  # both routes: the dense block and the Gram
    assert torch.allclose(exact.eigenvalues, dense[-len(exact.eigenvalues):], atol=1e-12)
    assert head_curvature(model, x, head="2", spectrum=False).eigenvalues is None


def test_the_head_in_closed_form_matches_a_builtin_model_and_leaves_it_untouched():
    torch.manual_seed(2)
    model, head = build_model({"name": "vgg11", "width": 1 / 16}, num_classes=10, in_channels=1)
    model = realistic_batchnorm(model.double()).train()
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (16,))
    before = [b.clone() for b in model.buffers()]
    exact = head_curvature(model, x, head=head)
    assert model.training and all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    est = layerwise_trace(model, F.cross_entropy, x, y, num_probes=2000, generator=torch.Generator().manual_seed(0))
    i = est.layers.index(head)
    assert abs(est.trace[i].item() - exact.trace) < 4 * est.stderr[i].item()


@pytest.mark.parametrize("build,head,message", [
    (lambda: nn.Sequential(nn.Linear(3, 3), nn.ReLU()), "1", "is a ReLU; the closed form needs the nn.Linear"),
    (lambda: nn.Sequential(nn.Linear(3, 3), nn.ReLU()), "9", "is no such module"),
    (lambda: nn.Sequential(nn.Linear(3, 3), nn.Softmax(1)), "0", "is not the model's output"),
])
def test_a_head_the_closed_form_does_not_cover_is_refused(build, head, message):
    with pytest.raises(ValueError, match=message):
        head_curvature(build().double(), torch.randn(4, 3, dtype=torch.float64), head=head)


def test_a_head_applied_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    with pytest.raises(ValueError, match="ran 2 times in one forward pass"):
        head_curvature(Twice().double(), torch.randn(4, 3, dtype=torch.float64), head="fc")


def test_ggn_trace_is_unbiased_for_the_gauss_newton_blocks_where_they_differ_from_the_hessian():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 2] * 2)
    blocks = dense_blocks(model, x, y)
    est = ggn_trace(model, F.cross_entropy, x, y, num_probes=4000, generator=torch.Generator().manual_seed(0))
    for i, name in enumerate(est.layers):
        h, g = blocks[name]
        assert abs(est.trace[i].item() - g.trace().item()) < 4 * est.stderr[i].item()
    h, g = blocks["0"]
    assert abs(h.trace() - g.trace()) > 10 * est.stderr[0]  # and it is the Gauss-Newton trace, not the Hessian's


def test_ggn_trace_has_far_less_variance_than_the_single_pass_hessian_estimator():
    torch.manual_seed(4)
    model, _ = build_model({"name": "resnet18", "width": 1 / 16}, num_classes=10, in_channels=1)
    model = realistic_batchnorm(model.double())
    x, y = torch.randn(32, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (32,))
    g = torch.Generator()
    ggn = ggn_trace(model, F.cross_entropy, x, y, num_probes=200, generator=g.manual_seed(0))
    hes = layerwise_trace(model, F.cross_entropy, x, y, num_probes=200, generator=g.manual_seed(0))
    assert ggn.layers == hes.layers
    # same quantity (F1) ...
    z = (ggn.trace - hes.trace) / (ggn.stderr**2 + hes.stderr**2).sqrt()
    assert (z.abs() < 5).float().mean() > 0.95
    # ... at a fraction of the per-probe variance, in most layers
    assert (ggn.probe_values.var(0) < hes.probe_values.var(0)).float().mean() > 0.9


def test_ggn_trace_is_seeded_restores_the_model_and_refuses_other_losses():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2] * 2)
    model.train()
    a = ggn_trace(model, F.cross_entropy, x, y, num_probes=3, generator=torch.Generator().manual_seed(7))
    b = ggn_trace(model, nn.CrossEntropyLoss(), x, y, num_probes=3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.probe_values, b.probe_values) and model.training
    assert all(p.grad is None for p in model.parameters())
    for criterion, message in [
        (nn.MSELoss(), "supports torch.nn.functional.cross_entropy or nn.CrossEntropyLoss"),
        (nn.CrossEntropyLoss(reduction="sum"), "reduction='sum'"),
        (nn.CrossEntropyLoss(label_smoothing=0.1), "label_smoothing=0.1"),
    ]:
        with pytest.raises(ValueError, match=message):
            ggn_trace(model, criterion, x, y, num_probes=2)
    with pytest.raises(ValueError, match="class indices"):
        ggn_trace(model, F.cross_entropy, x, torch.rand(6, 3), num_probes=2)
