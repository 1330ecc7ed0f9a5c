"""Prefect flows, tasks and the ``pipstc`` CLI: the only package that sees both pipnet_core and annotations."""
