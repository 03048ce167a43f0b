"""Data contracts: Arrow schemas of the pool and the exports, and the exported spec JSON Schema."""
