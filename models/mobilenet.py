"""MobileNetV2 with torchvision's module names, so torchvision state_dicts load unchanged.

Cut points at its natural stages, where the spatial resolution changes (and after the last
320-channel block, before the 1x1 conv widens it to 1280 channels):
input | features.0-1 (112x112) | features.2-3 (56) | features.4-6 (28) | features.7-13 (14)
| features.14-17 (7) | features.18+classifier.
"""

from __future__ import annotations

import torch
from carboncp.models.stage import Flatten1, Stage
from torch import nn


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU(nn.Sequential):
    """torchvision's Conv2dNormActivation: keys '<i>.0.weight' (conv), '<i>.1.*' (BN)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(inp, hidden, kernel=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# t (expansion), c (channels), n (repeats), s (first stride): torchvision's table.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip
# Cut after these feature indices (inclusive end of each stage).
STAGE_ENDS = (1, 3, 6, 13, 17)


class MobileNetV2(nn.Module):
    input_shape = (1, 3, 224, 224)

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU(3, cin, stride=2)]
        for t, c, n, s in SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvBNReLU(cin, self.last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes)
        )
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def cut_stages(self) -> list[tuple[str, nn.Module]]:
        stages: list[tuple[str, nn.Module]] = []
        start = 0
        for end in STAGE_ENDS:
            parts = [(str(i), self.features[i]) for i in range(start, end + 1)]
            stages.append((f"features.{start}-{end}", Stage(parts)))
            start = end + 1
        last = len(self.features) - 1
        tail = [(str(i), self.features[i]) for i in range(start, last + 1)]
        tail += [("pool", nn.AdaptiveAvgPool2d((1, 1))), ("flatten", Flatten1()),
                 ("classifier", self.classifier)]  # fmt: skip
        span = f"{start}-{last}" if last > start else f"{start}"
        stages.append((f"features.{span}+classifier", Stage(tail)))
        return stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    return MobileNetV2(num_classes)
