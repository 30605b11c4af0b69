r"""Attention architectures of the White Box study, sized for 28-32 px images.

Every model here has a GAP + linear head (``classifier``) fed by ``cam_layer``, so CAM,
Grad-CAM and the feedback penalties work on it unchanged, and every attention module keeps the
maps of its last forward pass, in the graph, as ``module.attention`` (``(B, h, w)``, values in
[0, 1]); ``model.attention_maps()`` collects them by name, ready to plot or to penalize.

- :class:`CBAM` (Woo et al. 2018): channel attention
  :math:`M_c = \sigma(\mathrm{MLP}(\mathrm{avg}(F)) + \mathrm{MLP}(\mathrm{max}(F)))`, then
  spatial attention :math:`M_s = \sigma(f^{7\times7}([\mathrm{avg}_c F'; \max_c F']))`,
  :math:`F'' = M_s \odot (M_c \odot F)`. Usable inside any CNN.
- :class:`SimpleCNN`: the study's three-block CNN, optionally with CBAM after each block.
- :class:`ResidualAttentionNet` (Wang et al. 2017): attention modules whose soft-mask branch
  (down-sample, residual units, up-sample, sigmoid) modulates a trunk branch as
  :math:`(1 + M(x)) \odot T(x)` (attention residual learning).
- :class:`WARN` (Rodriguez et al. 2018): a wide residual network with attention heads on
  intermediate groups; each head's spatial softmax pools class scores over positions, the heads
  are gated, and a learned gate mixes the attention outputs with the network's own logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xai_feedback._checks import (
    check_choice,
    check_model_input,
    check_number,
    check_shape,
    check_sizes,
)
from xai_feedback.errors import ShapeError
from xai_feedback.models.gapnet import ConvBlock, check_training_batch, init_weights

__all__ = [
    "CBAM",
    "WARN",
    "AttentionModel",
    "ChannelAttention",
    "ResidualAttentionNet",
    "SimpleCNN",
    "SpatialAttention",
]


class ChannelAttention(nn.Module):
    r"""CBAM's channel attention :math:`\sigma(\mathrm{MLP}(\bar F) + \mathrm{MLP}(\hat F))`.

    Shape:
        - Input :math:`(B, C, H, W)`; output :math:`(B, C, 1, 1)` in (0, 1).
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Channel weights ``(B, C, 1, 1)``."""
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    r"""CBAM's spatial attention :math:`M_s = \sigma(f^{k \times k}([\mathrm{avg}_c; \max_c]))`.

    Shape:
        - Input :math:`(B, C, H, W)`; output :math:`(B, 1, H, W)` in (0, 1).
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial weights ``(B, 1, H, W)``."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018), a drop-in block for any CNN.

    After a forward pass, ``attention`` holds the spatial map ``(B, H, W)`` and
    ``channel_attention`` the channel weights ``(B, C)``, both in the graph.

    Args:
        channels: Channels of the feature map.
        reduction: Reduction ratio of the channel MLP.
        kernel_size: Kernel of the spatial attention convolution.

    Shape:
        - Input and output :math:`(B, C, H, W)`.

    Example:
        >>> block = CBAM(16)
        >>> block(torch.rand(2, 16, 7, 7)).shape, block.attention.shape
        (torch.Size([2, 16, 7, 7]), torch.Size([2, 7, 7]))
    """

    def __init__(self, channels: int, reduction: int = 8, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)
        self.attention: torch.Tensor | None = None
        self.channel_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Refined features; stores ``attention`` and ``channel_attention``."""
        mc = self.channel(x)
        x = x * mc
        ms = self.spatial(x)
        self.channel_attention = mc.flatten(1)
        self.attention = ms.squeeze(1)
        refined: torch.Tensor = x * ms
        return refined


