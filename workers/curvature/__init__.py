"""Layer-wise Hessian trace estimation (../shared/seeds/000, sections 2-4)."""

from workers.curvature.ggn import GGNTrace, ggn_trace
from workers.curvature.groups import ParameterGroups, parameter_groups
from workers.curvature.head import HeadCurvature, head_curvature
from workers.curvature.reference import blockwise_trace, network_trace
from workers.curvature.trace import LayerwiseTrace, layerwise_trace
from workers.curvature.variance import (
    CriticalProbeCount,
    block_variance,
    critical_probe_count,
    single_pass_variance,
)

__all__ = [
    "CriticalProbeCount",
    "GGNTrace",
    "HeadCurvature",
    "LayerwiseTrace",
    "ParameterGroups",
    "block_variance",
    "blockwise_trace",
    "critical_probe_count",
    "ggn_trace",
    "head_curvature",
    "layerwise_trace",
    "network_trace",
    "parameter_groups",
    "single_pass_variance",
]
