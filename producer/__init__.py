"""The light side (boto3 and pydantic, no torch): enqueue jobs, watch batches, redrive."""
