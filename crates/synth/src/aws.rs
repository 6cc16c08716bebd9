//! The CloudFormation template of `coalmine synth aws`.
//!
//! What the guidance's CDK app makes for the runtime (queue + DLQ, ECR repository, VPC with two
//! public subnets, ECS cluster, a high- and a low-capacity Fargate service on one task
//! definition), plus what coalmine needs there: the proxy sidecar in the task definition (the
//! app reaches SQS through it), the telemetry queue the proxies report to, roles that allow
//! exactly what the tasks and the controller do ([`crate::policy`]), and optionally the
//! controller itself as a one-task service keeping `.coalmine/` on EFS.

use std::collections::BTreeMap;

use coalmine_spec::{AppSpec, EcsSpec, Repo, RuntimeSpec, PROXY_CONTAINER};
use serde_json::{json, Value};

use crate::policy;
use crate::{Output, Resource, SynthError, Template};

/// Where the tasks' network comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Vpc {
    /// A new VPC with two public subnets in two availability zones, as the guidance makes.
    #[default]
    New,
    /// Subnets and security groups given as parameters when the stack is deployed.
    Existing,
}

/// What `coalmine synth aws` was asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub vpc: Vpc,
    /// Add the controller as a one-task ECS service with `.coalmine/` on EFS.
    pub controller: bool,
    /// The text of `coalmine.toml` (the controller's configuration); needed with `controller`.
    pub toml_source: Option<String>,
}

/// The telemetry queue's name for `app`: the proxies report to it, the controller reads it.
pub fn telemetry_queue_name(app: &str) -> String {
    format!("{app}-coalmine-telemetry")
}

/// The app's log group.
pub fn log_group_name(app: &str) -> String {
    format!("/ecs/{app}")
}

/// The environment `coalmine proxy` reads besides `AWS_REGION` (and the task metadata endpoint
/// ECS sets itself, for its identity): where it forwards to, and the app it reports for.
pub const PROXY_ENV_UPSTREAM: &str = "COALMINE_PROXY_UPSTREAM";
pub const PROXY_ENV_APP: &str = "COALMINE_APP";
/// Where the controller's container keeps coalmine.toml and `.coalmine/` (the EFS volume).
pub const CONTROLLER_DIR: &str = "/srv/coalmine";

/// Resource types that hold data.
const HOLDS_DATA: &[&str] = &["AWS::SQS::Queue", "AWS::Logs::LogGroup", "AWS::ECR::Repository", "AWS::EFS::FileSystem"];

/// SQS's default retention (4 days), said explicitly for the app's queue.
const QUEUE_RETENTION_SECONDS: u64 = 4 * 86_400;

fn reference(name: &str) -> Value {
    json!({ "Ref": name })
}

fn get_att(name: &str, attribute: &str) -> Value {
    json!({ "Fn::GetAtt": [name, attribute] })
}

fn sub(text: &str) -> Value {
    json!({ "Fn::Sub": text })
}

fn actions(list: &[&str]) -> Value {
    Value::from(list.iter().map(|a| Value::from(*a)).collect::<Vec<_>>())
}

fn statement(list: &[&str], resource: Value) -> Value {
    json!({ "Effect": "Allow", "Action": actions(list), "Resource": resource })
}

fn env(pairs: Vec<(String, Value)>) -> Value {
    let mut pairs = pairs;
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    Value::from(pairs.into_iter().map(|(name, value)| json!({ "Name": name, "Value": value })).collect::<Vec<_>>())
}

fn tags(app: &str, name: &str) -> Value {
    json!([{ "Key": "Name", "Value": name }, { "Key": "coalmine:app", "Value": app }])
}

fn assume_ecs_tasks() -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Service": "ecs-tasks.amazonaws.com" },
            "Action": "sts:AssumeRole",
        }],
    })
}

fn log_configuration(prefix: &str) -> Value {
    json!({
        "LogDriver": "awslogs",
        "Options": {
            "awslogs-group": reference("LogGroup"),
            "awslogs-region": reference("AWS::Region"),
            "awslogs-stream-prefix": prefix,
        },
    })
}

