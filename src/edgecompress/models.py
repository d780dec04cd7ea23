"""Small reference models used by the demo, the tests and the docs."""

from __future__ import annotations

from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """A ResNet basic block with a 1×1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallCNN(nn.Module):
    """A compact CNN (conv-bn-relu stacks) for 1- or 3-channel images; the demo's model."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(conv_bn(in_channels, w), conv_bn(w, w), nn.MaxPool2d(2),
                                      conv_bn(w, 2 * w), conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
                                      conv_bn(2 * w, 4 * w))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


class SmallResNet(nn.Module):
    """A small ResNet (residual additions) for 1- or 3-channel images."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16,
                 blocks: tuple[int, ...] = (1, 1, 1)):
        super().__init__()
        self.stem = conv_bn(in_channels, width)
        layers: list[nn.Module] = []
        cin = width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, stride=2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 32) -> SmallCNN:
    """Builder for :class:`SmallCNN` (usable as ``builder="edgecompress.models:small_cnn"``)."""
    return SmallCNN(in_channels, num_classes, width)


def small_resnet(in_channels: int = 1, num_classes: int = 10, width: int = 16) -> SmallResNet:
    return SmallResNet(in_channels, num_classes, width)
