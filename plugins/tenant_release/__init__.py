"""tenant-release: ship one release to a fleet of single-tenant AWS accounts."""
