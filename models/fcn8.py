"""FCN8 on VGG16, laid out so that the released FCtL checkpoints map onto it name by name.

Module names follow the released files: ``vgg.features.N`` (torchvision's VGG16 feature stack, first conv
padded by 100, every max-pool with ceil_mode), ``output.{0,3,6}``, ``adj_pool3``, ``adj_pool4`` and the
three fixed bilinear up-samplers ``up_output``, ``up_pool4_out``, ``up_final``. VGG's classifier is never
kept: the released files carry it (about 123.6M unused parameters) but nothing reads it.
"""

from dataclasses import replace

import torch
import torch.nn as nn
import torchvision
from torchvision.models import VGG16_Weights

from models.bands import RGB, InputBands, widen_first_conv
from models.imagenet import imagenet_state_dict
from models.interfaces import Backbone
from models.padded_vgg import BackgroundPlan, Core, PaddedVGG

POOL3_END = 17
POOL4_END = 24


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Channel-diagonal bilinear up-sampling kernel, shape (channels, channels, k, k).

    Channel i only feeds channel i, so the transposed convolution up-samples each class map on its own.
    """
    factor = (kernel_size + 1) // 2
    centre = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    ramp = 1.0 - (torch.arange(kernel_size, dtype=torch.float64) - centre).abs() / factor
    tap = torch.outer(ramp, ramp).to(torch.float32)
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    index = torch.arange(channels)
    weight[index, index] = tap
    return weight


def _fixed_upsampler(channels: int, kernel_size: int, stride: int) -> nn.ConvTranspose2d:
    """A ConvTranspose2d holding a frozen bilinear kernel (it is never trained)."""
    layer = nn.ConvTranspose2d(channels, channels, kernel_size, stride=stride, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, kernel_size))
    layer.weight.requires_grad_(False)
    return layer


def vgg16_features() -> nn.Sequential:
    """torchvision's VGG16 ``features`` with FCN8's changes (padding 100 on conv1_1, ceil-mode pools).

    The whole VGG16 is constructed on the meta device and only ``features`` is materialised, so the
    123.6M-parameter classifier never allocates memory. Conv weights then get torchvision's own VGG
    initialisation (Kaiming normal, fan_out, ReLU gain; zero biases).
    """
    with torch.device("meta"):
        features = torchvision.models.vgg16(weights=None).features
    features = features.to_empty(device="cpu")
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.MaxPool2d):
            layer.ceil_mode = True
    features[0].padding = (100, 100)
    return features


class FCN8(Backbone):
    """FCN8s with a VGG16 encoder.

    ``encode`` returns skips [p3 (B,256,h3,w3), p4 (B,512,h4,w4)] and top p5 (B,512,h5,w5); ``decode``
    turns them into logits (B,n_class,H,W). Context fusion happens between the two, on p5.

    Initialisation: VGG features as torchvision (or ImageNet when ``pretrained``); the head convs keep
    PyTorch's default Conv2d initialisation (Kaiming-uniform, a=sqrt(5)) like the original code, except
    that with ``pretrained`` ``output.0``/``output.3`` take VGG's fc6/fc7 reshaped to (4096,512,7,7) and
    (4096,4096,1,1). The up-samplers hold fixed bilinear kernels with requires_grad False.

    head=False builds only ``vgg.features`` (frozen context/global encoders need nothing else: the
    context is pool5, see ``context_features``).

    skip_padding (default True) convolves only the pixels that the image reaches, not conv1_1's 100-px
    zero padding (models/padded_vgg.py): the same features up to float rounding. False runs the plain
    VGG stack on the padded input.
    """

    name = "fcn8_vgg16"
    top_channels = 512
    context_channels = 512
    context_needs_head = False
    # Patches per pass through the layers up to pool3 when no gradient is recorded (inference, frozen
    # encoders). At full resolution plus 200 px of padding these layers' activations are most of a
    # sub-batch's memory; two patches at a time bound that peak and give the same logits
    # (docs/performance.md has the benchmark).
    stem_batch = 2
    # Background plans kept per encoder without autograd (one per input size, dtype and device in use).
    kept_plans = 4

    def __init__(self, n_class: int, head: bool = True, pretrained: bool = False, skip_padding: bool = True,
                 bands: InputBands = RGB) -> None:
        super().__init__()
        imagenet = imagenet_state_dict(VGG16_Weights.IMAGENET1K_V1) if pretrained else None
        self.n_class = n_class
        self.has_head = head
        self.skip_padding = skip_padding
        self.bands = bands  # FCN8 does not normalise its input (as released), whatever the bands
        self._plans: dict[tuple, BackgroundPlan] = {}
        self.vgg = nn.Module()
        self.vgg.features = vgg16_features()
        if imagenet is not None:
            self.vgg.features.load_state_dict(
                {k[len("features."):]: v for k, v in imagenet.items() if k.startswith("features.")}
            )
        self.vgg.features[0] = widen_first_conv(self.vgg.features[0], bands.count)
        if not head:
            return
        self.output = nn.Sequential(
            nn.Conv2d(512, 4096, kernel_size=7),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Conv2d(4096, 4096, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Conv2d(4096, n_class, kernel_size=1),
        )
        if imagenet is not None:
            with torch.no_grad():
                self.output[0].weight.copy_(imagenet["classifier.0.weight"].view(4096, 512, 7, 7))
                self.output[0].bias.copy_(imagenet["classifier.0.bias"])
                self.output[3].weight.copy_(imagenet["classifier.3.weight"].view(4096, 4096, 1, 1))
                self.output[3].bias.copy_(imagenet["classifier.3.bias"])
        self.adj_pool3 = nn.Conv2d(256, n_class, kernel_size=1)
        self.adj_pool4 = nn.Conv2d(512, n_class, kernel_size=1)
        self.up_output = _fixed_upsampler(n_class, 4, 2)
        self.up_pool4_out = _fixed_upsampler(n_class, 4, 2)
        self.up_final = _fixed_upsampler(n_class, 16, 8)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x (B,bands,H,W) in [0,1], not normalised -> ([p3, p4], p5)."""
        features = self.vgg.features
        if self.skip_padding and PaddedVGG.applies(features[0]):
            return self._encode_cores(x)
        stem = features[:POOL3_END]
        if torch.is_grad_enabled() or x.shape[0] <= self.stem_batch:
            p3 = stem(x)
        else:
            p3 = torch.cat([stem(chunk) for chunk in x.split(self.stem_batch)])
        p4 = features[POOL3_END:POOL4_END](p3)
        return [p3, p4], features[POOL4_END:](p4)

    def _encode_cores(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``encode`` computing only the cores (``BackgroundPlan``)."""
        plan = self.padding_plan(x)

        def stem(chunk: torch.Tensor) -> tuple[Core, torch.Tensor]:
            core = plan.run(plan.start(chunk), 1, POOL3_END)
            return core, plan.full(core, POOL3_END)

        if torch.is_grad_enabled() or x.shape[0] <= self.stem_batch:
            core, p3 = stem(x)
        else:
            parts = [stem(chunk) for chunk in x.split(self.stem_batch)]
            core = replace(parts[0][0], x=torch.cat([part[0].x for part in parts]))
            p3 = torch.cat([part[1] for part in parts])
        core = plan.run(core, POOL3_END, POOL4_END)
        p4 = plan.full(core, POOL4_END)
        end = len(self.vgg.features)
        return [p3, p4], plan.full(plan.run(core, POOL4_END, end), end)

    def padding_plan(self, x: torch.Tensor) -> BackgroundPlan:
        """The background plan for inputs like ``x``. With autograd it is built for this pass (its
        background depends on the weights being trained). Without, it is built on first use and kept
        while the weights, the input's size, dtype, device, memory format and the autocast state stay
        the same; the few most recent are kept (patches, context windows and the global view differ
        in size)."""
        features = self.vgg.features
        stops = (POOL3_END, POOL4_END, len(features))
        if torch.is_grad_enabled():
            return BackgroundPlan(features, x, stops)
        key = BackgroundPlan.key_of(features, x)
        plan = self._plans.get(key)
        if plan is None:
            # Plans of earlier weights can never serve again (version counters only grow): drop them.
            self._plans = {k: v for k, v in self._plans.items() if BackgroundPlan.same_weights(k, key)}
            while len(self._plans) >= self.kept_plans:
                self._plans.pop(next(iter(self._plans)))
            plan = self._plans[key] = BackgroundPlan(features, x, stops)
        return plan

    def decode(self, skips: list[torch.Tensor], top: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """FCN8 head: skips [p3, p4], top p5 (possibly context-fused) -> logits (B,n_class,*size).

        The crop offsets 5, 9 and 31 and the scalings 0.01 / 0.0001 of p4 / p3 are those of the released
        model; they undo the 100-pixel input padding.
        """
        return self.upsample_scores(skips, self.output(top), size)

    def upsample_scores(self, skips: list[torch.Tensor], scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The rest of ``decode`` after the head convolutions: skips [p3, p4] and the class scores at p5's
        resolution (``output`` of p5) -> logits (B,n_class,*size)."""
        p3, p4 = skips
        height, width = size
        up = self.up_output(scores)
        a4 = self.adj_pool4(0.01 * p4)
        up = self.up_pool4_out(a4[:, :, 5 : 5 + up.shape[2], 5 : 5 + up.shape[3]] + up)
        a3 = self.adj_pool3(0.0001 * p3)
        full = self.up_final(a3[:, :, 9 : 9 + up.shape[2], 9 : 9 + up.shape[3]] + up)
        return full[:, :, 31 : 31 + height, 31 : 31 + width].contiguous()

    def context_features(self, skips: list[torch.Tensor], top: torch.Tensor) -> torch.Tensor:
        """The context FCtL's correlation blocks read: pool5 itself, as in the released model."""
        return top
