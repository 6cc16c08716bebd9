"""Create the guidance's ECS side in moto's server: a cluster, the app's task definition (the app
container alone, as the guidance registers it), a subnet and a security group in moto's EC2
(CreateService wants them), and the two services `<app>` (3 tasks) and `<app>-canary` (1 task).

Usage: ecs_guidance.py <app>   (endpoint and credentials from the environment)
Prints one JSON object: cluster, task definition ARN, roles, log group, service names.
"""

import json
import sys

import boto3

app = sys.argv[1]
ec2 = boto3.client("ec2")
ecs = boto3.client("ecs")
iam = boto3.client("iam")
logs = boto3.client("logs")

vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
group = ec2.create_security_group(GroupName=f"{app}-tasks", Description="tasks", VpcId=vpc)["GroupId"]

trust = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}],
})
task_role = iam.create_role(RoleName=f"{app}-task", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
execution_role = iam.create_role(RoleName=f"{app}-execution", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
log_group = f"/ecs/{app}"
logs.create_log_group(logGroupName=log_group)

ecs.create_cluster(clusterName=app)
td = ecs.register_task_definition(
    family=app,
    taskRoleArn=task_role,
    executionRoleArn=execution_role,
    networkMode="awsvpc",
    requiresCompatibilities=["FARGATE"],
    cpu="256",
    memory="512",
    containerDefinitions=[{
        "name": app,
        "image": f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{app}:initial",
        "essential": True,
        "environment": [{"name": "QUEUE_URL", "value": "https://sqs.us-east-1.amazonaws.com/123456789012/old"},
                        {"name": "LOG_LEVEL", "value": "info"}],
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": log_group, "awslogs-region": "us-east-1", "awslogs-stream-prefix": app}},
    }],
)["taskDefinition"]["taskDefinitionArn"]

network = {"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group], "assignPublicIp": "ENABLED"}}
for name, count in [(app, 3), (f"{app}-canary", 1)]:
    ecs.create_service(
        cluster=app,
        serviceName=name,
        taskDefinition=td,
        desiredCount=count,
        launchType="FARGATE",
        networkConfiguration=network,
    )

print(json.dumps({
    "cluster": app,
    "task_definition": td,
    "task_role": task_role,
    "execution_role": execution_role,
    "log_group": log_group,
    "services": [app, f"{app}-canary"],
}))
