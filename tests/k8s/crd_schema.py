"""Custom resources checked against their CustomResourceDefinition's OpenAPI v3 schema, without
a cluster (JobSet, MPIJob: the upstream CRDs are kept in ../shared/schemas/, see its README).

    import crd_schema
    errors = crd_schema.validate(obj, "/path/to/jobset.x-k8s.io_jobsets.yaml")   # [] when valid

validate() returns a list of "path: message" strings, empty when the object is valid. It checks
what the API server checks from the schema:

  - apiVersion names the CRD's group and a version it serves, kind is the CRD's kind;
  - every field against `spec.versions[].schema.openAPIV3Schema` of that version (types, enums,
    required fields, patterns, bounds), with python3-jsonschema (Draft 7 keywords, which cover
    the structural schemas' subset of OpenAPI v3);
  - unknown fields are errors, as `kubectl apply`'s default strict field validation reports
    them: an object schema with `properties` and neither `additionalProperties` nor
    `x-kubernetes-preserve-unknown-fields: true` gets `additionalProperties: false`;
  - `x-kubernetes-int-or-string: true` accepts an integer or a string; `nullable: true` accepts
    null. The other `x-kubernetes-*` keys (list types, map types) are dropped.

Not checked: the CEL rules of `x-kubernetes-validations` (cel_rules() lists them so that a test
can check the few that matter by hand), `metadata` beyond being an object (the API server checks
ObjectMeta itself; the schema says only `type: object`), and string formats.

Raises MissingDependency (with the reason, for a test to print and exit 77) where Python's yaml
or jsonschema module is absent, FileNotFoundError where the CRD file is.
"""
import copy
import functools


class MissingDependency(Exception):
    pass


def _modules():
    try:
        import yaml
    except ImportError:
        raise MissingDependency("Python's yaml module is missing (Debian: python3-yaml)")
    try:
        import jsonschema
    except ImportError:
        raise MissingDependency("Python's jsonschema module is missing (Debian: python3-jsonschema)")
    return yaml, jsonschema


def _strict(schema):
    """The OpenAPI v3 structural schema as a JSON Schema that refuses unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: _strict(s) for name, s in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
            out[key] = _strict(value)
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@functools.lru_cache(maxsize=None)
def _load(crd_path):
    yaml, _ = _modules()
    with open(crd_path) as f:
        crd = next(d for d in yaml.safe_load_all(f) if d)
    if crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{crd_path}: not a CustomResourceDefinition")
    spec = crd["spec"]
    versions = {v["name"]: v for v in spec["versions"]}
    return spec["group"], spec["names"]["kind"], versions


def served_versions(crd_path):
    """The apiVersions (group/version) the CRD serves."""
    group, _, versions = _load(crd_path)
    return [f"{group}/{name}" for name, v in versions.items() if v.get("served", True)]


def cel_rules(crd_path, version=None):
    """[(path in the schema, rule, message)] of the x-kubernetes-validations, not checked here."""
    _, _, versions = _load(crd_path)
    found = []

    def walk(schema, path):
        if isinstance(schema, dict):
            for rule in schema.get("x-kubernetes-validations", []):
                found.append((path or ".", rule.get("rule"), rule.get("message")))
            for key, value in schema.items():
                if key in ("properties",):
                    for name, s in value.items():
                        walk(s, f"{path}.{name}")
                elif key == "items":
                    walk(value, path + "[]")
                elif key == "additionalProperties":
                    walk(value, path + "{}")
    for name, v in versions.items():
        if version in (None, name):
            walk(v["schema"]["openAPIV3Schema"], "")
    return found


@functools.lru_cache(maxsize=None)
def _validator(crd_path, version):
    _, jsonschema = _modules()
    _, _, versions = _load(crd_path)
    schema = _strict(copy.deepcopy(versions[version]["schema"]["openAPIV3Schema"]))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _where(path):
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".") or "(the object)"


def validate(obj, crd_path):
    """["path: message", ...] for each way obj is not a valid object of the CRD; [] when valid."""
    group, kind, versions = _load(crd_path)
    api_version = obj.get("apiVersion", "") if isinstance(obj, dict) else ""
    if not isinstance(obj, dict):
        return ["(the object): not a mapping"]
    errors = []
    if obj.get("kind") != kind:
        errors.append(f"kind: {obj.get('kind')!r} is not {kind!r}")
    obj_group, _, version = api_version.rpartition("/")
    if obj_group != group or version not in versions or not versions[version].get("served", True):
        errors.append(f"apiVersion: {api_version!r} is not served by the CRD (it serves "
                      f"{', '.join(served_versions(crd_path))})")
        return errors
    validator = _validator(crd_path, version)
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        errors.append(f"{_where(error.absolute_path)}: {error.message}")
    return errors
