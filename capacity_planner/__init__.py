"""Capacity planning for the fleet: how many GPUs, how long, at what cost.

An event-driven model of what the deployed stack does (its scaling policy read from
``infra``, instance start-up, the worker's prefetch and batching, Spot interruptions)
and the plan built on it (``img2img-producer plan``). No torch, no boto3: the light
producer install runs it. See docs/scaling.md.
"""
