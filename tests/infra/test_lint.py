"""cfn-lint on every template variant: default, Spot, the older variant, everything on,
and one bound to an account and region."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.infra_synth import EVERYTHING_ON, SPOT, cfn_lint, cfn_lint_path, synth

pytest.importorskip("aws_cdk", reason="the infra extra (aws-cdk-lib) is not installed")

ACCOUNT, REGION = "111122223333", "us-east-1"
VARIANTS = {
    "default": ({}, None),
    "spot": (SPOT, None),
    "variant": ({"spot": "true", "uploadsPrefix": "uploads", "outputExpirationDays": "30",
                 "maxTasks": "8", "alarmEmail": "ops@example.com",
                 "modelsUri": "s3://my-model-store/weights"}, None),
    "everything-on": (EVERYTHING_ON, None),
    "warm-pool": ({"warmPoolSize": "2", "priorityQueue": "true", "maxTasks": "64"}, None),
    "bound-to-an-account": (
        {f"availability-zones:account={ACCOUNT}:region={REGION}":
         [f"{REGION}{z}" for z in "abc"], **EVERYTHING_ON}, (ACCOUNT, REGION)),
}
# Known redundant DependsOn (W3005), and only these: CDK's bucket-notification handler and
# its default-security-group restriction (the feature flag; library code), and the
# service's dependency on the cluster construct, which is how it also waits for the
# capacity-provider association CDK adds at synth time.
KNOWN = [
    re.compile(r":W3005:'(BucketNotifications|JobQueue)\w*' dependency already "
               r"enforced by a '\w+' at 'Resources/BucketNotifications"),
    re.compile(r":W3005:'CustomVpcRestrictDefaultSGCustomResourceProviderRole[0-9A-F]{8}' "
               r"dependency already enforced by a 'GetAtt' at "
               r"'Resources/CustomVpcRestrictDefaultSGCustomResourceProviderHandler"),
    re.compile(r":W3005:'Cluster[0-9A-F]{8}' dependency already enforced by a 'Ref' at "
               r"'Resources/WorkerService[0-9A-F]{8}/Properties/Cluster'"),
]


# Bound to an account, the subnets name the AZs CDK looked up in that account (that is
# the point: more than two); cfn-lint's "avoid hardcoding AZs" is about portable templates.
KNOWN_WHEN_BOUND = [re.compile(rf":W3010:Avoid hardcoding availability zones '{REGION}[a-c]'")]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_cfn_lint_clean(name: str, tmp_path: Path) -> None:
    overrides, env = VARIANTS[name]
    result = cfn_lint(synth(overrides, env=env).json, tmp_path / f"{name}.template.json")
    findings = [line for line in result.stdout.splitlines() if line.strip()]
    known = KNOWN + (KNOWN_WHEN_BOUND if env else [])
    unexpected = [f for f in findings if not any(k.search(f) for k in known)]
    # Anything else, warning or error, fails the test.
    assert unexpected == [], "\n".join(unexpected)
    assert result.returncode in (0, 4), result.stderr  # 4: warnings only


def test_cfn_lint_catches_a_bad_template(tmp_path: Path) -> None:
    """Control: cfn-lint really reports errors (else the test above proves nothing)."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Resources": {"Q": {"Type": "AWS::SQS::Queue", "Properties": {
        "VisibilityTimeout": "not-a-number", "NoSuchProperty": 1}}}}))
    result = subprocess.run([cfn_lint_path(), str(bad)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode & 2, result.stdout
