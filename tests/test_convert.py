"""Importing weights saved in torchvision's and the common CIFAR layouts.

Each test builds the *original* layout here (written the way those projects lay out their modules)
and checks that reslab, after import, produces the same logits.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reslab
from reslab.errors import CheckpointError
from reslab.models.convert import load_foreign_weights


class TVBasic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + idt)


class TVBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride on the 3x3
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + idt)


class TorchvisionLayout(nn.Module):
    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512))):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, (1 if i == 0 else 2) if j == 0 else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class CifarBlock(nn.Module):
    def __init__(self, cin, planes, stride, option):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            if option == "A":
                self.shortcut = LambdaLayer(
                    lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)))
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarLayout(nn.Module):
    def __init__(self, n, option="A", num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(CifarBlock(cin, planes, (1 if i == 0 else 2) if j == 0 else 1, option))
                cin = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(F.avg_pool2d(x, x.size(3)).flatten(1))


def randomise_bn(model):
    """Give BN layers non-trivial statistics so that a mis-mapped buffer would show in the logits."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name, block, layers", [
    ("resnet18", TVBasic, (2, 2, 2, 2)),
    ("resnet50", TVBottleneck, (3, 4, 6, 3)),
])
def test_torchvision_layout_gives_same_logits(name, block, layers):
    torch.manual_seed(0)
    original = randomise_bn(TorchvisionLayout(block, layers))
    ours = reslab.create_model(name, bottleneck_stride="3x3").eval()
    load_foreign_weights(ours, original.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), original(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("option", ["A", "B"])
def test_cifar_layout_nested_and_prefixed_gives_same_logits(option):
    torch.manual_seed(0)
    original = randomise_bn(CifarLayout(3, option))
    saved = {"epoch": 200, "best_prec1": 91.7,
             "state_dict": {f"module.{k}": v for k, v in original.state_dict().items()}}
    ours = reslab.create_model("resnet20", shortcut=option).eval()
    load_foreign_weights(ours, saved)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), original(x), rtol=1e-4, atol=1e-4)


def test_wrong_model_is_a_clear_error():
    original = CifarLayout(3)
    with pytest.raises(CheckpointError, match="missing"):
        load_foreign_weights(reslab.create_model("resnet32"), original.state_dict())
    with pytest.raises(CheckpointError, match="shape"):
        load_foreign_weights(reslab.create_model("resnet20", num_classes=100), original.state_dict())
    with pytest.raises(CheckpointError, match="no state dict"):
        load_foreign_weights(reslab.create_model("resnet20"), {"epoch": 3})


def test_weights_saved_before_pytorch_0_4_1_lack_only_the_batch_counters():
    torch.manual_seed(0)
    original = randomise_bn(CifarLayout(3, "A"))
    old = {k: v for k, v in original.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(old) < len(original.state_dict())  # the file really lacks the counters
    ours = reslab.create_model("resnet20").eval()
    load_foreign_weights(ours, {"state_dict": old})
    counters = [v for k, v in ours.state_dict().items() if k.endswith("num_batches_tracked")]
    assert counters and all(int(c) == 0 for c in counters)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), original(x), rtol=1e-4, atol=1e-4)
    del old["bn1.running_var"]  # any other missing key is still refused
    with pytest.raises(CheckpointError, match=r"1 missing \(e.g. stem.bn.running_var\)"):
        load_foreign_weights(reslab.create_model("resnet20"), old)
