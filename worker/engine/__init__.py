"""The model side of the worker: diffusers pipelines, their references, cache and memory
modes. Imports torch lazily; nothing here knows about SQS, S3 jobs or folders."""