/// The ECR repository ARN of an image in a private ECR registry
/// (`<account>.dkr.ecr.<region>.amazonaws.com/<name>[:tag|@digest]`), for the execution role.
fn ecr_repository_arn(image: &str) -> Option<String> {
    let (registry, rest) = image.split_once('/')?;
    let mut parts = registry.split('.');
    let account = parts.next()?;
    if parts.next()? != "dkr" || parts.next()? != "ecr" {
        return None;
    }
    let region = parts.next()?;
    if account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let name = rest.split(['@', ':']).next()?;
    Some(format!("arn:aws:ecr:{region}:{account}:repository/{name}"))
}

struct Builder<'a> {
    spec: &'a AppSpec,
    ecs: EcsSpec,
    /// The file says `kind = "ecs"` (not only the defaults).
    on_ecs: bool,
    options: &'a Options,
    parameters: BTreeMap<String, Value>,
    resources: BTreeMap<String, Resource>,
    outputs: BTreeMap<String, Output>,
}

impl Builder<'_> {
    fn add(&mut self, name: &str, kind: &str, depends_on: &[&str], properties: Value) {
        let previous = self.resources.insert(
            name.to_string(),
            Resource {
                kind: kind.to_string(),
                depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
                // Deleting the stack deletes what these hold (messages, logs, images, state),
                // as the guidance's destroy.sh does; said explicitly.
                deletion_policy: HOLDS_DATA.contains(&kind).then_some("Delete"),
                update_replace_policy: HOLDS_DATA.contains(&kind).then_some("Delete"),
                properties,
            },
        );
        debug_assert!(previous.is_none(), "resource {name} added twice");
    }

    fn output(&mut self, name: &str, description: &str, value: Value) {
        self.outputs.insert(name.to_string(), Output { description: description.to_string(), value });
    }

    fn app(&self) -> &str {
        &self.spec.app
    }

    /// The proxy's image: the file's, or the `coalmine` tag of the app's repository.
    fn proxy_image(&self) -> Value {
        match &self.ecs.proxy_image {
            Some(image) => Value::from(image.clone()),
            None => sub("${Repository.RepositoryUri}:coalmine"),
        }
    }

    fn queues(&mut self) {
        let q = &self.spec.queue;
        let (name, dlq, visibility, retention, max_receive) =
            (q.name.clone(), q.dlq.clone(), q.visibility_timeout.as_secs(), q.dlq_retention.as_secs(), q.max_receive_count);
        self.add(
            "DeadLetterQueue",
            "AWS::SQS::Queue",
            &[],
            json!({ "QueueName": dlq, "MessageRetentionPeriod": retention }),
        );
        self.add(
            "Queue",
            "AWS::SQS::Queue",
            &[],
            json!({
                "QueueName": name,
                "VisibilityTimeout": visibility,
                "MessageRetentionPeriod": QUEUE_RETENTION_SECONDS,
                "RedrivePolicy": {
                    "deadLetterTargetArn": get_att("DeadLetterQueue", "Arn"),
                    "maxReceiveCount": max_receive,
                },
            }),
        );
        // Reports older than an hour describe tasks long gone; the controller drops them.
        self.add(
            "TelemetryQueue",
            "AWS::SQS::Queue",
            &[],
            json!({ "QueueName": telemetry_queue_name(self.app()), "MessageRetentionPeriod": 3600 }),
        );
        self.output("QueueUrl", "The app's queue (QUEUE_URL)", reference("Queue"));
        self.output("DeadLetterQueueUrl", "The app's dead-letter queue", reference("DeadLetterQueue"));
        self.output("TelemetryQueueUrl", "The queue the proxies report to and the controller reads", reference("TelemetryQueue"));
    }

    fn repository_and_logs(&mut self) {
        self.add(
            "Repository",
            "AWS::ECR::Repository",
            &[],
            json!({
                "RepositoryName": self.app(),
                "ImageScanningConfiguration": { "ScanOnPush": true },
                // Deleting the stack deletes the images too, as the guidance's destroy.sh does.
                "EmptyOnDelete": true,
            }),
        );
        self.add(
            "LogGroup",
            "AWS::Logs::LogGroup",
            &[],
            json!({ "LogGroupName": log_group_name(self.app()), "RetentionInDays": self.ecs.log_retention_days }),
        );
        self.add("Cluster", "AWS::ECS::Cluster", &[], json!({ "ClusterName": self.ecs.cluster, "Tags": [{ "Key": "coalmine:app", "Value": self.app() }] }));
        self.output("RepositoryUri", "Push the app's images here (docker push <uri>:<tag>)", get_att("Repository", "RepositoryUri"));
        self.output("ClusterName", "The ECS cluster", reference("Cluster"));
        self.output("LogGroupName", "The tasks' logs", reference("LogGroup"));
    }

    fn roles(&mut self) {
        let mut pull = vec![statement(policy::ECR_LOGIN, json!("*")), statement(policy::EXECUTION_PULL, get_att("Repository", "Arn"))];
        if let Some(arn) = self.ecs.proxy_image.as_deref().and_then(ecr_repository_arn) {
            pull.push(statement(policy::EXECUTION_PULL, json!(arn)));
        }
        pull.push(statement(policy::EXECUTION_LOGS, get_att("LogGroup", "Arn")));
        self.add(
            "ExecutionRole",
            "AWS::IAM::Role",
            &[],
            json!({
                "Description": format!("ECS starting {}'s tasks: pull the images, write the logs", self.app()),
                "AssumeRolePolicyDocument": assume_ecs_tasks(),
                "Policies": [{
                    "PolicyName": "pull-images-write-logs",
                    "PolicyDocument": { "Version": "2012-10-17", "Statement": pull },
                }],
            }),
        );
        self.add(
            "TaskRole",
            "AWS::IAM::Role",
            &[],
            json!({
                "Description": format!("{}'s tasks (the app and the coalmine proxy): consume the queue, report telemetry", self.app()),
                "AssumeRolePolicyDocument": assume_ecs_tasks(),
                "Policies": [{
                    "PolicyName": "consume-queue-report-telemetry",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            statement(policy::TASK_QUEUE, get_att("Queue", "Arn")),
                            statement(policy::TASK_TELEMETRY, get_att("TelemetryQueue", "Arn")),
                        ],
                    },
                }],
            }),
        );
    }

    fn task_definition(&mut self) {
        let run = &self.spec.run;
        let port = self.ecs.proxy_port;
        let mut app_env: Vec<(String, Value)> = vec![
            ("AWS_ENDPOINT_URL_SQS".into(), json!(format!("http://127.0.0.1:{port}"))),
            ("AWS_REGION".into(), reference("AWS::Region")),
            ("QUEUE".into(), json!(self.spec.queue.name)),
            ("QUEUE_URL".into(), reference("Queue")),
        ];
        for (k, v) in &run.env {
            app_env.retain(|(name, _)| name != k);
            app_env.push((k.clone(), json!(v)));
        }
        let mut app = json!({
            "Name": self.ecs.container,
            "Image": sub("${Repository.RepositoryUri}:${AppImageTag}"),
            "Essential": true,
            "DependsOn": [{ "ContainerName": PROXY_CONTAINER, "Condition": "START" }],
            "Environment": env(app_env),
            "StopTimeout": run.stop_timeout.as_secs(),
            "LogConfiguration": log_configuration(&self.ecs.container),
        });
        // A local runtime's command runs in an artifact folder, not in an image: the image's
        // CMD starts the task then.
        if self.on_ecs && !run.command.trim().is_empty() {
            app["Command"] = Value::from(run.command.split_whitespace().map(Value::from).collect::<Vec<_>>());
        }
        if let Some(health) = &run.health_command {
            app["HealthCheck"] = json!({
                "Command": ["CMD-SHELL", health],
                "Interval": 30,
                "Timeout": 5,
                "Retries": 3,
                "StartPeriod": run.healthy_after.as_secs().clamp(0, 300),
            });
        }
        let proxy = json!({
            "Name": PROXY_CONTAINER,
            "Image": self.proxy_image(),
            "Essential": true,
            // `coalmine proxy` listens on 127.0.0.1:<port> and reports to the telemetry queue.
            "EntryPoint": ["coalmine"],
            "Command": ["proxy", "--port", port.to_string(), "--telemetry-queue", reference("TelemetryQueue")],
            "Environment": env(vec![
                (PROXY_ENV_UPSTREAM.into(), sub("https://sqs.${AWS::Region}.${AWS::URLSuffix}")),
                (PROXY_ENV_APP.into(), json!(self.app())),
                ("AWS_REGION".into(), reference("AWS::Region")),
            ]),
            // It stops after the app (which depends on it), then hands back what its task still
            // holds (its own grace is 25 s).
            "StopTimeout": 30,
            "LogConfiguration": log_configuration(PROXY_CONTAINER),
        });
        self.add(
            "TaskDefinition",
            "AWS::ECS::TaskDefinition",
            &[],
            json!({
                "Family": self.app(),
                "Cpu": self.ecs.cpu.to_string(),
                "Memory": self.ecs.memory.to_string(),
                "NetworkMode": "awsvpc",
                "RequiresCompatibilities": ["FARGATE"],
                "ExecutionRoleArn": get_att("ExecutionRole", "Arn"),
                "TaskRoleArn": get_att("TaskRole", "Arn"),
                "ContainerDefinitions": [proxy, app],
            }),
        );
        self.output("TaskDefinitionArn", "The task definition both services start with", reference("TaskDefinition"));
    }

    /// Subnets, security groups and public IP setting of the services.
    fn network(&mut self) -> (Value, Value, &'static str) {
        match self.options.vpc {
            Vpc::New => {
                let app = self.app().to_string();
                self.add(
                    "Vpc",
                    "AWS::EC2::VPC",
                    &[],
                    json!({ "CidrBlock": "10.0.0.0/16", "EnableDnsHostnames": true, "EnableDnsSupport": true, "Tags": tags(&app, &app) }),
                );
                self.add("InternetGateway", "AWS::EC2::InternetGateway", &[], json!({ "Tags": tags(&app, &app) }));
                self.add(
                    "GatewayAttachment",
                    "AWS::EC2::VPCGatewayAttachment",
                    &[],
                    json!({ "VpcId": reference("Vpc"), "InternetGatewayId": reference("InternetGateway") }),
                );
                self.add("PublicRouteTable", "AWS::EC2::RouteTable", &[], json!({ "VpcId": reference("Vpc"), "Tags": tags(&app, &format!("{app}-public")) }));
                self.add(
                    "PublicRoute",
                    "AWS::EC2::Route",
                    &["GatewayAttachment"],
                    json!({ "RouteTableId": reference("PublicRouteTable"), "DestinationCidrBlock": "0.0.0.0/0", "GatewayId": reference("InternetGateway") }),
                );
                for i in 0..2 {
                    let subnet = format!("PublicSubnet{}", i + 1);
                    self.add(
                        &subnet,
                        "AWS::EC2::Subnet",
                        &[],
                        json!({
                            "VpcId": reference("Vpc"),
                            "CidrBlock": format!("10.0.{i}.0/24"),
                            "AvailabilityZone": { "Fn::Select": [i, { "Fn::GetAZs": "" }] },
                            "MapPublicIpOnLaunch": true,
                            "Tags": tags(&app, &format!("{app}-public-{}", i + 1)),
                        }),
                    );
                    self.add(
                        &format!("{subnet}RouteTableAssociation"),
                        "AWS::EC2::SubnetRouteTableAssociation",
                        &[],
                        json!({ "SubnetId": reference(&subnet), "RouteTableId": reference("PublicRouteTable") }),
                    );
                }
                self.add(
                    "TaskSecurityGroup",
                    "AWS::EC2::SecurityGroup",
                    &[],
                    json!({
                        "GroupDescription": format!("{app} tasks: no inbound traffic; outbound to SQS, ECR and CloudWatch Logs"),
                        "VpcId": reference("Vpc"),
                        "SecurityGroupEgress": [{ "IpProtocol": "-1", "CidrIp": "0.0.0.0/0", "Description": "AWS APIs over the internet gateway" }],
                        "Tags": tags(&app, &format!("{app}-tasks")),
                    }),
                );
                self.output("VpcId", "The VPC made for the tasks", reference("Vpc"));
                (
                    json!([reference("PublicSubnet1"), reference("PublicSubnet2")]),
                    json!([reference("TaskSecurityGroup")]),
                    "ENABLED",
                )
            }
            Vpc::Existing => {
                self.parameters.insert(
                    "Subnets".into(),
                    json!({
                        "Type": "List<AWS::EC2::Subnet::Id>",
                        "Description": "Subnets for the tasks (two, in different availability zones). They need a route to SQS, ECR and CloudWatch Logs: a NAT gateway, VPC endpoints, or public subnets with AssignPublicIp=ENABLED.",
                    }),
                );
                self.parameters.insert(
                    "SecurityGroups".into(),
                    json!({
                        "Type": "List<AWS::EC2::SecurityGroup::Id>",
                        "Description": "Security groups of the tasks: outbound HTTPS is all they need; nothing connects to them.",
                    }),
                );
                self.parameters.insert(
                    "AssignPublicIp".into(),
                    json!({
                        "Type": "String",
                        "Default": "DISABLED",
                        "AllowedValues": ["ENABLED", "DISABLED"],
                        "Description": "ENABLED when the subnets are public ones (an internet gateway and no NAT).",
                    }),
                );
                (reference("Subnets"), reference("SecurityGroups"), "")
            }
        }
    }

    fn services(&mut self, subnets: &Value, groups: &Value, public_ip: &str) {
        let public_ip = if public_ip.is_empty() { reference("AssignPublicIp") } else { json!(public_ip) };
        let depends: &[&str] = if self.options.vpc == Vpc::New { &["PublicRoute"] } else { &[] };
        let run = &self.spec.run;
        let (min, max) = (run.minimum_healthy_percent, run.maximum_percent);
        for (logical, name, count_param, tasks, what) in [
            ("PrimaryService", self.ecs.primary_service.clone(), "PrimaryTaskCount", self.spec.services.primary.tasks, "primary (high-capacity)"),
            ("CanaryService", self.ecs.canary_service.clone(), "CanaryTaskCount", self.spec.services.canary.tasks, "canary (low-capacity)"),
        ] {
            self.parameters.insert(
                count_param.into(),
                json!({
                    "Type": "Number",
                    "Default": tasks,
                    "MinValue": 0,
                    "Description": format!("Tasks of the {what} service ([services] in coalmine.toml). 0 until the first image is pushed."),
                }),
            );
            self.add(
                logical,
                "AWS::ECS::Service",
                depends,
                json!({
                    "ServiceName": name,
                    "Cluster": reference("Cluster"),
                    "TaskDefinition": reference("TaskDefinition"),
                    "DesiredCount": reference(count_param),
                    "LaunchType": "FARGATE",
                    "DeploymentConfiguration": {
                        "MinimumHealthyPercent": min,
                        "MaximumPercent": max,
                        "DeploymentCircuitBreaker": { "Enable": true, "Rollback": true },
                    },
                    "NetworkConfiguration": {
                        "AwsvpcConfiguration": { "AssignPublicIp": public_ip, "Subnets": subnets, "SecurityGroups": groups },
                    },
                    "PropagateTags": "SERVICE",
                    "Tags": [{ "Key": "coalmine:app", "Value": self.app() }, { "Key": "coalmine:service", "Value": what.split(' ').next().unwrap_or_default() }],
                }),
            );
            self.output(&format!("{logical}Name"), &format!("The {what} service"), get_att(logical, "Name"));
        }
        self.parameters.insert(
            "AppImageTag".into(),
            json!({
                "Type": "String",
                "Default": "latest",
                "Description": "The tag of the app's image in the stack's repository that the task definition starts with; coalmine registers new revisions itself.",
            }),
        );
    }

    fn controller(&mut self, subnets: &Value, public_ip: &str) -> Result<(), SynthError> {
        if let Repo::Path(path) = &self.spec.source.repo {
            return Err(SynthError::ControllerNeedsUrl(path.display().to_string()));
        }
        let toml = self.options.toml_source.clone().ok_or(SynthError::ControllerNeedsFile)?;
        let app = self.app().to_string();
        let vpc = match self.options.vpc {
            Vpc::New => reference("Vpc"),
            Vpc::Existing => {
                self.parameters.insert(
                    "VpcId".into(),
                    json!({ "Type": "AWS::EC2::VPC::Id", "Description": "The VPC of the subnets (for the controller's file system)." }),
                );
                reference("VpcId")
            }
        };
        self.add(
            "ControllerSecurityGroup",
            "AWS::EC2::SecurityGroup",
            &[],
            json!({
                "GroupDescription": format!("{app} coalmine controller: no inbound traffic"),
                "VpcId": vpc,
                "SecurityGroupEgress": [{ "IpProtocol": "-1", "CidrIp": "0.0.0.0/0", "Description": "AWS APIs, the git remote, NFS to the file system" }],
                "Tags": tags(&app, &format!("{app}-controller")),
            }),
        );
        self.add(
            "FileSystemSecurityGroup",
            "AWS::EC2::SecurityGroup",
            &[],
            json!({
                "GroupDescription": format!("{app} coalmine state: NFS from the controller only"),
                "VpcId": vpc,
                "SecurityGroupIngress": [{
                    "IpProtocol": "tcp",
                    "FromPort": 2049,
                    "ToPort": 2049,
                    "SourceSecurityGroupId": reference("ControllerSecurityGroup"),
                    "Description": "NFS from the controller",
                }],
                "Tags": tags(&app, &format!("{app}-controller-state")),
            }),
        );
        self.add(
            "ControllerFileSystem",
            "AWS::EFS::FileSystem",
            &[],
            json!({ "Encrypted": true, "FileSystemTags": tags(&app, &format!("{app}-coalmine-state")) }),
        );
        let subnet_at = |i: usize| match self.options.vpc {
            Vpc::New => reference(&format!("PublicSubnet{}", i + 1)),
            Vpc::Existing => json!({ "Fn::Select": [i, reference("Subnets")] }),
        };
        let (first, second) = (subnet_at(0), subnet_at(1));
        for (i, subnet) in [first, second].into_iter().enumerate() {
            self.add(
                &format!("ControllerMountTarget{}", i + 1),
                "AWS::EFS::MountTarget",
                &[],
                json!({ "FileSystemId": reference("ControllerFileSystem"), "SubnetId": subnet, "SecurityGroups": [reference("FileSystemSecurityGroup")] }),
            );
        }
        self.add(
            "ControllerAccessPoint",
            "AWS::EFS::AccessPoint",
            &[],
            json!({
                "FileSystemId": reference("ControllerFileSystem"),
                "PosixUser": { "Uid": "1000", "Gid": "1000" },
                "RootDirectory": { "Path": "/coalmine", "CreationInfo": { "OwnerUid": "1000", "OwnerGid": "1000", "Permissions": "750" } },
                "AccessPointTags": tags(&app, &format!("{app}-coalmine-state")),
            }),
        );

        let service_arn = |name: &str| sub(&format!("arn:${{AWS::Partition}}:ecs:${{AWS::Region}}:${{AWS::AccountId}}:service/${{Cluster}}/{name}"));
        let mut push = vec![statement(policy::CONTROLLER_PUSH, get_att("Repository", "Arn"))];
        push.insert(0, statement(policy::ECR_LOGIN, json!("*")));
        let mut statements = vec![
            statement(policy::CONTROLLER_SERVICES, json!([service_arn(&self.ecs.primary_service), service_arn(&self.ecs.canary_service)])),
            statement(policy::CONTROLLER_TASK_DEFINITIONS, json!("*")),
            statement(
                policy::CONTROLLER_TASKS,
                json!([
                    sub("arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:task/${Cluster}/*"),
                    sub("arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:container-instance/${Cluster}/*"),
                ]),
            ),
            json!({
                "Effect": "Allow",
                "Action": actions(policy::CONTROLLER_PASS_ROLE),
                "Resource": [get_att("TaskRole", "Arn"), get_att("ExecutionRole", "Arn")],
                "Condition": { "StringEquals": { "iam:PassedToService": "ecs-tasks.amazonaws.com" } },
            }),
            statement(policy::CONTROLLER_QUEUES, json!([get_att("Queue", "Arn"), get_att("DeadLetterQueue", "Arn")])),
            statement(policy::CONTROLLER_TELEMETRY, get_att("TelemetryQueue", "Arn")),
            statement(policy::CONTROLLER_LOGS, get_att("LogGroup", "Arn")),
            json!({
                "Effect": "Allow",
                "Action": actions(policy::CONTROLLER_FILE_SYSTEM),
                // The ARNs spelled out from the ids (`Ref`), which is what `Fn::GetAtt ... Arn`
                // gives too; moto's CloudFormation has no `Arn` attribute for these two types.
                "Resource": sub("arn:${AWS::Partition}:elasticfilesystem:${AWS::Region}:${AWS::AccountId}:file-system/${ControllerFileSystem}"),
                "Condition": { "StringEquals": { "elasticfilesystem:AccessPointArn": sub("arn:${AWS::Partition}:elasticfilesystem:${AWS::Region}:${AWS::AccountId}:access-point/${ControllerAccessPoint}") } },
            }),
        ];
        statements.extend(push);
        self.add(
            "ControllerRole",
            "AWS::IAM::Role",
            &[],
            json!({
                "Description": format!("The coalmine controller of {app}: release on the two services, judge from the telemetry queue, redrive the DLQ, push images"),
                "AssumeRolePolicyDocument": assume_ecs_tasks(),
                "Policies": [{
                    "PolicyName": "coalmine-controller",
                    "PolicyDocument": { "Version": "2012-10-17", "Statement": statements },
                }],
            }),
        );

        let file = format!("{CONTROLLER_DIR}/coalmine.toml");
        let script = format!("printf '%s' \"$COALMINE_TOML\" > {file} && exec coalmine up --file {file}");
        self.add(
            "ControllerTaskDefinition",
            "AWS::ECS::TaskDefinition",
            &[],
            json!({
                "Family": format!("{app}-coalmine"),
                "Cpu": "512",
                "Memory": "1024",
                "NetworkMode": "awsvpc",
                "RequiresCompatibilities": ["FARGATE"],
                "ExecutionRoleArn": get_att("ExecutionRole", "Arn"),
                "TaskRoleArn": get_att("ControllerRole", "Arn"),
                "Volumes": [{
                    "Name": "coalmine-state",
                    "EFSVolumeConfiguration": {
                        "FilesystemId": reference("ControllerFileSystem"),
                        "TransitEncryption": "ENABLED",
                        "AuthorizationConfig": { "AccessPointId": reference("ControllerAccessPoint"), "IAM": "ENABLED" },
                    },
                }],
                "ContainerDefinitions": [{
                    "Name": "coalmine",
                    "Image": self.proxy_image(),
                    "Essential": true,
                    "EntryPoint": ["sh", "-c"],
                    "Command": [script],
                    "Environment": env(vec![
                        ("AWS_REGION".into(), reference("AWS::Region")),
                        ("COALMINE_TOML".into(), json!(toml)),
                    ]),
                    "MountPoints": [{ "SourceVolume": "coalmine-state", "ContainerPath": CONTROLLER_DIR, "ReadOnly": false }],
                    "StopTimeout": 120,
                    "LogConfiguration": log_configuration("coalmine"),
                }],
            }),
        );
        let public_ip = if public_ip.is_empty() { reference("AssignPublicIp") } else { json!(public_ip) };
        let mut depends = vec!["ControllerMountTarget1", "ControllerMountTarget2"];
        if self.options.vpc == Vpc::New {
            depends.push("PublicRoute");
        }
        self.add(
            "ControllerService",
            "AWS::ECS::Service",
            &depends,
            json!({
                "ServiceName": format!("{app}-coalmine"),
                "Cluster": reference("Cluster"),
                "TaskDefinition": reference("ControllerTaskDefinition"),
                "DesiredCount": 1,
                "LaunchType": "FARGATE",
                "PlatformVersion": "LATEST",
                // One controller per app: the old task stops before a new one starts.
                "DeploymentConfiguration": {
                    "MinimumHealthyPercent": 0,
                    "MaximumPercent": 100,
                    "DeploymentCircuitBreaker": { "Enable": true, "Rollback": true },
                },
                "NetworkConfiguration": {
                    "AwsvpcConfiguration": { "AssignPublicIp": public_ip, "Subnets": subnets, "SecurityGroups": [reference("ControllerSecurityGroup")] },
                },
                "PropagateTags": "SERVICE",
                "Tags": [{ "Key": "coalmine:app", "Value": app }, { "Key": "coalmine:service", "Value": "controller" }],
            }),
        );
        self.output("ControllerServiceName", "The coalmine controller's service", get_att("ControllerService", "Name"));
        self.output("ControllerFileSystemId", "The file system holding the controller's .coalmine/", reference("ControllerFileSystem"));
        Ok(())
    }
}

