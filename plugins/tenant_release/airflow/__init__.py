"""The only part of tenant_release that imports Airflow: operators, triggers, timetables."""
