"""FCtL's correlation block: attention from a patch's features to a context's features."""

import torch
import torch.nn as nn

# ``--correlation``: "centred" is the DeepGlobe release's block, "plain" the Inria release's.
CORRELATIONS = ("centred", "plain")


class FCtLCorrelation(nn.Module):
    """Non-local attention of x's positions over y's positions.

    x has ``channels`` channels, y ``context_channels`` (by default the same, as in the released model).
    value = Conv1x1(y) (no bias), query = Conv1x1(x), key = Conv1x1(y), each with ``channels`` outputs.
    With ``centred`` (the DeepGlobe release) query and key are centred by subtracting their mean over
    positions (per channel) first; the Inria release does not centre them (``centred=False``, the
    ``plain`` correlation), which changes every attention weight: centring the query changes the scores'
    spread. Attention = softmax over y's positions of query^T key, unscaled; out = value weighted by
    attention, reshaped to x's spatial size. Returns
    gamma * out with gamma a learned scalar starting at ``gamma``: 0 in the released model, so a fresh
    block leaves the features unchanged; but Adam moves a parameter by about one learning rate per step,
    so from 0 the gate needs about 1/lr steps to open fully (see ``--gamma_init``).
    (Centring the key shifts all scores of one query by the same amount, so it cannot change the softmax;
    it is kept to follow the DeepGlobe release step by step.)
    Init: conv weights N(0, 0.01), biases 0 (as the released model).
    """

    def __init__(self, channels: int, context_channels: int | None = None, gamma: float = 0.0,
                 centred: bool = True) -> None:
        super().__init__()
        self.centred = centred
        context_channels = channels if context_channels is None else context_channels
        self.gamma = nn.Parameter(torch.full((1,), float(gamma)))
        self.conv_value = nn.Conv2d(context_channels, channels, kernel_size=1, bias=False)
        self.conv_query = nn.Conv2d(channels, channels, kernel_size=1)
        self.conv_key = nn.Conv2d(context_channels, channels, kernel_size=1)
        for conv in (self.conv_value, self.conv_query, self.conv_key):
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B,C,h,w) queries, y (B,C',h',w') or (1,C',h',w') context -> (B,C,h,w).

        A context with batch 1 (the global view shared by all patches of an image) is broadcast over
        x's batch: the same result as repeating it B times, without B copies of its value/key maps.
        """
        batch, channels, height, width = x.shape
        query = self.conv_query(x).flatten(2)
        key = self.conv_key(y).flatten(2)
        value = self.conv_value(y).flatten(2)
        if self.centred:
            query = query - query.mean(dim=2, keepdim=True)
            key = key - key.mean(dim=2, keepdim=True)
        attention = torch.softmax(torch.matmul(query.transpose(1, 2), key), dim=-1)
        out = torch.matmul(value, attention.transpose(1, 2))
        return self.gamma * out.reshape(batch, channels, height, width)
