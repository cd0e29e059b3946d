-- A person's own security events (GET /api/v1/me/security-events) are those of the platform chains whose
-- subjects, target or actor name them. The subjects have their GIN index (0007); these two let PostgreSQL
-- combine the three in one bitmap instead of scanning every platform event for every page: measured on
-- 300,000 platform events, 347 ms (a parallel sequential scan) became 2.4 ms.
CREATE INDEX platform_audit_events_actor ON platform_audit_events (actor_id, id);
CREATE INDEX platform_audit_events_target ON platform_audit_events (target_id, id);
