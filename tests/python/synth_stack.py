"""Creates a stack from a template of `coalmine synth aws` on the CloudFormation API at
AWS_ENDPOINT_URL (moto's server in the tests), reads back what it made through each service's
own API, deletes the stack, checks what is left, and prints all of it as one JSON document.

usage: synth_stack.py TEMPLATE STACK_NAME [--existing-network] [--keep] [Key=Value ...]
       synth_stack.py --delete STACK_NAME

--keep leaves the stack standing (no `after_delete` in the report); --delete deletes it later
and prints only what is left.

--existing-network first makes a VPC, two subnets and a security group through the EC2 API and
passes them as the template's Subnets / SecurityGroups / VpcId parameters."""

import ast
import json
import sys
import time

import boto3

DEADLINE_SECONDS = 300


def wait_for_stack(cfn, name, done):
    """Poll the stack until `done(status)` holds, or fail at the deadline."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        try:
            stacks = cfn.describe_stacks(StackName=name)["Stacks"]
        except cfn.exceptions.ClientError as e:
            if "does not exist" not in str(e):
                raise
            stacks = []
        status = stacks[0]["StackStatus"] if stacks else "GONE"
        if done(status):
            return stacks[0] if stacks else None
        if time.monotonic() > deadline:
            raise SystemExit(f"stack {name} still {status} after {DEADLINE_SECONDS}s")
        time.sleep(0.2)


def policy_document(document):
    """The policy as a dict. moto keeps an inline policy that CloudFormation gave it as the
    Python text of the dict (`{'Statement': ...}`), not as JSON; IAM returns JSON."""
    if isinstance(document, dict):
        return document
    try:
        return json.loads(document)
    except ValueError:
        return ast.literal_eval(document)


def existing_network(ec2, want_vpc):
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]][:2]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.1.{i}.0/24", AvailabilityZone=zone)["Subnet"]["SubnetId"]
        for i, zone in enumerate(zones)
    ]
    group = ec2.create_security_group(GroupName="tasks", Description="tasks", VpcId=vpc)["GroupId"]
    params = {"Subnets": ",".join(subnets), "SecurityGroups": group}
    if want_vpc:
        params["VpcId"] = vpc
    return params, subnets, group


def delete(name, cluster):
    """Delete the stack; return the delete error (if any) and what is left of it."""
    cfn = boto3.client("cloudformation")
    iam, sqs, ecr, logs, ecs = (boto3.client(n) for n in ("iam", "sqs", "ecr", "logs", "ecs"))
    # moto deletes what it models and then gives up on a VPC whose route table it does not
    # delete; the error is reported, not hidden.
    try:
        cfn.delete_stack(StackName=name)
        error = None
    except Exception as e:  # noqa: BLE001 - reported to the test as it is
        error = str(e)
    wait_for_stack(cfn, name, lambda s: s in ("DELETE_COMPLETE", "GONE"))
    after = {
        "roles": sorted(r["RoleName"] for r in iam.list_roles()["Roles"]),
        "queues": sorted(sqs.list_queues().get("QueueUrls", [])),
        "repositories": [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]],
        "log_groups": [g["logGroupName"] for g in logs.describe_log_groups(logGroupNamePrefix="/ecs/")["logGroups"]],
        "active_clusters": [
            c["clusterName"] for c in ecs.describe_clusters(clusters=[cluster])["clusters"] if c.get("status") == "ACTIVE"
        ],
    }
    return error, after


def main():
    if sys.argv[1] == "--delete":
        name = sys.argv[2]
        cfn = boto3.client("cloudformation")
        outputs = {o["OutputKey"]: o["OutputValue"] for o in cfn.describe_stacks(StackName=name)["Stacks"][0].get("Outputs", [])}
        error, after = delete(name, outputs["ClusterName"])
        print(json.dumps({"delete_error": error, "after_delete": after}, indent=1, default=str, sort_keys=True))
        return
    template_path, name = sys.argv[1], sys.argv[2]
    rest = sys.argv[3:]
    body = open(template_path).read()
    cfn = boto3.client("cloudformation")
    ec2 = boto3.client("ec2")
    params = dict(arg.split("=", 1) for arg in rest if "=" in arg)
    report = {"network": None}
    if "--existing-network" in rest:
        extra, subnets, group = existing_network(ec2, "VpcId:" in body or "\n  VpcId:" in body)
        params.update(extra)
        report["network"] = {"subnets": subnets, "security_group": group}

    cfn.create_stack(
        StackName=name,
        TemplateBody=body,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(params.items())],
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = wait_for_stack(cfn, name, lambda s: not s.endswith("_IN_PROGRESS"))
    report["status"] = stack["StackStatus"]
    if stack["StackStatus"] != "CREATE_COMPLETE":
        report["events"] = [
            {k: str(v) for k, v in e.items()} for e in cfn.describe_stack_events(StackName=name)["StackEvents"]
        ]
        print(json.dumps(report, indent=1, default=str))
        return
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    report["outputs"] = outputs
    resources = cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
    report["resources"] = {
        r["LogicalResourceId"]: {"type": r["ResourceType"], "id": r["PhysicalResourceId"], "status": r["ResourceStatus"]}
        for r in resources
    }

    sqs = boto3.client("sqs")
    report["queues"] = {
        key: sqs.get_queue_attributes(QueueUrl=outputs[key], AttributeNames=["All"])["Attributes"]
        for key in ("QueueUrl", "DeadLetterQueueUrl", "TelemetryQueueUrl")
    }

    ecs = boto3.client("ecs")
    cluster = outputs["ClusterName"]
    names = [outputs["PrimaryServiceName"], outputs["CanaryServiceName"]]
    if "ControllerServiceName" in outputs:
        names.append(outputs["ControllerServiceName"])
    services = ecs.describe_services(cluster=cluster, services=names)["services"]
    report["services"] = {s["serviceName"]: s for s in services}
    definitions = {}
    for s in services:
        arn = s["taskDefinition"]
        if arn not in definitions:
            definitions[arn] = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
    report["task_definitions"] = {d["family"]: d for d in definitions.values()}
    report["clusters"] = ecs.describe_clusters(clusters=[cluster])["clusters"]

    iam = boto3.client("iam")
    roles = {}
    for logical, r in report["resources"].items():
        if r["type"] == "AWS::IAM::Role":
            role_name = r["id"].split("/")[-1]
            roles[logical] = {
                "assume": iam.get_role(RoleName=role_name)["Role"]["AssumeRolePolicyDocument"],
                "policies": {
                    p: policy_document(iam.get_role_policy(RoleName=role_name, PolicyName=p)["PolicyDocument"])
                    for p in iam.list_role_policies(RoleName=role_name)["PolicyNames"]
                },
            }
    report["roles"] = roles

    ecr = boto3.client("ecr")
    report["repositories"] = ecr.describe_repositories()["repositories"]
    logs = boto3.client("logs")
    report["log_groups"] = logs.describe_log_groups(logGroupNamePrefix="/ecs/")["logGroups"]
    if "ControllerFileSystemId" in outputs:
        efs = boto3.client("efs")
        fs_id = outputs["ControllerFileSystemId"]
        report["file_system"] = {
            "file_systems": efs.describe_file_systems(FileSystemId=fs_id)["FileSystems"],
            "mount_targets": efs.describe_mount_targets(FileSystemId=fs_id)["MountTargets"],
            "access_points": efs.describe_access_points(FileSystemId=fs_id)["AccessPoints"],
        }

    if "--keep" not in rest:
        report["delete_error"], report["after_delete"] = delete(name, cluster)
    print(json.dumps(report, indent=1, default=str, sort_keys=True))


if __name__ == "__main__":
    main()
