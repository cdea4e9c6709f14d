"""The core floor (docs/architecture.md): what every library and the pipeline share, importing
nothing of hhh-bench above it: the typed config schema (``config``, ``typed``, ``sizes``), the
registry helper (``registry``), the preference-row schema and the 3H dimensions (``schema``),
content identity and the stage cache (``content``, ``stagecache``), provenance and the
environment record (``provenance``, ``environment``), where the configs live (``paths``), and
the scoring and statistics the evaluation and the report share (``scoring``, ``items``,
``stats``, ``uncertainty``). Import the modules themselves: this package re-exports nothing."""
