"""Shadow mode: a candidate policy compared with the enforced one, live or replayed from the audit trail."""
