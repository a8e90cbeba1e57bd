"""The method registry: what it declares holds for the networks, and nobody else names methods."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import xharmonise
from xharmonise.errors import DetailLossWarning, UnknownMethodError
from xharmonise.models import METHODS, PAPER_RECIPE, build_model, method
from xharmonise.psf import kernel_margin

PACKAGE = Path(xharmonise.__file__).parent
SIGMAS = [2.46, 2.6, 2.9, 2.2]
NEURAL = [m for m in METHODS.values() if m.neural]


def test_unknown_names_are_refused_with_the_known_ones():
    for bad in ("BCNet", "", None, 3, "linear "):
        with pytest.raises(UnknownMethodError, match="choose one of linear, calibnet"):
            method(bad)
    assert isinstance(UnknownMethodError("x"), ValueError)


@pytest.mark.parametrize("spec", NEURAL, ids=lambda m: m.name)
def test_each_network_is_what_its_entry_declares(spec):
    net = build_model(spec.name, 4, variance=True, factor=5, sigmas=SIGMAS, seed=0).eval()
    assert (net.method, net.n_bands, net.variance) == (spec.name, 4, True)
    side = 6
    if spec.trains_on == "full_patches":
        # Full-resolution input: factor x the reference patch plus the filter margin.
        assert net.margin == spec.filter_margin(SIGMAS, 5)
        side = 5 * 6 + 2 * net.margin
    x = torch.rand(2, 4, side, side)
    pred, var = net(x)
    assert pred.shape == var.shape == (2, 4, 6, 6)
    # The network inference runs reads only the declared neighbourhood: changing the
    # source beyond the halo leaves a pixel's output unchanged, inside it changes it.
    kernel = spec.inference_network(net).eval()
    img = torch.rand(1, 4, 15, 15)
    poked = img.clone()
    poked[0, :, 7, 7 + spec.halo + 1] += 0.3
    with torch.no_grad():
        assert torch.equal(kernel(img)[0][0, :, 7, 7], kernel(poked)[0][0, :, 7, 7])
        if spec.halo:
            near = img.clone()
            near[0, :, 7, 7 + spec.halo] += 0.3
            assert not torch.equal(kernel(img)[0][0, :, 7, 7], kernel(near)[0][0, :, 7, 7])


def test_filters_and_margins():
    bcnet = method("bcnet")
    assert bcnet.has_filters and bcnet.measures_shift
    assert [m.name for m in METHODS.values() if m.has_filters] == ["bcnet"]
    assert bcnet.filter_margin([2.76], 5) == kernel_margin(2.76, 5, extra=bcnet.filter_extra)
    assert method("calibnet").filter_margin([2.76], 5) == kernel_margin(2.76, 5)


def test_budgets_the_paper_recipe_on_cuda_and_a_measured_schedule_on_the_cpu():
    for spec in NEURAL:
        assert spec.budget("cuda") is PAPER_RECIPE
        cpu = spec.budget("cpu")
        assert cpu.iterations < PAPER_RECIPE.iterations or cpu.batch_size < 100
    with pytest.raises(ValueError, match="no training budget"):
        method("linear").budget("cpu")


def test_every_method_fits_and_offers_what_it_declares(tmp_path):
    from xharmonise.simulate import simulate_pair

    pair = simulate_pair((200, 200), seed=0)
    for spec in METHODS.values():
        model = xharmonise.fit(
            pair.src,
            pair.ref,
            method=spec.name,
            variance=spec.offers_variance,
            patch_size=8,
            iterations=3,
            batch_size=2,
            progress=False,
        )
        assert (model.net is not None) == spec.neural
        window = pair.src.isel(y=slice(0, 40), x=slice(0, 40))
        outs = {}
        for with_variance in (True, None):
            if spec.inference_warning:
                with pytest.warns(DetailLossWarning, match=spec.inference_warning[:30]):
                    outs[with_variance] = xharmonise.predict(
                        window, model, with_variance=with_variance
                    )
            else:  # -W error: no warning
                outs[with_variance] = xharmonise.predict(window, model, with_variance=with_variance)
        # Every model gives σ² when asked: its head's, or an empirical one without a head
        # (#15); by default only a head's.
        out = outs[True]
        kind = "head" if spec.offers_variance else "empirical"
        assert out["variance"].attrs["variance_kind"] == kind == model.variance_kind
        assert ("variance" in outs[None]) == spec.offers_variance
        assert np.isfinite(out["prediction"].values).all()
        if spec.has_filters:
            assert model.filters.sizes["band"] == 4
        else:
            with pytest.raises(AttributeError):
                _ = model.filters


def _names_a_method(node: ast.expr) -> bool:
    # `method`, `model.method`, `meta["method"]`: an expression that holds a method name.
    if isinstance(node, ast.Name):
        return "method" in node.id
    if isinstance(node, ast.Attribute):
        return "method" in node.attr
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "method"
    return False


def _method_name_comparisons(path: Path, root: Path) -> list[str]:
    """Comparisons of a method-holding expression with a known method name."""
    names = set(METHODS)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        constants = {
            c.value for part in operands for c in ast.walk(part) if isinstance(c, ast.Constant)
        }
        if constants & names and any(_names_a_method(part) for part in operands):
            found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_no_module_outside_models_compares_a_method_name():
    # Comparisons such as `method == "bcnet"` or `m in ("calibnet", ...)` belong in the
    # registry; elsewhere they are knowledge of a method spread by string convention.
    offenders = [
        hit
        for path in sorted(PACKAGE.rglob("*.py"))
        if "models" not in path.relative_to(PACKAGE).parts
        for hit in _method_name_comparisons(path, PACKAGE.parent)
    ]
    assert offenders == []


def test_the_checker_sees_a_planted_comparison(tmp_path):
    planted = tmp_path / "xharmonise" / "planted.py"
    planted.parent.mkdir()
    planted.write_text(
        "def f(model, meta, stages):\n"
        '    a = model.method in ("bcnet", "x")\n'
        '    b = meta["method"] == "linear"\n'
        '    c = "linear" in stages\n'  # a stage name, not a method: not flagged
        "    return a, b, c\n"
    )
    assert _method_name_comparisons(planted, tmp_path) == [
        "xharmonise/planted.py:2",
        "xharmonise/planted.py:3",
    ]
