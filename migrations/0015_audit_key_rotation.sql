-- Rotation of the audit signing key (promise L3): a key-rotation record joins the checkpoint chain, signed by
-- the retiring key and naming the new one, so that verification knows which key was current at each record.

ALTER TABLE audit_checkpoints DROP CONSTRAINT audit_checkpoints_type_check;
ALTER TABLE audit_checkpoints ADD CONSTRAINT audit_checkpoints_type_check CHECK (type IN ('checkpoint', 'key-rotation'));
