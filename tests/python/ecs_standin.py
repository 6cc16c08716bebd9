"""A stand-in for what moto's ECS does not model, installed into moto's server process by
`moto_server.py --ecs-rollouts`.

moto (5.x) keeps the one deployment a service got at CreateService forever: UpdateService only
overwrites the service's task definition, no task ever runs for a service, and tasks stop with
no stop code and exit code 0. This module adds, on top of moto's own ECS backend and in the
shape of the ECS API reference's examples:

- UpdateService with a new task definition (or forceNewDeployment) starts a new PRIMARY
  deployment (rolloutState IN_PROGRESS); the older ones become ACTIVE.
- After ROLLOUT_SECONDS the new deployment's tasks run (RUNNING tasks in ListTasks/DescribeTasks,
  one per desired task, startedBy the deployment), the older deployments' tasks stop
  (stopCode ServiceSchedulerInitiated) and leave the list, and the deployment is COMPLETED with
  "has reached a steady state." in the service's events.
- A task definition whose essential container has the environment variable
  STANDIN_EXIT_CODE=<n> (n != 0) never runs: its tasks stop at once with stopCode
  EssentialContainerExited and that exit code, once a second, counted in failedTasks. With the
  deployment circuit breaker on, the deployment is FAILED after CIRCUIT_BREAKER_FAILURES failed
  tasks, and with rollback on the service goes back to the last completed deployment's task
  definition ("rolling back to deployment ..." in the events), as ECS does.
- Desired-count changes start or stop tasks of the primary deployment at once.
- ListTasks honours serviceName (moto ignores it).
- Each task started writes a line to its containers' awslogs log group/stream
  (`<prefix>/<container>/<task id>`), and a crashing one says how it exits, so CloudWatch Logs
  holds what ECS's awslogs driver would.

Everything else is moto's own. This is test support: it models ECS's documented behaviour, it
is not ECS.
"""

import copy
import os
import threading
import time

from moto.core.utils import utcnow
from moto.ecs import models as ecs
from moto.moto_api._internal import mock_random

ROLLOUT_SECONDS = float(os.environ.get("STANDIN_ROLLOUT_SECONDS", "2"))
CIRCUIT_BREAKER_FAILURES = int(os.environ.get("STANDIN_CIRCUIT_BREAKER_FAILURES", "3"))
EXIT_ENV = "STANDIN_EXIT_CODE"

_lock = threading.RLock()


class StandinTask(ecs.Task):
    """A task whose status is what the stand-in sets (moto's ecs::task state machine would move
    a RUNNING task to STOPPED on the next read)."""

    # moto's model registry files models by the module's second name part.
    __module__ = "moto.ecs.standin"

    @property
    def status(self):  # type: ignore[override]
        return self._status

    @status.setter
    def status(self, value):  # type: ignore[override]
        self._status = value


def _td(backend, arn):
    return backend.describe_task_definition(arn)


def _exit_code(td):
    """(container, exit code) of the essential container told to exit, or (None, 0)."""
    for c in td.container_definitions:
        if c.get("essential", True):
            for kv in c.get("environment") or []:
                if kv.get("name") == EXIT_ENV:
                    try:
                        return c.get("name"), int(kv.get("value"))
                    except (TypeError, ValueError):
                        return c.get("name"), 1
    return None, 0


def _log(backend, td, task, lines):
    """Write `lines(container definition)` to each container's awslogs stream of `task`, as the
    awslogs driver would."""
    try:
        from moto.logs.models import logs_backends
    except ImportError:  # pragma: no cover - moto without logs
        return
    logs = logs_backends[backend.account_id][backend.region_name]
    now = int(time.time() * 1000)
    for c in td.container_definitions:
        conf = c.get("logConfiguration") or {}
        if conf.get("logDriver") != "awslogs":
            continue
        options = conf.get("options") or {}
        group = options.get("awslogs-group")
        prefix = options.get("awslogs-stream-prefix")
        if not group:
            continue
        stream = f"{prefix}/{c.get('name')}/{task.id}" if prefix else task.id
        try:
            if group not in logs.groups:
                logs.create_log_group(group, {})
            logs.ensure_log_stream(group, stream)
            events = [{"timestamp": now + i, "message": f"[{c.get('name')}] {line}"} for i, line in enumerate(lines(c))]
            logs.put_log_events(group, stream, events)
        except Exception:  # noqa: BLE001 - logs are a courtesy of the stand-in
            pass


