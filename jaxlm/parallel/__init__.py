"""Meshes, the logical->mesh rules table, and multi-host start-up."""
