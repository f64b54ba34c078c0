"""The only part of tenant_release that imports Airflow: operators, triggers, timetables."""

import logging

# A tenant's task log is read by people: botocore's INFO lines ("Found endpoint for s3 via: environment_global",
# "Found credentials in environment variables") would outnumber the release's own steps. Its warnings stay.
for _chatty in ("botocore", "boto3", "urllib3"):
    if logging.getLogger(_chatty).level < logging.WARNING:
        logging.getLogger(_chatty).setLevel(logging.WARNING)