def _start_task(backend, service, deployment, td, exiting=(None, 0)):
    cluster = backend._get_cluster(service.cluster_name)
    network = service.network_configuration or None
    try:
        task = StandinTask(cluster, td, None, None, backend, f"service:{service.name}", launch_type="FARGATE",
                           started_by=deployment["id"], networking_configuration=network)
    except Exception:  # noqa: BLE001 - no usable network for moto's ENI model: no ENI
        plain = copy.copy(td)
        plain.network_mode = "bridge"
        task = StandinTask(cluster, plain, None, None, backend, f"service:{service.name}", launch_type="FARGATE",
                           started_by=deployment["id"])
    task.task_definition_arn = td.arn
    task.started_at = utcnow()
    task.containers = []
    for c in td.container_definitions:
        container = ecs.Container(td)
        container.name = c.get("name")
        container.image = c.get("image")
        container.last_status = "RUNNING"
        container.exitCode = None
        task.containers.append(container)
    name, code = exiting
    if code:
        _stop_task(task, "EssentialContainerExited", "Essential container in task exited", name, code)

    def lines(c):
        out = [f"task started ({c.get('image')})"]
        if code and c.get("name") == name:
            out.append(f"exits with code {code} ({EXIT_ENV})")
        return out

    backend.tasks.setdefault(cluster.name, {})[task.task_arn] = task
    _log(backend, td, task, lines)
    return task


def _stop_task(task, code, reason, exited=None, exit_code=0):
    task.status = "STOPPED"
    task.desired_status = "STOPPED"
    task.stop_code = code
    task.stopped_reason = reason
    task.stopped_at = utcnow()
    for c in task.containers:
        c.last_status = "STOPPED"
        c.exitCode = exit_code if c.name == exited else 0


def _service_tasks(backend, service, running=True):
    out = []
    for t in backend.tasks.get(service.cluster_name, {}).values():
        if getattr(t, "group", None) == f"service:{service.name}" and isinstance(t, StandinTask):
            if (t.status != "STOPPED") == running:
                out.append(t)
    return out


def _event(service, message):
    service.events.insert(0, {"id": str(mock_random.uuid4()), "createdAt": utcnow(), "message": f"(service {service.name}) {message}"})


def _new_deployment(service, td_arn, desired):
    now = utcnow()
    for d in service.deployments:
        if d["status"] == "PRIMARY":
            d["status"] = "ACTIVE"
    deployment = {
        "createdAt": now,
        "desiredCount": desired,
        "failedTasks": 0,
        "id": f"ecs-svc/{mock_random.randint(10**18, 9 * 10**18)}",
        "launchType": service.launch_type,
        "pendingCount": desired,
        "rolloutState": "IN_PROGRESS",
        "runningCount": 0,
        "platformFamily": "EC2" if service.launch_type == "EC2" else "FARGATE",
        "status": "PRIMARY",
        "taskDefinition": td_arn,
        "updatedAt": now,
    }
    deployment["rolloutStateReason"] = f"ECS deployment {deployment['id']} in progress."
    service.deployments.append(deployment)
    service._standin_started = time.monotonic()
    service._standin_last_launch = 0.0
    _event(service, f"has begun a deployment ({deployment['id']}) of task definition {td_arn.rsplit('/', 1)[-1]}.")
    return deployment


def _counts(backend, service):
    running = _service_tasks(backend, service)
    service.running_count = len(running)
    primary = next((d for d in service.deployments if d["status"] == "PRIMARY"), None)
    for d in service.deployments:
        mine = [t for t in running if t.started_by == d["id"]]
        d["runningCount"] = len(mine)
        d["pendingCount"] = max(d["desiredCount"] - len(mine), 0) if d["rolloutState"] == "IN_PROGRESS" else 0
    service.pending_count = primary["pendingCount"] if primary else 0


