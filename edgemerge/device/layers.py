"""The engine's layers, read from TensorRT's inspector JSON: plugin layers per merge op, checked
against the manifest's merge sites, and the LayerType strings the build record keeps."""

from __future__ import annotations

from edgemerge.contracts.errors import CheckFailed, EdgemergeError

# ---- the engine's layers: plugin layers per merge op -------------------------------------------

def _layers(info) -> list:
    """The layer entries of an engine-inspector JSON (trtexec --exportLayerInfo, or
    IEngineInspector.get_engine_information(LayerInformationFormat.JSON)): {"Layers": [...],
    "Bindings": [...]}; an entry is a dict with profilingVerbosity=detailed, a name otherwise."""
    if isinstance(info, dict):
        info = info.get("Layers", [])
    if not isinstance(info, list):
        raise EdgemergeError("layer information has no 'Layers' list")
    return info


def _layer_name(layer) -> str:
    return layer if isinstance(layer, str) else str(layer.get("Name", ""))


def is_plugin_layer(layer) -> bool:
    """A plugin layer: a LayerType that starts with "Plugin" (detailed verbosity).

    "PluginV2" is the string TensorRT's own trt-engine-explorer knows (trex/colors.py and
    trex/plotting.py at NVIDIA/TensorRT v10.3.0 and v11.1); the string of an IPluginV3 layer is
    confirmed by no source read so far ("PluginV3" assumed): `layer_types` records every LayerType
    an engine holds, and `site_layer_types` those of the layers named after merge sites, so the
    first real build shows it."""
    return isinstance(layer, dict) and str(layer.get("LayerType", "")).startswith("Plugin")


def layer_types(info) -> dict[str, int]:
    """{LayerType: count} over the engine's layers, as TensorRT wrote them ({} for names only)."""
    counts: dict[str, int] = {}
    for layer in _layers(info):
        if isinstance(layer, dict):
            kind = str(layer.get("LayerType", ""))
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def site_layer_types(info, sites: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """Per merge op, {LayerType: count} of the layers named after its merge sites (the plugin
    layers when TensorRT took the plugin, whatever string it gives them)."""
    kinds: dict[str, str] = {}
    for layer in _layers(info):
        if isinstance(layer, dict):
            kinds.setdefault(_layer_name(layer), str(layer.get("LayerType", "")))
    out: dict[str, dict[str, int]] = {}
    for op, names in sites.items():
        seen: dict[str, int] = {}
        for name in names:
            if name in kinds:
                seen[kinds[name]] = seen.get(kinds[name], 0) + 1
        out[op] = dict(sorted(seen.items()))
    return out


def layer_types_summary(types: dict[str, int] | None) -> str:
    """'CaskConvolution 3, PluginV3 2' or why there is none."""
    if not types:
        return "not recorded"
    return ", ".join(f"{kind or '(none)'} {n}" for kind, n in sorted(types.items()))


def count_plugin_layers(info, sites: dict[str, list[str]]) -> dict[str, int]:
    """Per merge op, how many of its nodes (`sites`: op -> ONNX node names) became plugin layers.

    A plugin layer is named after its ONNX node (the parser names layers by node); its
    LayerType says it is a plugin. Needs profilingVerbosity=detailed: names alone do not show
    whether a layer is the plugin or the first layer of an inlined body, so that is refused.
    """
    layers = _layers(info)
    if layers and not any(isinstance(layer, dict) for layer in layers):
        raise EdgemergeError("layer information has names only: build with --profilingVerbosity=detailed")
    plugin_names = {_layer_name(layer) for layer in layers if is_plugin_layer(layer)}
    return {op: sum(1 for name in names if name in plugin_names) for op, names in sites.items()}


def _summary(layers_and_sites: dict[str, tuple[int, int]]) -> str:
    """'TokenMerge 12/12, TokenUnmerge 4/4' from {op: (plugin layers, merge sites)}."""
    return ", ".join(f"{op} {k}/{n}" for op, (k, n) in sorted(layers_and_sites.items())) or "no merge sites"


def plugin_layer_summary(counts: dict[str, int], sites: dict[str, list[str]]) -> str:
    """'TokenMerge 12/12, TokenUnmerge 4/4' (plugin layers / merge sites)."""
    return _summary({op: (counts.get(op, 0), len(names)) for op, names in sites.items()})


def check_plugin_layers(counts: dict[str, int], sites: dict[str, list[str]], *, allow_body_only: bool) -> None:
    """A plugin build must hold one plugin layer per merge site; fewer is a failed check."""
    short = {op: (counts.get(op, 0), len(names)) for op, names in sites.items() if counts.get(op, 0) < len(names)}
    if short and not allow_body_only:
        raise CheckFailed(
            "the engine holds fewer plugin layers than merge sites (" + plugin_layer_summary(counts, sites)
            + "): TensorRT built the function bodies instead of the edgemerge plugins; "
            "rerun with --allow-body-only to accept that")


def merge_sites(manifest: dict) -> dict[str, list[str]]:
    """op -> the ONNX node names of its merge sites (written by export; [] for older bundles)."""
    return {op: list(names) for op, names in (manifest.get("merge_sites") or {}).items()}


def inspect_layers(layer_info, manifest: dict, *, uses_plugins: bool, allow_body_only: bool) -> dict | None:
    """The record's `plugin_layers`, after refusing a plugin build that holds too few."""
    sites = merge_sites(manifest)
    if layer_info is None:
        return None
    counts = count_plugin_layers(layer_info, sites)
    if uses_plugins:
        check_plugin_layers(counts, sites, allow_body_only=allow_body_only)
    return {op: {"sites": len(names), "plugin_layers": counts[op]} for op, names in sites.items()}
