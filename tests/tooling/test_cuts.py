"""Cut points: named zoo stages and automatic cuts on the exported graph."""

from __future__ import annotations

import pytest

from tests.support.requires import require

torch = require("torch", "the tooling extra finds cut points")
from carboncp.models.zoo import load_model  # noqa: E402
from carboncp.runtime.errors import ConfigError  # noqa: E402
from carboncp.tooling.cuts import Normalize, find_cuts  # noqa: E402
from torch import nn  # noqa: E402

from tests.tiny_bundle import TinyNet  # noqa: E402


class Branchy(nn.Module):
    """stem -> two parallel branches added at the top level -> classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.left = nn.Conv2d(4, 4, 3, padding=1)
        self.right = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Tanh())
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        a = self.stem(x)
        b = torch.relu(self.left(a) + self.right(a))
        return self.fc(b.mean(dim=(2, 3)))


class SkipAll(nn.Module):
    """A skip connection from input to output: no cut has exactly one live tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 1))

    def forward(self, x):
        return x + self.body(x)


class TwoInputs(nn.Module):
    def forward(self, x, y):
        return x + y


def _chain_matches(model: nn.Module, cuts, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref = model(x)
        a = x
        for stage in cuts.stages:
            a = stage(a)
        torch.testing.assert_close(a, ref, atol=1e-5, rtol=0)


def test_residual_model_is_cut_between_blocks_only():
    model = TinyNet().eval()
    x = torch.rand(1, 3, 32, 32)
    cuts = find_cuts(model, x)
    # `block` holds a skip connection: no cut inside it (its conv/bn nodes are not cut names).
    assert cuts.names == ["input", "stem", "block", "classifier"]
    _chain_matches(model, cuts, x)


def test_branches_joined_at_top_level_are_one_stage():
    model = Branchy().eval()
    x = torch.rand(1, 3, 16, 16)
    cuts = find_cuts(model, x)
    assert cuts.names[:2] == ["input", "stem"]
    assert "left" not in cuts.names and "right" not in cuts.names  # `a` is live in both
    assert cuts.last >= 3
    _chain_matches(model, cuts, x)
    # other inputs than the one traced give the same answer as the model
    _chain_matches(model, cuts, torch.randn(1, 3, 16, 16))


def test_heads_and_tails_compose_to_the_full_model():
    model = TinyNet().eval()
    cuts = find_cuts(model, torch.rand(1, 3, 32, 32))
    img = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        full = model(Normalize(cuts.mean, cuts.std)(img))
        torch.testing.assert_close(cuts.tail(0)(img), full)
        for p in range(1, cuts.last):
            torch.testing.assert_close(cuts.tail(p)(cuts.head(p)(img)), full)
        torch.testing.assert_close(cuts.full()(img), full)
    with pytest.raises(ValueError):
        cuts.head(0)
    with pytest.raises(ValueError):
        cuts.tail(cuts.last)


def test_model_without_a_valid_cut_is_a_clear_error():
    with pytest.raises(ConfigError, match="no valid cut point"):
        find_cuts(SkipAll().eval(), torch.rand(1, 3, 8, 8))


def test_model_with_two_inputs_is_a_clear_error():
    with pytest.raises(ConfigError, match="exactly one tensor input"):
        from carboncp.tooling.cuts import graph_cuts

        graph_cuts(TwoInputs(), torch.rand(1, 3))  # traced with one input: export fails first


@pytest.mark.parametrize(
    ("name", "names"),
    [
        ("resnet18", ["input", "stem", "layer1", "layer2", "layer3", "layer4", "avgpool+fc"]),
        (
            "mobilenet_v2",
            ["input", "features.0-1", "features.2-3", "features.4-6", "features.7-13",
             "features.14-17", "features.18+classifier"],
        ),
    ],
)  # fmt: skip
def test_zoo_named_stages(name, names):
    model = load_model(name).model
    x = torch.rand(1, 3, 224, 224)
    cuts = find_cuts(model, x)
    assert cuts.names == names
    _chain_matches(model, cuts, x)
