//! Every IAM action the template of `coalmine synth aws` grants, by who uses it and why. The
//! template takes its actions from here only; a test checks that the two agree.

/// The app's task role (the app container and the proxy sidecar share it), on the app's queue:
/// what a consumer does (the actions of CDK's `grantConsumeMessages`, as in the guidance).
/// `DeleteMessageBatch` and `ChangeMessageVisibilityBatch` are authorised by the actions
/// without `Batch`.
pub const TASK_QUEUE: &[&str] = &[
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:ReceiveMessage",
];

/// The task role, on the telemetry queue: the proxy sends one report per second per task.
pub const TASK_TELEMETRY: &[&str] = &["sqs:GetQueueUrl", "sqs:SendMessage"];

/// The execution role (ECS itself, starting a task): pull images from the app's repository.
pub const EXECUTION_PULL: &[&str] =
    &["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"];

/// The execution role and the controller: ECR logins are not tied to a repository.
pub const ECR_LOGIN: &[&str] = &["ecr:GetAuthorizationToken"];

/// The execution role: the awslogs driver writes the containers' output.
pub const EXECUTION_LOGS: &[&str] = &["logs:CreateLogStream", "logs:PutLogEvents"];

/// The controller, on the two services: read them, put a revision on them, scale them.
pub const CONTROLLER_SERVICES: &[&str] = &["ecs:DescribeServices", "ecs:UpdateService"];

/// The controller: task definitions have no resource-level permissions.
pub const CONTROLLER_TASK_DEFINITIONS: &[&str] = &["ecs:DescribeTaskDefinition", "ecs:RegisterTaskDefinition"];

/// The controller, on the cluster's tasks: crashes, exit codes, task lists.
pub const CONTROLLER_TASKS: &[&str] = &["ecs:DescribeTasks", "ecs:ListTasks"];

/// The controller: hand the task and execution roles to the task definitions it registers.
pub const CONTROLLER_PASS_ROLE: &[&str] = &["iam:PassRole"];

/// The controller, on the app's queue and its DLQ: depth, the selective redrive (receive from
/// the DLQ, send to the queue, delete from the DLQ), releasing messages, moving them all.
pub const CONTROLLER_QUEUES: &[&str] = &[
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:ListMessageMoveTasks",
    "sqs:ReceiveMessage",
    "sqs:SendMessage",
    "sqs:StartMessageMoveTask",
];

/// The controller, on the telemetry queue: consume the proxies' reports.
pub const CONTROLLER_TELEMETRY: &[&str] =
    &["sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:ReceiveMessage"];

/// The controller, on the tasks' log group: `coalmine logs`.
pub const CONTROLLER_LOGS: &[&str] = &["logs:GetLogEvents"];

/// The controller, on the app's repository: the buildspec it runs pushes the image.
pub const CONTROLLER_PUSH: &[&str] = &[
    "ecr:BatchCheckLayerAvailability",
    "ecr:BatchGetImage",
    "ecr:CompleteLayerUpload",
    "ecr:InitiateLayerUpload",
    "ecr:PutImage",
    "ecr:UploadLayerPart",
];

/// The controller, on its file system (through its access point): `.coalmine/`.
pub const CONTROLLER_FILE_SYSTEM: &[&str] = &["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"];

/// Every list above, for checks.
pub const ALL: &[&[&str]] = &[
    TASK_QUEUE,
    TASK_TELEMETRY,
    EXECUTION_PULL,
    ECR_LOGIN,
    EXECUTION_LOGS,
    CONTROLLER_SERVICES,
    CONTROLLER_TASK_DEFINITIONS,
    CONTROLLER_TASKS,
    CONTROLLER_PASS_ROLE,
    CONTROLLER_QUEUES,
    CONTROLLER_TELEMETRY,
    CONTROLLER_LOGS,
    CONTROLLER_PUSH,
    CONTROLLER_FILE_SYSTEM,
];
