#!/usr/bin/env python3
"""The custom resources of k8s/ checked against their upstream CustomResourceDefinitions'
OpenAPI v3 schemas (../shared/schemas/, see its README), as a cluster's API server with the
JobSet controller installed would check them on `kubectl apply` (strict field validation:
unknown fields are errors): every JobSet of every rendered overlay of k8s/jobset. The schemas'
CEL rules are not evaluated (tests/k8s/crd_schema.py); the one that applies to a new JobSet
(startupPolicy InOrder excludes dependsOn) is checked here by hand. Planted mistakes (an
unknown field deep in a pod template, values outside enums, a wrong type, a missing required
field, a wrong apiVersion) check that the check can fail.

  crd_schema_test.py SOURCE_DIR

Exit 77 (skipped, with the reason) without kubectl, Python's yaml or jsonschema
(python3-jsonschema), or where ../shared/schemas/ (beside the checkout) is absent.
"""
import copy
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import crd_schema  # noqa: E402

SOURCE = sys.argv[1] if len(sys.argv) > 1 else "."
SCHEMAS = os.path.join(SOURCE, "..", "shared", "schemas")
# kind -> (CRD file in SCHEMAS, the rendered overlays holding that kind)
CHECKED = {"JobSet": ("jobset.x-k8s.io_jobsets.yaml", ["jobset/overlays/cpu", "jobset/overlays/gke-gpu"])}


def skip(reason):
    print("SKIP: CRD schema check skipped: " + reason)
    sys.exit(77)


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


if shutil.which("kubectl") is None:
    skip("no `kubectl` on the PATH (launch/setup-debian.sh installs kubernetes-client)")
try:
    crd_schema._modules()
except crd_schema.MissingDependency as e:
    skip(str(e))
for kind, (crd, _) in CHECKED.items():
    if not os.path.isfile(os.path.join(SCHEMAS, crd)):
        skip(f"{os.path.normpath(os.path.join(SCHEMAS, crd))} is absent (the upstream CRDs are kept in "
             f"../shared/schemas/ beside the checkout)")

import workloads  # noqa: E402  (after the checks: it needs nothing more, but keeps the order plain)

checked = 0
for kind, (crd, overlays) in CHECKED.items():
    path = os.path.join(SCHEMAS, crd)
    for overlay in overlays:
        objects = [o for o in workloads.render(os.path.join(SOURCE, "k8s", overlay)) if o["kind"] == kind]
        if not objects:
            fail(f"{overlay}: no {kind} rendered")
        for o in objects:
            errors = crd_schema.validate(o, path)
            if errors:
                fail(f"{overlay}: {kind} {o['metadata']['name']} is not valid against {crd}:\n  " + "\n  ".join(errors))
            spec = o["spec"]
            if spec.get("startupPolicy", {}).get("startupPolicyOrder") == "InOrder" and any(
                    "dependsOn" in j for j in spec["replicatedJobs"]):
                fail(f"{overlay}: startupPolicy InOrder and dependsOn exclude each other (the CRD's CEL rule)")
            checked += 1

            # The check can fail: planted mistakes in a copy of this object.
            def planted(change):
                bad = copy.deepcopy(o)
                change(bad)
                return crd_schema.validate(bad, path)

            pod = ("spec", "replicatedJobs", 0, "template", "spec", "template", "spec")

            def at(obj, keys):
                for k in keys:
                    obj = obj[k]
                return obj
            cases = {
                "imagePullPolicyy": lambda b: at(b, pod)["containers"][0].update(imagePullPolicyy="Always"),
                "'FailJobs' is not one of": lambda b: b["spec"]["failurePolicy"]["rules"][0].update(action="FailJobs"),
                "is not of type 'integer'": lambda b: b["spec"]["failurePolicy"].update(maxRestarts="three"),
                "apiVersion": lambda b: b.update(apiVersion="jobset.x-k8s.io/v1"),
                "'Some' is not one of": lambda b: b["spec"]["successPolicy"].update(operator="Some"),
                "'name' is a required property": lambda b: b["spec"]["replicatedJobs"][1].pop("name"),
            }
            for word, change in cases.items():
                errors = planted(change)
                if not any(word in e for e in errors):
                    fail(f"the planted mistake ({word}) was not reported: {errors}")
print(f"{checked} JobSet objects of k8s/jobset's overlays match the CRD's OpenAPI v3 schema "
      f"(jobset.x-k8s.io/v1alpha2, strict: no unknown fields); the planted mistakes were reported")
print("PASS")
