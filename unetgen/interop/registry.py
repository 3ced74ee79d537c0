"""The converters `convert` knows, by the peer classes they handle.

A converter is a function ``(module, ignore_dropout) -> (config data, peer layers)``: the
unetgen config (as plain data) of the network `module` computes, and the peer's layers with
weights or statistics (convs, transposed convs, norms, PReLUs, linear layers) in the order
unetgen's model runs its own (`unetgen.analysis.ops.network_ops`). It registers the classes it handles by name and
module (a package: its submodules count too), and refuses whatever it cannot express exactly
with `UnsupportedModelError`::

    @register_converter("monai", "BasicUNet")
    def from_basic_unet(net: nn.Module, ignore_dropout: bool) -> Converted: ...

Peers that unetgen knows but cannot express are registered with `register_refusal` and the
reason. The peers are never imported: a class is recognised by its name and its module path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..reprs import short_repr
from .options import UnsupportedModelError

__all__ = [
    "Converted",
    "Converter",
    "PeerClass",
    "PeerOutput",
    "find_converter",
    "find_output",
    "register_converter",
    "register_refusal",
]

Converted = tuple[dict[str, Any], list[nn.Module]]
"""What a converter returns: the config data and the peer's parametric layers in unetgen's order."""
Converter = Callable[[nn.Module, bool], Converted]
PeerOutput = Callable[[nn.Module, Any], Any]
"""How to run a peer for the output its converted model computes, ``(module, x) -> output``: for
a peer that applies a final sigmoid or softmax in its forward, its logits."""


@dataclass(frozen=True)
class PeerClass:
    """A peer class: its name, and the module (or package) that defines it."""

    module: str
    name: str

    def matches(self, cls: type) -> bool:
        origin = cls.__module__
        return cls.__name__ == self.name and (origin == self.module or origin.startswith(self.module + "."))


_CONVERTERS: dict[PeerClass, Converter] = {}
_REFUSALS: dict[PeerClass, str] = {}
_OUTPUTS: dict[PeerClass, PeerOutput] = {}


def register_converter(module: str, *names: str, output: PeerOutput | None = None) -> Callable[[Converter], Converter]:
    """Decorator: register a converter for the classes `names` defined in `module` or below it;
    `output` runs such a peer for what the converted model computes (default: calling it)."""
    _check_names("register_converter", module, names)
    if output is not None and not callable(output):
        raise ValueError(f"register_converter: output={short_repr(output)} must be callable (module, x) -> output")

    def register(converter: Converter) -> Converter:
        for name in names:
            _CONVERTERS[PeerClass(module, name)] = converter
            if output is not None:
                _OUTPUTS[PeerClass(module, name)] = output
        return converter

    return register


def find_output(module: nn.Module) -> PeerOutput | None:
    """The registered way to run `module` for its converted model's output, or None (call it)."""
    for peer, output in _OUTPUTS.items():
        if peer.matches(type(module)):
            return output
    return None


def register_refusal(module: str, *names: str, reason: str) -> None:
    """Register peer classes that `convert` refuses with `reason` (completing "<module>.<class> ...")."""
    _check_names("register_refusal", module, names)
    if not isinstance(reason, str):
        raise ValueError(f"register_refusal: reason={short_repr(reason)} must be a str")
    for name in names:
        _REFUSALS[PeerClass(module, name)] = reason


def _check_names(caller: str, module: Any, names: tuple[Any, ...]) -> None:
    """A module path and at least one class name, all non-empty strings."""
    if not isinstance(module, str) or not module:
        raise ValueError(f"{caller}: module={short_repr(module)} must be a package or module path, e.g. 'monai'")
    if not names:
        raise ValueError(f"{caller}({short_repr(module)}) names no class; pass the class names it converts")
    if bad := [n for n in names if not isinstance(n, str) or not n]:
        raise ValueError(f"{caller}: class names {short_repr(bad)} must be non-empty strings, e.g. 'BasicUNet'")


def _known() -> str:
    """The registered classes, grouped by module: 'dynamic_network_architectures PlainConvUNet/..., monai ...'."""
    by_module: dict[str, list[str]] = {}
    for peer in _CONVERTERS:
        by_module.setdefault(peer.module, []).append(peer.name)
    return ", ".join(f"{module} {'/'.join(names)}" for module, names in sorted(by_module.items())) or "nothing"


def find_converter(module: nn.Module) -> Converter:
    """The converter registered for the class of `module`; `UnsupportedModelError` naming the
    registered classes (or the reason a known peer is refused) otherwise."""
    cls = type(module)
    where = f"{cls.__module__}.{cls.__name__}"
    for peer, reason in _REFUSALS.items():
        if peer.matches(cls):
            raise UnsupportedModelError(f"{where} {reason}")
    for peer, converter in _CONVERTERS.items():
        if peer.matches(cls):
            return converter
    raise UnsupportedModelError(
        f"convert() does not know {where}; it converts {_known()}. For another U-Net, build the "
        "matching config and use copy_weights(source, target, example_input)"
    )
