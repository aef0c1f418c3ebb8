#!/usr/bin/env python3
"""Turns a SpinKube CustomResourceDefinition into the JSON Schema the k8s tests validate with.

    extract.py CRD.yaml VERSION > KIND.VERSION.json

Takes the named version's `openAPIV3Schema` and makes it what `kubectl apply` (strict field
validation, the default since Kubernetes 1.27) enforces: every object that lists its
properties rejects any other (`additionalProperties: false`, unless the CRD says
`x-kubernetes-preserve-unknown-fields`), `apiVersion` and `kind` are the CRD's own, and
`metadata.name` is required. Descriptions and the `x-kubernetes-*` annotations are dropped:
they do not constrain a manifest. Needs PyYAML (the test venv has it:
`source scripts/lib.sh; ensure_python_tools`).
"""

import json
import sys

import yaml


def tighten(node):
    """Returns a copy of an OpenAPI v3 schema node with closed objects and no descriptions."""
    if isinstance(node, list):
        return [tighten(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: tighten(value)
        for key, value in node.items()
        if key != "description" and not key.startswith("x-kubernetes-")
    }
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    path, version = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        crd = yaml.safe_load(f)
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    [entry] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = tighten(entry["schema"]["openAPIV3Schema"])
    props = schema["properties"]
    props["apiVersion"] = {"const": f"{group}/{version}"}
    props["kind"] = {"const": kind}
    props["metadata"] = {
        "type": "object",
        "properties": {"name": {"type": "string", "minLength": 1}},
        "required": ["name"],
    }
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": f"{kind} {group}/{version}, extracted by infra/k8s/schemas/extract.py; source in README.md",
        **schema,
    }
    json.dump(document, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
