"""Optional bundle components (the tagger, the captioner): folders of ONNX files + vocabularies + `component.json`.

Training writes a component folder with `write_component`; `attach_component` copies it into a bundle as
`<bundle>/<kind>/`, records its spec under `manifest[<kind>]` and re-hashes the bundle. A component reads the
bundle image encoder's `feature` output, so attaching checks that it was trained on the same backbone features.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from xlsearch.bundle.manifest import BundleError, read_bundle_manifest, update_bundle_manifest
from xlsearch.common.atomic import write_text_atomic

COMPONENT_SPEC = "component.json"
KINDS = ("tagger", "captioner")


class ComponentError(BundleError):
    """A component folder that is malformed or does not fit the bundle it is attached to."""


def write_component(folder: str | Path, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Write `component.json` into `folder` (which already holds the component's files)."""
    folder = Path(folder)
    if kind not in KINDS:
        raise ComponentError(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)}")
    if "input_feature" not in spec:
        raise ComponentError(f"{folder}: a {kind} spec needs 'input_feature' (dim, backbone, preprocess)")
    out = {**spec, "kind": kind}
    write_text_atomic(folder / COMPONENT_SPEC, json.dumps(out, ensure_ascii=False, indent=2))
    return out


def read_component(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / COMPONENT_SPEC
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ComponentError(f"{path}: missing (is {folder} a component folder?)") from None
    except json.JSONDecodeError as e:
        raise ComponentError(f"{path}:{e.lineno}: broken JSON: {e.msg}") from None
    if spec.get("kind") not in KINDS:
        raise ComponentError(f"{path}: kind is {spec.get('kind')!r}; expected one of {', '.join(KINDS)}")
    return spec


def check_input_feature(bundle_manifest: dict[str, Any], spec: dict[str, Any], where: str) -> None:
    """The component must read exactly the features the bundle's image encoder emits."""
    image = bundle_manifest["image_encoder"]
    want = spec["input_feature"]
    if not image.get("feature_output"):
        raise ComponentError(
            f"{where}: the bundle's image encoder has no 'feature' output (re-export the bundle)"
        )
    problems = []
    if int(want["dim"]) != int(image.get("feature_dim", -1)):
        problems.append(f"feature dim {want['dim']} != bundle's {image.get('feature_dim')}")
    if want.get("backbone") != image.get("backbone"):
        problems.append(f"backbone {want.get('backbone')} != bundle's {image.get('backbone')}")
    if want.get("preprocess") != image.get("preprocess"):
        problems.append("preprocessing differs from the bundle's")
    if want.get("multiscale"):
        have = image.get("multiscale")
        if not have:
            problems.append("it reads the multi-scale output, which the bundle's image encoder lacks")
        elif (want["multiscale"].get("stages"), want["multiscale"].get("dims")) != (
            have.get("stages"),
            have.get("dims"),
        ):
            problems.append("its multi-scale stages differ from the bundle's")
    if problems:
        raise ComponentError(f"{where}: trained on other image features: " + "; ".join(problems))


def attach_component(bundle_dir: str | Path, component_dir: str | Path) -> dict[str, Any]:
    """Copy a component into the bundle (replacing one of the same kind) and rewrite the bundle manifest."""
    bundle_dir, component_dir = Path(bundle_dir), Path(component_dir)
    manifest = read_bundle_manifest(bundle_dir)
    spec = read_component(component_dir)
    kind = spec["kind"]
    check_input_feature(manifest, spec, str(component_dir))
    dst = bundle_dir / kind
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(component_dir, dst)
    # the component reads the leading input_dim(spec) columns of the bundle's [feature ; multiscale] vectors
    recorded = {**spec, "folder": kind, "bundle_input_dim": bundle_input_dim(manifest)}
    return update_bundle_manifest(bundle_dir, {kind: recorded}, verify=False)  # verified above


def input_dim(spec: dict[str, Any]) -> int:
    """Width of the features a component reads: the backbone feature, then the multi-scale stages if it uses them."""
    feature = spec["input_feature"]
    return int(feature["dim"]) + (int(sum(feature["multiscale"]["dims"])) if feature.get("multiscale") else 0)


def bundle_input_dim(bundle_manifest: dict[str, Any]) -> int:
    """Width of the feature vectors a bundle gives its components ([feature ; multiscale])."""
    image = bundle_manifest["image_encoder"]
    ms = image.get("multiscale")
    return int(image.get("feature_dim", 0)) + (int(sum(ms["dims"])) if ms else 0)


def accepted_input_dims(spec: dict[str, Any]) -> tuple[int, ...]:
    """The feature widths a loaded component takes: its own, and its bundle's when attached (it then reads the
    leading columns)."""
    return tuple(sorted({input_dim(spec), int(spec.get("bundle_input_dim") or input_dim(spec))}))
