"""Neural batch sampler: the policy network's CNN trunk, as an SB3 features extractor.

Paper §IV.C: "The neural batch sampler was a policy network operating on 128 × 128 × 6 input crops, predicting one of
nine discrete actions ... The policy used CNNs and FCLs (Softmax)." The CNN + fully connected layer live here; the
softmax over the 9 actions is SB3's action head (``CategoricalDistribution``), so REINFORCE, PPO, A2C and DQN all
share this one network through ``policy_kwargs``.

Observations are channel-first float32 ``(C, H, W)`` in [0, 1] (C = 6 for the paper's enriched input: RGB, fused
structural map, history map, previous ARE). SB3 only treats uint8 boxes as images, so the policy gets
``normalize_images=False`` and no transpose happens: the env must emit channel-first arrays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

if TYPE_CHECKING:  # models/ never imports gymnasium at run time; SB3 hands us the space
    from gymnasium import spaces

logger = logging.getLogger(__name__)

# Algorithms whose SB3 policy is an ActorCriticPolicy (accepts ``ortho_init``). Used only when the caller does not say.
ON_POLICY_ALGOS = frozenset({"reinforce", "a2c", "ppo"})


@dataclass
class SamplerConfig:
    """Convolution stack of the sampler trunk; the i-th conv has ``channels[i]`` filters of ``kernel_sizes[i]``."""

    channels: tuple[int, ...] = (32, 64, 64, 64)
    kernel_sizes: tuple[int, ...] = (5, 3, 3, 3)
    # Four stride-2 convs with "same" padding: 128 -> 64 -> 32 -> 16 -> 8, i.e. a 64x8x8 map (4096 features);
    # a 32x32 input ends at 2x2, so small test observations work too.
    strides: tuple[int, ...] = (2, 2, 2, 2)


class SamplerCNN(BaseFeaturesExtractor):
    """CNN + fully connected trunk of the sampler policy (conv/ReLU stack, flatten, Linear + ReLU).

    Args:
        observation_space: channel-first Box of shape ``(C, H, W)``, values in [0, 1].
        features_dim: width of the output features (input of SB3's action and value heads).
        config: the convolution stack; ``SamplerConfig()`` when None.
    """

    def __init__(self, observation_space: spaces.Box, features_dim: int = 256, config: SamplerConfig | None = None) -> None:
        config = config or SamplerConfig()
        if not len(config.channels) == len(config.kernel_sizes) == len(config.strides):
            raise ValueError(
                f"SamplerConfig channels, kernel_sizes and strides must have equal lengths, got {config.channels}, "
                f"{config.kernel_sizes}, {config.strides}"
            )
        shape = tuple(observation_space.shape or ())
        if len(shape) != 3:
            raise ValueError(f"SamplerCNN expects a channel-first (C, H, W) observation space, got shape {shape}")
        if features_dim < 1:
            raise ValueError(f"features_dim must be >= 1, got {features_dim}")
        super().__init__(observation_space, features_dim)
        self.config = config

        layers: list[nn.Module] = []
        in_channels = shape[0]
        for out_channels, kernel, stride in zip(config.channels, config.kernel_sizes, config.strides):
            layers += [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2), nn.ReLU()]
            in_channels = out_channels
        self.cnn = nn.Sequential(*layers, nn.Flatten())

        # Flatten size by a dry run, as NatureCNN does (zeros: no draw from the space's RNG).
        with torch.no_grad():
            n_flatten = self.cnn(torch.zeros(1, *shape)).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flatten, features_dim), nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """Map observations ``(B, C, H, W)`` to features ``(B, features_dim)``."""
        x = self.cnn(observations)  # (B, channels[-1] * H' * W')
        return self.linear(x)  # (B, features_dim)


def sampler_policy_kwargs(features_dim: int = 256) -> dict[str, Any]:
    """``policy_kwargs`` that put :class:`SamplerCNN` in any SB3 policy, with no hidden layers after it.

    Args:
        features_dim: width of the extractor's output.

    Returns:
        kwargs valid for every SB3 policy (ActorCriticPolicy, DQNPolicy, ...).
    """
    return dict(
        features_extractor_class=SamplerCNN,
        features_extractor_kwargs=dict(features_dim=features_dim),
        normalize_images=False,  # float observations already in [0, 1]
        net_arch=[],  # the extractor ends in the FC layer; heads sit directly on it (a list suits DQN and on-policy)
    )


def policy_kwargs_for(algo_name: str, features_dim: int = 256, on_policy: bool | None = None) -> dict[str, Any]:
    """The sampler's ``policy_kwargs`` for one algorithm.

    On-policy policies (ActorCriticPolicy) also get ``ortho_init=False``, because orthogonal init would re-initialise
    every layer of the custom extractor; DQN's policy does not accept that argument.

    Args:
        algo_name: algorithm name, e.g. "reinforce", "ppo", "a2c", "dqn", "random".
        features_dim: width of the extractor's output.
        on_policy: whether the algorithm's policy is an ActorCriticPolicy; inferred from ``algo_name`` when None.

    Returns:
        a fresh dict, safe to mutate.
    """
    kwargs = sampler_policy_kwargs(features_dim)
    if on_policy is None:
        on_policy = algo_name.lower() in ON_POLICY_ALGOS
    if on_policy:
        kwargs["ortho_init"] = False
    return kwargs
