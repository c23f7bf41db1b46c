"""Layer-wise Hessian traces (../shared/seeds/000, sections 2-4), extreme eigenvalues (002) and
spectral densities (004), global and per block, and the Gauss-Newton / tensor split (001, 004)."""

from workers.curvature.blocks import InterlayerBlocks, gn_gap, interlayer_blocks, stable_rank
from workers.curvature.density import SpectralDensity, smooth_density, spectral_density
from workers.curvature.eigen import TopEigen, top_eigenvalues
from workers.curvature.ggn import GGNTrace, ggn_trace
from workers.curvature.graph import layer_distances
from workers.curvature.groups import ParameterGroups, parameter_groups
from workers.curvature.head import HeadCurvature, head_curvature
from workers.curvature.lanczos import LanczosRun, lanczos
from workers.curvature.reference import blockwise_trace, network_trace
from workers.curvature.sketch import SketchedTrace, sketched_trace
from workers.curvature.split import GaussNewtonSplit, gauss_newton_split
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
    "GaussNewtonSplit",
    "HeadCurvature",
    "InterlayerBlocks",
    "LanczosRun",
    "LayerwiseTrace",
    "ParameterGroups",
    "SketchedTrace",
    "SpectralDensity",
    "TopEigen",
    "block_variance",
    "blockwise_trace",
    "critical_probe_count",
    "gauss_newton_split",
    "ggn_trace",
    "gn_gap",
    "head_curvature",
    "interlayer_blocks",
    "lanczos",
    "layer_distances",
    "layerwise_trace",
    "network_trace",
    "parameter_groups",
    "single_pass_variance",
    "sketched_trace",
    "smooth_density",
    "spectral_density",
    "stable_rank",
    "top_eigenvalues",
]
