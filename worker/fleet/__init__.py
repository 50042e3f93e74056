"""The SQS fleet side of the worker: receiving and settling messages, the S3 work of a
job, its life cycle (events, cancels, batch progress) and the service that runs it all."""
