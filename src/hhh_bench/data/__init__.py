"""3H preference data: the toy 3H world, real-set adapters, noise and mixing (the row schema the
libraries share is :mod:`hhh_bench.core.schema`)."""
