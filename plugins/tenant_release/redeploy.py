"""Placeholder until the holds branch lands (merge takes that branch's file)."""


def redeploy_hint(release_tag: str, run_id: str) -> str:
    return f'  tenant-release redeploy {release_tag} --failed --run {run_id}\n  trigger payload: {{"release_tag": "{release_tag}", "redeploy_of": "{run_id}"}}'
