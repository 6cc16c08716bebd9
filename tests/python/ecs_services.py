"""Print, as one JSON object, what ECS says each service runs: its task definition ARN and, per
container, the image and the environment. Endpoint and credentials from the environment.

usage: ecs_services.py CLUSTER SERVICE [SERVICE ...]
"""

import json
import sys

import boto3

cluster, names = sys.argv[1], sys.argv[2:]
ecs = boto3.client("ecs")
out = {}
for s in ecs.describe_services(cluster=cluster, services=names)["services"]:
    td = ecs.describe_task_definition(taskDefinition=s["taskDefinition"])["taskDefinition"]
    out[s["serviceName"]] = {
        "task_definition": s["taskDefinition"],
        "desired": s["desiredCount"],
        "containers": {
            c["name"]: {"image": c.get("image"), "env": {e["name"]: e["value"] for e in c.get("environment", [])}}
            for c in td["containerDefinitions"]
        },
    }
print(json.dumps(out, sort_keys=True))
