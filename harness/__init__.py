"""The development harness: workload files, demo data and models, the local cluster
launcher, load drivers, and the soak and fault drivers. It imports the tiers' public APIs;
no tier imports it."""
