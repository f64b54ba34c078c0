"""The `tenant-release` command: validate the fleet file, show what a tag targets, bootstrap accounts, read history."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tenant_release import report
from tenant_release.config import CONFIG_ENV_VAR, config_path, load_fleet
from tenant_release.errors import TenantReleaseError
from tenant_release.plan import plan_release
from tenant_release.tags import parse_release_tag


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _cmd_validate(args: argparse.Namespace) -> int:
    loaded = load_fleet(args.config)
    fleet = loaded.fleet
    _out(f"{loaded.path}: OK")
    _out(f"  tooling account {fleet.tooling.account_id} ({fleet.tooling.region}), dev account {fleet.dev.account_id}")
    _out(f"  {len(fleet.tenants)} tenants; groups: {', '.join(sorted(fleet.groups()))}; default group: {fleet.default_group}")
    _out(f"  gated groups: {', '.join(fleet.gated_groups) or 'none'}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    loaded = load_fleet(args.config)
    release = parse_release_tag(args.tag)
    plan = plan_release(loaded, release, only_tenants=args.tenants)
    _out(f"{release.tag}: version {release.version} to group {plan.group}" + (" (gated: needs approval)" if plan.gated else ""))
    rows = [("TENANT", "ACCOUNT", "REGION", "STACK", "APPROVAL", "WINDOW")]
    rows += [
        (t.name, t.account_id, t.region, t.stack_name, t.approval.value, t.maintenance_window or "any time") for t in plan.targets
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        _out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _cmd_bootstrap(args: argparse.Namespace) -> int:
    from tenant_release.aws.bootstrap import bootstrap_fleet
    from tenant_release.aws.session import AwsSessions

    loaded = load_fleet(args.config)
    results = bootstrap_fleet(
        AwsSessions(),
        loaded,
        bootstrap_role_name=args.bootstrap_role,
        tooling_principal_arn=args.orchestrator_principal or "",
    )
    for result in results:
        _out(f"{result.stack:<26} {result.account_id}  {result.region:<14} {result.action}")
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    from tenant_release.aws import ledger
    from tenant_release.aws.session import AwsSessions

    loaded = load_fleet(args.config)
    tooling = loaded.fleet.tooling
    dynamodb = AwsSessions().tooling_client("dynamodb", tooling.region)
    names = [t.name for t in loaded.fleet.tenants]
    found = ledger.get_many(dynamodb, tooling.history_table, tenants=names, release=args.tag)
    if not found:
        _out(f"no history for {args.tag}")
        return 1
    _out(report.render_table([found[n] for n in names if n in found]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenant-release", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help=f"fleet file (default: ${CONFIG_ENV_VAR} or {config_path()})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log AWS steps")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("validate", help="check the fleet file and say what is wrong").set_defaults(func=_cmd_validate)
    plan = sub.add_parser("plan", help="print which tenants a release tag targets")
    plan.add_argument("tag", help="e.g. v1.4.0 (default group) or v-1.4.0-qa")
    plan.add_argument("--tenants", nargs="*", default=None, help="narrow to these tenants")
    plan.set_defaults(func=_cmd_plan)
    boot = sub.add_parser(
        "bootstrap",
        help="deploy the tooling stack, then each target account's bootstrap stack (idempotent)",
        description="Run with credentials of the tooling account that may assume an administrative role "
        "(--bootstrap-role) in every tenant account, e.g. from your organization's management account.",
    )
    boot.add_argument("--bootstrap-role", default="OrganizationAccountAccessRole", help="admin role in tenant accounts")
    boot.add_argument("--orchestrator-principal", default=None, help="ARN allowed to assume the orchestrator role")
    boot.set_defaults(func=_cmd_bootstrap)
    history = sub.add_parser("history", help="print the recorded outcome of a release, per tenant")
    history.add_argument("tag")
    history.set_defaults(func=_cmd_history)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except TenantReleaseError as exc:
        sys.stderr.write(f"tenant-release: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
