"""One module per merge method; importing this package registers them all."""

from hhh_bench.merging.methods import (  # noqa: F401  (imported for registration)
    breadcrumbs,
    consensus,
    dare,
    della,
    fisher,
    iso,
    karcher,
    model_stock,
    multislerp,
    pcb,
    regmean,
    resm,
    sce,
    slerp,
    task_arithmetic,
    ties,
    tsv,
    weight_average,
)
