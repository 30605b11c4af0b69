"""Pure, batched tensor kernels: the single source of truth of every algorithm.

They follow their input's device and dtype, never detach, and contain no Python loops over
pixels, images or channels.
"""

from xai_feedback.functional.ace import ACEResult, ace, fixed_span_smooth, supersmooth
from xai_feedback.functional.cam import (
    NORMALIZATIONS,
    cam_from_head,
    grad_cam,
    grad_cam_pp,
    hires_cam,
    normalize_maps,
    resize_maps,
)
from xai_feedback.functional.contributions import (
    contribution_maps,
    contribution_penalty,
    log_probability_sum,
    receptive_field,
)
from xai_feedback.functional.decomposition import (
    DECOMPOSABLE,
    cdep_penalty,
    contextual_decomposition,
    decompose_module,
    split_bias,
)
from xai_feedback.functional.imputation import (
    blur_images,
    linear_imputation,
    noisy_linear_imputation,
)
from xai_feedback.functional.kernels import (
    DEFAULT_SIGMA,
    KERNEL_SHAPES,
    PERIPHERY_THRESHOLD,
    center_weight,
    normalized_grid,
    periphery_mask,
)
from xai_feedback.functional.masking import (
    FILLS,
    REMOVALS,
    apply_mask,
    attribution_scores,
    blend,
    fill_values,
    rank_mask,
    remove_pixels,
    threshold_mask,
    topk_mask,
)
from xai_feedback.functional.penalties import (
    center_penalty,
    hint_penalty,
    input_gradient_penalty,
    mask_penalty,
    masks_to_maps,
    minmax_normalize,
    rbr_penalty,
    rrr_g_penalty,
)
from xai_feedback.functional.relevance import (
    attention_rollout,
    chefer_relevance,
    relevance_matrix,
    rollout_matrix,
)
from xai_feedback.functional.tokens import tokens_to_grid

__all__ = [
    "DECOMPOSABLE",
    "DEFAULT_SIGMA",
    "FILLS",
    "KERNEL_SHAPES",
    "NORMALIZATIONS",
    "PERIPHERY_THRESHOLD",
    "REMOVALS",
    "ACEResult",
    "ace",
    "apply_mask",
    "attention_rollout",
    "attribution_scores",
    "blend",
    "blur_images",
    "cam_from_head",
    "cdep_penalty",
    "center_penalty",
    "center_weight",
    "chefer_relevance",
    "contextual_decomposition",
    "contribution_maps",
    "contribution_penalty",
    "decompose_module",
    "fill_values",
    "fixed_span_smooth",
    "grad_cam",
    "grad_cam_pp",
    "hint_penalty",
    "hires_cam",
    "input_gradient_penalty",
    "linear_imputation",
    "log_probability_sum",
    "mask_penalty",
    "masks_to_maps",
    "minmax_normalize",
    "noisy_linear_imputation",
    "normalize_maps",
    "normalized_grid",
    "periphery_mask",
    "rank_mask",
    "rbr_penalty",
    "receptive_field",
    "relevance_matrix",
    "remove_pixels",
    "resize_maps",
    "rollout_matrix",
    "rrr_g_penalty",
    "split_bias",
    "supersmooth",
    "threshold_mask",
    "tokens_to_grid",
    "topk_mask",
]