class AttentionModel(nn.Module):
    """Base of the attention models: ``cam_layer``, ``classifier`` and ``attention_maps()``."""

    cam_layer = "features"
    """Dotted name of the layer whose output feeds the GAP + linear head."""
    classifier: nn.Linear

    def attention_maps(self) -> dict[str, torch.Tensor]:
        """The attention maps ``(B, h, w)`` of the last forward pass, by module name."""
        return {
            name: module.attention
            for name, module in self.named_modules()
            if isinstance(getattr(module, "attention", None), torch.Tensor)
        }

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Re-initialize every weight from ``generator`` (see :func:`init_weights`)."""
        init_weights(self, generator)

    def _check(self, images: torch.Tensor, in_channels: int, side: int) -> None:
        check_shape(images, "B C H W", "images", C=in_channels)
        check_model_input(self, images)
        if min(images.shape[-2:]) < side:
            raise ShapeError(
                f"`images` must be at least {side}x{side}, got shape {tuple(images.shape)}."
            )


class SimpleCNN(AttentionModel):
    """The White Box study's simple CNN: three conv-BN-ReLU blocks, optionally CBAM, GAP + linear.

    Blocks have ``width``, ``2 width`` and ``4 width`` channels; the first two end with 2x2
    max-pooling (28 px -> 7x7 maps). With ``cbam=True`` a :class:`CBAM` follows each block.
    ``head="gap"`` (default) is the CAM head (global average pooling + linear);
    ``head="fc"`` is the study's plain CNN head (4x4 average pooling, flatten, linear), for
    which Grad-CAM works but exact CAM does not.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)` with ``H, W >= 4``; output: :math:`(B, K)`.

    Example:
        >>> model = SimpleCNN(cbam=True, generator=torch.Generator().manual_seed(0))
        >>> model(torch.rand(2, 1, 28, 28)).shape, sorted(model.attention_maps())
        (torch.Size([2, 10]), ['features.1', 'features.4', 'features.7'])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 32,
        *,
        cbam: bool = False,
        head: str = "gap",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_sizes(in_channels=in_channels, num_classes=num_classes, width=width)
        self.head = check_choice(head, "head", ("gap", "fc"))
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        channels = in_channels
        for i, out in enumerate((width, 2 * width, 4 * width)):
            layers.append(ConvBlock(channels, out))
            if cbam:
                layers.append(CBAM(out))
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers)
        inputs = channels if head == "gap" else channels * 16
        self.classifier = nn.Linear(inputs, num_classes)
        if generator is not None:
            self.reset_parameters(generator)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)``."""
        self._check(images, self.in_channels, 4)
        check_training_batch(self, images, 2)
        feats = self.features(images)
        if self.head == "gap":
            pooled = feats.mean(dim=(2, 3))
        else:
            pooled = F.adaptive_avg_pool2d(feats, 4).flatten(1)
        out: torch.Tensor = self.classifier(pooled)
        return out


class _PreActUnit(nn.Module):
    """Pre-activation residual unit (BN-ReLU-conv x2), with a 1x1 projection when needed."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.dropout:
            out = F.dropout(out, self.dropout, self.training)
        result: torch.Tensor = self.conv2(out) + skip
        return result


class _AttentionModule(nn.Module):
    r"""Residual attention module: :math:`H = (1 + M(x)) \odot T(x)` (Wang et al. 2017).

    Trunk: two residual units. Soft mask: max-pool, a residual unit, (one more down/up level
    when the map is at least 8 px), bilinear up-sampling with a skip, two 1x1 convs, sigmoid.
    ``attention`` keeps the mask averaged over channels, ``(B, h, w)``.
    """

    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        self.levels = levels
        self.first = _PreActUnit(channels, channels)
        self.trunk = nn.Sequential(_PreActUnit(channels, channels), _PreActUnit(channels, channels))
        self.down = nn.ModuleList(_PreActUnit(channels, channels) for _ in range(levels))
        self.skips = nn.ModuleList(_PreActUnit(channels, channels) for _ in range(levels - 1))
        self.up = nn.ModuleList(_PreActUnit(channels, channels) for _ in range(levels - 1))
        self.mask_out = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
        )
        self.last = _PreActUnit(channels, channels)
        self.attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        trunk = self.trunk(x)
        sizes, skips, m = [], [], x
        for level in range(self.levels):
            sizes.append(m.shape[-2:])
            m = self.down[level](F.max_pool2d(m, 3, stride=2, padding=1))
            if level < self.levels - 1:
                skips.append(self.skips[level](m))
        for level in reversed(range(self.levels)):
            m = F.interpolate(m, size=sizes[level], mode="bilinear", align_corners=False)
            if level > 0:
                m = self.up[level - 1](m + skips[level - 1])
        mask = torch.sigmoid(self.mask_out(m))
        self.attention = mask.mean(dim=1)
        result: torch.Tensor = self.last((1 + mask) * trunk)
        return result


class ResidualAttentionNet(AttentionModel):
    """A Residual Attention Network (Wang et al. 2017) scaled for 28-32 px images.

    Stem conv (``width``) -> unit (``2 width``) -> attention module at full resolution ->
    unit (``4 width``, stride 2) -> attention module -> unit (``8 width``, stride 2) ->
    BN-ReLU (``features``) -> GAP -> linear. 28 px inputs give 7x7 maps.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)` with ``H, W >= 8``; output: :math:`(B, K)`.

    Example:
        >>> model = ResidualAttentionNet(width=4, generator=torch.Generator().manual_seed(0))
        >>> model(torch.rand(2, 1, 32, 32)).shape, model.attention_maps()["stage1"].shape
        (torch.Size([2, 10]), torch.Size([2, 32, 32]))
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_sizes(in_channels=in_channels, num_classes=num_classes, width=width)
        self.in_channels = in_channels
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.unit1 = _PreActUnit(width, 2 * width)
        self.stage1 = _AttentionModule(2 * width, levels=2)
        self.unit2 = _PreActUnit(2 * width, 4 * width, stride=2)
        self.stage2 = _AttentionModule(4 * width, levels=1)
        self.unit3 = _PreActUnit(4 * width, 8 * width, stride=2)
        self.features = nn.Sequential(nn.BatchNorm2d(8 * width), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(8 * width, num_classes)
        if generator is not None:
            self.reset_parameters(generator)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)``."""
        self._check(images, self.in_channels, 8)
        x = self.unit1(self.stem(images))
        x = self.unit2(self.stage1(x))
        x = self.unit3(self.stage2(x))
        out: torch.Tensor = self.classifier(self.features(x).mean(dim=(2, 3)))
        return out


class _AttentionHead(nn.Module):
    r"""WARN attention: ``heads`` spatial softmaxes pool per-position class scores.

    :math:`a_h = \mathrm{softmax}_{xy}(w_h^\top F)`, :math:`o_h = \sum_{xy} a_h(x, y)\,
    (V_h F)(x, y)`, gated over heads by :math:`g = \mathrm{softmax}(G\,\bar F)`:
    :math:`o = \sum_h g_h o_h`. ``attention`` is the mean of the heads' maps rescaled to
    [0, 1] per image, ``(B, h, w)``.
    """

    def __init__(self, channels: int, num_classes: int, heads: int) -> None:
        super().__init__()
        self.heads, self.num_classes = heads, num_classes
        self.att = nn.Conv2d(channels, heads, 1)
        self.out = nn.Conv2d(channels, heads * num_classes, 1)
        self.gate = nn.Linear(channels, heads)
        self.attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        att = self.att(x).flatten(2).softmax(dim=-1)  # (B, heads, hw)
        scores = self.out(x).view(b, self.heads, self.num_classes, h * w)
        per_head = (scores * att.unsqueeze(2)).sum(dim=-1)  # (B, heads, K)
        gates = self.gate(x.mean(dim=(2, 3))).softmax(dim=-1)
        maps = att.mean(dim=1).view(b, h, w)
        self.attention = maps / maps.amax(dim=(1, 2), keepdim=True)
        mixed: torch.Tensor = (gates.unsqueeze(-1) * per_head).sum(dim=1)
        return mixed


class WARN(AttentionModel):
    r"""Wide Attention Residual Network (Rodriguez et al. 2018) on a small wide ResNet.

    A WRN of three groups (``16 k``, ``32 k``, ``64 k`` channels, ``units`` pre-activation units
    each, strides 1, 2, 2) with :class:`_AttentionHead` s after groups 2 and 3. The logits are
    a gated mix :math:`z = \sum_i \gamma_i z_i` of the network's own GAP + linear output and
    the attention outputs, with :math:`\gamma = \mathrm{softmax}(\Gamma \bar F)` from the last
    features. CAM and Grad-CAM use the network's own head (``classifier``).

    Shape:
        - Input: :math:`(B, C_{in}, H, W)` with ``H, W >= 4``; output: :math:`(B, K)`.

    Example:
        >>> model = WARN(widen=1, units=1, generator=torch.Generator().manual_seed(0))
        >>> model(torch.rand(2, 1, 28, 28)).shape, sorted(model.attention_maps())
        (torch.Size([2, 10]), ['head2', 'head3'])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widen: int = 2,
        units: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_sizes(
            in_channels=in_channels, num_classes=num_classes, widen=widen, units=units, heads=heads
        )
        check_number(dropout, "dropout", minimum=0, maximum=1, strict_maximum=True)
        self.in_channels = in_channels
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        groups, cin = [], 16
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            group = [_PreActUnit(cin, cout, stride, dropout)]
            group += [_PreActUnit(cout, cout, 1, dropout) for _ in range(units - 1)]
            groups.append(nn.Sequential(*group))
            cin = cout
        self.group1, self.group2, self.group3 = groups
        self.head2 = _AttentionHead(widths[1], num_classes, heads)
        self.head3 = _AttentionHead(widths[2], num_classes, heads)
        self.features = nn.Sequential(nn.BatchNorm2d(widths[2]), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(widths[2], num_classes)
        self.mix = nn.Linear(widths[2], 3)
        if generator is not None:
            self.reset_parameters(generator)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)``."""
        self._check(images, self.in_channels, 4)
        check_training_batch(self, images, 2, ceil=True)
        x2 = self.group2(self.group1(self.stem(images)))
        x3 = self.group3(x2)
        feats = self.features(x3)
        pooled = feats.mean(dim=(2, 3))
        outputs = torch.stack([self.classifier(pooled), self.head2(x2), self.head3(feats)], dim=1)
        gamma = self.mix(pooled).softmax(dim=-1)
        logits: torch.Tensor = (gamma.unsqueeze(-1) * outputs).sum(dim=1)
        return logits
