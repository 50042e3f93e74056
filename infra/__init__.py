"""AWS CDK app for the img2img fleet: bucket, queues, GPU ECS service, scaling, alarms."""
