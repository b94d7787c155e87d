"""Manifests, readers and pre-flight checks: the first stage, imported by every later one."""
