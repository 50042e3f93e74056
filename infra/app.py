#!/usr/bin/env python3
"""CDK entry point: ``cd infra && npx aws-cdk deploy`` (context keys: docs/deploy.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Run from infra/ by the CDK CLI: make the repository root importable as well.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aws_cdk as cdk  # noqa: E402

from infra.config import ContextError, FleetConfig  # noqa: E402
from infra.img2img_stack import Img2ImgFleetStack  # noqa: E402


def cli_environment() -> cdk.Environment | None:
    """The account and region the CDK CLI resolved from its credentials, if any.

    With them the stack is bound to that environment and CDK looks the region's AZs up
    (cached in cdk.context.json), so the VPC can span ``maxAzs``; without them (an
    offline synth) it stays environment-agnostic and spans 2 AZs.
    """
    account = os.environ.get("CDK_DEFAULT_ACCOUNT")
    region = os.environ.get("CDK_DEFAULT_REGION")
    return cdk.Environment(account=account, region=region) if account and region else None


def build_app(app: cdk.App | None = None, env: cdk.Environment | None = None) -> cdk.App:
    """Create the app and the stack; every setting comes from CDK context.

    Raises ``infra.config.ContextError`` naming each unknown or invalid context key.
    """
    app = app or cdk.App()
    config = FleetConfig.from_context(app.node.get_all_context())
    Img2ImgFleetStack(
        app, config.stack_name, config=config, env=env or cli_environment(),
        description="img2img fleet: S3 in/out, SQS jobs, GPU ECS workers scaled on queue depth",
    )
    return app


def main() -> None:
    try:
        app = build_app()
    except ContextError as exc:  # a usage error: the message, not a traceback
        sys.exit(f"img2img fleet: {exc}")
    app.synth()


if __name__ == "__main__":
    main()
