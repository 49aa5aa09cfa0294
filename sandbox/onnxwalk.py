"""The one walk over an ONNX model, and the operator-domain rule, for inspection and loading.

The registry's inspection (`model_registry.inspection`) and the worker's pre-load backstop
(`sandbox.runtime.check_model`) both need to see everything a model holds: the main graph,
every subgraph (If/Loop/Scan bodies, at any depth), every model-local function with its
attribute defaults (`FunctionProto.attribute_proto`), and the training graphs. Two walkers
drifted apart once (one skipped attribute defaults), so there is only this one. It imports
onnx, never onnxruntime, so the web side can use it too.

The walk is lazy and depth-first, in model order; a consumer stops it by leaving the loop.
It never descends below `depth_max`: a graph nested deeper is reported as :class:`TooDeep`
instead of walked, so the walk's own cost is bounded whatever the model declares.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

import onnx
from onnx import AttributeProto, GraphProto, NodeProto, SparseTensorProto, TensorProto

# Domains that belong to ONNX itself or to onnxruntime's own kernels (contrib, internal
# layout-transformed, extensions, PyTorch ATen). A model-local function may not be defined in
# any of them: onnxruntime resolves a node to its registered kernel before it looks at local
# functions, so such a "function" would smuggle in the kernel it names. `reserved_domains`
# adds whatever the installed onnxruntime registers beyond these.
RESERVED_DOMAIN_PREFIXES = ("ai.onnx", "com.microsoft", "com.ms.", "org.pytorch")


def is_reserved_domain(domain: str, extra: Collection[str] = ()) -> bool:
    """Whether `domain` is the default domain, ONNX's or onnxruntime's own, or in `extra`."""
    return domain == "" or domain.startswith(RESERVED_DOMAIN_PREFIXES) or domain in extra


@dataclass(frozen=True)
class NodeVisit:
    """A node of any graph or function body; `depth` is its graph's nesting depth."""

    node: NodeProto
    where: str
    depth: int


@dataclass(frozen=True)
class TensorVisit:
    """A dense tensor: an initializer, or a tensor in an attribute (of a node or a default)."""

    tensor: TensorProto
    where: str
    initializer: bool


@dataclass(frozen=True)
class SparseVisit:
    """A sparse tensor: a sparse initializer or a sparse attribute value."""

    sparse: SparseTensorProto
    where: str


@dataclass(frozen=True)
class TooDeep:
    """A graph nested deeper than the walk's `depth_max`; it was not walked."""

    where: str
    depth: int


Visit = NodeVisit | TensorVisit | SparseVisit | TooDeep


def node_label(node: NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def walk(model: onnx.ModelProto, *, depth_max: int) -> Iterator[Visit]:
    """Everything in `model` that can hold data or name an operator, in model order.

    The main graph is at depth 0; function bodies and training graphs at depth 1 (a function
    runs inlined inside a graph); a subgraph one deeper than the node that holds it.
    """
    yield from _graph(model.graph, 0, "", depth_max)
    for function in model.functions:
        where = f"function {function.name}"
        yield from _attributes(function.attribute_proto, 1, where, depth_max)
        yield from _nodes(function.node, 1, where + "/", depth_max)
    for index, training in enumerate(model.training_info):
        # Training graphs are not run for inference, but their tensors are still references.
        for part in (training.initialization, training.algorithm):
            yield from _graph(part, 1, f"training_info#{index}/", depth_max)


def _graph(graph: GraphProto, depth: int, prefix: str, depth_max: int) -> Iterator[Visit]:
    if depth > depth_max:
        yield TooDeep(prefix, depth)
        return
    for tensor in graph.initializer:
        yield TensorVisit(tensor, prefix + (tensor.name or "initializer"), initializer=True)
    for sparse in graph.sparse_initializer:
        yield SparseVisit(sparse, prefix + (sparse.values.name or "sparse_initializer"))
    yield from _nodes(graph.node, depth, prefix, depth_max)


def _nodes(nodes: Iterable[NodeProto], depth: int, prefix: str, depth_max: int) -> Iterator[Visit]:
    for index, node in enumerate(nodes):
        where = prefix + node_label(node, index)
        yield NodeVisit(node, where, depth)
        yield from _attributes(node.attribute, depth, where, depth_max)


def _attributes(
    attributes: Iterable[AttributeProto], depth: int, where: str, depth_max: int
) -> Iterator[Visit]:
    for attr in attributes:
        if attr.HasField("t"):
            yield TensorVisit(attr.t, where, initializer=False)
        for tensor in attr.tensors:
            yield TensorVisit(tensor, where, initializer=False)
        if attr.HasField("sparse_tensor"):
            yield SparseVisit(attr.sparse_tensor, where)
        for sparse in attr.sparse_tensors:
            yield SparseVisit(sparse, where)
        if attr.HasField("g"):
            yield from _graph(attr.g, depth + 1, where + "/", depth_max)
        for sub in attr.graphs:
            yield from _graph(sub, depth + 1, where + "/", depth_max)


def is_external(tensor: TensorProto) -> bool:
    """Whether the tensor's data lives outside the model (a file path we must never open)."""
    return tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0


# --- the operator-domain rule -----------------------------------------------------------------


class DomainRefusal(Exception):
    """Why a model's operator domains are refused: a stable `code` and a client-safe message."""

    def __init__(self, code: str, message: str, where: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.where = where


@dataclass(frozen=True)
class DomainRule:
    """Which operator domains a model may use.

    A node is allowed when its domain is in `allowed`, or when it calls a model-local function
    (same domain and name). A local function is allowed only in a domain that is not reserved
    (see :func:`is_reserved_domain`; `reserved_extra` adds the installed runtime's domains):
    otherwise onnxruntime would run its own kernel of that name instead of the function, and
    the allow-list would be bypassed.
    """

    allowed: frozenset[str]
    local_functions: frozenset[tuple[str, str]]

    @classmethod
    def for_model(
        cls,
        model: onnx.ModelProto,
        allowed: Collection[str],
        reserved_extra: Collection[str] = (),
    ) -> DomainRule:
        """The rule for `model`; raises :class:`DomainRefusal` for a function in a reserved
        domain and for an opset import of a domain that is neither allowed nor local."""
        for function in model.functions:
            if is_reserved_domain(function.domain, reserved_extra):
                raise DomainRefusal(
                    "function_domain_reserved",
                    f"The model-local function {function.domain[:100]!r}:"
                    f"{function.name[:100]!r} claims a domain reserved for ONNX and "
                    "onnxruntime operators; define local functions in a domain of your own.",
                    f"function {function.name}",
                )
        rule = cls(
            allowed=frozenset(allowed),
            local_functions=frozenset((f.domain, f.name) for f in model.functions),
        )
        local_domains = {domain for domain, _ in rule.local_functions}
        imports = [*model.opset_import]
        for function in model.functions:
            imports.extend(function.opset_import)
        for opset in imports:
            if opset.domain not in rule.allowed and opset.domain not in local_domains:
                raise DomainRefusal(
                    "domain_not_allowed",
                    f"Operator domain {opset.domain[:100]!r} is not allowed.",
                )
        return rule

    def check_node(self, node: NodeProto, where: str) -> None:
        """Raise :class:`DomainRefusal` unless the node's operator is allowed."""
        if node.domain in self.allowed or (node.domain, node.op_type) in self.local_functions:
            return
        raise DomainRefusal(
            "domain_not_allowed",
            f"Operator domain {node.domain[:100]!r} is not allowed (allowed: "
            f"{', '.join(repr(d) for d in sorted(self.allowed))}).",
            where,
        )
