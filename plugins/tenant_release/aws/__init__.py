"""AWS calls of tenant_release; every function takes its boto3 clients as arguments."""
