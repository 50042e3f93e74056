"""The GPU side: engine, model cache, SQS loop, local folder mode, health check."""
