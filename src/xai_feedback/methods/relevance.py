r"""The relevance kind: a vision transformer's attention probabilities ``-> (B, h, w)``.

- ``"rollout"`` (:class:`Rollout`): attention rollout (Abnar & Zuidema 2020), class-agnostic;
- ``"chefer_relevance"`` (:class:`CheferRelevance`): Chefer et al.'s gradient-weighted
  relevance (ICCV 2021), of the target class.

Both are kernels of :mod:`xai_feedback.functional.relevance`, batched and differentiable.
:class:`~xai_feedback.relevance.AttentionCapture` captures the probabilities and computes the
maps (:meth:`~xai_feedback.relevance.AttentionCapture.maps`);
:func:`~xai_feedback.attribution.attribute` serves them detached.

Adding a method: subclass :class:`RelevanceMethod`, set ``name``, write
:meth:`RelevanceMethod.from_attention` (its kernel in ``functional/relevance.py``) and decorate
the class with :func:`~xai_feedback.methods.register_method`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from xai_feedback.errors import HookError
from xai_feedback.functional.relevance import attention_rollout, chefer_relevance
from xai_feedback.methods._gradients import (
    ALL_CLASSES_MAX_BYTES,
    CLASS_CHUNK,
    all_class_maps,
    score_gradients,
)
from xai_feedback.methods._registry import Method, MethodKind, register_method

__all__ = ["AttentionInputs", "CheferRelevance", "RelevanceMethod", "Rollout"]

_WHAT = "the captured attentions"


@dataclass(frozen=True)
class AttentionInputs:
    """What a relevance method reads: one forward's attention probabilities and logits.

    Built by :meth:`~xai_feedback.relevance.AttentionCapture.maps`.

    Attributes:
        attentions: Per block, first block first, ``(B, heads, N, N)``, in the logits' graph.
        logits: ``(B, K)`` logits of the same forward.
        grid: Patch grid ``(h, w)``, or ``None`` for the square grid.
        prefix_tokens: Leading non-patch tokens (class, distillation, register).
        query: The row read (a token index), or ``None`` for the mean of the patch rows.
        create_graph: Keep the gradients in the graph (second-order training through them).
        max_bytes: Bound on the gradients kept by all-class maps
            (:func:`~xai_feedback.methods._gradients.all_class_maps`); ``None``: no bound.
        class_chunk: Classes per batched backward of all-class maps.
    """

    attentions: Sequence[torch.Tensor]
    logits: torch.Tensor
    grid: tuple[int, int] | None = None
    prefix_tokens: int = 1
    query: int | None = 0
    create_graph: bool = True
    max_bytes: int | None = ALL_CLASSES_MAX_BYTES
    class_chunk: int = CLASS_CHUNK


class RelevanceMethod(Method):
    """A transformer relevance method: attention probabilities ``-> (B, h, w)`` maps.

    Called through :meth:`maps`, as every CAM method is through
    :meth:`~xai_feedback.methods.CAMMethod.maps`; a subclass supplies the kernel
    (:meth:`from_attention`).
    """

    kind: ClassVar[MethodKind] = "relevance"
    options: ClassVar[frozenset[str]] = frozenset({"prefix_tokens", "grid", "query"})
    needs_gradients: ClassVar[bool] = True

    @abstractmethod
    def from_attention(
        self,
        attentions: Sequence[torch.Tensor],
        gradients: Sequence[torch.Tensor] | None,
        *,
        grid: tuple[int, int] | None,
        prefix_tokens: int,
        query: int | None,
    ) -> torch.Tensor:
        """The kernel: maps ``(B, h, w)`` from attentions (and the target's gradients)."""

    def gradients(self, inputs: AttentionInputs, target: torch.Tensor) -> list[torch.Tensor]:
        """``d(sum_b y_{b, target_b}) / dA_l`` for every block, by ``torch.autograd.grad``.

        Raises:
            HookError: The attentions do not require grad, or the logits do not depend on
                them (another forward).
        """
        return score_gradients(
            inputs.logits,
            target,
            inputs.attentions,
            create_graph=inputs.create_graph,
            what=_WHAT,
        )

    def maps(self, inputs: AttentionInputs, target: torch.Tensor | None) -> torch.Tensor:
        """Maps of ``target`` ``(B,)`` as ``(B, h, w)``, or of every class (``None``).

        Raises:
            RangeError: ``target=None`` and the gradients of all classes would exceed
                ``inputs.max_bytes``.

        Shape:
            - output: :math:`(B, h, w)`, or :math:`(B, K, h, w)` for ``target=None``
        """
        if target is None:

            def maps_of(classes: torch.Tensor, grads: list[torch.Tensor] | None) -> torch.Tensor:
                return self._from_inputs(inputs, grads)

            return all_class_maps(
                inputs.logits,
                maps_of,
                inputs.attentions if self.needs_gradients else [],
                create_graph=inputs.create_graph,
                what=_WHAT,
                max_bytes=inputs.max_bytes,
                class_chunk=inputs.class_chunk,
            )
        grads = self.gradients(inputs, target) if self.needs_gradients else None
        return self._from_inputs(inputs, grads)

    def _from_inputs(
        self, inputs: AttentionInputs, grads: Sequence[torch.Tensor] | None
    ) -> torch.Tensor:
        return self.from_attention(
            inputs.attentions,
            grads,
            grid=inputs.grid,
            prefix_tokens=inputs.prefix_tokens,
            query=inputs.query,
        )


@register_method
class Rollout(RelevanceMethod):
    """Attention rollout (Abnar & Zuidema 2020), :func:`~xai_feedback.functional.attention_rollout`.

    Class-agnostic: every target gets the same map (``target=None`` gives ``K`` equal maps).
    """

    name = "rollout"
    citation = "S. Abnar, W. Zuidema, Quantifying Attention Flow in Transformers, ACL 2020."
    needs_gradients = False

    def from_attention(
        self,
        attentions: Sequence[torch.Tensor],
        gradients: Sequence[torch.Tensor] | None,
        *,
        grid: tuple[int, int] | None,
        prefix_tokens: int,
        query: int | None,
    ) -> torch.Tensor:
        """Rollout maps."""
        return attention_rollout(attentions, grid, prefix_tokens=prefix_tokens, query=query)

    def maps(self, inputs: AttentionInputs, target: torch.Tensor | None) -> torch.Tensor:
        """One rollout, expanded over the classes for ``target=None``."""
        maps = self.from_attention(
            inputs.attentions,
            None,
            grid=inputs.grid,
            prefix_tokens=inputs.prefix_tokens,
            query=inputs.query,
        )
        if target is None:
            return maps.unsqueeze(1).expand(-1, int(inputs.logits.shape[1]), -1, -1)
        return maps


@register_method
class CheferRelevance(RelevanceMethod):
    """Chefer et al.'s relevance (ICCV 2021), :func:`~xai_feedback.functional.chefer_relevance`."""

    name = "chefer_relevance"
    citation = (
        "H. Chefer, S. Gur, L. Wolf, Generic Attention-model Explainability for Interpreting "
        "Bi-Modal and Encoder-Decoder Transformers, ICCV 2021."
    )

    def from_attention(
        self,
        attentions: Sequence[torch.Tensor],
        gradients: Sequence[torch.Tensor] | None,
        *,
        grid: tuple[int, int] | None,
        prefix_tokens: int,
        query: int | None,
    ) -> torch.Tensor:
        """Relevance maps."""
        if gradients is None:
            raise HookError("method 'chefer_relevance' needs the attentions' gradients, got None.")
        return chefer_relevance(
            attentions, gradients, grid, prefix_tokens=prefix_tokens, query=query
        )
