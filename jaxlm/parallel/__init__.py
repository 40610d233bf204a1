"""Meshes (mesh, auto), the logical->mesh rules table, the pipeline schedule, and multi-host start-up."""
