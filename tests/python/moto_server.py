"""Runs moto's server on 127.0.0.1 at the port given (0: one the OS chooses) and prints
`listening on http://127.0.0.1:<port>` once it accepts connections. It stops when its standard
input closes, so it never outlives the test process that started it.

moto's SQS is made safe under concurrent requests first (`sqs_serial.py`: its races lose
messages SQS never loses). `--ecs-rollouts` adds the stand-in for ECS deployments and tasks
(`ecs_standin.py`)."""

import sys

from moto.server import ThreadedMotoServer

import sqs_serial


def main() -> None:
    sqs_serial.install()
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if "--ecs-rollouts" in sys.argv[1:]:
        import ecs_standin

        ecs_standin.install()
    port = int(args[0]) if args else 0
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    print(f"listening on http://{host}:{bound}", flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
