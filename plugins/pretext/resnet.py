"""SimCLRv2 ResNet (optionally with selective kernels) and its 3-layer projection head.

Module names follow Separius/SimCLRv2-Pytorch (`resnet.py`), the usual PyTorch conversion of the official
TF checkpoints, so its converted files load key for key: `net.0` is the stem, `net.1`..`net.4` the four
stages (`net.S.blocks.N.projection` / `.net`), and the head is `layers.0..7` (Linear without bias, BatchNorm1d,
ReLU, ..., final BatchNorm1d without ReLU). Depths 18/34 (basic blocks) are our addition for small tests;
they reuse the same naming. The supervised `fc` of that repo is not built (its keys are ignored on load).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BATCH_NORM_EPSILON = 1e-5  # as the TF code
SK_RATIO = 0.0625  # SimCLRv2's selective-kernel ratio ("sk1" checkpoints)
SK_MIN_DIM = 32
STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}


class BatchNormRelu(nn.Sequential):
    def __init__(self, channels: int, relu: bool = True) -> None:
        super().__init__(nn.BatchNorm2d(channels, eps=BATCH_NORM_EPSILON), nn.ReLU() if relu else nn.Identity())


def conv(cin: int, cout: int, kernel_size: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, bias=False)


class SelectiveKernel(nn.Module):
    """SK conv of SimCLRv2: one 3x3 conv with 2x channels split in two paths, mixed by a softmax gate."""

    def __init__(self, cin: int, cout: int, stride: int, sk_ratio: float = SK_RATIO) -> None:
        super().__init__()
        self.main_conv = nn.Sequential(conv(cin, 2 * cout, stride=stride), BatchNormRelu(2 * cout))
        mid = max(int(cout * sk_ratio), SK_MIN_DIM)
        self.mixing_conv = nn.Sequential(conv(cout, mid, kernel_size=1), BatchNormRelu(mid),
                                         conv(mid, 2 * cout, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.stack(torch.chunk(self.main_conv(x), 2, dim=1), dim=0)  # 2, B, C, H, W
        gate = self.mixing_conv(x.sum(dim=0).mean(dim=(2, 3), keepdim=True))  # B, 2C, 1, 1
        gate = torch.stack(torch.chunk(gate, 2, dim=1), dim=0)  # 2, B, C, 1, 1
        return (x * F.softmax(gate, dim=0)).sum(dim=0)


class Projection(nn.Module):
    """Shortcut of a stage's first block (SK nets: average-pool then 1x1 conv, as the TF code)."""

    def __init__(self, cin: int, cout: int, stride: int, sk: bool) -> None:
        super().__init__()
        if sk:
            self.shortcut = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.AvgPool2d(2, stride=stride),
                                          conv(cin, cout, kernel_size=1))
        else:
            self.shortcut = conv(cin, cout, kernel_size=1, stride=stride)
        self.bn = BatchNormRelu(cout, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.shortcut(x))


class BottleneckBlock(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, sk: bool, use_projection: bool) -> None:
        super().__init__()
        cout = width * self.expansion
        self.projection = Projection(cin, cout, stride, sk) if use_projection else nn.Identity()
        ops: list[nn.Module] = [conv(cin, width, kernel_size=1), BatchNormRelu(width)]
        if sk:
            ops.append(SelectiveKernel(width, width, stride))
        else:
            ops += [conv(width, width, stride=stride), BatchNormRelu(width)]
        ops += [conv(width, cout, kernel_size=1), BatchNormRelu(cout, relu=False)]
        self.net = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.projection(x) + self.net(x))


class BasicBlock(BottleneckBlock):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, sk: bool, use_projection: bool) -> None:
        nn.Module.__init__(self)
        self.projection = Projection(cin, width, stride, sk) if use_projection else nn.Identity()
        first = [SelectiveKernel(cin, width, stride)] if sk else [conv(cin, width, stride=stride), BatchNormRelu(width)]
        self.net = nn.Sequential(*first, conv(width, width), BatchNormRelu(width, relu=False))


class Blocks(nn.Module):
    def __init__(self, block: type[BottleneckBlock], num_blocks: int, cin: int, width: int, stride: int,
                 sk: bool) -> None:
        super().__init__()
        self.channels_out = width * block.expansion
        self.blocks = nn.ModuleList([block(cin, width, stride, sk, True)])
        self.blocks.extend(block(self.channels_out, width, 1, sk, False) for _ in range(num_blocks - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


class Stem(nn.Sequential):
    def __init__(self, width_multiplier: int, sk: bool) -> None:
        half = 64 * width_multiplier // 2
        if sk:  # three 3x3 convs instead of one 7x7 (SimCLRv2 SK nets)
            ops = [conv(3, half, stride=2), BatchNormRelu(half), conv(half, half), BatchNormRelu(half),
                   conv(half, 2 * half)]
        else:
            ops = [conv(3, 2 * half, kernel_size=7, stride=2)]
        super().__init__(*ops, BatchNormRelu(2 * half), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))


class SimCLRv2ResNet(nn.Module):
    """Images B,3,H,W -> globally average-pooled features B, channels_out."""

    def __init__(self, depth: int = 50, width_multiplier: int = 1, selective_kernel: bool = False) -> None:
        super().__init__()
        block = BasicBlock if depth < 50 else BottleneckBlock
        ops: list[nn.Module] = [Stem(width_multiplier, selective_kernel)]
        cin = 64 * width_multiplier
        for i, (n, stride) in enumerate(zip(STAGE_BLOCKS[depth], (1, 2, 2, 2))):
            ops.append(Blocks(block, n, cin, 64 * 2 ** i * width_multiplier, stride, selective_kernel))
            cin = ops[-1].channels_out
        self.channels_out = cin
        self.net = nn.Sequential(*ops)
        for m in self.modules():  # residual branches start near identity (TF's init_zero on the last BN)
            if isinstance(m, BottleneckBlock):
                nn.init.zeros_(m.net[-1][0].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(2, 3))  # B, C


class ContrastiveHead(nn.Module):
    """SimCLRv2 projection head: (num_layers - 1) x [Linear, BN, ReLU] at full width, then Linear + BN."""

    def __init__(self, channels_in: int, out_dim: int = 128, num_layers: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for i in range(num_layers):
            last = i == num_layers - 1
            dim = out_dim if last else channels_in
            self.layers.append(nn.Linear(channels_in, dim, bias=False))
            bn = nn.BatchNorm1d(dim, eps=BATCH_NORM_EPSILON)
            nn.init.zeros_(bn.bias)
            self.layers.append(bn)
            if not last:
                self.layers.append(nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x