def _advance(backend, service):
    """Move the service's newest deployment on, by the clock."""
    primary = next((d for d in service.deployments if d["status"] == "PRIMARY"), None)
    if primary is None:
        return
    now = time.monotonic()
    td = _td(backend, primary["taskDefinition"])
    if primary["rolloutState"] == "IN_PROGRESS":
        started = getattr(service, "_standin_started", now - ROLLOUT_SECONDS)
        exiting = _exit_code(td)
        if exiting[1]:
            if now - getattr(service, "_standin_last_launch", 0.0) >= 1.0 and primary["desiredCount"] > 0:
                service._standin_last_launch = now
                for _ in range(primary["desiredCount"]):
                    _start_task(backend, service, primary, td, exiting)
                    primary["failedTasks"] += 1
                primary["updatedAt"] = utcnow()
            breaker = getattr(service, "_standin_breaker", {})
            if breaker.get("enable") and primary["failedTasks"] >= CIRCUIT_BREAKER_FAILURES:
                primary["rolloutState"] = "FAILED"
                primary["rolloutStateReason"] = "ECS deployment circuit breaker: tasks failed to start."
                primary["updatedAt"] = utcnow()
                _event(service, f"(deployment {primary['id']}) deployment failed: tasks failed to start.")
                back = getattr(service, "_standin_completed", None)
                if breaker.get("rollback") and back and back != primary["taskDefinition"]:
                    _event(service, f"rolling back to deployment {primary['id']} with task definition {back.rsplit('/', 1)[-1]}.")
                    service.task_definition = back
                    _new_deployment(service, back, primary["desiredCount"])
        elif now - started >= ROLLOUT_SECONDS:
            for _ in range(primary["desiredCount"]):
                _start_task(backend, service, primary, td)
            for t in _service_tasks(backend, service):
                if t.started_by != primary["id"]:
                    _stop_task(t, "ServiceSchedulerInitiated", f"Task stopped by deployment {primary['id']}.")
            # ECS drops drained deployments from the list.
            service.deployments = [primary]
            primary["rolloutState"] = "COMPLETED"
            primary["rolloutStateReason"] = f"ECS deployment {primary['id']} completed."
            primary["updatedAt"] = utcnow()
            service._standin_completed = primary["taskDefinition"]
            _event(service, "has reached a steady state.")
    elif primary["rolloutState"] == "COMPLETED":
        # Scale to the desired count at once.
        mine = [t for t in _service_tasks(backend, service) if t.started_by == primary["id"]]
        for _ in range(primary["desiredCount"] - len(mine)):
            _start_task(backend, service, primary, td)
        for t in mine[primary["desiredCount"]:]:
            _stop_task(t, "ServiceSchedulerInitiated", "Task stopped because the service scaled in.")
    _counts(backend, service)


def install():
    backend_cls = ecs.EC2ContainerServiceBackend
    original_update = backend_cls.update_service
    original_describe = backend_cls.describe_services
    original_list_tasks = backend_cls.list_tasks
    original_create = backend_cls.create_service

    def create_service(self, *args, **kwargs):
        with _lock:
            service = original_create(self, *args, **kwargs)
            if service.task_definition:
                service._standin_completed = service.task_definition
            return service

    def update_service(self, props):
        with _lock:
            cluster = props.get("cluster", "default")
            name = props.get("service", "").split("/")[-1]
            service = self._get_service(cluster, name)
            old_td, old_desired = service.task_definition, service.desired_count
            new_td = props.get("task_definition")
            force = props.get("force_new_deployment", False)
            config = props.get("deployment_configuration") or {}
            breaker = config.get("deploymentCircuitBreaker")
            service = original_update(self, props)
            if breaker is not None:
                service._standin_breaker = breaker
            if new_td:
                service.task_definition = _td(self, new_td).arn
            if (new_td and service.task_definition != old_td) or force:
                _new_deployment(service, service.task_definition, service.desired_count)
            elif service.desired_count != old_desired:
                for d in service.deployments:
                    if d["status"] == "PRIMARY":
                        d["desiredCount"] = service.desired_count
            _advance(self, service)
            return service

    def describe_services(self, cluster_str, names):
        with _lock:
            result, failures = original_describe(self, cluster_str, names)
            for service in result:
                _advance(self, service)
            return result, failures

    def list_tasks(self, cluster_str=None, container_instance=None, family=None, started_by=None, service_name=None,
                   desiredStatus=None):
        with _lock:
            tasks = original_list_tasks(self, cluster_str, container_instance, family, started_by, None, desiredStatus)
            if service_name:
                name = service_name.split("/")[-1]
                tasks = [t for t in tasks if getattr(t, "group", None) == f"service:{name}"]
            return tasks

    backend_cls.create_service = create_service
    backend_cls.update_service = update_service
    backend_cls.describe_services = describe_services
    backend_cls.list_tasks = list_tasks
