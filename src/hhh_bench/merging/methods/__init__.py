"""One module per merge method; importing this package registers them all."""

from hhh_bench.merging.methods import (  # noqa: F401  (imported for registration)
    breadcrumbs,
    dare,
    della,
    iso,
    karcher,
    model_stock,
    multislerp,
    resm,
    sce,
    slerp,
    task_arithmetic,
    ties,
    tsv,
    weight_average,
)
