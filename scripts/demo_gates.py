"""Show approvals and a maintenance window in the real scheduler: `python scripts/demo_gates.py`.

Writes a small fleet whose group `prod` is gated, with one tenant that needs its own sign-off and one whose
maintenance window opens a few minutes from now, then runs `local_stack.py up` on its own state dir and
ports. The stack answers both approval requests through the REST API as `approver` (what a person clicking
*Approve* does); the windowed tenant waits, deferred, until its window opens. While it waits, this script
prints `tenant-release status` so you can see who is waiting and why.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

FLEET = """\
tooling: {{account_id: "123456789012", region: us-east-1, artifact_bucket: tenant-release-artifacts-123456789012}}
dev: {{name: dev, account_id: "123456789012"}}
default_group: prod
gated_groups: [prod]
approval_timeout_hours: 1
tenants:
  - {{name: acme, account_id: "111111111111", region: eu-central-1, groups: [prod]}}
  - {{name: wayne, account_id: "222222222222", groups: [prod], approval: required}}
  - name: diana
    account_id: "333333333333"
    groups: [prod]
    maintenance_window: "{window}"
"""


def window_opening_in(minutes: int, zone: str = "Europe/Berlin") -> str:
    opens = (datetime.now(UTC) + timedelta(minutes=minutes)).astimezone(ZoneInfo(zone)).replace(second=0, microsecond=0)
    closes = opens + timedelta(hours=1)
    return f"{DAYS[opens.weekday()]} {opens:%H:%M}-{closes:%H:%M} {zone}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="v2.0.0")
    parser.add_argument("--window-in", type=int, default=3, help="minutes until the windowed tenant's window opens")
    parser.add_argument("--state-dir", default=str(ROOT / ".local-demo"))
    parser.add_argument("--api-port", default="8091")
    parser.add_argument("--moto-port", default="5091")
    args = parser.parse_args()

    window = window_opening_in(args.window_in)
    fleet = Path(tempfile.mkdtemp(prefix="tenant-release-demo-")) / "tenants.yaml"
    fleet.write_text(FLEET.format(window=window))
    print(f"fleet {fleet}: diana's maintenance window is {window}", flush=True)
    env = {**os.environ, "TENANT_RELEASE_CONFIG": str(fleet)}
    up = subprocess.Popen(
        [
            str(BIN / "python"),
            str(ROOT / "scripts" / "local_stack.py"),
            "up",
            "--tag",
            args.tag,
            "--state-dir",
            args.state_dir,
            "--api-port",
            args.api_port,
            "--moto-port",
            args.moto_port,
        ],
        env=env,
    )
    status_env = {
        **env,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{args.moto_port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    shown_waiting = False
    while up.poll() is None:
        time.sleep(15)
        status = subprocess.run(
            [str(BIN / "tenant-release"), "status", args.tag], env=status_env, capture_output=True, text=True, check=False
        )
        if not shown_waiting and "waiting for maintenance window" in status.stdout:
            print(f"\n--- while the run is going: tenant-release status {args.tag} ---\n{status.stdout}", flush=True)
            shown_waiting = True
    print(f"\nstop it with: python scripts/local_stack.py down --state-dir {args.state_dir}")
    return up.returncode


if __name__ == "__main__":
    sys.exit(main())
