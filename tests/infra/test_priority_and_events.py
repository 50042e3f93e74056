"""The priority queue, the events topic and its subscribers, the webhook and the GPU price:
what the worker is told (env, secrets), what it may do (IAM, exactly these resources),
and what watches them (scaling is in test_infra_scaling.py, alarms here).

Checked on the default, Spot and everything-on templates.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.infra_synth import (
    EVERYTHING_ON,
    SPOT,
    WEBHOOK_SECRET_ARN,
    Synth,
    as_list,
    flat,
    refs,
    synth,
)

pytest.importorskip("aws_cdk", reason="the infra extra (aws-cdk-lib) is not installed")

TEMPLATES = {"default": {}, "spot": SPOT, "everything-on": EVERYTHING_ON}


@pytest.fixture(scope="module", params=list(TEMPLATES))
def template(request: pytest.FixtureRequest) -> Synth:
    return synth(TEMPLATES[request.param])


@pytest.fixture(scope="module")
def everything() -> Synth:
    return synth(EVERYTHING_ON)


def _priority_ids(s: Synth) -> tuple[str, str]:
    (queue_id,) = refs(s.env()["IMG2IMG_PRIORITY_QUEUE_URL"])
    queue = s.json["Resources"][queue_id]["Properties"]
    (dlq_id,) = refs(queue["RedrivePolicy"]["deadLetterTargetArn"])
    return queue_id, dlq_id


def _resources(statement: dict[str, Any]) -> set[str]:
    return {flat(r) for r in as_list(statement["Resource"])}


# -- priority queue ----------------------------------------------------------------------

def test_priority_queue_is_off_by_default() -> None:
    default = synth()
    assert "IMG2IMG_PRIORITY_QUEUE_URL" not in default.env()
    assert len(default.resources("AWS::SQS::Queue")) == 2  # job queue and its DLQ
    assert "PriorityQueueUrl" not in default.json["Outputs"]


def test_priority_queue_has_its_own_dlq_and_the_same_settings(everything: Synth) -> None:
    queue_id, dlq_id = _priority_ids(everything)
    main_id, main_dlq_id = everything.queue_ids()
    assert len({queue_id, dlq_id, main_id, main_dlq_id}) == 4
    resources = everything.json["Resources"]
    queue, main = resources[queue_id]["Properties"], resources[main_id]["Properties"]
    for key in ("VisibilityTimeout", "ReceiveMessageWaitTimeSeconds", "SqsManagedSseEnabled",
                "MessageRetentionPeriod"):
        assert queue[key] == main[key], key
    assert queue["RedrivePolicy"]["maxReceiveCount"] == main["RedrivePolicy"][
        "maxReceiveCount"] == 10  # Spot is on in this template
    assert resources[dlq_id]["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600
    outputs = everything.json["Outputs"]
    assert refs(outputs["PriorityQueueUrl"]["Value"]) == {queue_id}
    assert refs(outputs["PriorityDlqUrl"]["Value"]) == {dlq_id}


def test_uploads_feed_the_main_queue_only(everything: Synth) -> None:
    (notification,) = everything.resources("Custom::S3BucketNotifications").values()
    (config,) = notification["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    main_id, _ = everything.queue_ids()
    assert refs(config["QueueArn"]) == {main_id}


def test_worker_consumes_exactly_the_job_queues(template: Synth) -> None:
    granted = template.granted(template.task_role_id())
    consumed = {template.queue_ids()[0]}
    if "IMG2IMG_PRIORITY_QUEUE_URL" in template.env():
        consumed.add(_priority_ids(template)[0])
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"):
        (statement,) = granted[action]
        assert _resources(statement) == {f"{{{q}}}" for q in consumed}, action
    # Nothing on the DLQs (the producer's redrive uses its own credentials), no sending.
    assert not [a for a in granted if a.startswith("sqs:") and a not in (
        "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility")]


def test_dlq_and_age_alarms_watch_both_queues(everything: Synth) -> None:
    topic_id = everything.alarm_topic_id()
    queue_id, dlq_id = _priority_ids(everything)
    main_id, main_dlq_id = everything.queue_ids()

    def watching(metric: str) -> set[str]:
        found = set()
        for alarm in everything.alarms():
            if alarm.get("MetricName") == metric:
                assert refs(alarm["AlarmActions"]) == {topic_id}
                found |= refs(alarm["Dimensions"])
        return found

    assert watching("ApproximateAgeOfOldestMessage") == {main_id, queue_id}
    assert watching("ApproximateNumberOfMessagesVisible") == {main_dlq_id, dlq_id}


# -- events topic ------------------------------------------------------------------------

def test_worker_is_told_the_events_topic_and_may_publish_only_to_it(template: Synth) -> None:
    topic_id = template.events_topic_id()
    assert refs(template.env()["IMG2IMG_EVENTS_TOPIC_ARN"]) == {topic_id}
    granted = template.granted(template.task_role_id())
    (statement,) = granted["sns:Publish"]
    assert _resources(statement) == {f"{{{topic_id}}}"}
    assert [a for a in granted if a.startswith("sns:")] == ["sns:Publish"]
    assert refs(template.json["Outputs"]["EventsTopicArn"]["Value"]) == {topic_id}
    # TLS only, like the queues and the bucket.
    (policy,) = [p["Properties"] for p in template.resources("AWS::SNS::TopicPolicy").values()
                 if topic_id in refs(p["Properties"]["Topics"])]
    assert any(s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] ==
               "false" for s in policy["PolicyDocument"]["Statement"])


def test_events_subscriptions_are_optional() -> None:
    default = synth()
    assert default.resources("AWS::SNS::Subscription") == {}
    assert "EventsQueueUrl" not in default.json["Outputs"]


def test_events_email_and_queue_subscriptions(everything: Synth) -> None:
    topic_id = everything.events_topic_id()
    subscriptions = [s["Properties"] for s in
                     everything.resources("AWS::SNS::Subscription").values()
                     if refs(s["Properties"]["TopicArn"]) == {topic_id}]
    by_protocol = {s["Protocol"]: s for s in subscriptions}
    assert set(by_protocol) == {"email", "sqs"}
    assert by_protocol["email"]["Endpoint"] == "events@example.com"
    (queue_id,) = refs(by_protocol["sqs"]["Endpoint"])
    assert by_protocol["sqs"]["RawMessageDelivery"] is True
    assert refs(everything.json["Outputs"]["EventsQueueUrl"]["Value"]) == {queue_id}
    # The queue lets exactly this topic send to it.
    (policy,) = [p["Properties"] for p in everything.resources("AWS::SQS::QueuePolicy").values()
                 if queue_id in refs(p["Properties"]["Queues"])]
    (allow,) = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "sns.amazonaws.com"}
    assert allow["Action"] == "sqs:SendMessage"
    assert refs(allow["Condition"]["ArnEquals"]["aws:SourceArn"]) == {topic_id}
    # Events never reach the job queues.
    assert queue_id not in {everything.queue_ids()[0], _priority_ids(everything)[0]}


# -- webhook and GPU price -----------------------------------------------------------------

def test_webhook_url_and_secret_reach_the_worker(everything: Synth) -> None:
    env = everything.env()
    assert env["IMG2IMG_WEBHOOK_URL"] == "https://hooks.example.com/img2img"
    assert "IMG2IMG_WEBHOOK_SECRET" not in env  # never in plain text
    (secret,) = everything.container()["Secrets"]
    assert secret == {"Name": "IMG2IMG_WEBHOOK_SECRET", "ValueFrom": WEBHOOK_SECRET_ARN}


def test_execution_role_reads_exactly_the_webhook_secret(everything: Synth) -> None:
    granted = everything.granted(everything.execution_role_id())
    secret_actions = [a for a in granted if a.startswith("secretsmanager:")]
    assert "secretsmanager:GetSecretValue" in secret_actions
    for action in secret_actions:
        for statement in granted[action]:
            assert _resources(statement) == {WEBHOOK_SECRET_ARN}, action
    # The task role (the worker's own code) gets no secret access: ECS injects it.
    assert not [a for a in everything.granted(everything.task_role_id())
                if a.startswith("secretsmanager:")]


def test_webhook_secret_by_name_is_scoped_to_that_name() -> None:
    named = synth({"webhookUrl": "https://hooks.example.com/x", "webhookSecret": "img2img/hook"})
    granted = named.granted(named.execution_role_id())
    (statement,) = granted["secretsmanager:GetSecretValue"]
    (resource,) = _resources(statement)
    # Secrets Manager appends 6 random characters to a secret's name in its ARN.
    assert resource == ("arn:{AWS::Partition}:secretsmanager:{AWS::Region}:"
                        "{AWS::AccountId}:secret:img2img/hook-??????")


def test_gpu_price_reaches_the_worker_when_given(everything: Synth) -> None:
    assert everything.env()["IMG2IMG_GPU_PRICE_PER_HOUR"] == "1.006"


@pytest.mark.parametrize("name", ["default", "spot"])
def test_no_webhook_and_no_price_unless_asked(name: str) -> None:
    template = synth(TEMPLATES[name])
    env = template.env()
    for variable in ("IMG2IMG_WEBHOOK_URL", "IMG2IMG_GPU_PRICE_PER_HOUR"):
        assert variable not in env, variable
    assert "Secrets" not in template.container()
    assert not [a for a in template.granted(template.execution_role_id())
                if a.startswith("secretsmanager:")]
