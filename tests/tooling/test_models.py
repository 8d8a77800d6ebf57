"""The zoo's state_dict keys match torchvision's, so users' torchvision .pth files load.

torchvision does not import beside this torch, so the expected keys are written out here from
torchvision's published architecture (resnet.py, mobilenetv2.py) and its published parameter
counts (ResNet-18: 11,689,512; MobileNetV2: 3,504,872).
"""

from __future__ import annotations

import pytest

from tests.support.requires import require

torch = require("torch", "the tooling extra builds the models")

from carboncp.models.zoo import load_model, load_state_dict_file  # noqa: E402
from carboncp.runtime.errors import ConfigError  # noqa: E402

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{k}" for k in BN]


def torchvision_resnet18_keys() -> list[str]:
    keys = ["conv1.weight", *_bn("bn1")]
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}"
            keys += [f"{p}.conv1.weight", *_bn(f"{p}.bn1"), f"{p}.conv2.weight", *_bn(f"{p}.bn2")]
            if block == 0 and layer > 1:
                keys += [f"{p}.downsample.0.weight", *_bn(f"{p}.downsample.1")]
    return [*keys, "fc.weight", "fc.bias"]


def torchvision_mobilenet_v2_keys() -> list[str]:
    keys = ["features.0.0.weight", *_bn("features.0.1")]
    settings = [(1, 1), (6, 2), (6, 3), (6, 4), (6, 3), (6, 3), (6, 1)]  # (t, n)
    i = 1
    for t, n in settings:
        for _ in range(n):
            c = f"features.{i}.conv"
            if t == 1:
                keys += [f"{c}.0.0.weight", *_bn(f"{c}.0.1"), f"{c}.1.weight", *_bn(f"{c}.2")]
            else:
                keys += [f"{c}.0.0.weight", *_bn(f"{c}.0.1"), f"{c}.1.0.weight", *_bn(f"{c}.1.1")]
                keys += [f"{c}.2.weight", *_bn(f"{c}.3")]
            i += 1
    keys += ["features.18.0.weight", *_bn("features.18.1")]
    return [*keys, "classifier.1.weight", "classifier.1.bias"]


@pytest.mark.parametrize(
    ("name", "expected", "n_params", "shapes"),
    [
        (
            "resnet18",
            torchvision_resnet18_keys,
            11_689_512,
            {
                "conv1.weight": (64, 3, 7, 7),
                "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                "fc.weight": (1000, 512),
            },
        ),
        (
            "mobilenet_v2",
            torchvision_mobilenet_v2_keys,
            3_504_872,
            {
                "features.0.0.weight": (32, 3, 3, 3),
                "features.2.conv.1.0.weight": (96, 1, 3, 3),
                "features.18.0.weight": (1280, 320, 1, 1),
                "classifier.1.weight": (1000, 1280),
            },
        ),
    ],
)
def test_state_dict_keys_match_torchvision(name, expected, n_params, shapes):
    model = load_model(name).model
    sd = model.state_dict()
    assert list(sd) == expected()
    assert sum(p.numel() for p in model.parameters()) == n_params
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape


def test_weights_file_round_trip(tmp_path):
    """A state_dict saved with torch.save (as torchvision ships them) loads; outputs follow it."""
    src = load_model("resnet18", seed=3).model
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    got = load_model("resnet18", weights=str(path), seed=99)
    assert got.weights["kind"] == "file" and len(got.weights["sha256"]) == 64
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(got.model(x), src(x))
        assert not torch.allclose(load_model("resnet18", seed=99).model(x), src(x))


def test_random_init_is_seeded():
    a = load_model("mobilenet_v2", seed=5).model.state_dict()
    b = load_model("mobilenet_v2", seed=5).model.state_dict()
    c = load_model("mobilenet_v2", seed=6).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.0.weight"], c["features.0.0.weight"])


def test_bad_weights_files_name_the_file(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a torch file")
    with pytest.raises(ConfigError, match=r"junk\.pth"):
        load_state_dict_file(junk)
    with pytest.raises(ConfigError, match="no such file"):
        load_model("resnet18", weights=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "mnv2.pth"
    torch.save(load_model("mobilenet_v2").model.state_dict(), wrong)
    with pytest.raises(ConfigError, match=r"mnv2\.pth.*does not fit"):
        load_model("resnet18", weights=str(wrong))
    pickled = tmp_path / "obj.pth"
    torch.save({"w": torch.zeros(1), "fn": print}, pickled)  # not allowed by weights_only
    with pytest.raises(ConfigError, match=r"obj\.pth"):
        load_state_dict_file(pickled)


def test_unknown_model_spec():
    with pytest.raises(ConfigError, match="unknown model"):
        load_model("resnet1000")
    with pytest.raises(ConfigError, match="cannot import"):
        load_model("no_such_pkg.mod:factory")
    with pytest.raises(ConfigError, match="no callable"):
        load_model("carboncp.models.resnet:nope")
