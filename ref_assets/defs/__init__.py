"""The Dagster face of ref_assets: thin adapters over the core library.

``assets.py`` (one time-partitioned asset per dataset spec), ``io_manager.py`` (writes partitions
into the dataset's Icechunk store), ``checks.py`` (the partitioned ``period_quality`` check and
the ``check_<dataset>`` jobs), ``resources.py`` (storage root, providers, packaged files),
``instance_init.py`` and ``instance_sync.py`` (the Dagster instance: creating it, and telling it
what the stores hold). ``ref_assets/definitions.py`` assembles them into the code location.
Nothing outside this folder, ``ref_assets/cli/`` and ``definitions.py`` imports Dagster.
"""
