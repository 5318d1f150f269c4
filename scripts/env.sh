# Sourced by the scripts: lets OpenMPI run as root (CI and containers) and start more
# ranks than cores (a 2-core laptop running 5 ranks). Harmless otherwise.
export OMPI_ALLOW_RUN_AS_ROOT=1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