/// The template for `spec`. A file without `[runtime] kind = "ecs"` gets the ECS defaults
/// (cluster and primary service named after the app, canary `<app>-canary`).
pub fn template(spec: &AppSpec, options: &Options) -> Result<Template, SynthError> {
    if let Some(endpoint) = &spec.queue.endpoint {
        let host = endpoint.split("://").nth(1).unwrap_or_default().split(['/', ':']).next().unwrap_or_default();
        if !(host.starts_with("sqs.") && (host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn"))) {
            return Err(SynthError::ForeignQueueEndpoint(endpoint.clone()));
        }
    }
    let ecs = match &spec.runtime {
        RuntimeSpec::Ecs(ecs) => ecs.clone(),
        RuntimeSpec::Local => EcsSpec::default_for(&spec.app, &spec.queue.region),
    };
    let mut b = Builder {
        spec,
        on_ecs: spec.runtime.ecs().is_some(),
        ecs,
        options,
        parameters: BTreeMap::new(),
        resources: BTreeMap::new(),
        outputs: BTreeMap::new(),
    };
    b.queues();
    b.repository_and_logs();
    b.roles();
    b.task_definition();
    let (subnets, groups, public_ip) = b.network();
    b.services(&subnets, &groups, public_ip);
    if options.controller {
        b.controller(&subnets, public_ip)?;
    }
    let what = if options.controller { "services and controller" } else { "services" };
    let header = vec![
        format!("The AWS infrastructure of `{}` for coalmine, made by `coalmine synth aws` from coalmine.toml:", spec.app),
        "queue + DLQ + telemetry queue, ECR repository, ECS cluster, primary and canary Fargate services with".into(),
        format!("the coalmine proxy sidecar, least-privilege roles ({what}). Regenerate it instead of editing it."),
        "Deploy: aws cloudformation deploy --template-file <this file> --stack-name <name> --capabilities CAPABILITY_IAM".into(),
    ];
    Ok(Template {
        format_version: "2010-09-09",
        description: format!("coalmine: {} on ECS (Fargate) with canary releases", spec.app),
        parameters: b.parameters,
        resources: b.resources,
        outputs: b.outputs,
        header,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecr_repository_arn_of_private_images_only() {
        assert_eq!(
            ecr_repository_arn("123456789012.dkr.ecr.eu-west-1.amazonaws.com/tools/coalmine:1.2"),
            Some("arn:aws:ecr:eu-west-1:123456789012:repository/tools/coalmine".into())
        );
        assert_eq!(
            ecr_repository_arn("123456789012.dkr.ecr.us-east-1.amazonaws.com/coalmine@sha256:abc"),
            Some("arn:aws:ecr:us-east-1:123456789012:repository/coalmine".into())
        );
        assert_eq!(ecr_repository_arn("public.ecr.aws/x/coalmine:1"), None);
        assert_eq!(ecr_repository_arn("ghcr.io/x/coalmine:1"), None);
        assert_eq!(ecr_repository_arn("coalmine:1"), None);
    }
}
